"""The floating-point precision a network runs in, chosen at run time from what the device reports.

Core knows no model: a processor says which precisions its network tolerates, and `resolve_precision`
applies one policy to every processor:
- `fp32`, `bf16`, `fp16` are taken as asked (refused when the network does not support them);
- `auto` is fp16 on CUDA (bf16 where only that is supported), bf16 on a CPU whose instruction set
  has bf16 arithmetic (AVX-512 BF16 or AMX), and fp32 everywhere else: on a CPU without bf16
  hardware, bf16 is emulated and slower than fp32.
The choice is logged at INFO level, so `artchain run -v` shows it.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import ChainError
from .processor import Param

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Names, not dtypes, at import: a processor lists them as parameter choices without loading torch.
PRECISION_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISION_CHOICES = ("auto", *PRECISION_NAMES)
# The one `precision` step parameter of every processor that offers a choice (resolve_precision reads it).
PRECISION_PARAM = Param("precision", str, "auto", "auto = fp16 on a GPU, bf16 on a CPU with bf16 instructions, "
                        "else fp32; fp32 gives the full-precision result", choices=PRECISION_CHOICES)


def precision_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, PRECISION_NAMES[name])
# Flags Linux reports for native bf16 dot products: AVX-512 BF16 (Cooper Lake, Zen 4 and later)
# and AMX (Sapphire Rapids and later); oneDNN uses both for bf16 convolutions and matmuls.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo; empty where that is unreadable
    (not Linux), which makes every policy below fall back to fp32."""
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 convolutions and matmuls run natively on this CPU: torch dispatches its AVX-512
    kernels (it reports AVX512 or better) and the CPU has bf16 dot-product instructions."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return capability.startswith(("AVX512", "AMX")) and bool(cpu_flags() & BF16_CPU_FLAGS)


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name in PRECISION_NAMES if precision_dtype(name) == dtype)


def resolve_precision(requested: str, device: torch.device, supported: frozenset[torch.dtype], *,
                      who: str) -> torch.dtype:
    """The dtype `who` (a step name, for messages) runs in on `device`. `supported` holds the
    reduced precisions its network tolerates (fp32 always works)."""
    import torch

    if requested not in PRECISION_CHOICES:
        raise ChainError(f"{who}: precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        dtype = precision_dtype(requested)
        if dtype != torch.float32 and dtype not in supported:
            raise ChainError(f"{who}: this network does not support {requested}")
        log.info("%s: %s on %s (asked for)", who, requested, device)
        return dtype
    dtype, reason = _automatic(device, supported)
    log.info("%s: precision auto -> %s on %s (%s)", who, precision_name(dtype), device, reason)
    return dtype


def _automatic(device: torch.device, supported: frozenset[torch.dtype]) -> tuple[torch.dtype, str]:
    import torch

    if device.type == "cuda":
        if torch.float16 in supported:
            return torch.float16, "CUDA"
        if torch.bfloat16 in supported and torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA, network not fp16-safe"
        return torch.float32, "CUDA, network supports no half precision"
    if device.type == "cpu":
        if not cpu_has_fast_bf16():
            return torch.float32, (f"CPU without bf16 instructions (torch capability "
                                   f"{torch.backends.cpu.get_cpu_capability()})")
        if torch.bfloat16 not in supported:
            return torch.float32, "network not bf16-safe"
        flags = ", ".join(sorted(cpu_flags() & BF16_CPU_FLAGS))
        return torch.bfloat16, f"CPU has {flags}"
    return torch.float32, f"no reduced-precision policy for {device.type}"
