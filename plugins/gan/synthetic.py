"""Training data for the demo weights, built offline and documented as synthetic.

Real cubist, renaissance or expressionist paintings and neon scenes cannot be had offline, so each
target domain is a deterministic image transform that evokes the style:

* cubism: SLIC facets, each a flat ochre/grey plane with a linear shading ramp, dark facet contours;
* renaissance: sfumato softening, warm varnish tint and umber shadows, vignette, craquelure cracks;
* expressionism: boosted saturation, posterised colour, directional brush-stroke texture, dark outlines;
* neon: a dark grayscale scene whose edges glow in saturated colour; the hue follows the edge
  direction, so it can be inferred from a grayscale input (pix2pix-neon sees grayscale only).

The photos are the colour photographs that scikit-image ships in `skimage.data`. CycleGAN needs
unpaired domains, so the painting tiles are cut at other random positions and scales than the photo
tiles; pix2pix needs pairs, so each neon target is the transform of its own source tile.

    python -m artchain.plugins.gan.synthetic OUT_DIR [--tiles-per-photo N] [--tile 160]

writes OUT_DIR/photos, OUT_DIR/{cubism,renaissance,expressionism} and OUT_DIR/neon/{source,target}.
The committed demo weights were then trained one at a time (OMP_NUM_THREADS=1: on a busy 2-core CPU a
second torch thread mostly waits) with, for STYLE in cubism renaissance expressionism:

    artchain train cyclegan --photos OUT_DIR/photos --paintings OUT_DIR/STYLE --style STYLE --width 8 \\
        --crop 96 --cycle-weight 5 --iterations 700 --export weights/cyclegan-STYLE.safetensors
    artchain train pix2pix --source OUT_DIR/neon/source --target OUT_DIR/neon/target --name neon \\
        --width 16 --crop 256 --batch-size 2 --iterations 400 --export weights/pix2pix-neon.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

PHOTO_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "motorcycle_right.png")
LUMA = np.array([0.299, 0.587, 0.114])


def load_photos() -> dict[str, np.ndarray]:
    """The colour photographs bundled with scikit-image, as float RGB in [0, 1]."""
    from skimage import data, io
    from skimage.util import img_as_float

    return {Path(name).stem: img_as_float(io.imread(Path(data.data_dir) / name))[..., :3]
            for name in PHOTO_FILES}


def _per_segment_mean(values: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel(), minlength=count).astype(float)
    return np.bincount(labels.ravel(), weights=values.ravel(), minlength=count) / np.maximum(sizes, 1)


def cubism(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from skimage.segmentation import find_boundaries, slic

    height, width = image.shape[:2]
    labels = slic(image, n_segments=max(12, height * width // 700), compactness=30, start_label=0)
    count = labels.max() + 1
    colour = np.stack([_per_segment_mean(image[..., c], labels, count) for c in range(3)], axis=-1)
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    centre_r, centre_c = _per_segment_mean(rows, labels, count), _per_segment_mean(cols, labels, count)
    radius = np.sqrt(np.bincount(labels.ravel(), minlength=count) + 1.0)
    angle = rng.uniform(0, 2 * np.pi, count)
    ramp = ((cols - centre_c[labels]) * np.cos(angle[labels])
            + (rows - centre_r[labels]) * np.sin(angle[labels])) / radius[labels]
    luma = colour @ LUMA
    muted = 0.45 * colour + 0.55 * luma[:, None] * np.array([1.08, 0.92, 0.68])  # ochre and grey
    out = muted[labels] * (1.0 + 0.45 * np.clip(ramp, -1.0, 1.0))[..., None]
    out[find_boundaries(labels, mode="thick")] *= 0.18
    return np.clip(out, 0, 1)


def renaissance(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial import cKDTree
    from skimage.filters import gaussian
    from skimage.segmentation import find_boundaries

    height, width = image.shape[:2]
    soft = 0.45 * image + 0.55 * gaussian(image, sigma=1.6, channel_axis=-1)
    luma = soft @ LUMA
    glazed = soft ** 1.15 * np.array([1.1, 0.93, 0.62]) + (1 - luma[..., None]) ** 3 * np.array([0.1, 0.05, 0.0])
    rows, cols = np.mgrid[0:height, 0:width]
    distance = np.hypot((rows - height / 2) / height, (cols - width / 2) / width) * 2
    glazed *= (1 - 0.5 * distance ** 2)[..., None]
    cells = rng.uniform(0, 1, (max(8, height * width // 120), 2)) * (height, width)
    nearest = cKDTree(cells).query(np.stack([rows.ravel(), cols.ravel()], axis=1))[1]
    cracks = find_boundaries(nearest.reshape(height, width), mode="inner")
    glazed[cracks] *= 0.72
    return np.clip(glazed, 0, 1)


def expressionism(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import binary_dilation, gaussian_filter
    from skimage.color import hsv2rgb, rgb2hsv
    from skimage.filters import sobel

    hsv = rgb2hsv(gaussian_filter(image, sigma=(1, 1, 0)))
    hsv[..., 1] = np.clip(hsv[..., 1] * 2.0 + 0.25, 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * 1.15 + 0.05, 0, 1)
    posterised = np.round(hsv2rgb(hsv) * 3) / 3
    noise = rng.normal(size=image.shape[:2])
    strokes = gaussian_filter(noise, sigma=(0.8, 5)) + gaussian_filter(noise, sigma=(5, 0.8))
    out = posterised * (1 + 0.18 * strokes / (strokes.std() + 1e-6))[..., None]
    outline = binary_dilation(sobel(posterised @ LUMA) > 0.15)
    out[outline] = np.array([0.06, 0.05, 0.16])
    return np.clip(out, 0, 1)


def neon(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import binary_dilation
    from skimage.color import hsv2rgb
    from skimage.feature import canny
    from skimage.filters import gaussian, sobel_h, sobel_v

    gray = image @ LUMA
    smooth = gaussian(gray, sigma=1.5)
    hue = (np.arctan2(sobel_v(smooth), sobel_h(smooth)) / np.pi) % 1.0  # direction, sign-free
    colour = hsv2rgb(np.stack([hue, np.ones_like(hue), np.ones_like(hue)], axis=-1))
    core = binary_dilation(canny(gray, sigma=1.5)).astype(float)[..., None]
    lit = core * colour
    glow = 2.5 * gaussian(lit, sigma=2.5, channel_axis=-1) + 2.0 * gaussian(lit, sigma=7, channel_axis=-1)
    out = 0.12 * gray[..., None] + glow + core * (0.55 * colour + 0.45)
    return np.clip(out, 0, 1)


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "cubism": cubism, "renaissance": renaissance, "expressionism": expressionism, "neon": neon,
}


def random_tiles(photo: np.ndarray, count: int, tile: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Square tiles at random positions, each from the photo rescaled to a random short side."""
    from skimage.transform import rescale

    tiles = []
    for _ in range(count):
        short_side = rng.uniform(1.3, 3.0) * tile
        scaled = rescale(photo, short_side / min(photo.shape[:2]), channel_axis=-1, anti_aliasing=True)
        top = rng.integers(0, scaled.shape[0] - tile + 1)
        left = rng.integers(0, scaled.shape[1] - tile + 1)
        tiles.append(scaled[top:top + tile, left:left + tile])
    return tiles


def _save(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def prepare(out_dir: Path, tiles_per_photo: int = 24, tile: int = 160, neon_tile: int = 272,
            seed: int = 0) -> None:
    """Writes the photo domain, the three unpaired painting domains and the paired neon set."""
    rng = np.random.default_rng(seed)
    for name, photo in load_photos().items():
        for index, image in enumerate(random_tiles(photo, tiles_per_photo, tile, rng)):
            _save(image, out_dir / "photos" / f"{name}-{index:03d}.png")
        for style in ("cubism", "renaissance", "expressionism"):
            for index, image in enumerate(random_tiles(photo, tiles_per_photo, tile, rng)):
                _save(STYLES[style](image, rng), out_dir / style / f"{name}-{index:03d}.png")
        for index, image in enumerate(random_tiles(photo, tiles_per_photo // 2, neon_tile, rng)):
            _save(image, out_dir / "neon" / "source" / f"{name}-{index:03d}.png")
            _save(neon(image, rng), out_dir / "neon" / "target" / f"{name}-{index:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tiles-per-photo", type=int, default=24)
    parser.add_argument("--tile", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prepare(args.out_dir, args.tiles_per_photo, args.tile, seed=args.seed)


if __name__ == "__main__":
    main()
