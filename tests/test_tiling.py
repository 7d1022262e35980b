"""core/tiling.py: tiled results must equal the untiled ones for any function whose reach is within
the overlap, whatever the scale, sizes, batch and grouping of tiles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from artchain.core.tiling import blend_weights, plan_spans, tiled_apply


def nearest_x3(batch: torch.Tensor) -> torch.Tensor:
    return F.interpolate(batch, scale_factor=3, mode="nearest")


def local_net(reach_layers: int, scale: int):
    """A random conv net whose output pixel depends on inputs up to `reach_layers` pixels away."""
    generator = torch.Generator().manual_seed(0)
    kernels = [torch.randn(3, 3, 3, 3, generator=generator) * 0.3 for _ in range(reach_layers)]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        for kernel in kernels:
            batch = torch.tanh(F.conv2d(batch, kernel, padding=1))
        return F.interpolate(batch, scale_factor=scale, mode="bilinear", align_corners=False)

    return forward


@pytest.mark.parametrize("length,tile,overlap,scale", [
    (100, 32, 8, 1), (100, 32, 8, 4), (257, 64, 16, 2), (33, 32, 4, 3), (50, 11, 5, 2), (64, 64, 8, 4)])
def test_blend_weights_sum_to_one_everywhere(length, tile, overlap, scale):
    coverage = torch.zeros(length * scale, dtype=torch.float64)
    for span in plan_spans(length, tile, overlap):
        assert span.end - span.start == min(tile, length)
        assert 0 <= span.start <= span.own_start and span.own_end <= span.end <= length
        coverage[span.own_start * scale:span.own_end * scale] += blend_weights(
            span, scale, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(coverage, torch.ones_like(coverage), rtol=0, atol=1e-12)


def test_each_tile_keeps_half_the_overlap_as_context_where_it_is_used():
    overlap = 16
    for span in plan_spans(300, 64, overlap):
        if span.own_start > 0:
            assert span.own_start - span.start >= overlap // 2
        if span.own_end < 300:
            assert span.end - span.own_end >= overlap // 2


@pytest.mark.parametrize("tiles_per_call", [1, 3])
def test_tiled_equals_whole_for_a_pointwise_upscale(tiles_per_call):
    batch = torch.rand(2, 3, 37, 53)
    tiled = tiled_apply(batch, nearest_x3, scale=3, tile=16, overlap=4, tiles_per_call=tiles_per_call)
    torch.testing.assert_close(tiled, nearest_x3(batch), rtol=0, atol=1e-6)


def test_tiled_equals_whole_when_the_net_reaches_less_than_half_the_overlap():
    net = local_net(reach_layers=3, scale=2)
    batch = torch.rand(1, 3, 70, 45)
    tiled = tiled_apply(batch, net, scale=2, tile=32, overlap=12)
    # Bilinear x2 looks one low-res pixel further, so the reach is 4 < overlap/2 = 6.
    torch.testing.assert_close(tiled, net(batch), rtol=0, atol=1e-5)


def test_without_overlap_the_seams_show():
    net = local_net(reach_layers=3, scale=2)
    batch = torch.rand(1, 3, 70, 45)
    tiled = tiled_apply(batch, net, scale=2, tile=32, overlap=0)
    assert (tiled - net(batch)).abs().max() > 0.05


def test_no_tiling_calls_forward_once_on_the_whole_image():
    calls = []

    def forward(batch):
        calls.append(tuple(batch.shape))
        return nearest_x3(batch)

    tiled_apply(torch.rand(1, 3, 20, 30), forward, scale=3, tile=0, overlap=8)
    tiled_apply(torch.rand(1, 3, 20, 30), forward, scale=3, tile=64, overlap=8)
    assert calls == [(1, 3, 20, 30), (1, 3, 20, 30)]


def test_progress_reaches_one_and_cancel_is_checked_per_call():
    fractions, checks = [], []
    tiled_apply(torch.rand(1, 3, 40, 40), nearest_x3, scale=3, tile=16, overlap=4, tiles_per_call=2,
                progress=fractions.append, check_cancel=lambda: checks.append(1))
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert len(checks) == len(fractions)


def test_tile_not_larger_than_twice_the_overlap_is_refused():
    with pytest.raises(ValueError, match="twice the overlap"):
        tiled_apply(torch.rand(1, 3, 40, 40), nearest_x3, scale=3, tile=16, overlap=8)


def test_a_forward_of_the_wrong_scale_is_reported():
    with pytest.raises(ValueError, match="expected x2"):
        tiled_apply(torch.rand(1, 3, 40, 40), nearest_x3, scale=2, tile=16, overlap=4)
