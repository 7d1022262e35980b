"""Shared fixtures: the default weights converted once per session, and real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artchain.plugins.esrgan.model import build_model
from artchain.plugins.esrgan.ncnn_convert import derive_x4plus
from support import shared_file


@pytest.fixture(scope="session")
def x4plus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("esrgan") / "realesrgan-x4plus.safetensors"
    derive_x4plus(path)
    return path


@pytest.fixture(scope="session")
def x4plus_state(x4plus_file) -> dict:
    from safetensors.torch import load_file

    return load_file(x4plus_file)


@pytest.fixture(scope="session")
def x4plus(x4plus_state):
    """fp32, the reference precision (what a CPU without bf16 instructions runs)."""
    return build_model(x4plus_state, torch.device("cpu"), "fp32")


@pytest.fixture(scope="session")
def x4plus_auto(x4plus_state):
    """The precision the step picks on this machine by default."""
    return build_model(x4plus_state, torch.device("cpu"), "auto")


@pytest.fixture(scope="session")
def x4plus_bf16(x4plus_state):
    return build_model(x4plus_state, torch.device("cpu"), "bf16")


def photo(name: str) -> torch.Tensor:
    """A seed photo as a (1, 3, H, W) batch in [0, 1]."""
    path = shared_file("seed-images", name)
    pixels = np.array(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def skimage_photo(name: str, top: int, left: int, side: int) -> torch.Tensor:
    """A square crop of one of scikit-image's photos (fetched at test time, never committed)."""
    from skimage import data

    pixels = getattr(data, name)()[top:top + side, left:left + side].astype(np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
