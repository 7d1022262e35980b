"""The engine: model cache, device choice, progress, cancellation, thread safety, Python API."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

import artchain
from artchain.core.engine import Engine, ModelCache, pick_device
from artchain.core.chain import StepSpec
from artchain.core.errors import Cancelled, ChainError, ImageError, WeightsError
from artchain.core.hookspecs import hookimpl
from artchain.core.imageio import from_pil
from artchain.core.plugins import discover
from artchain.core.job import InputFile, Job, run_job
from artchain.core.processor import ImageFile, InputNeeds, Param, Processor
from artchain.core.weights import WeightStore
from artchain.runtime import load_settings
from support import run_cli


class Tint(Processor):
    """Adds a learned-looking offset: a real nn.Module whose loading the tests count."""

    name = "tint"
    description = "test: add a per-channel offset held in a model"
    params = (Param("amount", float, 0.25),)
    needs = InputNeeds(min_side=4)
    builds = 0

    def model_key(self, params):
        return (params["amount"],)

    def load(self, params, store, device):
        type(self).builds += 1
        layer = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            layer.bias.fill_(params["amount"])
        return layer.to(device)

    def process(self, batch, model, params, ctx):
        for row in range(0, batch.shape[-2], 8):
            ctx.cancel.check()
            ctx.progress(row / batch.shape[-2])
        return model(batch).clamp(0, 1)


class NeedsWeights(Processor):
    name = "weighty"
    description = "test: needs a weight that is not there"
    weights = ("absent",)


class Overlay(Processor):
    """Reads image files: pastes each given picture's mean colour into the top-left pixel."""

    name = "overlay"
    description = "test: a step with an image-file parameter"
    params = (Param("pictures", ImageFile, help="images to read", multiple=True),)
    runs = 0

    def process(self, batch, model, params, ctx):
        type(self).runs += 1
        out = batch.clone()
        for picture in params["pictures"]:
            out[:, :, 0, 0] = torch.tensor(picture.rgb.resize((1, 1)).getpixel((0, 0))) / 255
        return out


class TestPlugin:
    @hookimpl
    def artchain_processors(self):
        return [Tint, NeedsWeights, Overlay]


MANIFEST = """weights:
- {id: absent, plugin: test, file: absent.bin, sha256: '%s', licence: MIT, provenance: test,
   urls: ['http://127.0.0.1:9/absent.bin']}
""" % ("a" * 64)


@pytest.fixture
def engine(tmp_path):
    config = load_settings(environ={})
    config.device = "cpu"
    return Engine(config, discover([TestPlugin()]), WeightStore(tmp_path, MANIFEST))


def grey(width=32, height=24):
    return Image.new("RGB", (width, height), (100, 100, 100))


def test_runs_a_chain_and_reports_steps(engine):
    seen = []
    result = engine.execute(engine.check("tint,resize:scale=2"), from_pil(grey(), engine.config.limits),
                            progress=lambda i, n, name, f: seen.append((i, n, name, f)))
    assert result.image.size == (64, 48)
    assert result.image.getpixel((10, 10))[0] == round((100 / 255 + 0.25) * 255)
    assert [t.name for t in result.timings] == ["tint", "resize:scale=2.0"]
    assert (0, 2, "tint", 1.0) in seen and (1, 2, "resize", 1.0) in seen


def test_models_load_once_per_key(engine):
    Tint.builds = 0
    for _ in range(3):
        engine.run("tint", grey())
    engine.run("tint:amount=0.5", grey())
    assert Tint.builds == 2


def test_concurrent_runs_share_one_load(engine):
    Tint.builds = 0
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda amount: engine.run(f"tint:amount={amount}", grey()),
                                [0.1, 0.2] * 8))
    assert Tint.builds == 2
    assert {r.getpixel((0, 0))[0] for r in results} == {round((100 / 255 + a) * 255) for a in (0.1, 0.2)}


def test_cache_evicts_least_recently_used_by_bytes():
    cache = ModelCache(budget_bytes=600)  # room for one 440-byte model, not two
    make = lambda: torch.nn.Linear(10, 10)  # 110 floats: 440 bytes
    cache.get(("a",), make)
    cache.get(("b",), make)
    assert cache.keys() == [("b",)]
    cache.get(("b",), make)
    assert cache.loads == 2
    cache.get(("huge",), lambda: torch.nn.Linear(100, 100))  # bigger than the budget: used, not kept
    assert cache.keys() == [("b",)]


def test_weights_are_checked_before_any_work(engine):
    Tint.builds = 0
    with pytest.raises(WeightsError, match="artchain weights pull absent"):
        engine.run("tint,weighty", grey())
    assert Tint.builds == 0


def test_cancellation_stops_the_run(engine):
    from artchain.core.processor import CancelToken

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.execute(engine.check("tint"), from_pil(grey(), engine.config.limits), cancel=token)


def test_too_small_input_is_refused_clearly(engine):
    with pytest.raises(ImageError, match="tint: image 2x3 is too small"):
        engine.run("tint", grey(2, 3))


def test_alpha_survives_the_chain(engine):
    image = Image.new("RGBA", (16, 16), (100, 100, 100, 255))
    image.putpixel((0, 0), (100, 100, 100, 0))
    out = engine.run("tint,resize:scale=2", image)
    assert out.mode == "RGBA" and out.size == (32, 32) and out.getpixel((0, 0))[3] < 128


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(ChainError, match="no CUDA device"):
            pick_device("cuda")


def test_python_api_with_builtin_plugins(isolated_env):
    out = artchain.run("resize:width=20", grey(40, 30))
    assert out.size == (20, 15)


def test_a_model_wrapped_with_its_network_is_counted_by_the_cache():
    from artchain.core.engine import model_bytes

    class Wrapped:
        network = torch.nn.Linear(100, 100)

    assert model_bytes(Wrapped()) == (100 * 100 + 100) * 4


def png(colour, size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_check_step_decodes_the_files_a_step_reads(engine):
    plan = engine.check([StepSpec("overlay")], {(0, "pictures"): (InputFile("red", png((255, 0, 0))),
                                                                  InputFile("blue", png((0, 0, 255))))})
    pictures = plan.params[0]["pictures"]
    assert [picture.size for picture in pictures] == [(8, 8), (8, 8)]
    result = engine.execute(plan, from_pil(grey(), engine.config.limits)).image
    assert result.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("files, message", [
    ({}, "parameter pictures is required"),
    ({(0, "pictures"): (InputFile("style.png", b"not an image at all"),)}, "overlay pictures style.png"),
    ({(0, "pictures"): (InputFile("ok", png((1, 2, 3))), InputFile("huge.png", png((0, 0, 0), (300, 300))))},
     "huge.png"),
])
def test_the_check_step_refuses_bad_files_before_any_work(engine, files, message):
    engine.config.limits.max_pixels = 200 * 200
    builds = Tint.builds
    job = Job((StepSpec("tint", {"amount": "0.125"}), StepSpec("overlay")), InputFile("in", png((9, 9, 9))),
              {(1, key[1]): value for key, value in files.items()})
    with pytest.raises((ChainError, ImageError), match=message):
        run_job(engine, job)
    assert Tint.builds == builds  # refused before the first step's model was even loaded


def test_a_named_file_the_job_does_not_carry_is_refused(engine):
    with pytest.raises(ChainError, match="the job does not include elsewhere.png"):
        engine.check("overlay:pictures=elsewhere.png")


def test_a_chain_that_would_grow_past_the_pixel_limit_is_refused_before_work(engine, tmp_path, isolated_env):
    builds = Tint.builds
    with pytest.raises(ImageError, match="resize:width=30000:height=30000:enlarge=True: would make a 30000x30000"):
        engine.run("tint:amount=0.3,resize:width=30000:height=30000:enlarge=true", grey())
    assert Tint.builds == builds  # the first step's model was never loaded
    source = tmp_path / "in.png"
    grey().save(source)
    result = run_cli("run", "resize:width=30000:height=30000:enlarge=true", source, "-o", tmp_path / "big.png",
                     env=isolated_env)
    assert result.returncode == 1 and "over the limit of 50000000 pixels" in result.stderr
    assert not (tmp_path / "big.png").exists()


def test_a_first_load_is_reported_as_such(engine):
    names = []
    plan = engine.check("tint:amount=0.75")
    for _ in range(2):
        engine.execute(plan, from_pil(grey(), engine.config.limits), progress=lambda i, n, name, f: names.append(name))
    assert names.count("tint (loading the model)") == 1 and names[-1] == "tint"
