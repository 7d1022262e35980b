"""How esrgan runs a picture: the tile plan within a memory budget (trunk on large tiles, the
upsampling tail on sub-tiles), padding to the model's needs, and the uint8 assembly of the result."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from artchain.core.errors import ImageError
from artchain.core.tiling import Grid, TileJob, TilingError, fixed_grid, plan_grid, tiled_apply

from . import DEFAULT_MEMORY_MB, DEFAULT_OVERLAP, GPU_MEMORY_SHARE, MB
from .model import LoadedModel, to_output

log = logging.getLogger(__name__)

# The upsampling tail is memory traffic at x4 resolution: in sub-tiles of about this many feature
# pixels (800x800 px of output) it ran 1.34x faster than in one piece on a 768x512 photo, in bf16
# and in fp32, and as fast on a 384x384 one, for 3 % more work at the sub-tiles' borders
# (`python benchmarks/esrgan.py --parts`).
TAIL_WINDOW_PIXELS = 200 * 200


def working_memory(megabytes: int, device: torch.device) -> int:
    """Bytes the step may take for its result and the tiles' activations: `megabytes` when given,
    else the CPU default or GPU_MEMORY_SHARE of what the GPU has free now."""
    if megabytes:
        return megabytes * MB
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_SHARE)
    return DEFAULT_MEMORY_MB * MB


@dataclass(frozen=True)
class TilePlan:
    """How an image runs: the trunk (or whole-network) grid, and the largest tail sub-tile."""

    grid: Grid
    tail_window_pixels: int


def plan_tiles(model: LoadedModel, height: int, width: int, *, memory_bytes: int, tile: int = 0,
               overlap: int = DEFAULT_OVERLAP, output_dtype: torch.dtype = torch.uint8) -> TilePlan:
    """The tiles for a (padded) height x width input within `memory_bytes` for the whole x4 result
    and the activations, or the user's fixed `tile`; raises ImageError with the memory the smallest
    tiles would need."""
    costs = model.costs
    whole_result = height * width * model.scale ** 2 * 3 * output_dtype.itemsize
    activation_bytes = memory_bytes - whole_result
    # A tile's kept result, plus its float copy while it is clamped and converted.
    result = model.scale ** 2 * 3 * (output_dtype.itemsize + 4)
    held = costs.features + result  # per window pixel while the tail runs on the trunk's features
    per_window = max(costs.window, 2 * held) if model.stages else costs.window + result
    try:
        if tile:
            grid = _fixed_grid(height, width, tile, overlap, model.multiple_of)
        else:
            grid = plan_grid(height, width, max_window_pixels=int(activation_bytes / per_window), overlap=overlap,
                             multiple_of=model.multiple_of, minimum_side=model.minimum_side, square=model.square)
    except TilingError as exc:
        needed = whole_result + exc.window[0] * exc.window[1] * per_window
        raise ImageError(f"esrgan: a {width}x{height} image needs at least {needed / MB:.0f} MB of memory for "
                         f"its result and its smallest tiles ({exc.window[1]}x{exc.window[0]} px at overlap "
                         f"{overlap}); memory is {memory_bytes / MB:.0f} MB") from None
    if not model.stages:
        return TilePlan(grid, 0)
    window_pixels = grid.window[0] * grid.window[1]
    tail_pixels = int((activation_bytes - window_pixels * held) / (costs.tail + result))
    smallest_tail = (2 * model.stages.tail_context + 1) ** 2
    if tail_pixels < smallest_tail:
        needed = whole_result + window_pixels * held + smallest_tail * (costs.tail + result)
        raise ImageError(f"esrgan: tiles of {grid.window[1]}x{grid.window[0]} px need at least "
                         f"{needed / MB:.0f} MB of memory with the result; memory is {memory_bytes / MB:.0f} MB")
    return TilePlan(grid, min(tail_pixels, TAIL_WINDOW_PIXELS))


def _fixed_grid(height: int, width: int, tile: int, overlap: int, multiple_of: int) -> Grid:
    try:
        return fixed_grid(height, width, tile=tile, overlap=overlap, multiple_of=multiple_of)
    except ValueError as exc:
        raise ImageError(f"esrgan: {exc}") from None


def upscale(batch: torch.Tensor, model: LoadedModel, *, memory_bytes: int = DEFAULT_MEMORY_MB * MB, tile: int = 0,
            overlap: int = DEFAULT_OVERLAP, output_dtype: torch.dtype = torch.float32,
            progress: Callable[[float], None] | None = None,
            check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Super-resolves `batch` (B, 3, H, W in [0, 1]) to (B, 3, H*scale, W*scale): float32 in [0, 1],
    or uint8 in 0..255 (channels_last, so it converts to an image without a copy)."""
    height, width = batch.shape[-2:]
    padded = _pad_to_requirements(batch, model)
    plan = plan_tiles(model, *padded.shape[-2:], memory_bytes=memory_bytes, tile=tile, overlap=overlap,
                      output_dtype=output_dtype)
    grid = plan.grid
    log.info("esrgan: %dx%d in %d tile(s) of %dx%d px, computing %.2fx the pixels it keeps", width, height,
             grid.count, grid.window[1], grid.window[0], grid.overhead)
    scale = model.scale
    output = torch.empty((batch.shape[0], 3, padded.shape[-2] * scale, padded.shape[-1] * scale),
                         dtype=output_dtype, device=batch.device, memory_format=torch.channels_last)

    def whole_network(job: TileJob) -> torch.Tensor:
        result = model.upscaled(model.prepare(job.window), output_dtype)
        return result[..., _scaled(job.rows, scale), _scaled(job.columns, scale)]

    def trunk_then_tail(job: TileJob) -> torch.Tensor:
        stages = model.stages
        features = stages.trunk(model.prepare(job.window), job.report, check_cancel)
        # The tail runs on the kept part and the context it needs, in sub-tiles within the budget.
        rows = _with_context(job.rows, stages.tail_context, features.shape[-2])
        columns = _with_context(job.columns, stages.tail_context, features.shape[-1])
        piece = tail_in_sub_tiles(model, features[..., rows, columns], plan.tail_window_pixels, output_dtype)
        keep_rows = slice(job.rows.start - rows.start, job.rows.stop - rows.start)
        keep_columns = slice(job.columns.start - columns.start, job.columns.stop - columns.start)
        return piece[..., _scaled(keep_rows, scale), _scaled(keep_columns, scale)]

    with torch.inference_mode():
        tiled_apply(padded, trunk_then_tail if model.stages else whole_network, scale=scale, grid=grid,
                    output=output, progress=progress, check_cancel=check_cancel)
    return output[..., :height * scale, :width * scale]


def tail_in_sub_tiles(model: LoadedModel, features: torch.Tensor, window_pixels: int,
                      output_dtype: torch.dtype) -> torch.Tensor:
    """The tail's result on trunk `features` (B, C, H, W), run in sub-tiles of at most
    `window_pixels` with the context they need, each converted to `output_dtype` as it lands."""
    stages, scale = model.stages, model.scale
    piece = torch.empty((features.shape[0], 3, features.shape[-2] * scale, features.shape[-1] * scale),
                        dtype=output_dtype, device=features.device)

    def tail(sub: TileJob) -> torch.Tensor:
        result = stages.tail(sub.window)
        return to_output(result[..., _scaled(sub.rows, scale), _scaled(sub.columns, scale)], output_dtype)

    grid = plan_grid(*features.shape[-2:], max_window_pixels=window_pixels, overlap=stages.tail_context)
    return tiled_apply(features, tail, scale=scale, grid=grid, output=piece)


def _scaled(span: slice, scale: int) -> slice:
    return slice(span.start * scale, span.stop * scale)


def _with_context(span: slice, context: int, length: int) -> slice:
    return slice(max(span.start - context, 0), min(span.stop + context, length))


def _pad_to_requirements(batch: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    """Pads the bottom/right edges so the model accepts the size (e.g. a 1x1 image for ESRGAN's
    minimum of 2, or SwinIR's window multiple); the caller crops the padding's output away."""
    height, width = batch.shape[-2:]
    target_h, target_w = (max(side, model.minimum_side) for side in (height, width))
    if model.square:
        target_h = target_w = max(target_h, target_w)
    target_h, target_w = (-(-side // model.multiple_of) * model.multiple_of for side in (target_h, target_w))
    if (target_h, target_w) == (height, width):
        return batch
    # Replicate works for any amount of padding (reflect needs a pad smaller than the side).
    return F.pad(batch, (0, target_w - width, 0, target_h - height), mode="replicate")
