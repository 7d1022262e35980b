"""core/tiling.py: grids compute as few pixels as a window cap allows, every output pixel comes from
one window with the promised context, tiled results equal the untiled ones for any function whose
reach is within the overlap, and the memory probe counts what a function holds at once."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from artchain.core.tiling import (Grid, TilingError, _malloc_trim, bytes_per_pixel, fixed_grid, peak_tensor_bytes,
                                  plan_grid, plan_spans, release_freed_memory, tiled_apply, window_length)


def nearest_x3(job) -> torch.Tensor:
    return F.interpolate(job.window, scale_factor=3, mode="nearest")[..., _times(job.rows, 3), _times(job.columns, 3)]


def _times(span: slice, scale: int) -> slice:
    return slice(span.start * scale, span.stop * scale)


def local_net(reach_layers: int, scale: int):
    """A random conv net whose output pixel depends on inputs up to `reach_layers` pixels away."""
    generator = torch.Generator().manual_seed(0)
    kernels = [torch.randn(3, 3, 3, 3, generator=generator) * 0.3 for _ in range(reach_layers)]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        for kernel in kernels:
            batch = torch.tanh(F.conv2d(batch, kernel, padding=1))
        return F.interpolate(batch, scale_factor=scale, mode="bilinear", align_corners=False)

    return forward


def kept(forward, scale: int):
    """A tile function that runs `forward` on the whole window and keeps its part."""
    return lambda job: forward(job.window)[..., _times(job.rows, scale), _times(job.columns, scale)]


def empty_output(batch: torch.Tensor, scale: int, dtype=torch.float32) -> torch.Tensor:
    return torch.empty((batch.shape[0], 3, batch.shape[-2] * scale, batch.shape[-1] * scale), dtype=dtype)


@pytest.mark.parametrize("length,count,overlap,multiple", [
    (100, 3, 8, 1), (257, 4, 16, 1), (100, 7, 4, 4), (33, 2, 4, 1), (2160, 4, 32, 1), (1000, 5, 0, 8)])
def test_spans_partition_the_axis_with_equal_windows_and_full_context(length, count, overlap, multiple):
    spans = plan_spans(length, count, overlap, multiple)
    assert len(spans) == count
    assert {span.end - span.start for span in spans} == {window_length(length, count, overlap, multiple)}
    assert spans[0].keep_start == 0 and spans[-1].keep_end == length
    for span, after in zip(spans, spans[1:]):
        assert span.keep_end == after.keep_start and span.keep_start < span.keep_end
        assert span.end - span.keep_end >= overlap and after.keep_start - after.start >= overlap
    assert all(span.start % multiple == 0 and 0 <= span.start and span.end <= length for span in spans)


def test_the_windows_add_no_more_than_the_overlaps_and_rounding():
    # 4 windows over 3840 px with 32 px of context at each seam: 3 seams x 64 px more, plus rounding.
    window = window_length(3840, 4, 32)
    assert 4 * window - 3840 <= 3 * 64 + 4


def test_an_image_that_fits_is_one_window():
    grid = plan_grid(384, 512, max_window_pixels=384 * 512, overlap=32)
    assert grid.count == 1 and grid.overhead == 1.0 and grid.window == (384, 512)


def brute_force_cheapest(height: int, width: int, cap: int, overlap: int) -> int:
    best = None
    for rows, columns in itertools.product(range(1, 30), range(1, 30)):
        try:
            grid = Grid(plan_spans(height, rows, overlap), plan_spans(width, columns, overlap))
        except ValueError:
            continue
        if grid.window[0] * grid.window[1] <= cap and (best is None or grid.computed_pixels < best):
            best = grid.computed_pixels
    return best


@pytest.mark.parametrize("height,width,cap,overlap", [
    (300, 400, 40_000, 16), (217, 1000, 25_000, 8), (96, 96, 2_000, 4), (2160, 3840, 585_000, 32)])
def test_the_grid_computes_the_fewest_pixels_under_the_cap(height, width, cap, overlap):
    grid = plan_grid(height, width, max_window_pixels=cap, overlap=overlap)
    assert grid.window[0] * grid.window[1] <= cap
    assert grid.computed_pixels == brute_force_cheapest(height, width, cap, overlap)
    assert grid.kept_pixels == height * width


def test_square_windows_when_asked():
    grid = plan_grid(200, 200, max_window_pixels=90 * 90, overlap=8, square=True)
    assert grid.window[0] == grid.window[1] and len(grid.rows) == len(grid.columns)


def test_a_cap_below_the_smallest_window_names_that_window():
    with pytest.raises(TilingError, match=r"smallest tiles \(65x65 px\)") as caught:
        plan_grid(500, 500, max_window_pixels=4000, overlap=32)
    assert caught.value.window == (65, 65)  # 1 px kept, 32 of context each side


def test_a_fixed_tile_gives_the_fewest_windows_within_it():
    grid = fixed_grid(300, 1000, tile=256, overlap=32)
    assert max(grid.window) <= 256 and (len(grid.rows), len(grid.columns)) == (2, 5)
    with pytest.raises(ValueError, match="larger than twice the overlap"):
        fixed_grid(300, 300, tile=64, overlap=32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_tiled_equals_whole_for_a_pointwise_upscale(dtype):
    batch = torch.rand(2, 3, 37, 53)
    if dtype == torch.uint8:
        batch = (batch * 255).round().to(dtype)
    grid = plan_grid(37, 53, max_window_pixels=300, overlap=4)
    assert grid.count > 4
    tiled = tiled_apply(batch, nearest_x3, scale=3, grid=grid, output=empty_output(batch, 3, dtype))
    assert torch.equal(tiled, F.interpolate(batch, scale_factor=3, mode="nearest"))


def test_tiled_equals_whole_when_the_net_reaches_no_further_than_the_overlap():
    net = local_net(reach_layers=3, scale=2)
    batch = torch.rand(1, 3, 70, 45)
    grid = plan_grid(70, 45, max_window_pixels=900, overlap=4)  # reach: 3 convolutions + bilinear's 1
    assert grid.count > 2
    tiled = tiled_apply(batch, kept(net, 2), scale=2, grid=grid, output=empty_output(batch, 2))
    torch.testing.assert_close(tiled, net(batch), rtol=0, atol=1e-6)


def test_without_overlap_the_seams_show():
    net = local_net(reach_layers=3, scale=2)
    batch = torch.rand(1, 3, 70, 45)
    grid = plan_grid(70, 45, max_window_pixels=900, overlap=0)
    tiled = tiled_apply(batch, kept(net, 2), scale=2, grid=grid, output=empty_output(batch, 2))
    assert (tiled - net(batch)).abs().max() > 0.05


def test_progress_counts_tiles_and_their_own_reports_and_cancel_is_checked_per_tile():
    fractions, checks = [], []

    def forward(job):
        job.report(0.5)
        return nearest_x3(job)

    batch = torch.rand(1, 3, 40, 40)
    grid = fixed_grid(40, 40, tile=16, overlap=4)
    tiled_apply(batch, forward, scale=3, grid=grid, output=empty_output(batch, 3), progress=fractions.append,
                check_cancel=lambda: checks.append(1))
    assert len(fractions) == 2 * grid.count and fractions == sorted(fractions)
    assert fractions[0] == pytest.approx(0.5 / grid.count) and fractions[-1] == 1.0
    assert len(checks) == grid.count


def test_a_forward_of_the_wrong_scale_or_dtype_is_reported():
    batch = torch.rand(1, 3, 40, 40)
    grid = fixed_grid(40, 40, tile=16, overlap=4)
    with pytest.raises(ValueError, match="expected x2"):
        tiled_apply(batch, nearest_x3, scale=2, grid=grid, output=empty_output(batch, 2))
    with pytest.raises(ValueError, match="forward returned torch.float32, the output is torch.uint8"):
        tiled_apply(batch, nearest_x3, scale=3, grid=grid, output=empty_output(batch, 3, torch.uint8))


def test_the_probe_counts_the_tensors_alive_at_once():
    batch = torch.rand(1, 8, 32, 32)
    size = batch.numel() * 4
    assert peak_tensor_bytes(lambda x: x * 2 + 1, batch) == 2 * size  # x*2 lives until +1 is done
    assert peak_tensor_bytes(lambda x: (x * 2).add_(1), batch) == size  # in place: one tensor
    assert peak_tensor_bytes(lambda x: x[:, :4].clone().view(-1), batch) == size // 2  # views are free


def test_bytes_per_pixel_is_the_slope_of_the_peak():
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    with torch.inference_mode():
        measured = bytes_per_pixel(lambda x: torch.relu(conv(x)), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32))
    assert measured == 2 * 16 * 4  # the convolution's result and relu's, float32


def resident_mb() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim")
def test_memory_freed_inside_the_heap_goes_back_to_the_system():
    blocks = [torch.ones(25_000) for _ in range(2000)]  # 100 KB each: below glibc's mmap threshold
    del blocks[::2]  # freed, but between live blocks: the heap cannot shrink
    before = resident_mb()
    release_freed_memory()
    assert before - resident_mb() >= 50
