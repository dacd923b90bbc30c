"""Pure-PyTorch reference implementation of every hf_onebit op.

This file is the specification: each fast kernel (CPU, Triton) is tested against these functions. They run on any
device and any float dtype, support autograd, and favour clarity over speed (they unpack the signs to a dense matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats.packing import unpack_signs, unpack_ternary, unpack_weight  # noqa: F401  (re-exported for backends)

#: Activation precisions an op accepts: 0 = exact float activations, 8 = int8 per-token absmax activations.
SUPPORTED_ACT_BITS = (0, 8)


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last dimension) absmax int8 quantisation: returns ``(q, scale)`` with ``x ~= q * scale``.

    ``q`` holds integers in ``[-127, 127]`` (as ``x``'s float dtype upcast to float32); ``scale`` has a trailing
    dimension of size 1. All-zero rows get scale 1 so that they map to zero exactly.
    """
    xf = x.float()
    if xf.shape[-1] == 0:  # rows of no values: all zero (amax refuses an empty dimension)
        absmax = xf.new_zeros(*xf.shape[:-1], 1)
    else:
        absmax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.clamp(torch.round(xf / scale), -127, 127)
    return q, scale


def packed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int = 0,
    weight_format: str = "binary",
) -> torch.Tensor:
    """``y = ((x * scale_in) @ Q.T) * scale_out (+ bias)`` with ``Q`` = the unpacked signs (``"binary"``) or
    ternary values (``"ternary"``, ``weight`` as in :func:`hf_onebit.formats.packing.pack_ternary`); otherwise as
    :func:`binary_linear`."""
    dtype = x.dtype
    q_weight = unpack_weight(weight, in_features, dtype, weight_format)
    xs = x * scale_in.to(dtype)
    if act_bits == 8:
        q, scale = quantize_activations_int8(xs)
        # Straight-through for autograd: the forward sees the int8 grid, the backward the float input.
        xs = xs + ((q * scale).to(dtype) - xs).detach()
    elif act_bits != 0:
        raise ValueError(f"act_bits: {act_bits} is not supported; allowed: {SUPPORTED_ACT_BITS}")
    y = F.linear(xs, q_weight) * scale_out.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def ternary_linear(x, weight, scale_in, scale_out, bias, in_features: int, act_bits: int = 0) -> torch.Tensor:
    """:func:`packed_linear` on 2-bit ternary codes (``uint8 (out_features, ceil(in_features / 4))``)."""
    return packed_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits, "ternary")


def binary_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    act_bits: int = 0,
) -> torch.Tensor:
    """``y = ((x * scale_in) @ sign(W).T) * scale_out (+ bias)`` with ``sign(W)`` unpacked from ``weight``.

    Args:
        x: activations ``(..., in_features)``, any float dtype; the output has the same dtype.
        weight: packed sign bits, ``uint8 (out_features, ceil(in_features / 8))`` (see :mod:`hf_onebit.formats.packing`).
        scale_in: ``g``, a float vector of length ``in_features``.
        scale_out: ``h``, a float vector of length ``out_features``.
        bias: optional float vector of length ``out_features``.
        in_features: number of inputs (the packed rows may carry padding bits past it).
        act_bits: 0 for exact float activations; 8 to quantise ``x * scale_in`` per token to int8 first
            (what the fast CPU path computes exactly).
    """
    return packed_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits, "binary")


def dequantize_binary(
    weight: torch.Tensor, scale_in: torch.Tensor, scale_out: torch.Tensor, in_features: int, dtype: torch.dtype,
    weight_format: str = "binary",
) -> torch.Tensor:
    """The dense matrix ``W_hat = scale_out[:, None] * Q * scale_in[None, :]`` with the same function
    (``Q`` = signs, or ternary values with ``weight_format="ternary"``)."""
    signs = unpack_weight(weight, in_features, torch.float32, weight_format)
    dense = scale_out.float()[:, None] * signs * scale_in.float()[None, :]
    return dense.to(dtype)
