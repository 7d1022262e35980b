"""Seed checkpoints (built here from the recorded layouts, never shipped) load strictly and compute
what the seeds' own code computes. The reference forward passes below are written from the layouts'
forward descriptions in the seeds' plain functional style, independently of the plugin's modules."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from artchain.core.errors import WeightsError
from artchain.core.processor import StepContext
from artchain.core.weights import WeightStore
from artchain.plugins.gan.processors import CycleGanCubism, Pix2PixNeon
from support import shared_file

CPU = torch.device("cpu")


def layout(name: str) -> dict:
    return json.loads(shared_file("checkpoint-layouts", name).read_text())


def deterministic_state(keys: list) -> dict[str, torch.Tensor]:
    """Fills every tensor of a layout with a fixed, fan-in scaled wave (no RNG involved)."""
    state = {}
    for index, (key, shape) in enumerate(keys):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(94)
            continue
        count = math.prod(shape)
        wave = torch.sin(torch.arange(count, dtype=torch.float64) * 0.7 + index).float().reshape(shape)
        if key.endswith("running_var"):
            state[key] = 0.5 + 0.4 * wave.abs()
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * wave
        elif len(shape) == 1:  # BatchNorm scale
            state[key] = 1 + 0.2 * wave
        else:
            fan_in = math.prod(shape[1:]) if "up" not in key.split(".")[0] else shape[0] * shape[2] * shape[3] / 4
            state[key] = wave * math.sqrt(3 / fan_in)
    return state


def store_with_import(tmp_path: Path, checkpoint: dict, file_name: str, weight_id: str) -> WeightStore:
    """The user's path: `artchain weights import FILE --as ID` of a torch.save'd seed file."""
    source = tmp_path / file_name
    torch.save(checkpoint, source)
    store = WeightStore(directory=tmp_path / "store", manifest_text="weights: []\n")
    store.import_file(source, weight_id)
    return store


def reference_cyclegan(state: dict, x: torch.Tensor) -> torch.Tensor:
    def norm_relu(y):
        return F.relu(F.instance_norm(y, eps=1e-5))

    def block(y, name):
        y = norm_relu(F.conv2d(y, state[f"{name}.0.weight"], state[f"{name}.0.bias"], padding=1))
        return norm_relu(F.conv2d(y, state[f"{name}.3.weight"], state[f"{name}.3.bias"], padding=1))

    def pool(y, name):
        return norm_relu(F.conv2d(y, state[f"{name}.0.weight"], state[f"{name}.0.bias"], stride=2, padding=1))

    def upsample(y, name):
        return F.conv_transpose2d(y, state[f"{name}.weight"], state[f"{name}.bias"], stride=2)

    e0 = block(x, "enc_conv0")
    e1 = block(pool(e0, "pool0"), "enc_conv1")
    e2 = block(pool(e1, "pool1"), "enc_conv2")
    e3 = block(pool(e2, "pool2"), "enc_conv3")
    b = block(pool(e3, "pool3"), "bottleneck_conv")
    d0 = block(torch.cat([e3, upsample(b, "upsample0")], 1), "dec_conv0")
    d1 = block(torch.cat([e2, upsample(d0, "upsample1")], 1), "dec_conv1")
    d2 = block(torch.cat([e1, upsample(d1, "upsample2")], 1), "dec_conv2")
    d3 = block(torch.cat([e0, upsample(d2, "upsample3")], 1), "dec_conv3")
    return torch.tanh(F.conv2d(d3, state["final_conv.0.weight"], state["final_conv.0.bias"]))


def reference_pix2pix(state: dict, x: torch.Tensor, training: bool) -> torch.Tensor:
    def batch_norm(y, prefix):
        return F.batch_norm(y, state[f"{prefix}.running_mean"].clone(), state[f"{prefix}.running_var"].clone(),
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=training, eps=1e-5)

    def down(y, weight, bias=None):
        return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), weight, bias, stride=2)

    def up(y, index):
        y = F.conv_transpose2d(y, state[f"up{index}.conv.0.weight"], stride=2, padding=1)
        y = F.relu(batch_norm(y, f"up{index}.conv.1"))
        return F.dropout(y, 0.5, training=training) if index <= 3 else y

    d = [F.leaky_relu(down(x, state["initial_down.0.weight"], state["initial_down.0.bias"]), 0.2)]
    for index in range(1, 7):
        d.append(F.leaky_relu(batch_norm(down(d[-1], state[f"down{index}.conv.0.weight"]),
                                         f"down{index}.conv.1"), 0.2))
    bottleneck = F.relu(F.conv2d(d[6], state["bottleneck.0.weight"], state["bottleneck.0.bias"],
                                 stride=2, padding=1))
    u = up(bottleneck, 1)
    for index in range(2, 8):
        u = up(torch.cat([u, d[8 - index]], 1), index)
    final = F.conv_transpose2d(torch.cat([u, d[0]], 1), state["final_up.0.weight"], state["final_up.0.bias"],
                               stride=2, padding=1)
    return torch.tanh(final)


@pytest.fixture(scope="module")
def pix2pix_seed(tmp_path_factory):
    """The 54M-parameter seed checkpoint is built and imported once for all pix2pix tests."""
    state = deterministic_state(layout("seed-pix2pix-neon-unet64.json")["keys"])
    return state, store_with_import(tmp_path_factory.mktemp("pix2pix"), state, "Bgen_94.pth", "pix2pix-neon")


def photo(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(0, 1, height)[:, None]
    cols = torch.linspace(0, 1, width)[None, :]
    return torch.stack([rows * cols, (rows + cols) / 2, 0.5 + 0.5 * torch.sin(9 * rows - 5 * cols)])[None]


def test_cyclegan_seed_checkpoint_matches_reference(tmp_path):
    spec = layout("seed-cyclegan-unet32.json")
    generator_state = deterministic_state(spec["keys"])
    checkpoint = {"B2A_gen_state_dict": generator_state, "A2B_gen_state_dict": {}, "epoch": 12}
    store = store_with_import(tmp_path, checkpoint, "cubism.tar", "cyclegan-cubism")
    processor = CycleGanCubism()
    params = processor.parse_params({"size": 64, "precision": "fp32"})  # the seed's own numbers
    model = processor.load(params, store, CPU)
    assert sum(p.numel() for p in model.parameters()) == spec["params"]

    image = photo(64, 96)  # already at the working resolution and a multiple of 16: no resampling
    ours = processor.process(image, model, params, StepContext(device=CPU, original_size=(96, 64)))
    with torch.no_grad():
        expected = (reference_cyclegan(generator_state, image * 2 - 1) + 1) / 2
    assert ours.shape == expected.shape == (1, 3, 64, 96)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert ours.std() > 0.01  # a constant output would make the comparison meaningless


@pytest.mark.parametrize("mode", ["paper", "eval"])
def test_pix2pix_seed_checkpoint_matches_reference(pix2pix_seed, mode):
    state, store = pix2pix_seed
    processor = Pix2PixNeon()
    params = processor.parse_params({"size": 256, "mode": mode, "precision": "fp32"})  # the seed's own numbers
    model = processor.load(params, store, CPU)

    image = photo(256, 256)
    gray = (0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2])[:, None].repeat(1, 3, 1, 1)
    context = StepContext(device=CPU, original_size=(256, 256), seed=7)
    ours = processor.process(image, model, params, context)
    torch.manual_seed(7)  # the seed ran with dropout on; the plugin seeds it from the chain's seed
    with torch.no_grad():
        expected = (reference_pix2pix(state, gray * 2 - 1, training=mode == "paper") + 1) / 2
    assert torch.allclose(ours, expected, atol=1e-5)
    assert ours.std() > 0.01
    again = processor.process(image, model, params, context)
    assert torch.equal(ours, again), "the same seed must give the same output"
    for key, value in model.state_dict().items():
        if "running" in key:
            assert torch.equal(value, state[key]), "inference must not change the stored statistics"


def test_paper_mode_dropout_follows_the_chain_seed(pix2pix_seed):
    _, store = pix2pix_seed
    processor = Pix2PixNeon()
    params = processor.parse_params({})
    model = processor.load(params, store, CPU)
    image = photo(256, 256)
    first = processor.process(image, model, params, StepContext(CPU, (256, 256), seed=1))
    second = processor.process(image, model, params, StepContext(CPU, (256, 256), seed=2))
    assert not torch.allclose(first, second)


def test_checkpoint_of_another_layout_is_refused(tmp_path):
    state = deterministic_state(layout("seed-cyclegan-unet32.json")["keys"])
    del state["final_conv.0.bias"]
    store = store_with_import(tmp_path, {"B2A_gen_state_dict": state}, "cubism.tar", "cyclegan-cubism")
    processor = CycleGanCubism()
    with pytest.raises(WeightsError, match="does not fit the CycleUNet layout"):
        processor.load(processor.parse_params({}), store, CPU)
