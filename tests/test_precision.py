"""core/precision.py: the precision policy follows what the CPU reports (mocked here: one CPU with
bf16 instructions, one without), says what it chose, and refuses what a network cannot run; and
imageio turns reduced-precision and uint8 results into the same image as float32 ones."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from artchain.core import imageio, precision
from artchain.core.errors import ChainError
from artchain.core.precision import cpu_flags, cpu_has_fast_bf16, resolve_precision

CPU = torch.device("cpu")
HALF_AND_BF16 = frozenset({torch.float16, torch.bfloat16})

ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16
processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16
"""
SKYLAKE_CPUINFO = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Makes the policy see the CPU described by the text written with the returned function."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    cpu_flags.cache_clear()

    def describe(text: str, capability: str = "AVX512") -> None:
        cpuinfo.write_text(text)
        cpu_flags.cache_clear()
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)

    yield describe
    cpu_flags.cache_clear()


def test_flags_are_read_from_cpuinfo(cpu):
    cpu(ZEN4_CPUINFO)
    assert {"avx512_bf16", "avx512_vnni", "avx2"} <= cpu_flags()
    assert "AuthenticAMD" not in cpu_flags()


def test_unreadable_cpuinfo_means_no_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    cpu_flags.cache_clear()
    try:
        assert cpu_flags() == frozenset() and not cpu_has_fast_bf16()
    finally:
        cpu_flags.cache_clear()


@pytest.mark.parametrize("text,capability,fast", [
    (ZEN4_CPUINFO, "AVX512", True),
    (SKYLAKE_CPUINFO, "AVX512", False),  # AVX-512 without bf16 dot products
    (ZEN4_CPUINFO, "AVX2", False),  # torch not dispatching its AVX-512 kernels (e.g. ATEN_CPU_CAPABILITY)
    ("flags\t: avx2 avx512f amx_tile amx_bf16\n", "AMX", True),
])
def test_fast_bf16_needs_the_instructions_and_torchs_avx512_kernels(cpu, text, capability, fast):
    cpu(text, capability)
    assert cpu_has_fast_bf16() is fast


def test_auto_is_bf16_on_a_bf16_cpu_and_says_so(cpu, caplog):
    cpu(ZEN4_CPUINFO)
    with caplog.at_level(logging.INFO, logger="artchain.core.precision"):
        assert resolve_precision("auto", CPU, HALF_AND_BF16, who="esrgan") == torch.bfloat16
    assert "esrgan: precision auto -> bf16 on cpu (CPU has avx512_bf16)" in caplog.text


def test_auto_is_fp32_on_a_cpu_without_bf16_and_says_why(cpu, caplog):
    cpu(SKYLAKE_CPUINFO)
    with caplog.at_level(logging.INFO, logger="artchain.core.precision"):
        assert resolve_precision("auto", CPU, HALF_AND_BF16, who="esrgan") == torch.float32
    assert "precision auto -> fp32 on cpu (CPU without bf16 instructions" in caplog.text


def test_auto_keeps_fp32_for_a_network_that_is_not_bf16_safe(cpu):
    cpu(ZEN4_CPUINFO)
    assert resolve_precision("auto", CPU, frozenset({torch.float16}), who="x") == torch.float32


def test_auto_on_cuda_prefers_fp16():
    assert resolve_precision("auto", torch.device("cuda"), HALF_AND_BF16, who="x") == torch.float16


def test_explicit_precisions_are_taken_or_refused(cpu):
    cpu(SKYLAKE_CPUINFO)
    assert resolve_precision("bf16", CPU, HALF_AND_BF16, who="x") == torch.bfloat16
    assert resolve_precision("fp32", CPU, frozenset(), who="x") == torch.float32
    with pytest.raises(ChainError, match="^esrgan: this network does not support fp16$"):
        resolve_precision("fp16", CPU, frozenset({torch.bfloat16}), who="esrgan")
    with pytest.raises(ChainError, match="precision must be one of auto, fp32, bf16, fp16"):
        resolve_precision("int8", CPU, HALF_AND_BF16, who="esrgan")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_results_become_the_same_image_as_float32(dtype):
    values = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    reduced = values.to(dtype)
    assert imageio.to_image(reduced).tobytes() == imageio.to_image(reduced.float()).tobytes()


def test_uint8_results_become_images_as_they_are():
    pixels = torch.randint(0, 256, (1, 3, 21, 34), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = pixels[0].permute(1, 2, 0).numpy()
    for layout in (torch.contiguous_format, torch.channels_last):
        image = imageio.to_image(pixels.contiguous(memory_format=layout))
        assert np.array_equal(np.asarray(image), expected)
    assert imageio.to_image(pixels.float() / 255).tobytes() == Image.fromarray(expected).tobytes()


def test_float_results_are_converted_in_bands_without_changing_the_input(monkeypatch):
    monkeypatch.setattr(imageio, "_CONVERSION_VALUES", 3 * 53 * 5)  # five rows at a time
    values = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(2)) * 1.4 - 0.2
    original = values.clone()
    expected = values[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(imageio.to_image(values)), expected)
    assert torch.equal(values, original)
