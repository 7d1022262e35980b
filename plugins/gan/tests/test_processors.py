"""Inference on pictures of any shape, the plugin's own weight format, and the registered hooks."""
from __future__ import annotations

import os
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from artchain.core import precision
from artchain.core.errors import ChainError, ImageError
from artchain.core.imageops import resize
from artchain.core.processor import StepContext
from artchain.core.weights import WeightStore
from artchain.plugins import gan
from artchain.plugins.gan.networks import CycleUNet, MaskedAsFloat32Dropout, Pix2PixUNet
from artchain.plugins.gan.processors import (MAX_WORKING_PIXELS, PROCESSORS, CycleGanExpressionism,
                                             Pix2PixNeon, working_size)
from artchain.plugins.gan.training import export_generator, manifest_entry
from artchain.runtime import load_settings

CPU = torch.device("cpu")


def store_with_export(tmp_path, model, weight_id: str) -> WeightStore:
    """A store whose manifest lists `model` exported in the plugin's format (fp16 safetensors)."""
    import yaml

    path = tmp_path / f"{weight_id}.safetensors"
    export_generator(model, path, {"format": "artchain-gan"})
    entry = manifest_entry(weight_id, path, "test")
    return WeightStore(directory=tmp_path, manifest_text=yaml.safe_dump({"weights": [entry]}))


def gradient_image(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(0, 1, height)[:, None].expand(height, width)
    cols = torch.linspace(0, 1, width)[None, :].expand(height, width)
    return torch.stack([rows, cols, (rows * cols).sqrt()])[None]


@pytest.fixture(scope="module")
def tiny_cyclegan(tmp_path_factory):
    torch.manual_seed(0)
    model = CycleUNet(4)
    store = store_with_export(tmp_path_factory.mktemp("cyclegan"), model, "cyclegan-expressionism")
    return model, store


def test_own_format_loads_with_width_from_shapes(tiny_cyclegan):
    model, store = tiny_cyclegan
    processor = CycleGanExpressionism()
    params = processor.parse_params({"size": 32, "precision": "fp32"})
    loaded = processor.load(params, store, CPU)
    assert loaded.init_nc == 4
    image = gradient_image(32, 48)
    with torch.no_grad():
        expected = (model.half().float()(image * 2 - 1) + 1) / 2
    out = processor.process(image, loaded, params, StepContext(CPU, (48, 32)))
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("height, width", [(517, 333), (42, 64)])
def test_output_keeps_the_input_size_and_the_working_resolution_is_internal(tiny_cyclegan, height, width):
    model, store = tiny_cyclegan
    processor = CycleGanExpressionism()
    image = gradient_image(height, width)
    params = processor.parse_params({"size": 64})
    loaded = processor.load(params, store, CPU)
    out = processor.process(image, loaded, params, StepContext(CPU, (width, height)))
    assert out.shape == image.shape, "neither blown up to nor shrunk to the working resolution"
    assert 0 <= out.min() and out.max() <= 1
    working = processor.process(image, loaded, processor.parse_params({"size": 64, "output": "working"}),
                                StepContext(CPU, (width, height)))
    assert min(working.shape[-2:]) == 64  # short side 64, aspect kept
    assert abs(working.shape[-2] / working.shape[-1] - height / width) < 0.02
    assert torch.allclose(out, resize(working, height, width).clamp(0, 1))


@pytest.mark.parametrize("fast_bf16,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_precision_auto_follows_what_the_cpu_reports(monkeypatch, caplog, tiny_cyclegan, fast_bf16, dtype):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    _, store = tiny_cyclegan
    processor = CycleGanExpressionism()
    params = processor.parse_params({"size": 32})
    with caplog.at_level("INFO", logger="artchain.core.precision"):
        loaded = processor.load(params, store, CPU)
    assert next(loaded.parameters()).dtype == dtype
    assert f"cyclegan-expressionism: precision auto -> {precision.precision_name(dtype)} on cpu" in caplog.text
    out = processor.process(gradient_image(32, 48), loaded, params, StepContext(CPU, (48, 32)))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 48) and out.std() > 0.01


@pytest.mark.parametrize("dtype,memory_format", [(torch.bfloat16, torch.contiguous_format),
                                                 (torch.bfloat16, torch.channels_last),
                                                 (torch.float32, torch.channels_last)])
def test_dropout_drops_the_units_float32_would_in_any_precision_and_layout(dtype, memory_format):
    activations = torch.rand(2, 8, 6, 10) + 0.5
    dropout = MaskedAsFloat32Dropout(0.5)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(activations, 0.5, training=True)  # what the seed's nn.Dropout drew
    torch.manual_seed(3)
    dropped = dropout(activations.to(dtype, memory_format=memory_format)).float()
    assert torch.equal(dropped == 0, expected == 0) and 0.3 < (expected == 0).float().mean() < 0.7
    assert torch.allclose(dropped, expected, rtol=1e-2)
    torch.manual_seed(3)
    assert torch.equal(dropout(activations), expected), "float32 NCHW is plain dropout, as in the seed"


def test_an_unknown_precision_is_refused_when_the_chain_is_parsed():
    with pytest.raises(ChainError, match="parameter precision must be one of auto, fp32, bf16, fp16"):
        Pix2PixNeon.parse_params({"precision": "int8"})


@pytest.mark.parametrize("processor_class", PROCESSORS)
def test_one_pixel_image_is_rejected(processor_class):
    processor = processor_class()
    params = processor.parse_params({})
    with pytest.raises(ImageError, match="1x1.*at least"):
        processor.process(torch.rand(1, 3, 1, 1), None, params, StepContext(CPU, (1, 1)))


def test_working_resolution_is_capped_for_extreme_shapes():
    height, width = working_size(100, 100_000, 512)
    assert height * width <= MAX_WORKING_PIXELS
    assert abs(width / height - 1000) < 20
    assert working_size(333, 517, 512) == (512, 795)


def test_batch_images_are_styled_independently(tmp_path):
    torch.manual_seed(0)
    store = store_with_export(tmp_path, Pix2PixUNet(4), "pix2pix-neon")
    processor = Pix2PixNeon()
    params = processor.parse_params({"size": 64})
    model = processor.load(params, store, CPU)
    batch = torch.cat([gradient_image(40, 70), gradient_image(40, 70).flip(-1)])
    together = processor.process(batch, model, params, StepContext(CPU, (70, 40)))
    alone = processor.process(batch[1:], model, params, StepContext(CPU, (70, 40)))
    assert together.shape == batch.shape
    assert torch.allclose(together[1:], alone, atol=1e-6)


def test_hooks_register_processors_and_train_commands():
    names = {cls.name for cls in gan.artchain_processors()}
    assert names == {"cyclegan-cubism", "cyclegan-renaissance", "cyclegan-expressionism", "pix2pix-neon"}
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        pass

    gan.artchain_cli(app)
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert all(command in result.output for command in ("cyclegan", "paired", "pix2pix", "pairs"))


@pytest.fixture
def registry():
    from artchain.core.plugins import discover

    found = discover()
    # Until pyproject.toml's entry point is installed, the plugin is added the way tests add plugins.
    return found if found.get("cyclegan-cubism") else discover([gan])


def test_odd_size_through_the_engine(tmp_path, registry):
    from PIL import Image

    from artchain.core.engine import Engine

    store = store_with_export(tmp_path, CycleUNet(4), "cyclegan-cubism")
    engine = Engine(load_settings(environ={}), registry, store)
    photo = Image.fromarray((gradient_image(517, 333)[0].permute(1, 2, 0).numpy() * 255).astype("uint8"))
    assert engine.run("cubism:size=64", photo, device="cpu").size == (333, 517)
    styled = engine.run("cubism:size=64:output=working", photo, device="cpu")
    assert styled.size == (64, 99)  # the working resolution, aspect kept
    assert engine.run("cubism:size=64:output=working,resize-back", photo, device="cpu").size == (333, 517)
    with pytest.raises(ImageError):
        engine.run("cubism", Image.new("RGB", (1, 1)), device="cpu")


def test_neon_gives_the_same_result_when_jobs_run_side_by_side():
    """Seeded dropout must not be disturbed by another job drawing from torch's global generator."""
    from concurrent.futures import ThreadPoolExecutor

    processor = Pix2PixNeon()
    params = processor.parse_params({"size": 64})
    model = processor.load(params, WeightStore(), torch.device("cpu"))  # the committed demo weights
    image = gradient_image(64, 80)

    def run(_: int) -> torch.Tensor:
        return processor.process(image, model, params, StepContext(torch.device("cpu"), (80, 64), seed=3))

    alone = run(0)
    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(run, range(16)))
    assert all(torch.equal(alone, result) for result in side_by_side)


def test_an_extremely_elongated_image_is_refused_before_padding_blows_up():
    processor = Pix2PixNeon()
    params = processor.parse_params({})
    model = processor.load(params, WeightStore(), torch.device("cpu"))
    with pytest.raises(ImageError, match="too elongated"):
        processor.process(torch.rand(1, 3, 8, 20000), model, params, StepContext(torch.device("cpu"), (20000, 8)))


@pytest.mark.parametrize("tensors, message", [
    ({"enc_conv0.0.weight": torch.zeros(384, 3, 3, 3)}, "width 384 is outside 1..128; refused before building"),
    ({"enc_conv0.0.weight": torch.tensor(1.0)}, "'enc_conv0.0.weight' has shape \\[\\]"),
    ({"colour": torch.zeros(3)}, "no 'enc_conv0.0.weight' tensor"),
    ({"enc_conv0.0.weight": torch.zeros(8, 3, 3, 3)}, "does not fit the CycleUNet layout of width 8 \\(missing"),
])
def test_hostile_or_foreign_weights_are_refused_at_import_without_building_anything(tmp_path, tensors, message):
    from safetensors.torch import save_file

    from support import run_cli

    isolated_env = {**os.environ, "ARTCHAIN_WEIGHTS_DIR": str(tmp_path / "weights")}
    poisoned = tmp_path / "poisoned.safetensors"
    save_file(tensors, str(poisoned))
    result = run_cli("weights", "import", poisoned, "--as", "cyclegan-cubism", env=isolated_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr
    assert "imported" not in run_cli("weights", "list", env=isolated_env).stdout.split("cyclegan-cubism")[1][:40]


def test_a_neon_file_imported_as_a_cubism_style_is_refused(tmp_path):
    from support import REPO, run_cli

    isolated_env = {**os.environ, "ARTCHAIN_WEIGHTS_DIR": str(tmp_path / "weights")}
    result = run_cli("weights", "import", REPO / "weights" / "pix2pix-neon.safetensors", "--as", "cyclegan-cubism",
                     env=isolated_env)
    assert result.returncode == 1 and "not a GAN generator checkpoint: no 'enc_conv0.0.weight'" in result.stderr
