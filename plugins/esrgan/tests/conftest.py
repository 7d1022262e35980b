"""Shared fixtures: the default weights converted once per session, and real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artchain.plugins.esrgan import build_model
from artchain.plugins.esrgan.ncnn_convert import derive_x4plus
from support import shared_file



@pytest.fixture(scope="session")
def x4plus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("esrgan") / "realesrgan-x4plus.safetensors"
    derive_x4plus(path)
    return path


@pytest.fixture(scope="session")
def x4plus(x4plus_file):
    from safetensors.torch import load_file

    return build_model(load_file(x4plus_file), torch.device("cpu"))


def photo(name: str) -> torch.Tensor:
    """A seed photo as a (1, 3, H, W) batch in [0, 1]."""
    path = shared_file("seed-images", name)
    pixels = np.array(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]
