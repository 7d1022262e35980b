"""Training: CycleGAN (unpaired photos -> paintings) and pix2pix (paired source -> target).

Both share one loop (`train`): resume from the run directory's checkpoint (networks and optimisers;
the crop order and the image pool start afresh), a rich progress bar with
the current losses, periodic sample grids and checkpoints, and at the end an export of the generator
in the plugin's weights format (fp16 safetensors) together with its manifest entry.

* CycleGAN: two generators (`CycleUNet`), two PatchGAN discriminators, least-squares GAN loss, cycle
  and identity L1 losses, and a pool of past fakes for the discriminators (Zhu et al. 2017).
* paired (pix2pix's objective, Isola et al. 2017): a generator (`Pix2PixUNet`, or the seed's
  `CycleUNet` for styles learned from teacher-made pairs) and a conditional PatchGAN on (source, image)
  pairs, GAN loss plus L1 to the target.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from artchain.core.errors import ArtchainError
from artchain.core.imageops import fit_short_side, resize

from .networks import (CycleUNet, PatchDiscriminator, Pix2PixUNet, init_gan_weights,
                       init_upsampling_without_lattice, tie_upsampling_phases)
from .processors import to_grayscale_rgb

# What the lattice penalty measures the result against: the teacher's target, or the source photo
# (where the teacher's own rendering holds a lattice, only the latter removes it).
LATTICE_REFERENCES = ("target", "source")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
CHECKPOINT = "checkpoint.pt"


class TrainingError(ArtchainError):
    """Training data or options are unusable."""


@dataclass
class TrainOptions:
    weight_id: str
    out_dir: Path
    iterations: int = 2000
    width: int = 32
    crop: int = 128
    batch_size: int = 1
    lr: float = 2e-4
    sample_every: int = 200
    checkpoint_every: int = 200
    seed: int = 0
    export: Path | None = None  # defaults to out_dir / f"{weight_id}.safetensors"
    data_note: str = ""  # what the data is, for the manifest's provenance
    bf16: bool = False  # autocast the steps to bfloat16 (measured 1.6x faster on an AVX512-BF16 CPU)
    init_from: Path | None = None  # a generator export or run checkpoint to start from, not random weights
    device: str = "cpu"  # where the networks train: cpu, cuda or cuda:N
    max_minutes: float = 0.0  # stop (checkpointed and exported) after this long in this run; 0 = no limit


@dataclass
class TrainResult:
    export: Path
    manifest_entry: dict
    losses: list[dict[str, float]] = field(default_factory=list)  # one record per iteration run


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise TrainingError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainingError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _read_image(path: Path, short_side: int | None) -> torch.Tensor:
    """The image scaled to short side `short_side`, or at its own size with None."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise TrainingError(f"{path}: not a readable image ({exc})") from None
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    if short_side is None:
        return tensor[0]
    height, width = fit_short_side(*tensor.shape[-2:], short_side)
    return resize(tensor, height, width)[0]


class CropSampler:
    """Random crops (with horizontal flips) of images held in memory, each scaled to short side `crop`
    or a little more; with `paired`, the same crop of two equally sized lists of images. With
    `keep_scale`, images keep their own size (scaled up only where smaller than the crop): pairs
    rendered at the working resolution must be learned at that resolution, or the brush strokes
    the network learns come out smaller than the teacher's by the scale factor."""

    def __init__(self, *folders_files: list[Path], crop: int, generator: torch.Generator,
                 paired: bool = False, keep_scale: bool = False, device: str = "cpu") -> None:
        load_side = int(crop * 1.12)
        self.sets = [[_read_image(path, None if keep_scale else load_side) for path in files]
                     for files in folders_files]
        if keep_scale:
            self.sets = [[image if min(image.shape[-2:]) >= crop
                          else resize(image[None], *fit_short_side(*image.shape[-2:], load_side))[0]
                          for image in images] for images in self.sets]
        if paired:  # one crop position serves both images of a pair only if they are the same shape
            for paths, images in zip(zip(*folders_files), zip(*self.sets)):
                if len({tuple(image.shape) for image in images}) > 1:
                    raise TrainingError(f"{' and '.join(map(str, paths))}: the two images of a pair must "
                                        "have the same aspect ratio")
        self.crop = crop
        self.generator = generator
        self.device = torch.device(device)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, set_index: int, batch_size: int, paired: bool = False) -> list[torch.Tensor]:
        """A batch from set `set_index`, or with `paired` from every set at the same indices."""
        chosen_sets = self.sets if paired else [self.sets[set_index]]
        batches: list[list[torch.Tensor]] = [[] for _ in chosen_sets]
        for _ in range(batch_size):
            index = self._randint(len(chosen_sets[0]))
            height, width = chosen_sets[0][index].shape[-2:]
            top, left = self._randint(height - self.crop + 1), self._randint(width - self.crop + 1)
            flip = self._randint(2) == 1
            for images, batch in zip(chosen_sets, batches):
                tile = images[index][:, top:top + self.crop, left:left + self.crop]
                batch.append(tile.flip(-1) if flip else tile)
        return [torch.stack(batch).to(self.device) * 2 - 1 for batch in batches]


class ImagePool:
    """Past generated images, half of which replace the newest fakes shown to a discriminator, so it
    does not forget earlier generator modes (Shrivastava et al. 2017, as CycleGAN uses it)."""

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        chosen = []
        for image in fakes.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                chosen.append(image)
            elif random.random() < 0.5:
                slot = random.randrange(self.size)
                chosen.append(self.images[slot])
                self.images[slot] = image
            else:
                chosen.append(image)
        return torch.stack(chosen)


def _check_crop(crop: int, multiple: int) -> None:
    if crop % multiple:
        raise TrainingError(f"--crop must be a multiple of {multiple} for this network, got {crop}")


def _on_device(networks: dict[str, nn.Module], device: str) -> dict[str, nn.Module]:
    # Before the optimisers are made, so their state lives where the parameters do.
    return {name: network.to(device) for name, network in networks.items()}


def _adam(*modules: nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=lr, betas=(0.5, 0.999))


class GanTrainer:
    """One kind of GAN training: its networks, optimisers, a training step and sample grids."""

    kind: str
    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    preview: tuple[torch.Tensor, torch.Tensor]  # fixed inputs for the sample grids
    loss_weights: dict[str, float]  # recorded in the export's provenance
    method_note = ""  # anything else about the method the provenance should say

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def sample_grid(self) -> torch.Tensor:
        raise NotImplementedError

    def generator(self) -> nn.Module:
        """The network exported for inference."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"networks": {k: v.state_dict() for k, v in self.networks.items()},
                "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, network in self.networks.items():
            network.load_state_dict(state["networks"][key])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])


class CycleGanTrainer(GanTrainer):
    kind = "cyclegan"

    def __init__(self, photos: Path, paintings: Path, options: TrainOptions, generator: torch.Generator,
                 cycle_weight: float = 10.0, identity_weight: float = 0.5) -> None:
        _check_crop(options.crop, CycleUNet.size_multiple)
        self.options = options
        self.data = CropSampler(image_files(photos), image_files(paintings), crop=options.crop,
                                generator=generator, device=options.device)
        self.networks = {
            "photo_to_painting": CycleUNet(options.width), "painting_to_photo": CycleUNet(options.width),
            "photo_critic": PatchDiscriminator(3, options.width),
            "painting_critic": PatchDiscriminator(3, options.width),
        }
        for network in self.networks.values():
            init_gan_weights(network)
        self.networks = _on_device(self.networks, options.device)
        n = self.networks
        self.optimizers = {
            "generators": _adam(n["photo_to_painting"], n["painting_to_photo"], lr=options.lr),
            "critics": _adam(n["photo_critic"], n["painting_critic"], lr=options.lr),
        }
        self.fake_photo_pool, self.fake_painting_pool = ImagePool(), ImagePool()
        self.loss_weights = {"cycle": cycle_weight, "identity": identity_weight}
        self.preview = (self.data.sample(0, 4)[0], self.data.sample(1, 4)[0])

    def step(self) -> dict[str, float]:
        n = self.networks
        photo = self.data.sample(0, self.options.batch_size)[0]
        painting = self.data.sample(1, self.options.batch_size)[0]
        fake_painting, fake_photo = n["photo_to_painting"](photo), n["painting_to_photo"](painting)

        critics = (n["photo_critic"], n["painting_critic"])
        for critic in critics:
            critic.requires_grad_(False)
        adversarial = (_lsgan(n["painting_critic"](fake_painting), True)
                       + _lsgan(n["photo_critic"](fake_photo), True))
        cycle = (F.l1_loss(n["painting_to_photo"](fake_painting), photo)
                 + F.l1_loss(n["photo_to_painting"](fake_photo), painting))
        identity = (F.l1_loss(n["photo_to_painting"](painting), painting)
                    + F.l1_loss(n["painting_to_photo"](photo), photo))
        weights = self.loss_weights
        generator_loss = adversarial + weights["cycle"] * (cycle + weights["identity"] * identity)
        self.optimizers["generators"].zero_grad()
        generator_loss.backward()
        self.optimizers["generators"].step()

        for critic in critics:
            critic.requires_grad_(True)
        critic_loss = 0.5 * (
            _lsgan(n["painting_critic"](painting), True)
            + _lsgan(n["painting_critic"](self.fake_painting_pool.query(fake_painting)), False)
            + _lsgan(n["photo_critic"](photo), True)
            + _lsgan(n["photo_critic"](self.fake_photo_pool.query(fake_photo)), False))
        self.optimizers["critics"].zero_grad()
        critic_loss.backward()
        self.optimizers["critics"].step()
        return {"G": adversarial.item(), "cycle": cycle.item(), "idt": identity.item(),
                "D": critic_loss.item()}

    def sample_grid(self) -> torch.Tensor:
        """Rows: photos, their paintings, the photos back; paintings, their photos."""
        photos, paintings = self.preview
        with torch.no_grad():
            fake_paintings = self.networks["photo_to_painting"](photos)
            rows = [photos, fake_paintings, self.networks["painting_to_photo"](fake_paintings),
                    paintings, self.networks["painting_to_photo"](paintings)]
        return torch.cat(rows)

    def generator(self) -> nn.Module:
        return self.networks["photo_to_painting"]


class PairedTrainer(GanTrainer):
    """The pix2pix objective (conditional PatchGAN on (source, image) plus L1 to the target) for either
    generator: `Pix2PixUNet` (kind "pix2pix") or the seed's `CycleUNet` (kind "paired"), which learns a
    style from teacher-made pairs far faster than from unpaired paintings."""

    def __init__(self, source: Path, target: Path, options: TrainOptions, generator: torch.Generator,
                 l1_weight: float = 100.0, grayscale_source: bool = True,
                 network: type[CycleUNet] | type[Pix2PixUNet] = Pix2PixUNet, keep_scale: bool = False,
                 features: "FeatureLoss | None" = None, lattice_weight: float = 0.0,
                 lattice_reference: str = "target") -> None:
        _check_crop(options.crop, network.size_multiple)
        if lattice_reference not in LATTICE_REFERENCES:
            raise TrainingError(f"lattice reference {lattice_reference!r}: choose {' or '.join(LATTICE_REFERENCES)}")
        self.kind = "pix2pix" if network is Pix2PixUNet else "paired"
        self.method_note = ", transposed-convolution phases tied after every step (no 2-px lattice)"
        self.options = options
        source_files, target_files = image_files(source), image_files(target)
        target_by_stem = {path.stem: path for path in target_files}
        pairs = [(path, target_by_stem[path.stem]) for path in source_files if path.stem in target_by_stem]
        if not pairs:
            raise TrainingError(f"no file names shared by {source} and {target}: pairs are matched by name")
        self.data = CropSampler([s for s, _ in pairs], [t for _, t in pairs], crop=options.crop,
                                generator=generator, paired=True, keep_scale=keep_scale, device=options.device)
        self.networks = _on_device(
            {"generator": init_upsampling_without_lattice(init_gan_weights(network(options.width))),
             "critic": init_gan_weights(PatchDiscriminator(6, options.width))}, options.device)
        self.optimizers = {"generator": _adam(self.networks["generator"], lr=options.lr),
                           "critic": _adam(self.networks["critic"], lr=options.lr)}
        self.grayscale_source = grayscale_source
        self.loss_weights = {"L1": l1_weight}
        self.features = features
        self.lattice_reference = lattice_reference
        if lattice_weight:
            self.loss_weights["lattice"] = lattice_weight
            if lattice_reference == "source":
                self.method_note += ", lattice counted beyond the source photo's"
        if features is not None:
            self.loss_weights["feature"] = features.weight
            self.method_note += f", feature loss on {features.name}"
        self.preview = self._pairs(4)

    def _pairs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = self.data.sample(0, batch_size, paired=True)
        if self.grayscale_source:
            source = to_grayscale_rgb(source)
        return source, target

    def step(self) -> dict[str, float]:
        generator, critic = self.networks["generator"], self.networks["critic"]
        tie_upsampling_phases(generator)  # idempotent; covers weights from a checkpoint or --init
        source, target = self._pairs(self.options.batch_size)
        fake = generator(source)

        critic_loss = 0.5 * (_bce(critic(torch.cat([source, target], 1)), True)
                             + _bce(critic(torch.cat([source, fake.detach()], 1)), False))
        self.optimizers["critic"].zero_grad()
        critic_loss.backward()
        self.optimizers["critic"].step()

        critic.requires_grad_(False)
        adversarial = _bce(critic(torch.cat([source, fake], 1)), True)
        l1 = F.l1_loss(fake, target)
        generator_loss = adversarial + self.loss_weights["L1"] * l1
        losses = {"G": adversarial.item(), "L1": l1.item(), "D": critic_loss.item()}
        if "lattice" in self.loss_weights:
            lattice = lattice_excess(fake, source if self.lattice_reference == "source" else target)
            generator_loss = generator_loss + self.loss_weights["lattice"] * lattice
            losses["lattice"] = lattice.item()
        if self.features is not None:
            feature = self.features(fake, target)
            generator_loss = generator_loss + self.loss_weights["feature"] * feature
            losses["feat"] = feature.item()
        self.optimizers["generator"].zero_grad()
        generator_loss.backward()
        self.optimizers["generator"].step()
        tie_upsampling_phases(generator)
        critic.requires_grad_(True)
        return losses

    def sample_grid(self) -> torch.Tensor:
        """Rows: sources, generated images, targets (the generator in training mode, as it runs)."""
        source, target = self.preview
        with torch.no_grad():
            return torch.cat([source, self.networks["generator"](source), target])

    def generator(self) -> nn.Module:
        return self.networks["generator"]


def lattice_excess(fake: torch.Tensor, target: torch.Tensor, window: int = 4) -> torch.Tensor:
    """How much more 2-pixel lattice `fake` holds than `target`: each image times the alternating
    row, column and checkerboard signs, averaged over `window`-pixel squares. Texture's own finest
    detail is incoherent and averages out; a lattice that an upsampling or downsampling layer prints
    keeps its sign across the square and stays (the spectrum's half-sampling lines, where
    `quality.half_sampling_ratio` measures it)."""
    rows = 1 - 2 * (torch.arange(fake.shape[-2], device=fake.device) % 2).to(fake.dtype)[:, None]
    columns = 1 - 2 * (torch.arange(fake.shape[-1], device=fake.device) % 2).to(fake.dtype)[None, :]
    excess = fake.new_zeros(())
    for sign in (rows, columns, rows * columns):
        printed = F.avg_pool2d(fake * sign, window).abs()
        wanted = F.avg_pool2d(target * sign, window).abs()
        excess = excess + F.relu(printed - wanted).mean()
    return excess


class FeatureLoss:
    """L1 between a frozen ImageNet network's activations of the generated image and of the target,
    per layer relative to the target's mean activation. L1 on pixels alone regresses to the mean of
    what the target could be and blurs the teacher's strokes; matching the activations that respond
    to strokes and edges keeps them."""

    def __init__(self, network: nn.Module, layers: tuple[str, ...], weight: float, name: str) -> None:
        self.network, self.layers, self.weight, self.name = network, layers, weight, name

    def __call__(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        both = self.network((torch.cat([fake, target]) + 1) / 2, self.layers)
        total = fake.new_zeros(())
        for layer in self.layers:
            generated, wanted = both[layer].float().chunk(2)
            total = total + F.l1_loss(generated, wanted) / wanted.abs().mean().clamp_min(1e-6)
        return total / len(self.layers)


def _lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def export_generator(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """fp16 safetensors of the generator's state dict; the width is also readable from the shapes."""
    from safetensors.torch import save_file

    state = {key: (value.half() if value.is_floating_point() else value).contiguous()
             for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def manifest_entry(weight_id: str, path: Path, provenance: str) -> dict:
    from artchain.core.weights import sha256_of

    return {"id": weight_id, "plugin": "gan", "file": path.name, "sha256": sha256_of(path),
            "size": path.stat().st_size,
            "licence": "the training images' terms decide (listed in the provenance); artchain's code is MIT",
            "provenance": provenance}


def train(trainer: GanTrainer, options: TrainOptions, console=None) -> TrainResult:
    """Runs (or resumes) `trainer` to `options.iterations`, then exports its generator."""
    import yaml
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from torchvision.utils import save_image

    console = console or Console()
    out_dir = Path(options.out_dir)
    samples = out_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT
    start, seconds_before = 0, 0.0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved["kind"] != trainer.kind or saved["width"] != options.width:
            raise TrainingError(f"{checkpoint}: a {saved['kind']} run of width {saved['width']}, "
                                f"not {trainer.kind} of width {options.width}; use another --out")
        trainer.load_state_dict(saved["trainer"])
        start, seconds_before = saved["iteration"], saved["seconds"]
        console.print(f"resuming {checkpoint} at iteration {start}")
    elif options.init_from:
        load_generator_export(trainer.generator(), options.init_from)
    for network in trainer.networks.values():
        network.train()

    def save_checkpoint(iteration: int) -> None:
        state = {"kind": trainer.kind, "width": options.width, "iteration": iteration,
                 "seconds": seconds_before + time.monotonic() - started, "trainer": trainer.state_dict()}
        torch.save(state, checkpoint.with_suffix(".part"))
        checkpoint.with_suffix(".part").replace(checkpoint)

    losses: list[dict[str, float]] = []
    started = time.monotonic()
    columns = (TextColumn(f"{trainer.kind} {options.weight_id}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"))
    finished = start
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=options.iterations, completed=start, losses="")
        for iteration in range(start + 1, options.iterations + 1):
            with torch.autocast(torch.device(options.device).type, dtype=torch.bfloat16, enabled=options.bf16):
                losses.append(trainer.step())
            finished = iteration
            progress.update(task, advance=1,
                            losses="  ".join(f"{k} {v:.3f}" for k, v in losses[-1].items()))
            out_of_time = bool(options.max_minutes) and time.monotonic() - started >= options.max_minutes * 60
            last = iteration == options.iterations or out_of_time
            if iteration % options.sample_every == 0 or last:
                grid = (trainer.sample_grid() + 1) / 2
                save_image(grid, samples / f"{iteration:06d}.png", nrow=trainer.preview[0].shape[0])
            if iteration % options.checkpoint_every == 0 or last:
                save_checkpoint(iteration)
            if out_of_time:
                console.print(f"stopped at iteration {iteration} of {options.iterations}: --max-minutes "
                              f"{options.max_minutes:g} reached (the same command resumes)")
                break
    seconds = seconds_before + time.monotonic() - started

    export = options.export or out_dir / f"{options.weight_id}.safetensors"
    generator = trainer.generator()
    metadata = {"format": "artchain-gan", "kind": trainer.kind, "width": str(options.width),
                "iterations": str(finished), "crop": str(options.crop),
                "train_seconds": f"{seconds:.0f}"}
    export_generator(generator, export, metadata)
    start_note = f", started from {options.init_from.name}" if options.init_from else ""
    provenance = (f"trained by `artchain train {trainer.kind}`: {finished} iterations, "
                  f"batch {options.batch_size}, {options.crop}px crops, width {options.width}, lr {options.lr:g}, "
                  f"loss weights {', '.join(f'{k} {v:g}' for k, v in trainer.loss_weights.items())}"
                  f"{trainer.method_note}{', bfloat16 autocast' if options.bf16 else ''}{start_note}, {seconds / 60:.1f} min on "
                  f"{hardware_note(options.device)}. {options.data_note}").strip()
    entry = manifest_entry(options.weight_id, export, provenance)
    entry_text = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=100)
    (out_dir / "manifest-entry.yaml").write_text(entry_text, encoding="utf-8")
    console.print(f"exported {export}; manifest entry (also in {out_dir / 'manifest-entry.yaml'}):")
    console.print(entry_text, markup=False, highlight=False)
    return TrainResult(export, entry, losses)


def load_generator_export(generator: nn.Module, path: Path) -> None:
    """Fills `generator` from an fp16 export, or from a run's checkpoint.pt, of the same architecture
    and width (a warm start: another style's network already knows photos and brushwork)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)["trainer"]["networks"]["generator"]
        else:
            state = load_file(str(path))
        generator.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except (OSError, SafetensorError, RuntimeError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{path}: cannot start from it ({first_line})") from None


def hardware_note(device: str = "cpu") -> str:
    """The hardware as provenance and timings need it: the GPU's name and memory, or the CPU's
    model, cores and the flags that decide its speed."""
    import os
    import platform
    import re

    if torch.device(device).type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"GPU {properties.name} ({properties.total_memory / 2**30:.0f} GiB, torch {torch.__version__})"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    present = [flag for flag in wanted if flags and flag in flags.group(1).split()]
    return (f"CPU {model.group(1).strip() if model else platform.machine()} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads; flags {' '.join(present) or 'none of AVX2/AVX512/AMX'})")


def seeded_generator(seed: int) -> torch.Generator:
    """Seeds torch and the image pool's `random` too, so a run is repeatable."""
    torch.manual_seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)
