"""Runs an image-to-image function tile by tile, for inputs too large to process at once.

Model-agnostic and scale-aware: `forward` maps (N, C, h, w) to (N, C', h*scale, w*scale). Each
tile carries `overlap` pixels of context beyond the part of the image it owns, so that convolutions
near its edge see real neighbours instead of padding. Neighbouring tiles are cross-faded over a
band of `overlap` pixels centred on their shared border, with complementary linear ramps, so every
output pixel is a weighted sum whose weights add up to exactly 1: no seams, and no separate weight
buffer (the output is the only full-size allocation). All windows have the same size, so tiles can
be batched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the window [start, end) is fed to the model; the tile's output is
    used for [own_start, own_end), cross-faded over `fade_before`/`fade_after` pixels (input scale)
    at the beginning and end of that range."""

    start: int
    end: int
    own_start: int
    own_end: int
    fade_before: int
    fade_after: int


def plan_spans(length: int, tile: int, overlap: int) -> list[Span]:
    """Splits one axis of `length` pixels into windows of `tile` pixels (the whole axis when
    `tile` is 0 or not smaller than it) that overlap their neighbours by at least `overlap`."""
    if tile <= 0 or length <= tile:
        return [Span(0, length, 0, length, 0, 0)]
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    # Every tile owns at most `tile - 2*overlap` pixels, so it has `overlap` context on both sides.
    count = math.ceil(length / (tile - 2 * overlap))
    borders = [round(index * length / count) for index in range(count + 1)]
    shortest = min(b - a for a, b in zip(borders, borders[1:]))
    half_fade = min(overlap // 2, shortest // 2)
    spans = []
    for index in range(count):
        own_start, own_end = borders[index], borders[index + 1]
        # Windows at the image border slide inwards rather than shrink, keeping one size for all.
        start = min(max(own_start - overlap, 0), length - tile)
        fade_before = half_fade if index > 0 else 0
        fade_after = half_fade if index < count - 1 else 0
        spans.append(Span(start, start + tile, own_start - fade_before, own_end + fade_after,
                          2 * fade_before, 2 * fade_after))
    return spans


def blend_weights(span: Span, scale: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-output-pixel weights of one span: 1 inside, linear ramps over the fades, sampled at pixel
    centres so that the rising ramp of one tile and the falling ramp of the next sum to 1."""
    weights = torch.ones((span.own_end - span.own_start) * scale, dtype=dtype, device=device)
    if span.fade_before:
        width = span.fade_before * scale
        weights[:width] = (torch.arange(width, dtype=dtype, device=device) + 0.5) / width
    if span.fade_after:
        width = span.fade_after * scale
        weights[-width:] = 1 - (torch.arange(width, dtype=dtype, device=device) + 0.5) / width
    return weights


def tiled_apply(batch: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], *, scale: int,
                tile: int, overlap: int, tiles_per_call: int = 1,
                progress: Callable[[float], None] | None = None,
                check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """`forward(batch)` computed tile by tile; equal to it up to the model's sensitivity to context
    further than `overlap` pixels away. `tiles_per_call` tiles are stacked into one forward call."""
    _, _, height, width = batch.shape
    rows, columns = plan_spans(height, tile, overlap), plan_spans(width, tile, overlap)
    tiles = [(row, column) for row in rows for column in columns]
    output = None
    done = 0
    for first in range(0, len(tiles), tiles_per_call):
        if check_cancel:
            check_cancel()
        group = tiles[first:first + tiles_per_call]
        windows = torch.cat([batch[..., row.start:row.end, column.start:column.end]
                             for row, column in group])
        results = forward(windows)
        expected = (windows.shape[-2] * scale, windows.shape[-1] * scale)
        if tuple(results.shape[-2:]) != expected:
            raise ValueError(f"forward returned {tuple(results.shape[-2:])} for a "
                             f"{tuple(windows.shape[-2:])} tile; expected x{scale}: {expected}")
        if output is None:
            output = torch.zeros((batch.shape[0], results.shape[1], height * scale, width * scale),
                                 dtype=batch.dtype, device=batch.device)
        for (row, column), result in zip(group, results.split(batch.shape[0])):
            piece = result[..., (row.own_start - row.start) * scale:(row.own_end - row.start) * scale,
                           (column.own_start - column.start) * scale:(column.own_end - column.start) * scale]
            weight = (blend_weights(row, scale, output.dtype, output.device)[:, None]
                      * blend_weights(column, scale, output.dtype, output.device)[None, :])
            output[..., row.own_start * scale:row.own_end * scale,
                   column.own_start * scale:column.own_end * scale].add_(piece.to(output.dtype) * weight)
        done += len(group)
        if progress:
            progress(done / len(tiles))
    return output
