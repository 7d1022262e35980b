"""The training-data fetcher: the Qt resource reader on files built here in the real format, board
parsing and jigsaw compositing on a synthetic board, licence look-ups, and (slow, needs apt) the
real Mona Lisa board of gcompris-qt-data."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from artchain.plugins.gan.training_data import (
    MAX_RESOURCE_BYTES, Board, BoardPiece, PackageCache, QtResources, TrainingDataError, debian_licence,
    draw_faceted_study, parse_board, readme_licence, rebuild_painting, split_instruction)


def build_rcc(files: dict[str, bytes], compressed: frozenset[str] = frozenset(), version: int = 3) -> bytes:
    """A Qt binary resource file as rcc writes it: header, tree (breadth first, each directory's
    children contiguous), data, names; `compressed` entries hold qCompress output (length + zlib)."""
    root: dict = {}
    for path, data in files.items():
        *folders, name = path.split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = data
    names, name_offsets, payload, records = bytearray(), {}, bytearray(), []

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            names.extend(struct.pack(">HI", len(name), zlib.crc32(name.encode())) + name.encode("utf-16-be"))
        return name_offsets[name]

    entries = [("", "", root)]
    for index, (name, path, node) in enumerate(entries):  # grows while iterated: breadth first
        if isinstance(node, dict):
            first = len(entries)
            entries.extend((child, f"{path}/{child}".lstrip("/"), node[child]) for child in sorted(node))
            record = struct.pack(">IHII", name_offset(name) if index else 0, 0x02, len(node), first)
        else:
            stored, flags = node, 0
            if path in compressed:
                stored, flags = struct.pack(">I", len(node)) + zlib.compress(node), 0x01
            record = struct.pack(">IHHHI", name_offset(name), flags, 0, 0, len(payload))
            payload.extend(struct.pack(">I", len(stored)) + stored)
        records.append(record + (struct.pack(">Q", 0) if version >= 2 else b""))
    tree = b"".join(records)
    header_size = 20 + (4 if version >= 3 else 0)
    header = b"qres" + struct.pack(">IIII", version, header_size, header_size + len(tree),
                                    header_size + len(tree) + len(payload))
    return header + (struct.pack(">I", 0) if version >= 3 else b"") + tree + bytes(payload) + bytes(names)


QML = 'import QtQuick 2.12\nQtObject {\n   property string instruction: qsTr("Albrecht Dürer, Lion - 1494")\n}\n'
FILES = {
    "gcompris/src/activities/paintings/Paintings.qml": b"plain text entry",
    "gcompris/src/activities/paintings/resource/board/board1_0.qml": QML.encode() * 20,
    "gcompris/top.txt": b"",
}
COMPRESSED = frozenset({"gcompris/src/activities/paintings/resource/board/board1_0.qml"})


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_plain_and_zlib_entries_of_a_built_resource_file(version):
    resources = QtResources(build_rcc(FILES, COMPRESSED, version))
    assert resources.paths() == sorted(FILES)
    for path, data in FILES.items():
        assert resources.read(path) == data
    with pytest.raises(TrainingDataError, match="holds no gcompris/absent"):
        resources.read("gcompris/absent")


def test_every_truncation_is_a_clear_error():
    data = build_rcc(FILES, COMPRESSED)
    for cut in range(len(data)):
        with pytest.raises(TrainingDataError) as caught:
            resources = QtResources(data[:cut], origin="cut.rcc")
            for path in resources.paths():
                resources.read(path)
        assert str(caught.value).startswith("cut.rcc") and "\n" not in str(caught.value)


def _patched(data: bytes, offset: int, layout: str, *values) -> bytes:
    patched = bytearray(data)
    struct.pack_into(layout, patched, offset, *values)
    return bytes(patched)


def test_malformed_headers_and_trees_are_refused():
    data = build_rcc({"a/b.txt": b"x"})
    tree = struct.unpack_from(">I", data, 8)[0]
    cases = {
        b"PK\x03\x04" + data[4:]: "not a Qt resource file",
        _patched(data, 4, ">I", 9): "unsupported Qt resource format version 9",
        _patched(data, tree + 4, ">H", 0x42): "unknown flags",
        _patched(data, tree + 6, ">II", 1, 10_000): "past the end",  # root lists entries beyond the file
        _patched(data, tree + 22 + 10, ">I", 1): "listed before",  # directory "a" lists itself
        _patched(data, tree + 4, ">H", 0): "root is not a directory",
    }
    for bad, message in cases.items():
        with pytest.raises(TrainingDataError, match=message):
            QtResources(bad)


def test_compressed_entries_that_lie_are_refused_without_inflating_them():
    path = "big.txt"
    data = build_rcc({path: b"a" * 1000}, frozenset({path}))
    resources = QtResources(data)
    flags, offset = resources._files[path]
    stored_at = resources._payload + offset + 4
    too_big = _patched(data, stored_at, ">I", MAX_RESOURCE_BYTES + 1)
    with pytest.raises(TrainingDataError, match="over the 64 MiB limit"):
        QtResources(too_big).read(path)
    with pytest.raises(TrainingDataError, match="other than its declared 999 bytes"):
        QtResources(_patched(data, stored_at, ">I", 999)).read(path)
    with pytest.raises(TrainingDataError, match="not valid zlib data"):
        QtResources(_patched(data, stored_at + 4, ">I", 0xDEADBEEF)).read(path)


def test_board_parsing_and_instructions():
    qml = '''QtObject {
   property string instruction: qsTr("Giovanni Bellini, La Pala \\"di\\" Pesaro - 1475-85")
   property var levels : [
      {"pixmapfile" : "image/bg.svg", "type" : "SHAPE_BACKGROUND_IMAGE", "width": 702, "height": 515},
      {"pixmapfile" : "image/a1.webp", "x" : "0.25", "y" : "0.5"},
      {"pixmapfile" : "image/a2.webp", "x" : "0.75", "y" : "0.5"}
   ]
}'''
    board = parse_board(qml)
    assert board.instruction == 'Giovanni Bellini, La Pala "di" Pesaro - 1475-85'
    assert (board.width, board.height, board.background) == (702, 515, "image/bg.svg")
    assert board.pieces == (BoardPiece("image/a1.webp", 0.25, 0.5), BoardPiece("image/a2.webp", 0.75, 0.5))
    assert split_instruction(board.instruction) == ("Giovanni Bellini", 'La Pala "di" Pesaro', "1475-85")
    assert split_instruction("Vincent van Gogh, Portrait of Pere Tanguy 1887-8") == (
        "Vincent van Gogh", "Portrait of Pere Tanguy", "1887-8")
    assert split_instruction("Katsushika Hokusai, Oiran and Kamuro") == ("Katsushika Hokusai", "Oiran and Kamuro", None)
    for broken, message in [
        (qml.replace('"0.75"', '"1.5"'), "outside the canvas"),
        (qml.replace('"x" : "0.25", ', ""), "no numeric x and y"),
        (qml.replace("image/a1.webp", "../../etc/passwd"), "names no image inside"),
        (qml.replace('"width": 702', '"width": -3'), "canvas size"),
        (qml.replace('"0.5"}\n   ]', '"0.5"},\n   ]'), "levels are not readable"),  # a trailing comma
        ("QtObject {}", "not a GCompris jigsaw board"),
    ]:
        with pytest.raises(TrainingDataError, match=message):
            parse_board(broken, origin="board.qml")


def _cut_into_pieces(painting: np.ndarray, overlap: int) -> list[tuple[np.ndarray, int, int]]:
    """Four jigsaw pieces with wavy edges (a tab each way) that share an `overlap`-pixel border, as
    GCompris's pieces do; each as (RGBA array, left, top) within the painting."""
    height, width = painting.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    column_edge = width / 2 + 4 * np.sin(ys / height * 2 * np.pi)
    row_edge = height / 2 + 4 * np.sin(xs / width * 2 * np.pi + 1)
    pieces = []
    for right in (False, True):
        for below in (False, True):
            in_column = (xs >= column_edge - overlap) if right else (xs < column_edge + overlap)
            in_row = (ys >= row_edge - overlap) if below else (ys < row_edge + overlap)
            mask = in_column & in_row
            rows, cols = np.nonzero(mask)
            top, bottom, left, right_end = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            rgba = np.zeros((bottom - top, right_end - left, 4), np.uint8)
            rgba[..., :3] = painting[top:bottom, left:right_end]
            rgba[..., 3] = mask[top:bottom, left:right_end] * 255
            pieces.append((rgba, int(left), int(top)))
    return pieces


def _synthetic_board(painting: np.ndarray, canvas=(120, 90), origin=(17, 11), error_px=0.0, overlap=1):
    """A board whose centres are off by `error_px` pixels, as three-decimal fractions can be."""
    width, height = canvas
    pieces, images = [], {}
    for number, (rgba, left, top) in enumerate(_cut_into_pieces(painting, overlap)):
        name = f"image/p{number}.webp"
        images[name] = Image.fromarray(rgba, "RGBA")
        centre_x = origin[0] + left + rgba.shape[1] / 2 + (error_px if number % 2 else -error_px)
        centre_y = origin[1] + top + rgba.shape[0] / 2 + (error_px if number < 2 else -error_px)
        pieces.append(BoardPiece(name, centre_x / width, centre_y / height))
    return Board("Test, Synthetic - 2024", "image/bg.svg", width, height, tuple(pieces)), images


def _textured_painting(height=48, width=64) -> np.ndarray:
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack([xs * 3, ys * 4, (xs + ys) * 2], axis=-1)
    return np.clip(smooth + rng.integers(0, 90, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("error_px", [0.0, 0.6])
def test_pieces_composite_back_into_the_painting(error_px):
    painting = _textured_painting()
    board, images = _synthetic_board(painting, error_px=error_px)
    rebuilt = rebuild_painting(board, images)
    assert rebuilt.filled_pixels == 0
    assert rebuilt.image.size == (painting.shape[1], painting.shape[0])
    assert np.array_equal(np.asarray(rebuilt.image), painting)
    # Off by 0.6 pixel, rounding puts every piece a pixel away; colour agreement brings them back
    # together (up to a shift of the whole, which the crop does not see).
    assert (rebuilt.nudged_pieces > 0) == (error_px > 0)


def test_pieces_that_do_not_meet_are_refused():
    painting = _textured_painting()
    board, images = _synthetic_board(painting)
    spread = Board(board.instruction, board.background, board.width, board.height, tuple(
        BoardPiece(p.image, p.x + (0.05 if p.x > 0.4 else 0), p.y) for p in board.pieces))
    with pytest.raises(TrainingDataError, match="pixels uncovered"):
        rebuild_painting(spread, images, origin="spread.qml")
    with pytest.raises(TrainingDataError, match="piece image image/p0.webp is missing"):
        rebuild_painting(board, {}, origin="empty")


def test_licences_as_stated_by_debian_copyright_and_readmes():
    copyright_text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2014 Someone
License: CC-BY-SA-4.0

Files: src/activities/paintings/resource/image/*
Copyright: WebMuseum
License: GPL-3+
Comment: scans
"""
    assert debian_licence(copyright_text, "src/activities/paintings/resource/image/a/b.webp") == {
        "licence": "GPL-3+", "copyright": "WebMuseum"}
    assert debian_licence(copyright_text, "src/other.qml")["licence"] == "CC-BY-SA-4.0"
    readme = b"""Copyright: Daniel Schwen
License: CC-BY-SA 4.0
Source: https://commons.wikimedia.org/wiki/File:Chichen_Itza_3.jpg
Files:
wonders/chichenItza.webp

Copyright: 2000, 2008 Bruno Coudoin and others
License: Public domain
Gogh4_background.webp
Comment: based on an original painting by Van Gogh, Public domain image.
"""
    resources = QtResources(build_rcc({"g/res/README": readme, "g/res/wonders/chichenItza.webp": b"",
                                       "g/res/Gogh4_background.webp": b"", "g/res/other.webp": b""}))
    assert readme_licence(resources, "g/res/wonders/chichenItza.webp") == {
        "licence": "CC-BY-SA 4.0", "copyright": "Daniel Schwen", "licence_stated_in": "g/res/README (inside the resource file)",
        "source": "https://commons.wikimedia.org/wiki/File:Chichen_Itza_3.jpg"}
    assert readme_licence(resources, "g/res/Gogh4_background.webp")["licence"] == "Public domain"
    assert readme_licence(resources, "g/res/other.webp") is None


def test_the_cubist_stand_in_is_fixed_by_its_seed():
    first, again, other = draw_faceted_study(96, 64, seed=0), draw_faceted_study(96, 64, seed=0), draw_faceted_study(96, 64, seed=1)
    assert first.size == (96, 64) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert np.asarray(first).reshape(-1, 3).std(axis=0).min() > 15  # facets of different colours, not a wash


@pytest.fixture(scope="module")
def gcompris(tmp_path_factory):
    cache = PackageCache(tmp_path_factory.mktemp("debian-packages"))
    try:
        return cache, cache.fetch("gcompris-qt-data")
    except TrainingDataError as exc:
        pytest.skip(f"gcompris-qt-data cannot be downloaded here ({exc})")


@pytest.mark.slow
def test_the_real_mona_lisa_board_rebuilds_whole(gcompris):
    cache, package = gcompris
    rcc = package.path("usr/share/gcompris-qt/rcc/paintings.rcc")
    resources = QtResources.open(rcc)
    activity = "gcompris/src/activities/paintings/resource"
    board = parse_board(resources.read(f"{activity}/board/board14_0.qml").decode())
    assert board.instruction == "Leonardo da Vinci, Mona Lisa - 1503-19" and len(board.pieces) == 12
    pieces = {p.image: Image.open(io.BytesIO(resources.read(f"{activity}/{p.image}"))) for p in board.pieces}
    rebuilt = rebuild_painting(board, pieces)
    assert rebuilt.filled_pixels == 0
    # The painting spans the pieces' extent on the 702x515 canvas, less at most a ragged edge line.
    lefts = [round(p.x * board.width - pieces[p.image].width / 2) for p in board.pieces]
    tops = [round(p.y * board.height - pieces[p.image].height / 2) for p in board.pieces]
    span_x = max(l + pieces[p.image].width for l, p in zip(lefts, board.pieces)) - min(lefts)
    span_y = max(t + pieces[p.image].height for t, p in zip(tops, board.pieces)) - min(tops)
    assert abs(rebuilt.image.width - span_x) <= 2 and abs(rebuilt.image.height - span_y) <= 2
    assert rebuilt.image.size == (322, 500)
    # Every piece is found in the result, where the board puts it, within a pixel or two.
    result = np.asarray(rebuilt.image, np.float32)
    for piece, left, top in zip(board.pieces, lefts, tops):
        rgba = np.asarray(pieces[piece.image].convert("RGBA"), np.float32)
        opaque = rgba[..., 3] > 127
        errors = []
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                x, y = left - min(lefts) + dx, top - min(tops) + dy
                window = result[max(y, 0):y + rgba.shape[0], max(x, 0):x + rgba.shape[1]]
                mine = rgba[max(-y, 0):max(-y, 0) + window.shape[0], max(-x, 0):max(-x, 0) + window.shape[1]]
                mask = opaque[max(-y, 0):max(-y, 0) + window.shape[0], max(-x, 0):max(-x, 0) + window.shape[1]]
                errors.append(np.abs(window[mask] - mine[..., :3][mask]).mean())
        assert min(errors) < 6, piece.image
    # A second fetch finds the download and the extraction in place.
    deb = next((cache.directory / "debs").glob("gcompris-qt-data_*.deb"))
    stamp = deb.stat().st_mtime_ns, package.root.stat().st_mtime_ns
    assert cache.fetch("gcompris-qt-data") == package
    assert (deb.stat().st_mtime_ns, package.root.stat().st_mtime_ns) == stamp
