"""`artchain train cyclegan|paired|pix2pix|pairs`: parse options, call training or pair making, report."""
from __future__ import annotations

import inspect
from pathlib import Path

import typer

train_app = typer.Typer(help="Train GAN styles and export them as artchain weights.", no_args_is_help=True)

# Options every training command takes, name -> (type, option); and those of the two paired commands.
_TRAINING_OPTIONS = {
    "iterations": (int, typer.Option(2000, min=1, help="Optimiser steps in all (a resumed run continues to it).")),
    "batch_size": (int, typer.Option(1, min=1, help="Images per step.")),
    "lr": (float, typer.Option(2e-4, min=0.0, help="Adam learning rate.")),
    "sample_every": (int, typer.Option(200, min=1, help="Write a sample grid every N iterations.")),
    "checkpoint_every": (int, typer.Option(200, min=1, help="Save a resumable checkpoint every N iterations.")),
    "seed": (int, typer.Option(0, help="Seed for initialisation, crops and the image pool.")),
    "export": (Path, typer.Option(None, help="Where to write the fp16 safetensors (default: OUT/ID.safetensors).")),
    "note": (str, typer.Option("", help="What the data is; goes into the manifest entry's provenance.")),
    "bf16": (bool, typer.Option(False, help="Autocast the training steps to bfloat16 (fast on AVX512-BF16/AMX CPUs "
                                            "and on GPUs).")),
    "max_minutes": (float, typer.Option(0.0, min=0.0, help="Stop after this many minutes of this run, checkpointed "
                                                            "and exported (0 = no limit); the same command resumes.")),
    "device": (str, typer.Option("cpu", help="Where to train: cpu, cuda, cuda:N, or auto (a GPU where there is one).")),
    "init": (Path, typer.Option(None, help="Start from this generator export or run checkpoint.pt (same network "
                                           "and width) instead of random weights, e.g. another style's.")),
    "install": (bool, typer.Option(True, help="At the end, install the export as a style of your own under its "
                                              "name (`artchain run NAME photo.jpg`); a built-in style is never "
                                              "replaced.")),
    "description": (str, typer.Option("", help="What the style looks like, for `artchain list` and the chat.")),
}
_PAIRED_OPTIONS = {
    "l1_weight": (float, typer.Option(100.0, min=0.0, help="Weight of the L1 loss to the target.")),
    "feature_weight": (float, typer.Option(0.0, min=0.0, help="Weight of a feature loss (EfficientNet-Lite0 "
                                                              "activations of the result against the target's) "
                                                              "that keeps the target's strokes sharp; 0 = off.")),
    "lattice_weight": (float, typer.Option(0.0, min=0.0, help="Weight of a penalty on any 2-pixel lattice "
                                                              "the result holds beyond the target's; 0 = off.")),
    "lattice_reference": (str, typer.Option("target", help="What the lattice penalty counts beyond: target (the "
                                                           "teacher's painting) or source (the photo, which "
                                                           "also removes a lattice the teacher prints).")),
    "keep_scale": (bool, typer.Option(False, help="Crop the pairs at their own resolution (pairs from `train pairs` "
                                                  "are made at the working resolution) instead of scaling them to "
                                                  "the crop.")),
}


def _with_options(*groups: dict):
    """Appends the groups' options to a command's signature, which is where Typer reads options
    from; the command receives them in its `**options`."""
    def decorate(command):
        signature = inspect.signature(command)
        parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                       for group in groups for name, (kind, option) in group.items()]
        command.__signature__ = signature.replace(parameters=parameters)
        return command
    return decorate


def _train_options(weight_id: str, out: Path | None, width: int, crop: int, options: dict):
    from artchain.core.engine import pick_device
    from artchain.core.errors import ArtchainError

    from .training import TrainOptions

    try:
        device = str(pick_device(options["device"]))
    except ArtchainError as exc:
        typer.echo(f"error: --device: {exc}", err=True)
        raise typer.Exit(2) from None
    return TrainOptions(weight_id, out or Path("runs") / weight_id, options["iterations"], width, crop,
                        options["batch_size"], options["lr"], options["sample_every"], options["checkpoint_every"],
                        options["seed"], options["export"], options["note"], options["bf16"], options["init"],
                        device, options["max_minutes"])


# Blocks at 1/4, 1/8 and 1/16 of the crop: strokes, edges, and shapes of a few strokes.
FEATURE_LAYERS = ("block_1", "block_3", "block_5")


def _feature_loss(ctx: typer.Context, weight: float, device: str):
    if weight == 0:
        return None
    import torch

    from artchain.plugins.nst.backbones import load_feature_net

    from .training import FeatureLoss

    network = load_feature_net("efficientnet-lite0", ctx.obj().store, torch.device(device))
    return FeatureLoss(network, FEATURE_LAYERS, weight, "EfficientNet-Lite0 " + ", ".join(FEATURE_LAYERS))


def _install_plan(ctx: typer.Context, name: str, weight_id: str) -> bool:
    """Whether the export can become the style `name`; checked before training, not hours after."""
    from artchain.core.errors import ArtchainError
    from artchain.core.styles import check_style_name

    runtime = ctx.obj()
    try:
        if weight_id in runtime.store.entries:
            typer.echo(f"{weight_id} is a built-in style's weight id: the export will not be installed "
                       f"(to use it instead: artchain weights import EXPORT --as {weight_id})")
            return False
        check_style_name(runtime.registry, name, runtime.config.presets, replacing=True)
    except ArtchainError as exc:
        typer.echo(f"error: {exc} (or train with --no-install)", err=True)
        raise typer.Exit(2) from None
    return True


def _run(ctx: typer.Context, trainer_factory, options, style: tuple[str, str, str, bool],
         pairs_folder: Path | None = None) -> None:
    """`style`: (name, network, description, install); `pairs_folder`: where `artchain train pairs`
    wrote the data, whose record joins the provenance."""
    from artchain.core.errors import ArtchainError
    from artchain.core.styles import install_style

    from .pairs import pairs_note
    from .training import seeded_generator, train

    name, network, description, install = style
    install = install and _install_plan(ctx, name, options.weight_id)
    try:
        if pairs_folder is not None:
            options.data_note = " ".join(filter(None, (pairs_note(pairs_folder), options.data_note)))
        result = train(trainer_factory(seeded_generator(options.seed)), options)
        if install:
            runtime = ctx.obj()
            install_style(runtime.store, runtime.registry, name, result.export, network, description,
                          weight_id=options.weight_id, taken=runtime.config.presets)
            typer.echo(f"installed as the style {name!r}: artchain run {name} PHOTO "
                       f"(undo: artchain styles remove {name})")
    except ArtchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@train_app.command()
@_with_options(_TRAINING_OPTIONS)
def cyclegan(
    ctx: typer.Context,
    photos: Path = typer.Option(..., help="Folder of photos (domain the generator reads)."),
    paintings: Path = typer.Option(..., help="Folder of paintings in the style (unpaired)."),
    style: str = typer.Option(..., help="Style name; the weights are exported as cyclegan-STYLE."),
    out: Path = typer.Option(None, help="Run folder: checkpoint, samples, export (default runs/cyclegan-STYLE)."),
    width: int = typer.Option(32, min=1, help="Generator/critic width (init_nc); the seed's is 32."),
    crop: int = typer.Option(128, min=16, help="Training crop side, a multiple of 16."),
    cycle_weight: float = typer.Option(10.0, min=0.0, help="Weight of the cycle-consistency L1 loss."),
    identity_weight: float = typer.Option(0.5, min=0.0, help="Identity L1 loss weight, relative to --cycle-weight."),
    **options,
) -> None:
    """CycleGAN: photos -> paintings, unpaired (resumes from OUT/checkpoint.pt when present)."""
    from .training import CycleGanTrainer

    train_options = _train_options(f"cyclegan-{style}", out, width, crop, options)
    _run(ctx, lambda generator: CycleGanTrainer(photos, paintings, train_options, generator, cycle_weight,
                                                identity_weight),
         train_options, (style, "cyclegan", options["description"], options["install"]))


@train_app.command()
@_with_options(_PAIRED_OPTIONS, _TRAINING_OPTIONS)
def pix2pix(
    ctx: typer.Context,
    source: Path = typer.Option(..., help="Folder of input images."),
    target: Path = typer.Option(..., help="Folder of target images; pairs are matched by file name."),
    name: str = typer.Option("neon", help="Style name; the weights are exported as pix2pix-NAME."),
    out: Path = typer.Option(None, help="Run folder: checkpoint, samples, export (default runs/pix2pix-NAME)."),
    width: int = typer.Option(64, min=1, help="Generator/critic width (features); the seed's is 64."),
    crop: int = typer.Option(256, min=256, help="Training crop side, a multiple of 256."),
    grayscale: bool = typer.Option(True, help="Feed the source as grayscale, as pix2pix-neon does."),
    **options,
) -> None:
    """pix2pix: paired source -> target (resumes from OUT/checkpoint.pt when present)."""
    from .networks import Pix2PixUNet

    _train_paired(ctx, Pix2PixUNet, "pix2pix", name, source, target, _train_options(
        f"pix2pix-{name}", out, width, crop, options), grayscale, options)


@train_app.command()
@_with_options(_PAIRED_OPTIONS, _TRAINING_OPTIONS)
def paired(
    ctx: typer.Context,
    source: Path = typer.Option(..., help="Folder of photos (e.g. PAIRS/cubism/source from `train pairs`)."),
    target: Path = typer.Option(..., help="Folder of their styled versions; pairs are matched by file name."),
    style: str = typer.Option(..., help="Style name; the weights are exported as cyclegan-STYLE."),
    out: Path = typer.Option(None, help="Run folder: checkpoint, samples, export (default runs/cyclegan-STYLE)."),
    width: int = typer.Option(32, min=1, help="Generator/critic width (init_nc); the seed's is 32."),
    crop: int = typer.Option(128, min=16, help="Training crop side, a multiple of 16."),
    **options,
) -> None:
    """The seed's CycleGAN generator trained on pairs with pix2pix's objective (resumes when it can)."""
    from .networks import CycleUNet

    _train_paired(ctx, CycleUNet, "cyclegan", style, source, target, _train_options(
        f"cyclegan-{style}", out, width, crop, options), False, options)


def _train_paired(ctx: typer.Context, network, network_name: str, style: str, source: Path, target: Path,
                  train_options, grayscale: bool, options: dict) -> None:
    from .training import PairedTrainer

    _run(ctx, lambda generator: PairedTrainer(source, target, train_options, generator, options["l1_weight"],
                                              grayscale, network=network, keep_scale=options["keep_scale"],
                                              features=_feature_loss(ctx, options["feature_weight"],
                                                                     train_options.device),
                                              lattice_weight=options["lattice_weight"],
                                              lattice_reference=options["lattice_reference"]),
         train_options, (style, network_name, options["description"], options["install"]), source.parent)


@train_app.command()
def pairs(
    school: str = typer.Option(..., help="cubism, renaissance, expressionism or neon (a folder of DATA/paintings)."),
    data: Path = typer.Option(None, help="Dataset from scripts/training_data.py (default: the user cache)."),
    out: Path = typer.Option(None, help="Where the pairs go (default: the user cache's pairs/)."),
    per_photo: int = typer.Option(2, min=1, help="Samples per photo (with --style mixture, each its own)."),
    size: int = typer.Option(384, min=64, max=2048, help="Short side of the pairs in pixels."),
    painting: list[str] = typer.Option(None, "--painting", help="Take the style only from this painting of the "
                                       "school (a file name in DATA/paintings/SCHOOL); repeat for several."),
    style: str = typer.Option("school", help="school: one style, the mean of the school's paintings (a target "
                              "the student can learn sharply; muted for a school of many different "
                              "paintings); mixture: a random mixture of them per sample."),
) -> None:
    """Renders (photo, painted photo) pairs with the fast-style teacher (keeps pairs already made)."""
    from artchain.core.errors import ArtchainError

    from .pairs import default_pairs_dir, make_pairs
    from .training_data import default_dataset_dir

    try:
        record = make_pairs(data or default_dataset_dir(), out or default_pairs_dir(), school, per_photo, size,
                            progress=lambda done, total: typer.echo(f"\r{done}/{total} photos", nl=False),
                            style=style, chosen=tuple(painting or ()))
    except ArtchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"\n{record['written']} new pairs; {record['pairs']} in {(out or default_pairs_dir()) / school}")
