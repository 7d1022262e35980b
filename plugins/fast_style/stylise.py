"""The fast-style step's work: style vectors from the style images, the transformer on the content
(tiled where it is large, with the whole image's norm statistics), and the precision it runs in."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from artchain.core.imageio import Picture, to_tensor
from artchain.core.imageops import crop_to, pad_to_multiple, preserve_colour, resize
from artchain.core.precision import resolve_precision
from artchain.core.processor import StepContext
from artchain.core.tiling import TileJob, plan_grid, tiled_apply

from . import MAX_SIDE, MIN_SIDE, WEIGHT_ID
from .networks import SIZE_MULTIPLE, STYLE_SIZE, NormStatistics, StyleNetworks, build_networks

# Largest window the transformer runs on at once; larger images run in tiles. The whole-frame
# pass needs about 270 MB per megapixel in float32 (measured), so this keeps it near 650 MB.
MAX_WINDOW_PIXELS = 1536 * 1536
# The transformer's receptive field reaches about 60 px (9x9 and ten 3x3 convolutions at a
# quarter of the size); tiles carry that much context on each side.
TILE_OVERLAP = 64
# Tiles are normalised with the statistics of the whole image, measured on a copy as large as one
# window (from a copy at half the size, a 1536 px photo comes out at 33 dB PSNR of the untiled one).
STATISTICS_SIDE = math.isqrt(MAX_WINDOW_PIXELS)


@dataclass
class FastStyleModel:
    networks: StyleNetworks
    dtype: torch.dtype


def style_batch(pictures: tuple[Picture, ...], device: torch.device) -> torch.Tensor:
    """The style images as the predictor saw them in training: centre square, 256x256."""
    return torch.cat([centre_square(to_tensor(picture.rgb).to(device)) for picture in pictures])


def centre_square(batch: torch.Tensor) -> torch.Tensor:
    height, width = batch.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return resize(batch[..., top:top + side, left:left + side], STYLE_SIZE, STYLE_SIZE)


def working_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) scaled so the long side is `size` (0: as it is), at most MAX_SIDE, at least MIN_SIDE."""
    long_side = min(size or max(height, width), MAX_SIDE)
    scale = long_side / max(height, width)
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def stylise(model: FastStyleModel, content: torch.Tensor, style: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The transformer over `content` (B, 3, H, W): whole, or when large in tiles that share the
    whole image's normalisation statistics, so they join without seams or shifts of tone."""
    transformer = model.networks.transformer

    def prepared(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(model.dtype).contiguous(memory_format=torch.channels_last)

    padded, size = pad_to_multiple(content, SIZE_MULTIPLE)
    height, width = padded.shape[-2:]
    grid = plan_grid(height, width, max_window_pixels=MAX_WINDOW_PIXELS, overlap=TILE_OVERLAP,
                     multiple_of=SIZE_MULTIPLE, minimum_side=MIN_SIDE)
    if grid.count == 1:
        return crop_to(transformer(prepared(padded), style), size).float()
    statistics = NormStatistics()
    scale = STATISTICS_SIDE / max(height, width)
    small = resize(padded, *(max(MIN_SIDE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)
                             for side in (height, width)))
    transformer(prepared(small), style, statistics)
    ctx.cancel.check()

    def tile(job: TileJob) -> torch.Tensor:
        result = transformer(prepared(job.window), style, NormStatistics(statistics.values))
        return result[..., job.rows, job.columns].float()

    output = torch.empty_like(padded)
    tiled_apply(padded, tile, scale=1, grid=grid, output=output, progress=ctx.progress,
                check_cancel=ctx.cancel.check)
    return crop_to(output, size)


def load_model(store, device: torch.device, precision: str) -> FastStyleModel:
    # Measured on a 2-core AVX512-BF16 CPU (benchmarks/fast_style.py): bf16 is 1.5-2x faster than
    # float32 at 46-48 dB PSNR against it; the norms' statistics stay float32 (NormStatistics).
    dtype = resolve_precision(precision, device, frozenset({torch.bfloat16, torch.float16}), who="fast-style")
    networks = build_networks(store.load(WEIGHT_ID), device)
    # channels_last: with 3 to 32 channels oneDNN's convolutions run faster in it (the whole
    # transformer up to 1.4x, measured in both dtypes). The predictor runs once per style at 256x256 and stays float32.
    networks.transformer.set_precision(dtype, torch.channels_last)
    return FastStyleModel(networks, dtype)


def run_step(batch: torch.Tensor, model: FastStyleModel, params: dict[str, Any], ctx: StepContext) -> torch.Tensor:
    predictor = model.networks.predictor
    styles = style_batch(params["style"], batch.device)
    ctx.cancel.check()
    style = predictor(styles).mean(0, keepdim=True).expand(batch.shape[0], -1)
    height, width = batch.shape[-2:]
    content = resize(batch, *working_size(height, width, params["size"]))
    strength = params["strength"]
    if strength < 1:
        # Magenta's interpolation towards the content's own style vector.
        style = strength * style + (1 - strength) * predictor(centre_square(content))
    ctx.cancel.check()
    result = resize(stylise(model, content, style, ctx), height, width)
    if params["preserve_colour"]:
        result = preserve_colour(result, batch)
    return result
