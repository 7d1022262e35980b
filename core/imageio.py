"""Reading and writing images, with every check a file from outside needs.

Rules (documented in the README):
- EXIF orientation is applied on read; palette, LA, CMYK, 16-bit and grayscale inputs become RGB;
  an embedded ICC profile is converted to sRGB.
- Alpha is split off, the chain runs on RGB, and the alpha is resized to the output and re-attached.
  Formats without alpha (JPEG) get the image composited onto white instead.
- Outputs carry no EXIF/GPS unless `output.keep_metadata` is set.
- Only the formats in READABLE_FORMATS are opened, recognised by content, never by name: a
  PostScript or EPS file renamed .png is refused instead of being handed to Ghostscript.
- Files over `limits.max_bytes` or images over `limits.max_pixels` are refused before decoding;
  Pillow's decompression-bomb guard stays on.
- Outputs are written to a temporary file beside the target and renamed into place.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .config import Limits, Output
from .errors import ImageError
from .files import write_atomically

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# What inputs may be. Formats whose header can understate the decoded size (ICO, ICNS hold whole PNGs)
# or that run an interpreter (EPS, PDF) are not among them. Camera JPEGs that Pillow reads as MPO
# come in through the JPEG opener.
READABLE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass
class Picture:
    """An image as the engine sees it: RGB plus an optional alpha plane kept aside."""

    rgb: Image.Image
    alpha: Image.Image | None = None
    exif: bytes | None = None
    name: str = "image"  # for messages: the file name, "photo from the chat", ...

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def open_image(path: str | Path, limits: Limits) -> Picture:
    """Reads a file into a Picture, or raises ImageError with a one-line reason naming the file."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    if stat.st_size == 0:
        raise ImageError(f"{path}: empty file")
    if stat.st_size > limits.max_bytes:
        raise ImageError(f"{path}: {stat.st_size} bytes is over the limit of {limits.max_bytes}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, limits, name=str(path))


def decode_image(data: bytes, limits: Limits, name: str = "image") -> Picture:
    """Decodes bytes (from a file, a chat message, a queue) into a Picture, enforcing `limits`."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise ImageError(f"{name}: {len(data)} bytes is over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow warns below its hard bomb limit; treat that as the refusal it announces.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
            _check_pixels(image, limits, name)  # from the header, before any pixel is decoded
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file artchain reads (JPEG, PNG, WebP, BMP, TIFF or GIF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: refused as a decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged image ({exc})") from None
    if min(image.size) < 1:
        raise ImageError(f"{name}: image has no pixels")
    return _to_picture(image, name)


def from_pil(image: Image.Image, limits: Limits) -> Picture:
    """A Picture from an already-open PIL image (Python API callers), under the same limits."""
    _check_pixels(image, limits, "image")
    image.load()
    return _to_picture(image)


def _check_pixels(image: Image.Image, limits: Limits, name: str) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(f"{name}: {width}x{height} is over the limit of {limits.max_pixels} pixels")


def _to_picture(image: Image.Image, name: str = "image") -> Picture:
    exif = image.info.get("exif")
    image = ImageOps.exif_transpose(image)
    image = _to_srgb(image)
    alpha = None
    if image.mode in _SIXTEEN_BIT:
        image = _sixteen_bit_to_l(image)
    elif "transparency" in image.info and image.mode in {"P", "L", "RGB"}:
        image = image.convert("RGBA")  # a palette entry or colour key marks the transparent pixels
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        alpha = image.getchannel("A")
        if alpha.getextrema() == (255, 255):
            alpha = None  # fully opaque: nothing worth carrying
    return Picture(image.convert("RGB"), alpha, exif, name)


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    peak = 65535.0 if values.max() > 255 or image.mode != "I" else 255.0
    return Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _to_srgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in {"RGB", "RGBA", "CMYK", "L"}:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                         outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # an unreadable profile: use the pixels as they are


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 tensor in [0, 1]; the only float copy it makes is the
    result (a 4K photo is 100 MB of float32)."""
    pixels = torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB")))
    batch = torch.empty((1, 3, *pixels.shape[:2]), dtype=torch.float32)
    batch[0].copy_(pixels.permute(2, 0, 1))
    return batch.div_(255.0)


# Values converted at a time when a float result becomes 8 bits (about 16 MB of float32).
_CONVERSION_VALUES = 4 * 1024 * 1024


def to_image(batch: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) tensor -> RGB PIL image. Floats of any precision are in [0, 1] and are rounded
    (not truncated) to 8 bits band by band, so a large result never gets a full float32 copy;
    uint8 (0..255) is taken as it is, without a copy when its layout is channels_last."""
    image = batch[0].detach()
    if image.dtype == torch.uint8:
        pixels = image.permute(1, 2, 0).cpu()
    else:
        height, width = image.shape[-2:]
        pixels = torch.empty((height, width, 3), dtype=torch.uint8)
        rows = max(1, _CONVERSION_VALUES // (3 * width))
        for top in range(0, height, rows):
            band = image[:, top:top + rows].clamp(0, 1).float().mul_(255).round_()
            pixels[top:top + rows] = band.permute(1, 2, 0).cpu()
    return Image.fromarray(np.ascontiguousarray(pixels.numpy()), "RGB")


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """A step's output in the contract's form for the next step: float32 in [0, 1]. Steps may
    return uint8 (0..255) or half precision to keep a large result small."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255)
    return batch if batch.dtype == torch.float32 else batch.float()


def finish(picture: Picture, result: Image.Image) -> Image.Image:
    """Re-attaches the input's alpha, resized to the result."""
    if picture.alpha is None:
        return result
    alpha = picture.alpha.resize(result.size, Image.Resampling.LANCZOS)
    merged = result.copy()
    merged.putalpha(alpha)
    return merged


def output_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ImageError(f"{path}: unknown output format {path.suffix or '(no extension)'}; "
                         f"use one of {', '.join(sorted(FORMATS))}") from None


def encode_image(image: Image.Image, image_format: str, options: Output, exif: bytes | None = None) -> bytes:
    if image_format == "JPEG" and image.mode == "RGBA":
        flattened = Image.new("RGB", image.size, (255, 255, 255))
        flattened.paste(image, mask=image.getchannel("A"))
        image = flattened
    save_args: dict = {}
    if image_format == "JPEG":
        save_args = {"quality": options.jpeg_quality, "optimize": True}
    elif image_format == "WEBP":
        save_args = {"quality": options.webp_quality, "method": 4}
    elif image_format == "PNG":
        save_args = {"compress_level": 6}
    if options.keep_metadata and exif:
        save_args["exif"] = _exif_without_orientation(exif)
    buffer = io.BytesIO()
    try:
        image.save(buffer, image_format, **save_args)
    except (OSError, ValueError) as exc:  # e.g. WebP past 16383 px, JPEG past 65500 px
        raise ImageError(f"cannot encode a {image.width}x{image.height} image as {image_format} "
                         f"({exc}); choose another format") from None
    return buffer.getvalue()


def _exif_without_orientation(exif: bytes) -> bytes:
    # The pixels are already turned upright; keeping the tag would turn them again in a viewer.
    parsed = Image.Exif()
    parsed.load(exif)
    parsed.pop(0x0112, None)
    return parsed.tobytes()


def save_image(image: Image.Image, path: str | Path, options: Output, exif: bytes | None = None) -> Path:
    """Writes atomically: a temporary file in the target's directory, then a rename."""
    path = Path(path)
    image_format = output_format(path)
    directory = path.parent
    if not directory.is_dir():
        raise ImageError(f"{path}: output directory {directory} does not exist")
    data = encode_image(image, image_format, options, exif)
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """Both images at the right one's height, next to each other (for `--compare`)."""
    height = right.height
    left = left.convert("RGB").resize((max(1, round(left.width * height / left.height)), height),
                                      Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (left.width + right.width, height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right.convert("RGB"), (left.width, 0))
    return canvas
