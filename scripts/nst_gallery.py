"""Builds the nst pictures in docs/nst/ from free images, through the chain as a user runs it.

    python scripts/nst_gallery.py            # nst from the photo and from fast-style, fast-style alone
    python scripts/nst_gallery.py --before   # the step's defaults with only style= and size=, named
                                             # *-before.jpg: run on the code before a change to compare

Contents are scikit-image's public-domain/CC0 photos. Styles: a stained-glass window drawn here
(committed as docs/nst/style-stained-glass.jpg, it is ours) and Van Gogh's The Starry Night from the
Debian package opencv-doc, fetched at gallery time with the gan plugin's package cache (about 96 MB
once; the painting itself is never written into docs/, only the stylised photos). Pictures are small
JPEGs; what could not be made is skipped with a note.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from artchain.core.errors import ArtchainError
from artchain.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "nst"
CONTENTS = ("astronaut", "chelsea")  # scikit-image's photos (NASA: public domain; Chelsea: CC0)
SIZE = 512  # the step's default working size
# (name suffix, chain): the pictures made for each content/style pair.
AFTER = (
    ("nst", "nst:style={style}:init=content"),
    ("nst-fast", "nst:style={style}:init=fast"),
    ("fast-style", "fast-style:style={style}:size=" + str(SIZE)),
)
BEFORE = (("before", "nst:style={style}:size=" + str(SIZE)),)
OPENCV_DOC_PAINTING = "usr/share/doc/opencv-doc/examples/data/starry_night.jpg"
# Lead, and the glass of a pastel window with a few deeper panes (gold, blue, rose, green).
LEAD = np.array((38, 34, 40), np.float32)
GLASS = np.array(((236, 214, 190), (214, 226, 236), (239, 201, 206), (210, 230, 204), (246, 234, 196),
                  (200, 206, 232), (228, 196, 226), (190, 214, 226), (214, 172, 96), (118, 150, 204),
                  (204, 122, 142), (128, 176, 132)), np.float32)


def draw_stained_glass(width: int = 480, height: int = 400, seed: int = 3) -> Image.Image:
    """A pastel stained-glass window: irregular panes with a soft sheen each, leaded lines between
    them, and a circle of panes around the middle, as rose windows have."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform((0, 0), (width, height), (70, 2))
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for radius in (70, 130):
        centres = np.vstack([centres, np.stack([width / 2 + radius * np.cos(angles),
                                                height / 2 + radius * np.sin(angles)], 1)])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    distances = (xs[..., None] - centres[:, 0]) ** 2 + (ys[..., None] - centres[:, 1]) ** 2
    pane = distances.argmin(-1)
    colour = GLASS[rng.integers(len(GLASS), size=len(centres))]
    sheen = np.sin((xs * rng.uniform(0.02, 0.05, len(centres))[pane]
                    + ys * rng.uniform(0.02, 0.05, len(centres))[pane]))[..., None]
    canvas = colour[pane] * (0.88 + 0.12 * sheen)
    edges = (pane != np.roll(pane, 1, 0)) | (pane != np.roll(pane, 1, 1))
    lead = Image.fromarray((edges * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(5))
    canvas[np.asarray(lead) > 0] = LEAD
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for radius in (100, 160):
        pen.ellipse((width / 2 - radius, height / 2 - radius, width / 2 + radius, height / 2 + radius),
                    outline=tuple(int(c) for c in LEAD), width=5)
    return picture.filter(ImageFilter.SMOOTH)


def scikit_image_photo(name: str, folder: Path) -> Path:
    import skimage.data

    path = folder / f"{name}.png"
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
    return path


def starry_night(folder: Path) -> Path | None:
    """The painting from opencv-doc (downloaded with apt-get, checked against apt's index), or None
    with a note where the package cannot be had."""
    from artchain.plugins.gan.training_data import PackageCache, TrainingDataError, default_package_cache

    try:
        package = PackageCache(default_package_cache()).fetch("opencv-doc")
    except TrainingDataError as exc:
        print(f"starry-night: skipped ({exc})")
        return None
    path = folder / "starry-night.jpg"
    path.write_bytes(package.path(OPENCV_DOC_PAINTING).read_bytes())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", action="store_true", help="the *-before.jpg pictures (older code)")
    args = parser.parse_args()
    engine = Runtime().engine
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nst-gallery-") as scratch:
        folder = Path(scratch)
        glass = draw_stained_glass()
        glass.save(OUTPUT / "style-stained-glass.jpg", quality=85)
        glass_path = folder / "stained-glass.png"
        glass.save(glass_path)
        styles = {"stained-glass": glass_path, "starry-night": starry_night(folder)}
        for content_name in CONTENTS:
            content = scikit_image_photo(content_name, folder)
            for style_name, style in styles.items():
                if style is None:
                    continue
                for suffix, chain in BEFORE if args.before else AFTER:
                    name = f"{content_name}-{style_name}-{suffix}.jpg"
                    started = time.perf_counter()
                    try:
                        image = engine.run(chain.format(style=style), content)
                    except ArtchainError as exc:
                        print(f"{name}: skipped ({exc})")
                        continue
                    image.thumbnail((SIZE, SIZE))
                    image.save(OUTPUT / name, quality=82)
                    print(f"{name}: {time.perf_counter() - started:.1f} s, {image.size[0]}x{image.size[1]}")


if __name__ == "__main__":
    main()
