"""Float linear layers with bfloat16 weights at decode sizes on the CPU: ``x @ W.T + b`` for a few activation rows.

A 1-bit model keeps its output head in float (tied to the embeddings, or too sensitive to quantize); in a 7B-shaped
model that head is a 32000 x 4096 bf16 matrix, 262 MB read once per decoded token, and torch's bf16 matrix-vector
product read it at ~19 GB/s on a 2-core Zen 4 whose plain reads run at ~35 GB/s (``benchmarks/decode_split.py``).
The kernels of ``csrc/bf16_gemv.h`` stream the weights once with the activation rows in L1 and need only AVX2 + FMA
or AVX-512F (a bf16 pair in a 32-bit lane becomes two floats by a shift and a mask); they compute in float32 and
round once, as torch's bf16 linear does (the sums in another order).

:func:`bf16_linear` serves calls of at most :data:`MAX_ROWS` activation rows with bf16 input, weight and output, on
a CPU with the library and without gradients; it returns None for every other call (the caller then runs
``torch.nn.functional.linear``). ``HF_ONEBIT_BF16_GEMV=0`` turns it off.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .binding import ERRORS, active_isa, library

#: Environment variable; "0" sends every call to torch.
GEMV_ENV = "HF_ONEBIT_BF16_GEMV"
#: Activation rows up to which a call runs here (csrc/bf16_gemv.h allows 8; torch's GEMM serves more).
MAX_ROWS = 4


def enabled() -> bool:
    return os.environ.get(GEMV_ENV, "1") != "0"


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``torch.nn.functional.linear(x, weight, bias)`` through the kernel, or None when the call is not one it serves:
    not on the CPU, not all bf16, more than :data:`MAX_ROWS` rows, a weight whose rows are not contiguous, a call
    that records gradients, or no kernel library."""
    if not (x.is_cpu and weight.is_cpu and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16):
        return None
    if weight.dim() != 2 or x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        return None
    K, N = weight.shape[1], weight.shape[0]
    if weight.stride(1) != 1 or weight.stride(0) < K:
        return None
    M = x.numel() // K if K else 0
    if not 1 <= M <= MAX_ROWS or N == 0:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return None
    if bias is not None and (not bias.is_cpu or bias.shape != (N,)):
        return None
    if not enabled():
        return None
    lib = library()
    if lib is None:
        return None
    x2 = x.reshape(M, K)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    y = torch.empty((M, N), dtype=torch.bfloat16)
    rc = lib.onebit_bf16_gemv(active_isa(), M, K, N, x2.data_ptr(), 1, x2.stride(0), weight.data_ptr(),
                              weight.stride(0), None if b is None else b.data_ptr(), y.data_ptr(), 1, N,
                              torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"hf_onebit bf16 GEMV failed: {ERRORS.get(rc, rc)} (M={M}, K={K}, N={N})")
    return y.view(*x.shape[:-1], N)
