"""The latent weight of a progressive layer on the CPU kernel library (csrc/progressive.h): one pass per row.

Binary: ``h[:, None] * progressive_sign(W, t, row_absmean(W)) * g[None, :]`` (:mod:`hf_onebit.training.binarizers`,
with ``g``/``h`` the layer's ``scale_in``/``scale_out``) is the specification; ternary: the same with the dual-scaling
smooth ternary step ``c * G(W / S_a, t)`` of :class:`~hf_onebit.training.binarizers.ProgressiveBinarizer`. These
functions compute the same values up to a few float32 ulp of the tanh, write the output directly in the dtype autocast
would cast it to (float32 or bfloat16), and recompute the tanh in the backward instead of storing it. Callers
check :func:`supports` first and use the reference path otherwise.
"""

from __future__ import annotations

import math

import torch

from .binding import ERRORS, active_isa, library

_OUT_DTYPES = (torch.float32, torch.bfloat16)


def _is_f32_vector(t: torch.Tensor | None, size: int) -> bool:
    return t is None or (t.is_cpu and t.dtype == torch.float32 and t.dim() == 1 and t.shape[0] == size
                         and t.is_contiguous())


def supports(weight: torch.Tensor, out_dtype: torch.dtype, scale_in: torch.Tensor | None = None,
             scale_out: torch.Tensor | None = None) -> bool:
    """Whether the kernels take this layer: CPU, a float32 2-D contiguous weight, float32 scale vectors of its sizes
    (or None), a float32 or bfloat16 output, the library loaded."""
    return (weight.is_cpu and weight.dtype == torch.float32 and weight.dim() == 2 and weight.is_contiguous()
            and weight.numel() > 0 and out_dtype in _OUT_DTYPES and _is_f32_vector(scale_in, weight.shape[1])
            and _is_f32_vector(scale_out, weight.shape[0]) and library() is not None)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _call(name: str, *args) -> None:
    rc = getattr(library(), name)(*args)
    if rc != 0:
        raise RuntimeError(f"hf_onebit: {name} failed ({ERRORS.get(rc, rc)})")


def _grad_operand(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` as the kernels read it: contiguous, float32 or bfloat16 (other dtypes converted to float32)."""
    return (grad if grad.dtype in _OUT_DTYPES else grad.float()).contiguous()


def _check_t(t: float) -> None:
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"t: got {t}; allowed: a finite number > 0")


def progressive_sign_forward(weight: torch.Tensor, t: float, out_dtype: torch.dtype,
                             scale_in: torch.Tensor | None = None, scale_out: torch.Tensor | None = None):
    """``(scale_out[:, None] * s * tanh(W t / s) / tanh(t) * scale_in[None, :]`` as ``out_dtype``, ``s``) with ``s``
    the ``(N, 1)`` row absmean of ``W`` (at least 1e-8); a scale given as None counts as ones."""
    _check_t(t)
    n, k = weight.shape
    out = torch.empty((n, k), dtype=out_dtype)
    row_scale = torch.empty((n, 1), dtype=torch.float32)
    _call("onebit_progressive_sign_forward", active_isa(), n, k, weight.data_ptr(), t, math.tanh(t), _ptr(scale_in),
          _ptr(scale_out), out.data_ptr(), int(out_dtype == torch.bfloat16), row_scale.data_ptr(),
          torch.get_num_threads())
    return out, row_scale


def progressive_sign_backward(weight: torch.Tensor, row_scale: torch.Tensor, t: float, grad: torch.Tensor,
                              scale_in: torch.Tensor | None = None, scale_out: torch.Tensor | None = None):
    """The gradients ``(of W, of scale_in or None, of scale_out or None)``, float32, of the forward above given
    ``grad`` (float32 or bfloat16) for its output, ``s`` held constant."""
    _check_t(t)
    grad = _grad_operand(grad)
    n, k = weight.shape
    grad_w = torch.empty((n, k), dtype=torch.float32)
    grad_in = None if scale_in is None else torch.empty(k, dtype=torch.float32)
    grad_out = None if scale_out is None else torch.empty(n, dtype=torch.float32)
    _call("onebit_progressive_sign_backward", active_isa(), n, k, weight.data_ptr(), row_scale.data_ptr(), t,
          math.tanh(t), _ptr(scale_in), _ptr(scale_out), grad.data_ptr(), int(grad.dtype == torch.bfloat16),
          grad_w.data_ptr(), _ptr(grad_in), _ptr(grad_out), torch.get_num_threads())
    return grad_w, grad_in, grad_out


def _inv_norm(t: float) -> float:
    return 1.0 / (math.tanh(t / 2) + math.tanh(1.5 * t))


def progressive_ternary_forward(weight: torch.Tensor, t: float, scale_in: torch.Tensor | None = None,
                                scale_out: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32):
    """``(scale_out[:, None] * c * G(W / s, t) * scale_in[None, :]`` as ``out_dtype``, ``(N, 2)`` float32 rows
    ``(s, c)``) with ``s`` the row absmean of ``W`` and ``c`` the least-squares row scale of ``G`` (each at least
    1e-8); a scale given as None counts as ones."""
    _check_t(t)
    n, k = weight.shape
    out = torch.empty((n, k), dtype=out_dtype)
    row_scales = torch.empty((n, 2), dtype=torch.float32)
    _call("onebit_progressive_ternary_forward", active_isa(), n, k, weight.data_ptr(), t, _inv_norm(t),
          _ptr(scale_in), _ptr(scale_out), out.data_ptr(), int(out_dtype == torch.bfloat16), row_scales.data_ptr(),
          torch.get_num_threads())
    return out, row_scales


def progressive_ternary_backward(weight: torch.Tensor, row_scales: torch.Tensor, t: float, grad: torch.Tensor,
                                 scale_in: torch.Tensor | None = None, scale_out: torch.Tensor | None = None):
    """The gradients ``(of W, of scale_in or None, of scale_out or None)``, float32, of the ternary forward above
    given ``grad`` (float32 or bfloat16) for its output, ``s`` and ``c`` held constant."""
    _check_t(t)
    grad = _grad_operand(grad)
    n, k = weight.shape
    grad_w = torch.empty((n, k), dtype=torch.float32)
    grad_in = None if scale_in is None else torch.empty(k, dtype=torch.float32)
    grad_out = None if scale_out is None else torch.empty(n, dtype=torch.float32)
    _call("onebit_progressive_ternary_backward", active_isa(), n, k, weight.data_ptr(), row_scales.data_ptr(), t,
          _inv_norm(t), _ptr(scale_in), _ptr(scale_out), grad.data_ptr(), int(grad.dtype == torch.bfloat16),
          grad_w.data_ptr(), _ptr(grad_in), _ptr(grad_out), torch.get_num_threads())
    return grad_w, grad_in, grad_out
