"""Image I/O: every kind of input converted, limits enforced, outputs written atomically."""
from __future__ import annotations

import io
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

from artchain.core import imageio
from artchain.core.config import Limits, Output
from artchain.core.errors import ImageError
from artchain.core.imageio import decode_image
from support import run_cli

LIMITS = Limits()


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it 90 degrees
    picture = imageio.decode_image(encode(image, "JPEG", exif=exif.tobytes()), LIMITS)
    assert picture.size == (20, 40)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "CMYK", "I;16", "RGBA", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.linear_gradient("L").resize((24, 16))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257).convert("I;16")
    else:
        image = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    picture = imageio.decode_image(encode(image, fmt), LIMITS)
    assert picture.rgb.mode == "RGB" and picture.size == (24, 16)
    if mode == "I;16":  # 16-bit values scale down to the full 8-bit range, not clipped to white
        grey = np.asarray(picture.rgb.getchannel("R"), dtype=int)
        assert np.abs(grey - np.asarray(base, dtype=int)).max() <= 1


def test_alpha_is_kept_through_png_and_flattened_for_jpeg():
    image = Image.new("RGBA", (10, 10), (0, 0, 255, 255))
    image.putpixel((0, 0), (0, 0, 255, 0))
    picture = imageio.decode_image(encode(image), LIMITS)
    assert picture.alpha is not None
    result = imageio.finish(picture, picture.rgb.resize((20, 20)))
    assert result.mode == "RGBA" and result.getpixel((0, 0))[3] < 128 and result.getpixel((19, 19))[3] == 255
    jpeg = Image.open(io.BytesIO(imageio.encode_image(result, "JPEG", Output())))
    assert jpeg.mode == "RGB" and jpeg.getpixel((0, 0))[0] > 200  # composited onto white


def test_opaque_alpha_is_dropped():
    picture = imageio.decode_image(encode(Image.new("RGBA", (4, 4), (1, 2, 3, 255))), LIMITS)
    assert picture.alpha is None


def test_gps_and_exif_are_not_copied_unless_asked(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (55.0, 45.0, 0.0)}
    picture = imageio.decode_image(encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes()), LIMITS)
    plain = imageio.save_image(picture.rgb, tmp_path / "plain.jpg", Output(), picture.exif)
    assert b"CameraMaker" not in plain.read_bytes()
    kept = imageio.save_image(picture.rgb, tmp_path / "kept.jpg", Output(keep_metadata=True), picture.exif)
    assert b"CameraMaker" in kept.read_bytes()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge grayscale image, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image file"),
    (bomb_png(30000, 30000), "refused as a decompression bomb"),
    (bomb_png(8000, 8000), "8000x8000 is over the limit of 50000000 pixels"),
])
def test_bad_bytes_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        imageio.decode_image(data, LIMITS)


def test_pillow_bomb_guard_stays_on_when_limits_are_raised():
    with pytest.raises(ImageError, match="decompression bomb"):
        imageio.decode_image(bomb_png(30000, 30000), Limits(max_pixels=10**12))


def test_truncated_jpeg_is_damaged():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="damaged image"):
        imageio.decode_image(data[: len(data) // 2], LIMITS)


def test_byte_limit():
    with pytest.raises(ImageError, match="bytes is over the limit of 10"):
        imageio.decode_image(encode(Image.new("RGB", (8, 8))), Limits(max_bytes=10))


def test_tensor_round_trip_is_exact():
    image = Image.effect_noise((33, 17), 80).convert("RGB")
    assert imageio.to_image(imageio.to_tensor(image)).tobytes() == image.tobytes()


@pytest.mark.parametrize("name, fmt", [("a.png", "PNG"), ("a.JPG", "JPEG"), ("a.jpeg", "JPEG"), ("a.webp", "WEBP")])
def test_format_follows_extension(tmp_path, name, fmt):
    path = imageio.save_image(Image.new("RGB", (8, 8)), tmp_path / name, Output())
    assert Image.open(path).format == fmt


def test_save_refuses_unknown_format_and_missing_dir(tmp_path):
    with pytest.raises(ImageError, match="unknown output format .gif"):
        imageio.save_image(Image.new("RGB", (8, 8)), tmp_path / "a.gif", Output())
    with pytest.raises(ImageError, match="does not exist"):
        imageio.save_image(Image.new("RGB", (8, 8)), tmp_path / "nope" / "a.png", Output())
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_partial_file(tmp_path):
    (tmp_path / "out.png").mkdir()  # a directory where the file should go: the rename fails
    with pytest.raises(ImageError, match="out.png: cannot write"):
        imageio.save_image(Image.new("RGB", (8, 8)), tmp_path / "out.png", Output())
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert (tmp_path / "out.png").is_dir()


@pytest.mark.parametrize("mode, key", [("L", 0), ("RGB", (0, 0, 0))])
def test_colour_key_transparency_becomes_alpha(mode, key):
    image = Image.new(mode, (6, 4), key)
    image.paste(Image.new(mode, (3, 4), 200 if mode == "L" else (200, 100, 50)), (3, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=key)
    picture = imageio.decode_image(buffer.getvalue(), Limits())
    assert picture.alpha is not None
    assert picture.alpha.getpixel((0, 0)) == 0 and picture.alpha.getpixel((5, 0)) == 255


def test_a_size_the_format_cannot_hold_is_a_clear_error():
    wide = Image.new("RGB", (16_400, 2))
    with pytest.raises(ImageError, match="cannot encode a 16400x2 image as WEBP"):
        imageio.encode_image(wide, "WEBP", Output())


def _ico_holding(png: bytes) -> bytes:
    """An ICO whose directory claims 256x256 while the PNG inside is whatever it is."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_only_the_formats_artchain_means_to_read_are_opened(tmp_path, isolated_env):
    big = io.BytesIO()
    Image.new("L", (8000, 8000)).save(big, "PNG")
    hostile = {
        "postscript.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "icon.png": _ico_holding(big.getvalue()),
    }
    for name, data in hostile.items():
        with pytest.raises(ImageError, match=f"{name}: not an image file artchain reads"):
            decode_image(data, Limits(max_pixels=1_000_000), name)
        path = tmp_path / name
        path.write_bytes(data)
        result = run_cli("run", "resize:scale=1", path, "-o", tmp_path / f"out-{name}", env=isolated_env)
        assert result.returncode == 1 and not (tmp_path / f"out-{name}").exists()
        assert result.stderr.splitlines()[0] == (f"failed: {path}: not an image file artchain reads "
                                                 "(JPEG, PNG, WebP, BMP, TIFF or GIF)")
    for image_format in ("BMP", "TIFF", "GIF", "WEBP", "JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (5, 4), (9, 99, 199)).save(buffer, image_format)
        assert decode_image(buffer.getvalue(), Limits(), image_format).size == (5, 4)
