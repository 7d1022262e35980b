"""Runs an image-to-image function tile by tile, only as far as a memory budget requires.

Model-agnostic and scale-aware. A grid splits each axis into windows of one size that overlap their
neighbours; every output pixel is computed by exactly one window, in which it has at least
`overlap` pixels of real context on every side that has a neighbour (the seam between two tiles
lies in the middle of their shared band). `plan_grid` picks the grid that computes the fewest
pixels under a cap on the window area (from the budget and the bytes a network needs per pixel,
which `bytes_per_pixel` measures); one window covers the whole image when it fits.

The results go straight into a caller's output tensor of any dtype (e.g. uint8 for a large
upscale), so the output is the only full-size allocation.
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import sys
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TilingError(ValueError):
    """No grid fits: `window` is the smallest window (height, width) this image could use."""

    def __init__(self, message: str, window: tuple[int, int]) -> None:
        super().__init__(message)
        self.window = window


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the window [start, end) is fed to the function, and its result is
    kept for [keep_start, keep_end)."""

    start: int
    end: int
    keep_start: int
    keep_end: int

    @property
    def keep(self) -> slice:
        """The kept range relative to the window."""
        return slice(self.keep_start - self.start, self.keep_end - self.start)


@dataclass(frozen=True)
class Grid:
    rows: tuple[Span, ...]
    columns: tuple[Span, ...]

    @property
    def window(self) -> tuple[int, int]:
        return self.rows[0].end - self.rows[0].start, self.columns[0].end - self.columns[0].start

    @property
    def computed_pixels(self) -> int:
        return len(self.rows) * len(self.columns) * self.window[0] * self.window[1]

    @property
    def kept_pixels(self) -> int:
        return self.rows[-1].keep_end * self.columns[-1].keep_end

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.columns)

    @property
    def overhead(self) -> float:
        """Pixels computed per pixel kept: the work tiling adds (1.0 for one window)."""
        return self.computed_pixels / self.kept_pixels


def window_length(length: int, count: int, overlap: int, multiple_of: int = 1) -> int:
    """The window size that splits `length` into `count` windows sharing >= 2*overlap pixels with
    each neighbour, window starts on multiples of `multiple_of` (the margin pays for rounding them)."""
    if count == 1:
        return length
    margin = 2 * overlap + multiple_of - 1
    needed = -(-(length + margin * (count - 1)) // count)
    return min(-(-needed // multiple_of) * multiple_of, length)


def plan_spans(length: int, count: int, overlap: int, multiple_of: int = 1) -> tuple[Span, ...]:
    """`count` equal windows spread evenly over `length`; each seam lies in the middle of the band
    two neighbours share, so both keep >= `overlap` pixels of context there."""
    window = window_length(length, count, overlap, multiple_of)
    if count == 1:
        return (Span(0, length, 0, length),)
    if length - window < (count - 1) * multiple_of:
        raise ValueError(f"{count} windows of {window} px cannot tile {length} px with overlap {overlap}")
    starts = [index * (length - window) // (count - 1) // multiple_of * multiple_of for index in range(count)]
    seams = [(start + window + after) // 2 for start, after in zip(starts, starts[1:])]
    keeps = [0, *seams, length]
    return tuple(Span(start, start + window, keep_start, keep_end)
                 for start, keep_start, keep_end in zip(starts, keeps, keeps[1:]))


def _counts(length: int, overlap: int, multiple_of: int, minimum: int):
    """(count, window) for every useful count along an axis, windows shrinking."""
    count = 1
    while True:
        window = window_length(length, count, overlap, multiple_of)
        if window < minimum or (count > 1 and length - window < (count - 1) * multiple_of):
            return
        yield count, window
        if window <= 2 * overlap + multiple_of:
            return
        count += 1


def plan_grid(height: int, width: int, *, max_window_pixels: int, overlap: int, multiple_of: int = 1,
              minimum_side: int = 1, square: bool = False) -> Grid:
    """The grid that computes the fewest pixels with windows of at most `max_window_pixels`
    (fewer tiles on a tie); the whole image when it fits. `square` asks for square windows
    (the image must be square then). Raises TilingError when even the smallest window is too big."""
    rows = list(_counts(height, overlap, multiple_of, minimum_side))
    columns = list(_counts(width, overlap, multiple_of, minimum_side))
    # Row windows shrink as the count grows, so the first count whose window fits is the cheapest.
    shrinking_rows = [-window for _, window in rows]
    best = None
    for column_count, column_window in columns:
        if square:
            index = column_count - 1
        else:
            index = bisect.bisect_left(shrinking_rows, -(max_window_pixels // column_window))
        if index >= len(rows) or rows[index][1] * column_window > max_window_pixels:
            continue
        row_count, row_window = rows[index]
        cost = (row_count * row_window * column_count * column_window, row_count * column_count)
        if best is None or cost < best[0]:
            best = (cost, row_count, column_count)
    if best is None:
        smallest = (rows[-1][1], columns[-1][1])
        raise TilingError(f"even the smallest tiles ({smallest[1]}x{smallest[0]} px) need more than "
                          f"{max_window_pixels} px per window", smallest)
    _, row_count, column_count = best
    return Grid(plan_spans(height, row_count, overlap, multiple_of),
                plan_spans(width, column_count, overlap, multiple_of))


def fixed_grid(height: int, width: int, *, tile: int, overlap: int, multiple_of: int = 1) -> Grid:
    """The fewest windows of at most `tile` x `tile` px (a user's explicit tile size)."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")

    def spans(length: int) -> tuple[Span, ...]:
        for count, window in _counts(length, overlap, multiple_of, 1):
            if window <= tile:
                return plan_spans(length, count, overlap, multiple_of)
        raise ValueError(f"a tile of {tile} px cannot hold twice the overlap ({overlap}) and the "
                         f"size multiple {multiple_of}")

    return Grid(spans(height), spans(width))


@dataclass(frozen=True)
class TileJob:
    """What `tiled_apply` hands its function for one tile."""

    window: torch.Tensor  # (N, C, h, w): the input window, context included
    rows: slice  # the kept part of the window, in input pixels
    columns: slice
    report: Callable[[float], None]  # progress within this tile, 0..1


def tiled_apply(batch: torch.Tensor, forward: Callable[[TileJob], torch.Tensor], *, scale: int, grid: Grid,
                output: torch.Tensor, progress: Callable[[float], None] | None = None,
                check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Fills `output` (N, C', H*scale, W*scale) tile by tile: `forward(job)` returns the result of
    the kept part of `job.window` at `scale`, in `output`'s dtype. Cancellation is checked before
    every tile; progress is reported after every tile and whenever a tile reports."""
    tiles = [(row, column) for row in grid.rows for column in grid.columns]
    for index, (row, column) in enumerate(tiles):
        if check_cancel:
            check_cancel()

        def report(fraction: float, index: int = index) -> None:
            if progress:
                progress((index + min(max(fraction, 0.0), 1.0)) / len(tiles))

        window = batch[..., row.start:row.end, column.start:column.end]
        result = forward(TileJob(window, row.keep, column.keep, report))
        expected = ((row.keep_end - row.keep_start) * scale, (column.keep_end - column.keep_start) * scale)
        if tuple(result.shape[-2:]) != expected:
            raise ValueError(f"forward returned {tuple(result.shape[-2:])} for a kept part of "
                             f"{row.keep_end - row.keep_start}x{column.keep_end - column.keep_start}; "
                             f"expected x{scale}: {expected}")
        if result.dtype != output.dtype:
            raise ValueError(f"forward returned {result.dtype}, the output is {output.dtype}")
        output[..., row.keep_start * scale:row.keep_end * scale,
               column.keep_start * scale:column.keep_end * scale] = result
        del result
        if len(tiles) > 1:
            release_freed_memory()
        report(1.0)
    return output


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc has it; musl does not


def release_freed_memory() -> None:
    """Hands the memory freed tensors left inside the C allocator's heap back to the system.

    glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its heap, so without this
    the resident memory of a tiled run creeps up by what each tile fragments, and a model load
    keeps the memory of its conversions; the budget then no longer bounds the process. A no-op
    where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensors created under it that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[int, list[int]] = {}  # storage address -> [live tensors using it, bytes]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {tensor.untyped_storage().data_ptr() for tensor in tree_flatten((args, kwargs))[0]
                  if isinstance(tensor, torch.Tensor)}
        for tensor in tree_flatten(result)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address in self.owners:
                self.owners[address][0] += 1  # a view, or an in-place result: nothing new
            elif address in inputs:
                continue  # a view of memory from outside (the input, a weight)
            else:
                self.owners[address] = [1, storage.nbytes()]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, address)
        return result

    def _release(self, address: int) -> None:
        owner = self.owners[address]
        owner[0] -= 1
        if owner[0] == 0:
            del self.owners[address]
            self.current -= owner[1]


def peak_tensor_bytes(function: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> int:
    """The most bytes of tensors `function(batch)` holds at once while it runs (its result
    included; `batch` and the weights not). Memory that libraries allocate for themselves, such
    as oneDNN's scratch buffers, is not seen."""
    counter = _LiveTensorBytes()
    with counter:
        result = function(batch)
    del result
    return counter.peak


def bytes_per_pixel(function: Callable[[torch.Tensor], torch.Tensor], small: torch.Tensor,
                    large: torch.Tensor) -> float:
    """The bytes `function` needs per input pixel, from its peaks on two input sizes (the slope,
    so that fixed costs of a tiny input do not count)."""
    pixels = [batch.shape[-2] * batch.shape[-1] for batch in (small, large)]
    if pixels[1] <= pixels[0]:
        raise ValueError("the large sample must have more pixels than the small one")
    peaks = [peak_tensor_bytes(function, batch) for batch in (small, large)]
    return max(peaks[1] - peaks[0], 0) / (pixels[1] - pixels[0])

