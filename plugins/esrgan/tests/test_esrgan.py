"""The esrgan step: loads the seed's and the user's checkpoints, runs whole photos in one pass and
larger ones in the largest tiles its memory budget allows without visible seams, picks bf16 where
the CPU has it and stays faithful to fp32, and beats bicubic on a real photo."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artchain.core import imageio, precision
from artchain.core.errors import Cancelled, ChainError, ImageError, WeightsError
from artchain.core.processor import CancelToken, StepContext
from artchain.core.tiling import plan_grid, tiled_apply, window_length
from artchain.core.weights import WeightStore
from artchain.plugins.esrgan import DEFAULT_MEMORY_MB, GPU_MEMORY_SHARE, MB, EsrganProcessor, artchain_processors
from artchain.plugins.esrgan.model import build_model, measure_costs
from artchain.plugins.esrgan.upscale import TAIL_WINDOW_PIXELS, plan_tiles, upscale, working_memory
from support import shared_file

from .conftest import photo, skimage_photo


def seed_checkpoint() -> dict[str, torch.Tensor]:
    """The seed's RRDB_ESRGAN_x4.pth layout, filled deterministically (fan-in scaled normals)."""
    generator = torch.Generator().manual_seed(4)
    state = {}
    for name, shape in json.loads(shared_file("checkpoint-layouts", "seed-esrgan-rrdb-x4-oldkeys.json").read_text())["keys"]:
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        state[name] = torch.randn(shape, generator=generator) * (0.5 / fan_in ** 0.5)
    return state


def seed_forward(state: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """The forward pass exactly as the layout file describes the seed's network."""
    def conv(name, tensor):
        return F.conv2d(tensor, state[f"{name}.weight"], state[f"{name}.bias"], padding=1)

    def lrelu(tensor):
        return F.leaky_relu(tensor, 0.2)

    blocks = len({key.split(".")[1] for key in state if key.startswith("RRDB_trunk.")})
    features = conv("conv_first", image)
    trunk = features
    for block in range(blocks):
        block_input = trunk
        for rdb in (1, 2, 3):
            prefix = f"RRDB_trunk.{block}.RDB{rdb}"
            dense = [trunk]
            for index in range(1, 5):
                dense.append(lrelu(conv(f"{prefix}.conv{index}", torch.cat(dense, 1))))
            trunk = conv(f"{prefix}.conv5", torch.cat(dense, 1)) * 0.2 + trunk
        trunk = trunk * 0.2 + block_input
    features = features + conv("trunk_conv", trunk)
    features = lrelu(conv("upconv1", F.interpolate(features, scale_factor=2, mode="nearest")))
    features = lrelu(conv("upconv2", F.interpolate(features, scale_factor=2, mode="nearest")))
    return conv("conv_last", lrelu(conv("HRconv", features)))


def test_seed_checkpoint_imports_and_runs_as_the_seed_did(tmp_path):
    state = seed_checkpoint()
    source = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(state, source)
    store = WeightStore(tmp_path / "store")
    store.import_file(source, "esrgan")
    model = EsrganProcessor().load(EsrganProcessor.parse_params({"precision": "fp32"}), store, torch.device("cpu"))
    assert model.scale == 4 and model.stages is not None
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = seed_forward(state, image).clamp(0, 1)
    torch.testing.assert_close(upscale(image, model), expected, rtol=0, atol=1e-4)


def test_real_esrgan_release_format_imports_and_runs(tmp_path, x4plus_file, x4plus):
    """The authors' RealESRGAN_x4plus.pth keeps its state dict under `params_ema`."""
    from safetensors.torch import load_file

    source = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": load_file(x4plus_file)}, source)
    store = WeightStore(tmp_path / "store")
    store.import_file(source, "esrgan-x4plus-pth")
    params = EsrganProcessor.parse_params({"weights": "esrgan-x4plus-pth", "precision": "fp32"})
    model = EsrganProcessor().load(params, store, torch.device("cpu"))
    image = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(upscale(image, model), upscale(image, x4plus), rtol=0, atol=0)


def test_unknown_architecture_is_named_in_the_error():
    with pytest.raises(WeightsError, match=r"unknown checkpoint architecture \(2 tensors, first keys: "
                                           r"encoder.weight, encoder.bias\)"):
        build_model({"encoder.weight": torch.zeros(8, 3, 3, 3), "encoder.bias": torch.zeros(8)},
                    torch.device("cpu"))


def test_truncated_checkpoint_is_refused_on_import(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(seed_checkpoint(), whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(WeightsError, match="truncated.pth: not a readable checkpoint"):
        WeightStore(tmp_path / "store").import_file(truncated, "esrgan")


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (5, 1)])
def test_tiny_images_are_upscaled(x4plus, height, width):
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height))
    output = upscale(image, x4plus)
    assert output.shape == (1, 3, 4 * height, 4 * width)
    assert torch.isfinite(output).all() and 0 <= output.min() and output.max() <= 1


@pytest.mark.parametrize("model_fixture", ["x4plus", "x4plus_bf16"])
def test_trunk_and_tail_compute_exactly_what_the_network_computes(request, model_fixture):
    model = request.getfixturevalue(model_fixture)
    window = model.prepare(torch.rand(1, 3, 14, 22, generator=torch.Generator().manual_seed(3)))
    with torch.inference_mode():
        assert torch.equal(model.stages.tail(model.stages.trunk(window)), model.network(window))


def test_the_tail_on_sub_tiles_equals_one_pass(x4plus):
    stages = x4plus.stages
    with torch.inference_mode():
        features = stages.trunk(x4plus.prepare(torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(4))))
        whole = stages.tail(features)
        grid = plan_grid(20, 27, max_window_pixels=120, overlap=stages.tail_context)
        assert grid.count > 6
        tiled = tiled_apply(features, lambda job: stages.tail(job.window)[..., _times(job.rows), _times(job.columns)],
                            scale=4, grid=grid, output=torch.empty_like(whole))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def _times(span: slice, scale: int = 4) -> slice:
    return slice(span.start * scale, span.stop * scale)


def test_memory_per_pixel_is_measured_on_the_network(x4plus, x4plus_bf16):
    # The trunk holds 512 channels per pixel at its peak: the dense blocks' two concatenation buffers
    # (160 and 192), the block's input, and a convolution's result and scratch.
    assert x4plus.costs.window == 512 * 4 and x4plus_bf16.costs.window == 512 * 2
    assert x4plus.costs.features == 64 * 4 and x4plus.costs.tail == 2 * x4plus_bf16.costs.tail


def uint8_result_bytes(height: int, width: int) -> int:
    return height * width * 4 ** 2 * 3


def test_a_photo_that_fits_runs_whole_and_a_large_one_gets_the_largest_tiles(x4plus, x4plus_bf16):
    for model, (height, width) in ((x4plus_bf16, (768, 1024)), (x4plus, (512, 768))):
        fits = plan_tiles(model, height, width, memory_bytes=DEFAULT_MEMORY_MB * MB)
        assert fits.grid.count == 1 and fits.grid.overhead == 1.0
        assert fits.tail_window_pixels == TAIL_WINDOW_PIXELS  # the tail runs fastest in sub-tiles
    budget = 40 * MB
    activations = budget - uint8_result_bytes(300, 400)  # the budget holds the whole result first
    grid = plan_tiles(x4plus, 300, 400, memory_bytes=budget).grid
    rows, columns = len(grid.rows), len(grid.columns)
    assert grid.count > 1 and grid.window[0] * grid.window[1] * x4plus.costs.window <= activations
    # The largest tiles: with one row or one column fewer, the windows would not fit.
    for fewer_rows, fewer_columns in ((rows - 1, columns), (rows, columns - 1)):
        if min(fewer_rows, fewer_columns) >= 1:
            larger = window_length(300, fewer_rows, 32) * window_length(400, fewer_columns, 32)
            assert larger * x4plus.costs.window > activations
    # A 4K photo's result takes 380 MB of the default: its tiles get the rest, and waste little.
    four_k = plan_tiles(x4plus_bf16, 2160, 3840, memory_bytes=DEFAULT_MEMORY_MB * MB)
    assert four_k.grid.count == 15 and four_k.grid.overhead <= 1.15


@pytest.mark.slow
def test_tiled_matches_untiled_near_the_seams_at_the_default_overlap(x4plus_auto):
    # A budget for windows of 48x110 px: three tiles, two seams through a real photo, tail sub-tiles.
    image = photo("nature_original.png")[..., 150:198, 100:292]
    budget = int(x4plus_auto.costs.window * 48 * 110) + uint8_result_bytes(48, 192)
    plan = plan_tiles(x4plus_auto, 48, 192, memory_bytes=budget)
    assert plan.grid.count == 3
    tiled = upscale(image, x4plus_auto, memory_bytes=budget, output_dtype=torch.uint8).int()
    whole = upscale(image, x4plus_auto, output_dtype=torch.uint8).int()
    difference = (tiled - whole).abs().float()
    within = (difference <= 1).float().mean()
    decibels = 10 * torch.log10(255 ** 2 / (difference ** 2).mean())
    assert within >= 0.98 and decibels >= 50, f"{within:.2%} within 1/255, PSNR {decibels:.1f} dB"


def test_an_image_beyond_the_budget_is_refused_with_the_memory_it_needs(x4plus):
    # The x4 result alone takes 549 MB; the smallest tiles 8 MB more.
    with pytest.raises(ImageError, match=r"^esrgan: a 4000x3000 image needs at least 558 MB of memory for its "
                                         r"result and its smallest tiles \(65x65 px at overlap 32\); memory is 1 MB$"):
        plan_tiles(x4plus, 3000, 4000, memory_bytes=1 * MB)
    # A fixed tile takes no advice from the budget; the tail's share then cannot fit.
    with pytest.raises(ImageError, match=r"^esrgan: tiles of 1376x1532 px need at least 1547 MB of memory with the "
                                         r"result; memory is 600 MB$"):
        plan_tiles(x4plus, 3000, 4000, memory_bytes=600 * MB, tile=2000)


@pytest.mark.parametrize("given,message", [
    ({"memory": "32"}, r"parameter memory must be >= 64 \(or 0: automatic\)"),
    ({"overlap": "80"}, "parameter overlap must be <= 64"),
    ({"precision": "int8"}, "parameter precision must be one of auto, fp32, bf16, fp16"),
])
def test_settings_that_cannot_work_are_refused_when_the_chain_is_parsed(given, message):
    with pytest.raises(ChainError, match=message):
        EsrganProcessor.parse_params(given)


def test_the_automatic_budget_is_the_cpu_default_or_most_of_the_gpus_free_memory(monkeypatch):
    assert working_memory(0, torch.device("cpu")) == DEFAULT_MEMORY_MB * MB
    assert working_memory(100, torch.device("cpu")) == 100 * MB
    free = 10 * 1024 * MB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 8 * free))
    assert working_memory(0, torch.device("cuda")) == int(free * GPU_MEMORY_SHARE)
    assert working_memory(100, torch.device("cuda")) == 100 * MB  # the user's figure wins


def test_compile_is_refused_off_a_gpu_before_the_weights_are_read():
    with pytest.raises(ChainError, match=r"^esrgan: compile=true is for a CUDA GPU, not cpu$"):
        EsrganProcessor().load(EsrganProcessor.parse_params({"compile": True}), None, torch.device("cpu"))


def test_the_whole_network_path_that_a_gpu_takes_equals_the_stages(x4plus):
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    whole = dataclasses.replace(x4plus, stages=None)
    whole.costs = measure_costs(whole, torch.device("cpu"))
    assert whole.costs.window > x4plus.costs.window  # one pass holds the x4 tail's tensors too
    assert torch.equal(upscale(image, whole, output_dtype=torch.uint8),
                       upscale(image, x4plus, output_dtype=torch.uint8))


def test_a_tile_not_larger_than_twice_the_overlap_is_refused_when_the_chain_is_parsed():
    with pytest.raises(ChainError, match=r"^esrgan: tile \(64\) must be larger than twice the overlap \(32\)$"):
        EsrganProcessor.check(EsrganProcessor.parse_params({"tile": 64, "overlap": 32}))


def test_progress_moves_inside_a_single_tile_and_cancel_stops_between_blocks(x4plus):
    fractions = []
    image = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(5))
    params = EsrganProcessor.parse_params({})
    EsrganProcessor().process(image, x4plus, params,
                              StepContext(torch.device("cpu"), (10, 8), progress=fractions.append))
    assert len(fractions) == len(x4plus.stages.blocks) + 1 and fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    token, reported = CancelToken(), []

    def cancel_after_three(fraction):
        reported.append(fraction)
        if len(reported) == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        EsrganProcessor().process(image, x4plus, params,
                                  StepContext(torch.device("cpu"), (10, 8), progress=cancel_after_three, cancel=token))
    assert len(reported) == 3


def test_the_step_hands_on_uint8_that_becomes_the_same_image_as_the_float_result(x4plus):
    image = photo("content.png")[..., 200:216, 300:324]
    result = EsrganProcessor().process(image, x4plus, EsrganProcessor.parse_params({}),
                                       StepContext(torch.device("cpu"), (24, 16)))
    assert result.dtype == torch.uint8 and result.is_contiguous(memory_format=torch.channels_last)
    assert imageio.to_image(result).tobytes() == imageio.to_image(upscale(image, x4plus)).tobytes()


@pytest.mark.parametrize("name,top,left", [("astronaut", 60, 190), ("coffee", 150, 250)])
def test_bf16_stays_faithful_to_fp32_on_real_photos(x4plus, x4plus_bf16, name, top, left):
    image = skimage_photo(name, top, left, 40)
    difference = (upscale(image, x4plus_bf16) - upscale(image, x4plus)).double()
    decibels = 10 * np.log10(1 / (difference ** 2).mean().item())
    assert decibels >= 40, f"bf16 vs fp32 PSNR {decibels:.1f} dB"


@pytest.mark.parametrize("fast_bf16,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_precision_auto_follows_what_the_cpu_reports(monkeypatch, caplog, x4plus_state, fast_bf16, dtype):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    with caplog.at_level("INFO", logger="artchain.core.precision"):
        model = build_model(x4plus_state, torch.device("cpu"), "auto")
    assert model.dtype == dtype and next(model.network.parameters()).dtype == dtype
    assert f"esrgan: precision auto -> {precision.precision_name(dtype)} on cpu" in caplog.text


def high_band_spectrum_distance(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean |log10 power| difference over the upper three quarters of the radial frequencies.

    Why this measure: bicubic's failure is lost fine detail, i.e. missing high-frequency energy.
    Pixel-aligned scores (PSNR, SSIM) cannot see that: they reward a blur, because a GAN's restored
    texture is plausible but not phase-aligned with the original. The radially averaged power
    spectrum compares how much detail there is at each scale without needing alignment.
    """
    def radial_log_power(batch):
        luma = (batch[0] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
        power = torch.fft.fftshift(torch.fft.fft2(luma - luma.mean())).abs() ** 2
        rows, columns = power.shape
        y, x = torch.meshgrid(torch.arange(rows) - rows // 2, torch.arange(columns) - columns // 2,
                              indexing="ij")
        radius = (y ** 2 + x ** 2).sqrt().round().long()
        return torch.stack([power[radius == r].mean() for r in range(1, min(rows, columns) // 2)]).log10()

    ours, theirs = radial_log_power(image), radial_log_power(reference)
    start = len(ours) // 4
    return (ours[start:] - theirs[start:]).abs().mean().item()


@pytest.mark.parametrize("name,top,left", [("nature_original.png", 140, 300), ("content.png", 300, 400)])
def test_restores_detail_of_a_downscaled_photo_better_than_bicubic(x4plus, name, top, left):
    original = photo(name)[..., top:top + 192, left:left + 192]
    small = F.interpolate(original, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    bicubic = F.interpolate(small, scale_factor=4, mode="bicubic").clamp(0, 1)
    restored = upscale(small, x4plus)
    assert restored.shape == original.shape
    assert high_band_spectrum_distance(restored, original) < 0.7 * high_band_spectrum_distance(bicubic, original)


def test_plugin_provides_the_processor_with_its_aliases():
    assert artchain_processors() == [EsrganProcessor]
    assert {"upscale", "sr"} <= set(EsrganProcessor.aliases)
    params = EsrganProcessor.parse_params({"memory": "1024", "overlap": "16"})
    assert (params["memory"], params["tile"], params["overlap"], params["max_side"]) == (1024, 0, 16, 0)
    assert EsrganProcessor().required_weights(params) == ("esrgan",)


def test_max_side_shrinks_first(x4plus):
    context = StepContext(torch.device("cpu"), (40, 20))
    image = torch.rand(1, 3, 20, 40)
    shrunk = EsrganProcessor().process(image, x4plus, EsrganProcessor.parse_params({"max_side": 10}), context)
    assert shrunk.shape == (1, 3, 20, 40)


def test_weights_of_another_network_cannot_be_imported_as_esrgan(tmp_path):
    import os

    from support import REPO, run_cli

    env = {**os.environ, "ARTCHAIN_WEIGHTS_DIR": str(tmp_path / "weights")}
    result = run_cli("weights", "import", REPO / "weights" / "pix2pix-neon.safetensors", "--as", "esrgan", env=env)
    assert result.returncode == 1 and "esrgan: unknown checkpoint architecture" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "weights" / "imported.yaml").exists()
