"""Which files a `run` reads and writes: inputs from files, folders and globs, and one distinct
output path for each, decided before any work so nothing is overwritten by surprise.

Naming (the README's "Output files"): `NAME.CHAIN.EXT` beside the input, in `--out-dir`, or in a
folder given as `-o`; `--suffix S` makes it `NAME_S.EXT`. A chain text too long for a file name is
shortened and given a hash of the whole text, so different chains never share a name. Inputs that
would still share an output (`a/x.png` and `b/x.png` into one folder, `x.tif` and `x.png` both
written as PNG) get `-2`, `-3`, ... in the order given.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# What a folder given as input contributes (by name; the content is checked when it is read).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
WRITABLE = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MAX_SLUG = 48


class BatchError(ValueError):
    """A batch that cannot be run as asked; the message is one line for the user."""


def chain_slug(chain: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", chain).strip("-") or "out"
    if len(slug) <= MAX_SLUG:
        return slug
    return f"{slug[:MAX_SLUG].rstrip('-')}-{hashlib.sha256(chain.encode()).hexdigest()[:8]}"


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def expand_inputs(given: list[Path], recursive: bool) -> list[Path]:
    """Files as given; folders contribute their image files (hidden ones skipped), sorted."""
    inputs: list[Path] = []
    for path in given:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            inputs += sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                             and not any(is_hidden(part) for part in p.relative_to(path).parents if part.name)
                             and not is_hidden(p))
        else:
            inputs.append(path)
    return list(dict.fromkeys(inputs))  # a file named twice is one input


@dataclass(frozen=True)
class Naming:
    chain: str
    out_dir: Path | None = None
    output: Path | None = None  # one file, exactly
    suffix: str | None = None
    ext: str | None = None  # png, jpg, webp; None = the input's when writable, else png

    def __post_init__(self) -> None:
        if self.ext is not None and f".{self.ext.lower().lstrip('.')}" not in WRITABLE:
            raise BatchError(f"--ext {self.ext}: use one of png, jpg, jpeg, webp")
        if self.suffix is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.suffix):
            raise BatchError(f"--suffix {self.suffix!r}: use letters, digits, '.', '_' or '-'")

    def extension(self, source: Path) -> str:
        if self.ext is not None:
            return f".{self.ext.lower().lstrip('.')}"
        suffix = source.suffix.lower()
        return suffix if suffix in WRITABLE else ".png"

    def marker(self) -> str:
        """What artchain adds to a name: recognises its own outputs among inputs."""
        return f"_{self.suffix}" if self.suffix is not None else f".{chain_slug(self.chain)}"

    def destination(self, source: Path) -> Path:
        if self.output is not None:
            return self.output
        return (self.out_dir or source.parent) / f"{source.stem}{self.marker()}{self.extension(source)}"


COMPARISON = ".compare"  # marks the side-by-side file of --compare: NAME.CHAIN.compare.EXT


def is_own_output(source: Path, naming: Naming) -> bool:
    return source.stem.removesuffix(COMPARISON).endswith(naming.marker())


@dataclass(frozen=True)
class Planned:
    source: Path
    destination: Path
    comparison: Path | None = None  # input and output side by side (--compare)

    @property
    def written(self) -> tuple[Path, ...]:
        return (self.destination,) if self.comparison is None else (self.destination, self.comparison)


def plan(inputs: list[Path], naming: Naming, overwrite: bool, skip_existing: bool,
         from_folder_or_glob: bool, compare: bool = False) -> tuple[list[Planned], list[Planned], list[Path]]:
    """(to run, to skip because their output exists, inputs left out as artchain's own outputs).
    Raises BatchError for what no flag can make safe (an output that is an input) and for an
    existing output when neither --overwrite nor --skip-existing was given. With `compare`, the
    side-by-side file (NAME.CHAIN.compare.EXT) counts as an output too."""
    left_out = [p for p in inputs if from_folder_or_glob and is_own_output(p, naming)]
    inputs = [p for p in inputs if p not in left_out]
    sources = {p.resolve() for p in inputs}
    taken: set[Path] = set()
    runs, skips = [], []
    for source in inputs:
        destination = _distinct(naming.destination(source), taken)
        comparison = destination.with_name(f"{destination.stem}{COMPARISON}{destination.suffix}") if compare else None
        planned = Planned(source, destination, comparison)
        taken.update(path.resolve() for path in planned.written)
        for path in planned.written:
            if path.resolve() in sources:
                raise BatchError(f"{path}: the output would replace an input; choose another -o, --out-dir "
                                 "or --suffix")
        existing = [path for path in planned.written if path.exists()]
        if existing and not overwrite:
            if not skip_existing:
                raise BatchError(f"{existing[0]} exists; pass --overwrite to replace it or --skip-existing "
                                 "to leave it")
            skips.append(planned)
            continue
        runs.append(planned)
    return runs, skips, left_out


def _distinct(destination: Path, taken: set[Path]) -> Path:
    candidate, number = destination, 1
    while candidate.resolve() in taken:
        number += 1
        candidate = destination.with_name(f"{destination.stem}-{number}{destination.suffix}")
    return candidate
