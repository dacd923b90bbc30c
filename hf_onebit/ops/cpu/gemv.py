"""Float linear layers at decode sizes on the CPU: ``x @ W.T + b`` for a few activation rows, from bfloat16 weights
or from an int8 copy of them.

A 1-bit model keeps its output head in float (tied to the embeddings, or too sensitive to quantize); in a 7B-shaped
model that head is a 32000 x 4096 bf16 matrix, 262 MB read once per decoded token, and torch's bf16 matrix-vector
product read it at ~19 GB/s on a 2-core Zen 4 whose plain reads run at ~35 GB/s (``benchmarks/decode_split.py``).
The kernels of ``csrc/gemv.h`` stream the weights once with the activation rows in L1 and need only AVX2 + FMA or
AVX-512F (a bf16 pair in a 32-bit lane becomes two floats by a shift and a mask); they compute in float32 and round
once, as torch's bf16 linear does (the sums in another order).

:func:`bf16_linear` serves calls of at most :data:`MAX_ROWS` activation rows with bf16 input, weight and output, on
a CPU with the library and without gradients; it returns None for every other call (the caller then runs
``torch.nn.functional.linear``). ``HF_ONEBIT_BF16_GEMV=0`` turns it off.

:func:`int8_linear` computes the same product from an int8 copy of the weights with one float scale per row
(:func:`quantize_rows_int8`: symmetric absmax per row), half the bytes of bf16; products and sums in float32, the
row's scale applied to the sum. It serves the calls :func:`bf16_linear` serves (the copy's source weight may also be
float32, the input then float32 too) and returns None for the others; ``HF_ONEBIT_BF16_GEMV=0`` turns it off too.
:func:`int8_linear_reference` is its PyTorch specification.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..reference import quantize_activations_int8
from .binding import ERRORS, active_isa, library

#: Environment variable; "0" sends every call to torch.
GEMV_ENV = "HF_ONEBIT_BF16_GEMV"
#: Activation rows up to which a call runs here (csrc/gemv.h allows 8; torch's GEMM serves more).
MAX_ROWS = 4
#: Rows quantized at a time by :func:`quantize_rows_int8` (bounds its float32 working memory).
QUANTIZE_CHUNK_ROWS = 4096


def enabled() -> bool:
    return os.environ.get(GEMV_ENV, "1") != "0"


def rows_served(x: torch.Tensor, K: int, N: int, dtypes: tuple, *tensors) -> Optional[int]:
    """M, the activation rows of a call the kernels serve (input dtype in ``dtypes``, K inputs, N outputs, every
    tensor of ``tensors`` - weights, bias - on the CPU and without a recorded gradient), or None."""
    if not (x.is_cpu and x.dtype in dtypes and x.dim() > 0 and x.shape[-1] == K and N > 0):
        return None
    if not all(t is None or t.is_cpu for t in tensors):
        return None
    M = x.numel() // K if K else 0
    if not 1 <= M <= MAX_ROWS:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors)):
        return None
    if not enabled():
        return None
    return M


def _rows(x: torch.Tensor, M: int, K: int) -> torch.Tensor:
    x2 = x.reshape(M, K)
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def _bias(bias: Optional[torch.Tensor], N: int) -> Optional[torch.Tensor]:
    """The bias as float32 for the kernel; raises on a wrong shape (as ``F.linear`` would)."""
    if bias is None:
        return None
    if bias.shape != (N,):
        raise ValueError(f"hf_onebit GEMV: bias: got shape {tuple(bias.shape)}; allowed: ({N},)")
    return bias.detach().to(torch.float32).contiguous()


def _check(rc: int, what: str, M: int, K: int, N: int) -> None:
    if rc != 0:
        raise RuntimeError(f"hf_onebit {what} GEMV failed: {ERRORS.get(rc, rc)} (M={M}, K={K}, N={N})")


def bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``torch.nn.functional.linear(x, weight, bias)`` through the kernel, or None when the call is not one it serves:
    not on the CPU, not all bf16, more than :data:`MAX_ROWS` rows, a weight whose rows are not contiguous, a call
    that records gradients, or no kernel library."""
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.stride(1) != 1 or weight.stride(0) < weight.shape[1]:
        return None
    N, K = weight.shape
    if bias is not None and bias.shape != (N,):
        return None
    M = rows_served(x, K, N, (torch.bfloat16,), weight, bias)
    lib = library() if M is not None else None
    if lib is None:
        return None
    x2, b = _rows(x, M, K), _bias(bias, N)
    y = torch.empty((M, N), dtype=torch.bfloat16)
    rc = lib.onebit_bf16_gemv(active_isa(), M, K, N, x2.data_ptr(), 1, x2.stride(0), weight.data_ptr(),
                              weight.stride(0), None if b is None else b.data_ptr(), y.data_ptr(), 1, N,
                              torch.get_num_threads())
    _check(rc, "bf16", M, K, N)
    return y.view(*x.shape[:-1], N)


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``q`` int8 (N, K) and ``scale`` float32 (N,) with ``weight ~ q * scale[:, None]``, each row
    quantized as the reference quantizes an activation row (:func:`hf_onebit.ops.reference.quantize_activations_int8`:
    ``scale = max |w| / 127``, 1 for a row of zeros; ``q = round(w / scale)``). Works in chunks of
    :data:`QUANTIZE_CHUNK_ROWS` rows, so the float32 working copy stays small for a large head."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_rows_int8: weight: got {weight.dim()} dimensions; allowed: 2 (N, K)")
    N, K = weight.shape
    q = torch.empty((N, K), dtype=torch.int8, device=weight.device)
    scale = torch.empty(N, dtype=torch.float32, device=weight.device)
    with torch.no_grad():
        for n0 in range(0, N, QUANTIZE_CHUNK_ROWS):
            rows, row_scale = quantize_activations_int8(weight[n0:n0 + QUANTIZE_CHUNK_ROWS])
            q[n0:n0 + QUANTIZE_CHUNK_ROWS] = rows.to(torch.int8)
            scale[n0:n0 + QUANTIZE_CHUNK_ROWS] = row_scale[:, 0]
    return q, scale


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                          bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What :func:`int8_linear` computes, in PyTorch: ``(x @ q.T) * scale + bias`` in float32, in ``x``'s dtype."""
    y = torch.nn.functional.linear(x.float(), q.float()) * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """``int8_linear_reference(x, q, scale, bias)`` through the kernel (float32 sums in another order, one rounding
    to bf16 for a bf16 ``x``), or None when the call is not one it serves: not on the CPU, ``x`` neither bf16 nor
    float32, more than :data:`MAX_ROWS` rows, a call that records gradients, or no kernel library. ``q`` must be the
    contiguous int8 (N, K) and ``scale`` the float32 (N,) of :func:`quantize_rows_int8`."""
    if q.dtype != torch.int8 or q.dim() != 2 or not q.is_contiguous():
        raise ValueError(f"int8_linear: q: got {q.dtype} {tuple(q.shape)}; allowed: a contiguous int8 (N, K) tensor")
    N, K = q.shape
    if scale.dtype != torch.float32 or scale.shape != (N,) or not scale.is_contiguous():
        raise ValueError(f"int8_linear: scale: got {scale.dtype} {tuple(scale.shape)}; allowed: contiguous float32 "
                         f"({N},)")
    M = rows_served(x, K, N, (torch.bfloat16, torch.float32), q, scale, bias)
    lib = library() if M is not None else None
    if lib is None:
        return None
    x2, b = _rows(x, M, K), _bias(bias, N)
    is_bf16 = int(x.dtype == torch.bfloat16)
    y = torch.empty((M, N), dtype=x.dtype)
    rc = lib.onebit_int8_gemv(active_isa(), M, K, N, x2.data_ptr(), is_bf16, x2.stride(0), q.data_ptr(), K,
                              scale.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), is_bf16, N,
                              torch.get_num_threads())
    _check(rc, "int8", M, K, N)
    return y.view(*x.shape[:-1], N)
