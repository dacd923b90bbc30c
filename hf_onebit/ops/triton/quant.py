"""Per-token int8 quantisation of ``x * g`` for the ``act_bits=8`` paths, bit for bit as the reference does it.

:func:`hf_onebit.ops.reference.quantize_activations_int8` applied to ``x * g.to(x.dtype)`` (the product rounded to
``x``'s dtype): ``scale = absmax / 127`` (1 for an all-zero row) and ``q = clamp(round(xs / scale), -127, 127)`` with
round-half-to-even and correctly rounded division, so the kernels see the same integers as the reference. One
program per row, two passes over it (absmax, then quantise; the second pass hits the L2); it writes ``K_PAD >= K``
values, zeros past ``K`` (the int8 matmul's padding).
"""

import triton
import triton.language as tl


@triton.jit
def _scaled(x_ptr, g_ptr, k, K, stride_xk):
    """``x * g`` of inputs ``k`` as the reference forms it (``g`` and the product rounded to ``x``'s dtype)."""
    dtype = x_ptr.dtype.element_ty
    mask = k < K
    g = tl.load(g_ptr + k, mask=mask, other=0.0).to(dtype).to(tl.float32)
    xv = tl.load(x_ptr + k * stride_xk, mask=mask, other=0.0).to(tl.float32)
    return (xv * g).to(dtype).to(tl.float32)


@triton.jit
def _round_half_even(v):
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return f + ((d > 0.5) | ((d == 0.5) & odd)).to(tl.float32)


@triton.jit
def quantize_rows_kernel(
    x_ptr, g_ptr, q_ptr, s_ptr,
    K, K_PAD,
    stride_xm, stride_xk, stride_qm,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_xm
    offs = tl.arange(0, BLOCK_K)
    absmax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        absmax = tl.maximum(absmax, tl.abs(_scaled(x_row, g_ptr, k0 + offs, K, stride_xk)))
    top = tl.max(absmax, axis=0)
    scale = tl.where(top > 0, tl.div_rn(top, 127.0), 1.0)
    for k0 in range(0, K_PAD, BLOCK_K):  # inputs K .. K_PAD - 1 get q = 0 (the matmul's padding)
        k = k0 + offs
        q = _round_half_even(tl.div_rn(_scaled(x_row, g_ptr, k, K, stride_xk), scale))
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + k, q.to(tl.int8), mask=k < K_PAD)
    tl.store(s_ptr + row, scale)
