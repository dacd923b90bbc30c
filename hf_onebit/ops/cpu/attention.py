"""Attention of one query position against a key/value cache on the CPU (a decode step), in C.

torch's fused CPU attention (``scaled_dot_product_attention``) spent ~0.25-0.3 ms per layer and token on a 4096-wide
bf16 model with 64 cached tokens on a 2-core Zen 4, about as long as one of the layer's 4096 x 4096 packed linears;
the kernel of ``csrc/attention.h`` reads each cached key and value row once per query head and computes in float32
(scores, softmax, weighted sum), rounding once to bf16 as torch's kernel does (the sums in another order).

:func:`decode_attention` serves a call when it is one the kernel computes exactly as transformers' ``sdpa`` attention
would: CPU tensors, one query position, query/key/value all bf16 or all float32, no gradient, the mask ``None`` or
a boolean mask of shape ``(batch or 1, 1, 1, keys)``; it returns None for every other call (the caller then runs
torch's). ``HF_ONEBIT_DECODE_ATTENTION=0`` turns it off.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .binding import ERRORS, active_isa, library

#: Environment variable; "0" sends every call to torch.
ATTENTION_ENV = "HF_ONEBIT_DECODE_ATTENTION"


def enabled() -> bool:
    return os.environ.get(ATTENTION_ENV, "1") != "0"


def _row_mask(mask: Optional[torch.Tensor], batch: int, keys: int) -> tuple[Optional[torch.Tensor], int] | None:
    """The mask as one byte per (batch row, key) and its batch stride, or None when the kernel cannot take it."""
    if mask is None:
        return None, 0
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[3] != keys:
        return None
    if mask.shape[0] not in (1, batch):
        return None
    rows = mask[:, 0, 0, :]
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows.view(torch.uint8), rows.stride(0) if rows.shape[0] > 1 else 0


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     mask: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> Optional[torch.Tensor]:
    """Attention of ``query`` (batch, heads, 1, dim) on ``key``/``value`` (batch, kv heads, keys, dim) with boolean
    ``mask`` (True: attend), as ``(batch, 1, heads, dim)`` (the layout transformers' attention functions return), or
    None when the call is not one the kernel serves (module docstring)."""
    if not enabled() or query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return None
    if not (query.is_cpu and key.is_cpu and value.is_cpu):
        return None
    dtype = query.dtype
    if dtype not in (torch.bfloat16, torch.float32) or key.dtype != dtype or value.dtype != dtype:
        return None
    B, H, Q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    if Q != 1 or L < 1 or D < 1 or key.shape != (B, Hkv, L, D) or value.shape != key.shape or H % Hkv:
        return None
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return None
    if query.stride(-1) != 1 or key.stride(-1) != 1 or value.stride(-1) != 1:
        return None
    if key.stride(2) < D or value.stride(2) < D:
        return None
    rows = _row_mask(mask, B, L)
    if rows is None:
        return None
    mask_rows, mask_stride = rows
    lib = library()
    if lib is None:
        return None
    scale = D ** -0.5 if scale is None else float(scale)
    out = torch.empty((B, 1, H, D), dtype=dtype)
    rc = lib.onebit_decode_attention(
        active_isa(), B, H, Hkv, L, D, query.data_ptr(), query.stride(0), query.stride(1), key.data_ptr(),
        key.stride(0), key.stride(1), key.stride(2), value.data_ptr(), value.stride(0), value.stride(1),
        value.stride(2), None if mask_rows is None else mask_rows.data_ptr(), mask_stride, scale,
        int(dtype == torch.bfloat16), out.data_ptr(), H * D, D, torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"hf_onebit decode attention failed: {ERRORS.get(rc, rc)} (B={B}, H={H}, Hkv={Hkv}, "
                           f"L={L}, D={D})")
    return out
