"""Whether bf16 autocast pays off on this machine (the default of the main job and ``hf-onebit distill``)."""

from __future__ import annotations

import functools

import torch

#: /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_is_fast(device: str = "cpu") -> bool:
    """True for a CUDA device with bf16 support, or a CPU with AVX512-BF16 or AMX-BF16 (elsewhere bf16 is emulated
    and slower than float32)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
