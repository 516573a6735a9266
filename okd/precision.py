"""Mixed precision: what the hardware computes fast, and what `train.mixed_precision` resolves to."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from okd.errors import OkdError


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 autocast is 3-4x faster than fp32.
    `OKD_CPU_BF16=0` (or 1) overrides the detection, e.g. to run as a machine without AVX-512 would."""
    forced = os.environ.get("OKD_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo's first `flags` line; empty where there is none)."""
    try:
        return set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")), []))
    except OSError:
        return set()


def bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def resolve_dtype(setting: str) -> str:
    """A model dtype setting as the loader takes it: `fast` is bfloat16 where bf16 matmuls are native
    (bf16_is_fast: ~2.3x the fp32 decode speed on one AVX512-BF16 core) and float32 elsewhere (without
    them bf16 is emulated and slower than fp32); any other value is itself."""
    if setting == "fast":
        return "bfloat16" if bf16_is_fast() else "float32"
    return setting


def resolve_mixed_precision(setting: str, device_type: str | None = None) -> str:
    """`train.mixed_precision` as accelerate takes it: no | bf16 | fp16. `auto` is bf16 on a GPU that
    has it and no elsewhere (on CPU bf16 is opt-in: benchmarks/README.md); fp16 needs a GPU."""
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise OkdError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    return setting


def cpu_features() -> str:
    """What decides a CPU's speed here: AVX-512, and bf16 in hardware (AVX512-BF16, AMX)."""
    flags = cpu_flags()
    if not flags:
        return ""
    have = [name for name, flag in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16"))
            if flag in flags]
    text = "with " + ", ".join(have) if have else "without AVX-512"
    # A run limited to AVX2 kernels (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, OKD_CPU_BF16=0) says
    # so: its figures stand for a machine without AVX-512, not for this one.
    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                "ONEDNN_MAX_CPU_ISA", "OKD_CPU_BF16") if os.environ.get(k)]
    return text + (f" (limited by {' '.join(limits)})" if limits else "")
