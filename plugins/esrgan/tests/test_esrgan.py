"""The esrgan step: loads the seed's and the user's checkpoints, upscales any size seamlessly, and
beats bicubic on a real photo."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from artchain.core.errors import Cancelled, ChainError, WeightsError
from artchain.core.processor import CancelToken, StepContext
from artchain.core.weights import WeightStore
from artchain.plugins.esrgan import EsrganProcessor, artchain_processors, build_model, upscale
from support import shared_file

from .conftest import photo



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
    model = EsrganProcessor().load(EsrganProcessor.parse_params({}), store, torch.device("cpu"))
    assert model.scale == 4
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = seed_forward(state, image).clamp(0, 1)
    torch.testing.assert_close(upscale(image, model, tile=0, overlap=0), expected, rtol=0, atol=1e-4)


def test_real_esrgan_release_format_imports_and_runs(tmp_path, x4plus_file, x4plus):
    """The authors' RealESRGAN_x4plus.pth keeps its state dict under `params_ema`."""
    from safetensors.torch import load_file

    source = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": load_file(x4plus_file)}, source)
    store = WeightStore(tmp_path / "store")
    store.import_file(source, "esrgan-x4plus-pth")
    params = EsrganProcessor.parse_params({"weights": "esrgan-x4plus-pth"})
    model = EsrganProcessor().load(params, store, torch.device("cpu"))
    image = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(upscale(image, model, tile=0, overlap=0), upscale(image, x4plus, tile=0, overlap=0),
                               rtol=0, atol=0)


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
    output = upscale(image, x4plus, tile=256, overlap=48)
    assert output.shape == (1, 3, 4 * height, 4 * width)
    assert torch.isfinite(output).all() and 0 <= output.min() and output.max() <= 1


@pytest.mark.slow
def test_tiled_matches_untiled_within_one_level_at_the_default_overlap(x4plus):
    # Three 160-px tiles overlapping by the default 48 px: two seams through a real photo.
    image = photo("nature_original.png")[..., 150:198, 100:292]
    params = EsrganProcessor.parse_params({"tile": 160})
    tiled = EsrganProcessor().process(image, x4plus, params, StepContext(torch.device("cpu"), (192, 48)))
    whole = upscale(image, x4plus, tile=0, overlap=0)
    within = (tiled - whole).abs() <= 1 / 255
    assert within.float().mean() >= 0.999, f"only {within.float().mean():.4%} within 1/255"


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
    restored = upscale(small, x4plus, tile=0, overlap=0)
    assert restored.shape == original.shape
    assert high_band_spectrum_distance(restored, original) < 0.7 * high_band_spectrum_distance(bicubic, original)


def test_plugin_provides_the_processor_with_its_aliases():
    assert artchain_processors() == [EsrganProcessor]
    assert {"upscale", "sr"} <= set(EsrganProcessor.aliases)
    params = EsrganProcessor.parse_params({"tile": "128", "overlap": "16"})
    assert (params["tile"], params["overlap"], params["max_side"]) == (128, 16, 0)
    assert EsrganProcessor().required_weights(params) == ("esrgan",)


def test_max_side_shrinks_first_and_tile_must_exceed_twice_the_overlap(x4plus):
    context = StepContext(torch.device("cpu"), (40, 20))
    image = torch.rand(1, 3, 20, 40)
    shrunk = EsrganProcessor().process(image, x4plus, EsrganProcessor.parse_params({"max_side": 10}), context)
    assert shrunk.shape == (1, 3, 20, 40)
    # Checked when the chain is parsed, before any image is read.
    with pytest.raises(ChainError, match="larger than twice the overlap"):
        EsrganProcessor.parse_params({"tile": 64, "overlap": 32})


def test_progress_is_reported_and_cancel_stops_between_tiles(x4plus):
    fractions = []
    params = EsrganProcessor.parse_params({"tile": 20, "overlap": 4})
    EsrganProcessor().process(torch.rand(1, 3, 12, 30), x4plus, params,
                              StepContext(torch.device("cpu"), (30, 12), progress=fractions.append))
    assert fractions[-1] == 1.0 and len(fractions) == 3
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        EsrganProcessor().process(torch.rand(1, 3, 12, 30), x4plus, params,
                                  StepContext(torch.device("cpu"), (30, 12), cancel=token))


def test_tiles_round_up_to_the_model_multiple(x4plus):
    from dataclasses import replace

    from artchain.plugins.esrgan import _tile_for_model

    unshuffling = replace(x4plus, multiple_of=4)  # like Real-ESRGAN x2plus's pixel-unshuffle input
    assert _tile_for_model(99, unshuffling) == 100  # still larger than twice an overlap of 48
    assert _tile_for_model(256, unshuffling) == 256
