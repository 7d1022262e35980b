"""Fixtures shared by the core tests: isolated config/weights and image files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from support import SHARED


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Points artchain at an empty weights directory so no test sees another's files."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("ARTCHAIN_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("ARTCHAIN_CONFIG", raising=False)
    monkeypatch.delenv("ARTCHAIN_DEVICE", raising=False)
    return {**os.environ, "ARTCHAIN_WEIGHTS_DIR": str(weights)}


@pytest.fixture
def photo(tmp_path) -> Path:
    """A small real photo when the shared seed images are there, else a drawn gradient."""
    path = tmp_path / "photo.png"
    seed = SHARED / "seed-images" / "nature_original.png"
    if seed.is_file():
        image = Image.open(seed).convert("RGB")
        image.thumbnail((160, 160))
    else:
        image = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
    image.save(path)
    return path
