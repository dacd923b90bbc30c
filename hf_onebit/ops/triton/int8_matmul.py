"""``act_bits=8`` for M beyond the GEMV: int8 activations times int8 weights on the integer tensor cores.

``y[m, n] = (sum_k q[m, k] * Q[n, k]) * s[m] * h[n] (+ bias[n])`` with ``q, s`` from :mod:`.quant` and ``Q`` the
+-1 (or -1 / 0 / +1) weights. The int32 accumulator is exact; the scales are applied in fp32 before the single
rounding to the output dtype. ``B`` is either the on-disk packed bytes, expanded in registers tile by tile
(``PACKED``, the ``dot`` path; ``C`` = bytes per row), or an ``(N, K_pad)`` int8 matrix expanded once per call by
:func:`.packed_bytes.unpack_int8_kernel` (the ``dense`` path). Both are K-major, the layout int8 MMA wants.
"""

import triton
import triton.language as tl

from .packed_bytes import expand_bytes
from .tiles import grouped_tile


@triton.jit
def int8_matmul_kernel(
    q_ptr, s_ptr, w_ptr, h_ptr, b_ptr, y_ptr,
    M, N, K, C,
    stride_qm, stride_w, stride_ym,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PACKED: tl.constexpr,
    TERNARY: tl.constexpr = False,
):
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    PER_BYTE: tl.constexpr = 4 if TERNARY else 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_c = tl.arange(0, BLOCK_K // PER_BYTE)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):  # K: a multiple of BLOCK_K; q and the expanded weight are zero past the inputs
        k = k0 + offs_k
        a = tl.load(q_ptr + offs_m[:, None] * stride_qm + k[None, :], mask=m_mask[:, None], other=0)
        if PACKED:
            c = k0 // PER_BYTE + offs_c
            packed = tl.load(w_ptr + offs_n[:, None] * stride_w + c[None, :],
                             mask=n_mask[:, None] & (c < C)[None, :], other=0)
            b = expand_bytes(packed, TERNARY)  # values past the inputs meet zero activations
        else:
            b = tl.load(w_ptr + offs_n[:, None] * stride_w + k[None, :], mask=n_mask[:, None], other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
    s = tl.load(s_ptr + offs_m, mask=m_mask, other=0.0)
    h = tl.load(h_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * s[:, None] * h[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])
