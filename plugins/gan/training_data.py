"""Real training data for the GAN styles, fetched offline from Debian packages and scikit-image.

    python scripts/training_data.py [--out DIR] [--cache DIR]

The only outside machines reachable here are package registries, so the paintings and photographs
come from packages: `gcompris-qt-data` (jigsaw boards of public-domain paintings, Van Gogh pictures,
photographs of monuments and animals, all inside Qt binary resource files), `opencv-doc` (Van Gogh's
*Starry Night* and sample photographs), `ukui-wallpapers` (a neon-glow wallpaper, CC-BY-SA-3.0) and
scikit-image's bundled photographs. The dataset folder is laid out by school:

    paintings/renaissance/    Leonardo, Bellini, Dürer, Bruegel, Arcimboldo
    paintings/expressionism/  Van Gogh: the closest school the packages hold
    paintings/cubism/         Kandinsky's Composition VIII and a faceted study drawn here: no cubist
                              painting is available offline, both are stand-ins
    paintings/neon/           the-mouse.jpg (ukui-wallpapers)
    photos/                   real photographs only, no test charts
    sources.json              artist, title, year, package, version, path and licence of every file

Nothing of it belongs in the repository. A second run downloads and writes only what is missing or
no longer matches its recorded checksum.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageDraw

from artchain.core.errors import ArtchainError

SOURCES_FILE = "sources.json"
PAINTING_SCHOOLS = ("renaissance", "expressionism", "cubism", "neon")


class TrainingDataError(ArtchainError):
    """A package cannot be fetched, a resource file is unreadable, or the dataset cannot be written."""


def default_dataset_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("artchain")) / "training-data"


def default_package_cache() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("artchain")) / "debian-packages"


# --- Qt binary resource files (.rcc) -----------------------------------------------------------
#
# Layout (Qt's rcc, format versions 1-3, all big-endian): "qres", version, tree offset, data offset,
# names offset, and from version 3 a flags word. A tree entry is 14 bytes (22 from version 2, which
# appends a modification time): name offset (u32), flags (u16), then for a directory the child count
# and first child index (u32, u32), for a file country, language (u16, u16) and data offset (u32).
# A name is its length in UTF-16 units (u16), a hash (u32) and the UTF-16BE text; a file's data is
# its length (u32) and bytes. A zlib-compressed entry is qCompress output: the inflated length
# (u32) and a zlib stream.

RCC_MAGIC = b"qres"
_COMPRESSED_ZLIB, _DIRECTORY, _COMPRESSED_ZSTD = 0x01, 0x02, 0x04
# Far above any resource in these packages (the largest is a few MB): a declared size over it is a
# corrupt or hostile file, refused before anything is allocated for it.
MAX_RESOURCE_BYTES = 64 << 20


class QtResources:
    """The files of one Qt binary resource file, read lazily by path ("gcompris/src/...")."""

    def __init__(self, data: bytes, origin: str = "resource file"):
        self._data = data
        self._origin = origin
        if data[:4] != RCC_MAGIC:
            raise TrainingDataError(f"{origin}: not a Qt resource file (it does not start with 'qres')")
        version, self._tree, self._payload, self._names = self._unpack(">IIII", 4, "header")
        if version not in (1, 2, 3):
            raise TrainingDataError(f"{origin}: unsupported Qt resource format version {version}")
        self._entry_size = 14 if version == 1 else 22
        self._files = self._walk_tree()

    @classmethod
    def open(cls, path: Path) -> "QtResources":
        try:
            return cls(Path(path).read_bytes(), origin=str(path))
        except OSError as exc:
            raise TrainingDataError(f"cannot read {path}: {exc.strerror or exc}") from None

    def paths(self) -> list[str]:
        return sorted(self._files)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def read(self, path: str) -> bytes:
        if path not in self._files:
            raise TrainingDataError(f"{self._origin} holds no {path}")
        flags, offset = self._files[path]
        (size,) = self._unpack(">I", self._payload + offset, f"size of {path}")
        start = self._payload + offset + 4
        if start + size > len(self._data):
            raise TrainingDataError(f"{self._origin}: {path} runs past the end of the file (truncated?)")
        stored = self._data[start:start + size]
        if flags & _COMPRESSED_ZSTD:
            raise TrainingDataError(f"{self._origin}: {path} is zstd-compressed, which this reader does not support")
        if not flags & _COMPRESSED_ZLIB:
            return stored
        if size < 4:
            raise TrainingDataError(f"{self._origin}: {path} is compressed but holds no length")
        (inflated_size,) = struct.unpack(">I", stored[:4])
        if inflated_size > MAX_RESOURCE_BYTES:
            raise TrainingDataError(f"{self._origin}: {path} declares {inflated_size} bytes once inflated, "
                                    f"over the {MAX_RESOURCE_BYTES >> 20} MiB limit")
        inflater = zlib.decompressobj()
        try:
            inflated = inflater.decompress(stored[4:], inflated_size)
        except zlib.error as exc:
            raise TrainingDataError(f"{self._origin}: {path} is not valid zlib data ({exc})") from None
        if not inflater.eof or len(inflated) != inflated_size:
            raise TrainingDataError(f"{self._origin}: {path} inflates to other than its declared {inflated_size} bytes")
        return inflated

    def _unpack(self, layout: str, offset: int, what: str) -> tuple:
        end = offset + struct.calcsize(layout)
        if offset < 0 or end > len(self._data):
            raise TrainingDataError(f"{self._origin}: truncated or malformed ({what} at byte {offset} lies past "
                                    f"the end of the {len(self._data)}-byte file)")
        return struct.unpack_from(layout, self._data, offset)

    def _name(self, offset: int) -> str:
        position = self._names + offset
        length, _hash = self._unpack(">HI", position, "a name")
        end = position + 6 + 2 * length
        if end > len(self._data):
            raise TrainingDataError(f"{self._origin}: truncated or malformed (a name at byte {position} runs past the end)")
        try:
            name = self._data[position + 6:end].decode("utf-16-be")
        except UnicodeDecodeError:
            raise TrainingDataError(f"{self._origin}: a name at byte {position} is not UTF-16") from None
        if not name or "/" in name or name in (".", ".."):
            raise TrainingDataError(f"{self._origin}: invalid entry name {name!r}")
        return name

    def _walk_tree(self) -> dict[str, tuple[int, int]]:
        entry_count = (len(self._data) - self._tree) // self._entry_size
        files: dict[str, tuple[int, int]] = {}
        # Each entry may be listed once: a tree that loops or shares entries is refused before its
        # lists pile up, so the walk never holds more than the file's own entries.
        listed = {0}
        pending = [(0, "")]
        while pending:
            index, parent = pending.pop()
            position = self._tree + index * self._entry_size
            name_offset, flags = self._unpack(">IH", position, f"tree entry {index}")
            if flags & ~(_COMPRESSED_ZLIB | _DIRECTORY | _COMPRESSED_ZSTD):
                raise TrainingDataError(f"{self._origin}: tree entry {index} has unknown flags {flags:#x}")
            path = "" if index == 0 else f"{parent}/{self._name(name_offset)}".lstrip("/")
            if flags & _DIRECTORY:
                count, first = self._unpack(">II", position + 6, f"tree entry {index}")
                if first + count > entry_count:
                    raise TrainingDataError(f"{self._origin}: truncated or malformed (directory {path or '/'} lists "
                                            f"entries past the end of the file)")
                children = range(first, first + count)
                if any(child in listed for child in children):
                    raise TrainingDataError(f"{self._origin}: malformed tree (directory {path or '/'} lists an entry "
                                            f"listed before)")
                listed.update(children)
                pending.extend((child, path) for child in children)
            elif index == 0:
                raise TrainingDataError(f"{self._origin}: malformed tree (its root is not a directory)")
            else:
                files[path] = (flags, self._unpack(">HHI", position + 6, f"tree entry {index}")[2])
        return files


# --- Debian packages ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    sha256: str
    root: Path  # where its files were extracted

    def path(self, inside: str) -> Path:
        return self.root / inside

    def copyright_text(self) -> str:
        copyright_file = self.root / "usr/share/doc" / self.name / "copyright"
        try:
            return copyright_file.read_text(encoding="utf-8")
        except OSError:
            raise TrainingDataError(f"{self.name} {self.version} has no readable {copyright_file}") from None


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=1800)
    except FileNotFoundError:
        raise TrainingDataError(f"{command[0]} is not installed: the training data comes from Debian packages "
                                f"(needs apt-get, apt-cache and dpkg-deb)") from None
    except subprocess.TimeoutExpired:
        raise TrainingDataError(f"{' '.join(command)} took more than 30 minutes") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise TrainingDataError(f"{' '.join(command)} failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    return result.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PackageCache:
    """Downloads Debian packages with apt-get (no installation) into a folder, checks each against the
    SHA-256 that apt's index gives, and extracts it with dpkg-deb; what is already there is reused."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._index_updated = False

    def fetch(self, name: str) -> DebianPackage:
        version, sha256, filename = self._candidate(name)
        deb = self.directory / "debs" / Path(filename).name
        if not (deb.is_file() and _sha256(deb) == sha256):
            self._download(name, version, sha256, deb)
        root = self.directory / "packages" / f"{name}_{version}"
        marker = root / ".extracted-from"
        if not (marker.is_file() and marker.read_text().strip() == sha256):
            self._extract(deb, sha256, root, marker)
        return DebianPackage(name=name, version=version, sha256=sha256, root=root)

    def _candidate(self, name: str) -> tuple[str, str, str]:
        """Version, SHA-256 and pool file name of the version apt would install."""
        while True:
            try:
                record = _run(["apt-cache", "show", "--no-all-versions", name])
            except TrainingDataError:
                record = ""
            fields = dict(re.findall(r"^(Version|SHA256|Filename): (\S+)$", record.split("\n\n")[0], re.M))
            if {"Version", "SHA256", "Filename"} <= fields.keys():
                return fields["Version"], fields["SHA256"].lower(), fields["Filename"]
            if self._index_updated:
                raise TrainingDataError(f"apt knows no package {name} (with a SHA256) even after apt-get update")
            _run(["apt-get", "update"])
            self._index_updated = True

    def _download(self, name: str, version: str, sha256: str, deb: Path) -> None:
        deb.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=deb.parent) as staging:
            _run(["apt-get", "download", f"{name}={version}"], cwd=Path(staging))
            downloaded = list(Path(staging).glob("*.deb"))
            if len(downloaded) != 1:
                raise TrainingDataError(f"apt-get download {name}={version} left {len(downloaded)} .deb files, not 1")
            actual = _sha256(downloaded[0])
            if actual != sha256:
                raise TrainingDataError(f"{downloaded[0].name} has SHA-256 {actual}, apt's index says {sha256}")
            os.replace(downloaded[0], deb)

    def _extract(self, deb: Path, sha256: str, root: Path, marker: Path) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(staging)])
            (staging / marker.name).write_text(sha256 + "\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            if staging.exists():
                shutil.rmtree(staging)


# --- licences as the packages state them ---------------------------------------------------------

def _paragraphs(text: str) -> list[dict[str, str]]:
    """Blank-line separated blocks of "Field: value" lines; indented lines continue the field above,
    joined with newlines; unindented lines outside any field (the bare file names of GCompris's
    READMEs) gather under "Files"."""
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = "Files"
        for line in block.splitlines():
            match = re.match(r"^([A-Za-z][A-Za-z-]*):\s*(.*)$", line)
            if match:
                current = match.group(1)
                fields[current] = match.group(2).strip()
            elif line.strip():
                field_name = current if line[0].isspace() else "Files"
                fields[field_name] = (fields.get(field_name, "") + "\n" + line.strip()).strip()
        if fields:
            blocks.append(fields)
    return blocks


def _dep5_pattern(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z")


def debian_licence(copyright_text: str, upstream_path: str) -> dict[str, str]:
    """The licence and copyright that a machine-readable debian/copyright gives a source path (the
    last matching Files paragraph wins, as the format says)."""
    found: dict[str, str] = {}
    for paragraph in _paragraphs(copyright_text):
        patterns = paragraph.get("Files", "").split()
        if "License" in paragraph and any(_dep5_pattern(p).match(upstream_path) for p in patterns):
            found = {"licence": paragraph["License"].splitlines()[0],
                     "copyright": " / ".join(paragraph.get("Copyright", "").splitlines())}
    if not found:
        raise TrainingDataError(f"the package's copyright file gives no licence for {upstream_path}")
    return found


def readme_licence(resources: QtResources, path: str) -> dict[str, str] | None:
    """The statement of the nearest README above a GCompris resource that lists it, or None."""
    folders = path.split("/")[:-1]
    while folders:
        readme = "/".join(folders) + "/README"
        relative = path[len(readme) - len("README"):]
        if readme in resources:
            text = resources.read(readme).decode("utf-8", errors="replace")
            for block in _paragraphs(text):
                if relative in block.get("Files", "").splitlines():
                    statement = {"licence": block.get("License", "").strip(),
                                 "copyright": " / ".join(block.get("Copyright", "").splitlines()),
                                 "licence_stated_in": f"{readme} (inside the resource file)"}
                    statement.update({key.lower(): block[key] for key in ("Source", "Comment") if key in block})
                    return statement
        folders.pop()
    return None


# --- GCompris jigsaw boards ----------------------------------------------------------------------

@dataclass(frozen=True)
class BoardPiece:
    image: str  # resource path relative to the board's activity resource folder, "image/x.webp"
    x: float  # centre, as a fraction of the canvas width
    y: float


@dataclass(frozen=True)
class Board:
    instruction: str
    background: str  # the first level's pixmapfile
    width: int | None  # canvas size, where the board gives one
    height: int | None
    pieces: tuple[BoardPiece, ...]


MAX_CANVAS = 8192
MAX_PIECES = 400


def parse_board(qml: str, origin: str = "board") -> Board:
    """Reads a GCompris babymatch-style board: `instruction: qsTr("...")` and `levels: [...]`, whose
    first level is the background (with the canvas size) and the others the pieces."""
    instruction = re.search(r'property\s+string\s+instruction\s*:\s*qsTr\("((?:[^"\\]|\\.)*)"\)', qml)
    levels = re.search(r"property\s+var\s+levels\s*:\s*(\[.*\])\s*\}\s*$", qml, re.S)
    if not instruction or not levels:
        raise TrainingDataError(f"{origin}: no instruction or levels: not a GCompris jigsaw board")
    try:
        items = json.loads(levels.group(1))
    except json.JSONDecodeError as exc:
        raise TrainingDataError(f"{origin}: levels are not readable ({exc.msg} at character {exc.pos})") from None
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        raise TrainingDataError(f"{origin}: levels must be a non-empty list of objects")
    background, *rest = items
    if background.get("type") != "SHAPE_BACKGROUND_IMAGE" or not isinstance(background.get("pixmapfile"), str):
        raise TrainingDataError(f"{origin}: the first level is not a SHAPE_BACKGROUND_IMAGE")
    size = [background.get(key) for key in ("width", "height")]
    if size != [None, None] and not all(isinstance(v, int) and 0 < v <= MAX_CANVAS for v in size):
        raise TrainingDataError(f"{origin}: canvas size {size} is not two integers in 1..{MAX_CANVAS}")
    if len(rest) > MAX_PIECES:
        raise TrainingDataError(f"{origin}: {len(rest)} pieces, more than {MAX_PIECES}")
    pieces = []
    for number, item in enumerate(rest, 1):
        image = item.get("pixmapfile")
        try:
            x, y = float(item["x"]), float(item["y"])
        except (KeyError, TypeError, ValueError):
            raise TrainingDataError(f"{origin}: piece {number} has no numeric x and y") from None
        if not isinstance(image, str) or ".." in image.split("/") or image.startswith("/"):
            raise TrainingDataError(f"{origin}: piece {number} names no image inside the activity")
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise TrainingDataError(f"{origin}: piece {number} centre ({x}, {y}) lies outside the canvas")
        pieces.append(BoardPiece(image, x, y))
    text = unicodedata.normalize("NFC", re.sub(r"\\(.)", r"\1", instruction.group(1)))
    return Board(text, background["pixmapfile"], size[0], size[1], tuple(pieces))


def split_instruction(instruction: str) -> tuple[str, str, str | None]:
    """'Artist, Title - year' -> (artist, title, year); the year may be missing or lack its dash."""
    artist, _, rest = instruction.partition(", ")
    match = re.match(r"^(.*?)(?:\s+-\s+|\s+)(\d{4}(?:-\d{1,4})?)\.?$", rest.strip())
    if match:
        return artist.strip(), match.group(1).strip(), match.group(2)
    return artist.strip(), rest.strip().rstrip("."), None


@dataclass
class Rebuilt:
    image: Image.Image  # RGB, cropped to the painting
    filled_pixels: int  # pixels no piece covered, filled from their neighbours
    nudged_pieces: int  # pieces moved by a pixel from their rounded board position


# The board's centres have three decimals (a third of a pixel on a 702-pixel canvas), so rounding can
# leave a one-pixel seam or misalign a piece by a pixel. Each piece may move by a pixel to where it
# continues its neighbours best: where it overlaps them (GCompris's pieces share a thin border), the
# colours should agree; where it touches them, its edge should resemble the pixel across (a piece
# pulled a line away skips a line of the painting). An uncovered pixel beside it inside the painting
# costs a tenth of a grey level of mean mismatch: a one-pixel seam costs as much as a clearly
# mismatched edge. What stays uncovered must be a speck, or the board is refused.
_SEAM_COST = 0.1
_MAX_FILLED_FRACTION = 0.002
_MAX_TRIM_FRACTION = 0.02


def rebuild_painting(board: Board, pieces: Mapping[str, Image.Image], origin: str = "board") -> Rebuilt:
    """Composites a board's pieces at their centres into the painting, cropped to what they cover."""
    if not board.pieces:
        raise TrainingDataError(f"{origin}: the board has no pieces")
    if board.width is None or board.height is None:
        raise TrainingDataError(f"{origin}: the board gives no canvas size")
    colours, masks, places = [], [], []
    for piece in board.pieces:
        if piece.image not in pieces:
            raise TrainingDataError(f"{origin}: piece image {piece.image} is missing")
        rgba = np.asarray(pieces[piece.image].convert("RGBA"))
        colours.append(rgba[..., :3].astype(np.float32))
        masks.append(rgba[..., 3] > 127)
        places.append([round(piece.x * board.width - rgba.shape[1] / 2),
                       round(piece.y * board.height - rgba.shape[0] / 2)])
    layout = _Layout(colours, masks, places)
    nudged = layout.settle()
    image, filled = layout.render(origin)
    return Rebuilt(image=image, filled_pixels=filled, nudged_pieces=nudged)


class _Layout:
    """Pieces on a padded canvas with running sums of their colours and coverage."""

    def __init__(self, colours: list[np.ndarray], masks: list[np.ndarray], places: list[list[int]]):
        margin = 2
        # Per piece, on its one-pixel-padded box: inside, the ring just outside, and for each ring
        # pixel the mean colour of the piece's pixels beside it.
        self.inside = [np.pad(mask, 1) for mask in masks]
        self.padded_colours = [np.pad(colour * mask[..., None], ((1, 1), (1, 1), (0, 0))) for colour, mask in zip(colours, masks)]
        self.rings, self.edge_colours = [], []
        for inside, colour in zip(self.inside, self.padded_colours):
            shifts = ((1, 0), (-1, 0), (0, 1), (0, -1))
            beside = sum(np.roll(inside, shift, (0, 1)).astype(np.float32) for shift in shifts)
            self.rings.append((beside > 0) & ~inside)
            self.edge_colours.append(sum(np.roll(colour, shift, (0, 1)) for shift in shifts) / np.maximum(beside, 1)[..., None])
        left = min(x for x, _ in places) - margin
        top = min(y for _, y in places) - margin
        self.colours, self.masks = colours, masks
        self.places = [[x - left, y - top] for x, y in places]
        width = max(x + m.shape[1] for (x, _), m in zip(self.places, masks)) + margin
        height = max(y + m.shape[0] for (_, y), m in zip(self.places, masks)) + margin
        self.colour_sum = np.zeros((height, width, 3), np.float32)
        self.coverage = np.zeros((height, width), np.float32)
        for index in range(len(masks)):
            self._add(index, 1.0)
        rows, cols = np.nonzero(self.coverage)
        # Seams are counted only inside the painting: outside its outline, emptiness is expected.
        self.interior = np.zeros((height, width), bool)
        self.interior[rows.min() + 1:rows.max(), cols.min() + 1:cols.max()] = True

    def _window(self, index: int, x: int, y: int) -> tuple[slice, slice]:
        height, width = self.masks[index].shape
        return slice(y, y + height), slice(x, x + width)

    def _add(self, index: int, sign: float) -> None:
        window = self._window(index, *self.places[index])
        mask = self.masks[index]
        self.colour_sum[window] += sign * self.colours[index] * mask[..., None]
        self.coverage[window] += sign * mask

    def _cost(self, index: int, x: int, y: int) -> float | None:
        mask = self.masks[index]
        height, width = mask.shape
        if x < 1 or y < 1 or x + width + 1 > self.coverage.shape[1] or y + height + 1 > self.coverage.shape[0]:
            return None
        around = slice(y - 1, y + height + 1), slice(x - 1, x + width + 1)
        others = self.coverage[around]
        inside, ring = self.inside[index], self.rings[index]
        overlap = inside & (others > 0)
        compared = overlap | (ring & (others > 0))
        disagreement = 0.0
        if compared.any():
            own = np.where(overlap[compared][:, None], self.padded_colours[index][compared],
                           self.edge_colours[index][compared])
            neighbours = self.colour_sum[around][compared] / others[compared][:, None]
            disagreement = float(np.abs(own - neighbours).mean())
        seams = ring & (others == 0) & self.interior[around]
        return disagreement + _SEAM_COST * int(seams.sum())

    def settle(self, passes: int = 4) -> int:
        start = [list(place) for place in self.places]
        for _ in range(passes):
            moved = False
            for index in range(len(self.masks)):
                self._add(index, -1.0)
                x, y = self.places[index]
                candidates = []
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        cost = self._cost(index, x + dx, y + dy)
                        if cost is not None:
                            candidates.append((round(cost, 3), abs(dx) + abs(dy), dx, dy))
                _, _, dx, dy = min(candidates)
                moved |= bool(dx or dy)
                self.places[index] = [x + dx, y + dy]
                self._add(index, 1.0)
            if not moved:
                break
        return sum(place != first for place, first in zip(self.places, start))

    def render(self, origin: str) -> tuple[Image.Image, int]:
        covered = self.coverage > 0
        rows, cols = np.nonzero(covered)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        # Edge pieces can end a pixel apart: drop ragged outer lines rather than invent them.
        limit_rows, limit_cols = int((bottom - top) * _MAX_TRIM_FRACTION), int((right - left) * _MAX_TRIM_FRACTION)
        trimmed = Counter()
        while True:
            edges = {"top": ~covered[top, left:right], "bottom": ~covered[bottom - 1, left:right],
                     "left": ~covered[top:bottom, left], "right": ~covered[top:bottom, right - 1]}
            side, holes = max(((s, int(e.sum())) for s, e in edges.items()), key=lambda item: item[1])
            limit = limit_rows if side in ("top", "bottom") else limit_cols
            if holes == 0 or trimmed[side] >= limit:
                break
            trimmed[side] += 1
            top, bottom = top + (side == "top"), bottom - (side == "bottom")
            left, right = left + (side == "left"), right - (side == "right")
        coverage = self.coverage[top:bottom, left:right]
        image = self.colour_sum[top:bottom, left:right] / np.maximum(coverage, 1)[..., None]
        holes = coverage == 0
        filled = int(holes.sum())
        if filled > _MAX_FILLED_FRACTION * holes.size:
            raise TrainingDataError(f"{origin}: the pieces leave {filled} of {holes.size} pixels uncovered")
        while holes.any():
            known = (~holes).astype(np.float32)
            total, count = _neighbour_sum(image * known[..., None]), _neighbour_sum(known)
            reachable = holes & (count > 0)
            image[reachable] = total[reachable] / count[reachable][:, None]
            holes &= ~reachable
        return Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8)), filled


def _neighbour_sum(values: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood, with nothing beyond the border."""
    height, width = values.shape[:2]
    padded = np.pad(values, [(1, 1), (1, 1)] + [(0, 0)] * (values.ndim - 2))
    return sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))


# --- a cubist stand-in, drawn --------------------------------------------------------------------

# Analytic cubism's restrained palette: ochres, umbers, greys, a muted green and blue.
_CUBIST_PALETTE = np.array([
    (196, 160, 92), (112, 84, 56), (150, 82, 46), (110, 116, 118), (104, 120, 86),
    (86, 104, 128), (226, 212, 176), (70, 62, 54), (176, 132, 84), (140, 146, 138),
], np.float32)


def draw_faceted_study(width: int = 640, height: int = 512, seed: int = 0) -> Image.Image:
    """A faceted, cubist-like style image: planes of a muted palette, each shaded along its own
    direction and hatched, dark contours, and a few translucent overlapping planes. A stand-in, not
    a painting: no public-domain cubist painting is available offline."""
    rng = np.random.default_rng(seed)
    centres = np.concatenate([
        rng.normal((width / 2, height / 2), (width / 5, height / 4), (28, 2)),  # a dense central motif
        rng.uniform((0, 0), (width, height), (14, 2)),
    ]).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    distance = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    facet = distance.argmin(axis=0)
    angle = rng.uniform(0, np.pi, len(centres))
    light, dark = rng.integers(0, len(_CUBIST_PALETTE), (2, len(centres)))
    along = ((xs - centres[facet, 0]) * np.cos(angle[facet]) + (ys - centres[facet, 1]) * np.sin(angle[facet]))
    shade = np.clip(0.5 + along / 140.0, 0.0, 1.0)[..., None]
    canvas = _CUBIST_PALETTE[light[facet]] * (1 - shade) + _CUBIST_PALETTE[dark[facet]] * shade
    across = -(xs - centres[facet, 0]) * np.sin(angle[facet]) + (ys - centres[facet, 1]) * np.cos(angle[facet])
    canvas += 9.0 * np.sin(across * 0.9)[..., None] * rng.uniform(0.3, 1.0, len(centres))[facet][..., None]
    contour = (facet != np.roll(facet, 1, 0)) | (facet != np.roll(facet, 1, 1))
    contour |= np.roll(contour, 1, 0) | np.roll(contour, 1, 1)
    canvas[contour] = canvas[contour] * 0.35 + np.array((50, 42, 36), np.float32) * 0.65
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGBA")
    planes = Image.new("RGBA", picture.size)
    pen = ImageDraw.Draw(planes)
    for _ in range(6):
        corners = rng.normal((width / 2, height / 2), (width / 4, height / 4), (4, 2))
        colour = tuple(int(c) for c in _CUBIST_PALETTE[rng.integers(len(_CUBIST_PALETTE))])
        pen.polygon([tuple(map(float, corner)) for corner in corners], fill=colour + (70,), outline=(40, 34, 30, 160))
    picture.alpha_composite(planes)
    grain = rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(picture.convert("RGB"), np.float32) + grain, 0, 255).astype(np.uint8))


# --- the dataset ----------------------------------------------------------------------------------

GCOMPRIS, OPENCV_DOC, UKUI_WALLPAPERS = "gcompris-qt-data", "opencv-doc", "ukui-wallpapers"
RCC_DIR = "usr/share/gcompris-qt/rcc"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
NEON_WALLPAPER = "usr/share/backgrounds/the-mouse.jpg"

# Artists of the jigsaw boards and the Van Gogh pictures, by the name the package spells.
SCHOOL_OF_ARTIST = {
    "Leonardo da Vinci": "renaissance", "Giovanni Bellini": "renaissance", "Albrecht Dürer": "renaissance",
    "Pieter Brugel": "renaissance", "Giuseppe Arcimboldo": "renaissance",
    "Vincent van Gogh": "expressionism", "Vincent Van Gogh": "expressionism",
    "Wassily Kandinsky": "cubism",
}

# Colour photographs among opencv-doc's sample data; the rest are charts, logos, renders (smarties.png
# looks like one), text, grayscale calibration shots or near-duplicates (the second frame of a pair).
OPENCV_PHOTOS = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
    "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg",
    "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg",
)

# scikit-image's bundled colour photographs whose docstrings state a licence (quoted from them).
SKIMAGE_PHOTOS = {
    "astronaut": ("NASA", "Astronaut Eileen Collins", "No known copyright restrictions, released into the public domain."),
    "chelsea": ("Stefan van der Walt", "Chelsea the cat", "No copyright restrictions. CC0 by the photographer (Stefan van der Walt)."),
    "coffee": ("Rachel Michetti", "Coffee cup", "No copyright restrictions. CC0 by the photographer (Rachel Michetti)."),
    "rocket": ("SpaceX", "Launch photo of DSCOVR on Falcon 9", "Captured by SpaceX and released in the public domain."),
}

STAND_IN_NOTE = "stand-in: no public-domain cubist painting is available offline"


@dataclass
class Item:
    """One file of the dataset: where it goes, what it is, and how to make its bytes."""
    relative: str
    record: dict
    produce: Callable[[], tuple[bytes, dict]]  # the file's bytes and facts learnt while making them


@dataclass
class Summary:
    out_dir: Path
    counts: dict[str, int]  # per school folder, e.g. "paintings/renaissance"
    written: int
    reused: int
    not_rebuilt: list[str] = field(default_factory=list)  # "title: reason"
    unused: list[str] = field(default_factory=list)  # paintings of no school here


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _open_image(data: bytes, origin: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types for undecodable data
        raise TrainingDataError(f"{origin} is not a readable image ({exc})") from None
    return image


def _as_rgb_file(data: bytes, origin: str) -> tuple[bytes, str]:
    """The original bytes where they already are an RGB picture, else an RGB PNG; and its suffix."""
    image = _open_image(data, origin)
    if image.mode == "RGB" and image.format in ("JPEG", "PNG", "WEBP"):
        return data, {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[image.format]
    return _png(image.convert("RGB")), ".png"


def _size_facts(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        return {"width": image.width, "height": image.height}


def _package_facts(package: DebianPackage, path: str) -> dict:
    return {"package": package.name, "package_version": package.version, "path_in_package": path}


class _GCompris:
    """The pictures of gcompris-qt-data's resource files."""

    def __init__(self, package: DebianPackage):
        self.package = package
        self.copyright_text = package.copyright_text()

    def items(self, summary: Summary) -> list[Item]:
        return [*self.painting_boards(summary), *self.details_pictures(), *self.explore_photos()]

    def licence(self, resources: QtResources, path: str) -> tuple[dict, dict | None]:
        """What to record: the README beside the file where one lists it (the package's most specific
        word), with what debian/copyright says; else debian/copyright alone. And that README entry."""
        debian = debian_licence(self.copyright_text, path.removeprefix("gcompris/"))
        stated = readme_licence(resources, path)
        if stated is None:
            return {**debian, "licence_stated_in": f"usr/share/doc/{self.package.name}/copyright"}, None
        return {**stated, "debian_copyright_licence": debian["licence"]}, stated

    def boards(self, rcc: str, activity: str) -> tuple[QtResources, list[tuple[str, Board]]]:
        resources = QtResources.open(self.package.path(rcc))
        paths = [p for p in resources.paths() if re.fullmatch(rf"{activity}/board/board\d+_0\.qml", p)]
        paths.sort(key=lambda p: int(re.search(r"board(\d+)_0", p).group(1)))
        return resources, [(p, parse_board(resources.read(p).decode("utf-8"), f"{rcc}:{p}")) for p in paths]

    def painting_boards(self, summary: Summary) -> list[Item]:
        rcc, activity = f"{RCC_DIR}/paintings.rcc", "gcompris/src/activities/paintings/resource"
        resources, boards = self.boards(rcc, activity)
        items = []
        for board_path, board in boards:
            artist, title, year = split_instruction(board.instruction)
            school = SCHOOL_OF_ARTIST.get(artist)
            if school is None:
                summary.unused.append(board.instruction)
                continue

            def rebuild(board=board, origin=f"{rcc}:{board_path}") -> tuple[bytes, dict]:
                images = {piece.image: _open_image(resources.read(f"{activity}/{piece.image}"), f"{rcc}:{piece.image}")
                          for piece in board.pieces}
                rebuilt = rebuild_painting(board, images, origin=origin)
                return _png(rebuilt.image), {"filled_pixels": rebuilt.filled_pixels,
                                             "nudged_pieces": rebuilt.nudged_pieces}

            items.append(Item(
                relative=f"paintings/{school}/{slug(artist)}_{slug(title)}.png",
                record={"school": school, "kind": "painting, rebuilt from its jigsaw pieces",
                        "artist": artist, "title": title, "year": year,
                        **_package_facts(self.package, f"{rcc}:{board_path}"), "pieces": len(board.pieces),
                        **self.licence(resources, f"{activity}/{board.pieces[0].image}")[0]},
                produce=rebuild))
        return items

    def details_pictures(self) -> list[Item]:
        """The whole pictures behind the "details" boards: Van Gogh paintings and monument photos."""
        rcc, activity = f"{RCC_DIR}/details.rcc", "gcompris/src/activities/details/resource"
        resources, boards = self.boards(rcc, activity)
        items = []
        for _, board in boards:
            path = f"{activity}/{board.background}"
            stated, _ = self.licence(resources, path)
            artist, title, year = split_instruction(board.instruction)
            if artist in SCHOOL_OF_ARTIST:
                school, kind = SCHOOL_OF_ARTIST[artist], "painting"
                stem = f"paintings/{school}/{slug(artist)}_{slug(title)}"
            else:
                photographer = re.search(r"by ([^,]+), licen[cs]e", stated.get("comment", ""))
                artist = photographer.group(1) if photographer else stated["copyright"]
                title, year, school, kind = board.instruction, None, "photos", "photograph"
                stem = f"photos/gcompris-details_{slug(Path(board.background).stem.removesuffix('_background'))}"
            items.append(_whole_file_item(stem, resources.read(path), {
                "school": school, "kind": kind, "artist": artist, "title": title, "year": year,
                **_package_facts(self.package, f"{rcc}:{path}"), **stated}))
        return items

    def explore_photos(self) -> list[Item]:
        items = []
        for name in ("explore_monuments", "explore_world_animals"):
            rcc = f"{RCC_DIR}/{name}.rcc"
            resources = QtResources.open(self.package.path(rcc))
            for path in (p for p in resources.paths() if p.endswith(".webp")):
                stated, readme = self.licence(resources, path)
                topic = name.removeprefix("explore_").replace("_", "-")
                items.append(_whole_file_item(f"photos/gcompris-{topic}_{slug(Path(path).stem)}", resources.read(path), {
                    # These READMEs name the photographer as the copyright holder.
                    "school": "photos", "kind": "photograph", "artist": readme["copyright"] if readme else None,
                    "title": Path(path).stem, "year": None, **_package_facts(self.package, f"{rcc}:{path}"), **stated}))
        return items


def _whole_file_item(relative_stem: str, data: bytes, record: dict) -> Item:
    """A picture kept whole; the suffix follows its format."""
    data, suffix = _as_rgb_file(data, record["path_in_package"])
    return Item(relative=relative_stem + suffix, record=record, produce=lambda: (data, {}))


def _opencv_items(package: DebianPackage) -> list[Item]:
    copyright_text = package.copyright_text()

    def item(stem: str, name: str, record: dict) -> Item:
        path = f"{OPENCV_DATA}/{name}"
        # The package's examples/data are upstream's samples/data.
        licence = debian_licence(copyright_text, f"samples/data/{name}")
        return _whole_file_item(stem, _read_file(package.path(path)), {
            **record, **_package_facts(package, path), **licence,
            "licence_stated_in": f"usr/share/doc/{package.name}/copyright"})

    return [item("paintings/expressionism/vincent-van-gogh_the-starry-night", "starry_night.jpg", {
        "school": "expressionism", "kind": "painting", "artist": "Vincent van Gogh", "title": "The Starry Night",
        "year": "1889", "note": "the package names only the file; title and year are the painting's own"}),
        *(item(f"photos/opencv_{slug(Path(name).stem)}", name, {
            "school": "photos", "kind": "photograph", "artist": None, "title": Path(name).stem, "year": None})
          for name in OPENCV_PHOTOS)]


def _neon_items(package: DebianPackage) -> list[Item]:
    stated = debian_licence(package.copyright_text(), NEON_WALLPAPER)
    attribution = (f'"the-mouse" wallpaper, {stated["copyright"]}, from Debian package {package.name} '
                   f'{package.version}, licensed {stated["licence"]} (https://creativecommons.org/licenses/by-sa/3.0/)')
    return [_whole_file_item("paintings/neon/the-mouse", _read_file(package.path(NEON_WALLPAPER)), {
        "school": "neon", "kind": "neon-glow wallpaper", "artist": stated["copyright"], "title": "the-mouse",
        "year": None, **_package_facts(package, NEON_WALLPAPER), **stated,
        "licence_stated_in": f"usr/share/doc/{package.name}/copyright", "attribution": attribution})]


def _skimage_items() -> list[Item]:
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise TrainingDataError("scikit-image is not installed (pip install 'artchain[train]')") from None
    items = []
    for name, (artist, title, licence) in SKIMAGE_PHOTOS.items():
        def photo(name=name) -> tuple[bytes, dict]:
            return _png(Image.fromarray(getattr(skimage.data, name)())), {}
        items.append(Item(
            relative=f"photos/skimage_{name}.png",
            record={"school": "photos", "kind": "photograph", "artist": artist, "title": title, "year": None,
                    "package": "scikit-image", "package_version": skimage.__version__,
                    "path_in_package": f"skimage.data.{name}()", "licence": licence,
                    "licence_stated_in": f"docstring of skimage.data.{name}"},
            produce=photo))
    return items


def _stand_in_item() -> Item:
    return Item(
        relative="paintings/cubism/artchain_faceted-study.png",
        record={"school": "cubism", "kind": f"procedural style image ({STAND_IN_NOTE})",
                "artist": "artchain (drawn by draw_faceted_study, seed 0)", "title": "Faceted study", "year": None,
                "package": "artchain", "package_version": None,
                "path_in_package": "plugins/gan/training_data.py:draw_faceted_study", "licence": "MIT",
                "licence_stated_in": "pyproject.toml"},
        produce=lambda: (_png(draw_faceted_study()), {}))


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrainingDataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_bytes(data)
    os.replace(staging, path)


def _previous_records(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / SOURCES_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def build_dataset(out_dir: Path | None = None, cache_dir: Path | None = None,
                  progress: Callable[[str], None] = lambda message: None) -> Summary:
    """Fetches the packages, and writes every file of the dataset that is missing or changed, with
    sources.json. A file whose bytes still match its recorded SHA-256 is left as it is."""
    out_dir = Path(out_dir) if out_dir else default_dataset_dir()
    cache = PackageCache(Path(cache_dir) if cache_dir else default_package_cache())
    packages = {}
    for name in (GCOMPRIS, OPENCV_DOC, UKUI_WALLPAPERS):
        progress(f"package {name}")
        packages[name] = cache.fetch(name)
    summary = Summary(out_dir=out_dir, counts={}, written=0, reused=0)
    items = [*_GCompris(packages[GCOMPRIS]).items(summary), *_opencv_items(packages[OPENCV_DOC]),
             *_neon_items(packages[UKUI_WALLPAPERS]), *_skimage_items(), _stand_in_item()]
    previous = _previous_records(out_dir)
    records = {}
    for item in items:
        destination = out_dir / item.relative
        old = previous.get(item.relative)
        if old and destination.is_file() and old.get("sha256") == _sha256(destination):
            records[item.relative] = {**item.record, **{k: v for k, v in old.items() if k not in item.record}}
            summary.reused += 1
        else:
            try:
                data, facts = item.produce()
            except TrainingDataError as exc:
                summary.not_rebuilt.append(f"{item.record['title']}: {exc}")
                continue
            _write_atomically(destination, data)
            records[item.relative] = {**item.record, **facts, **_size_facts(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
            summary.written += 1
            progress(f"wrote {item.relative}")
        folder = item.relative.rsplit("/", 1)[0]
        summary.counts[folder] = summary.counts.get(folder, 0) + 1
    # Only files an earlier run recorded, inside the folder, are removed: it may hold the user's own.
    root = out_dir.resolve()
    for stale in previous.keys() - records.keys():
        stale_path = (out_dir / stale).resolve()
        if root in stale_path.parents:
            stale_path.unlink(missing_ok=True)
    _write_atomically(out_dir / SOURCES_FILE, json.dumps({
        "about": "Training data for artchain's GAN styles; written by scripts/training_data.py. Not for "
                 "committing. The licence of each file is the package's own statement.",
        "packages": {p.name: {"version": p.version, "sha256": p.sha256} for p in packages.values()},
        "files": records}, indent=1, ensure_ascii=False).encode("utf-8"))
    return summary

