"""Medium M: unpack the sign words to +-1 in registers and multiply on the tensor cores with ``tl.dot``.

``x * g`` is formed in fp32 and rounded to ``x``'s dtype (as the reference does) while the tile is loaded; ``h`` and
the bias are applied to the fp32 accumulator before the single rounding to the output dtype.
With ``TERNARY`` the words are code words (16 outputs each), expanded to -1 / 0 / +1 instead of +-1.
"""

import triton
import triton.language as tl

from .codes import expand_words
from .tiles import grouped_tile


@triton.jit
def matmul_kernel(
    x_ptr, g_ptr, w_ptr, h_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_w, stride_ym,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_FP32: tl.constexpr,
    TERNARY: tl.constexpr = False,
):
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)

    PER_WORD: tl.constexpr = 16 if TERNARY else 32
    WORDS: tl.constexpr = BLOCK_N // PER_WORD
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_w = pid_n * WORDS + tl.arange(0, WORDS)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    w_mask = offs_w < tl.cdiv(N, PER_WORD)
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
                     mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        xg = (xv.to(tl.float32) * g[None, :]).to(dtype)
        words = tl.load(w_ptr + offs_w[None, :] * stride_w + k[:, None], mask=k_mask[:, None] & w_mask[None, :], other=0)
        signs = expand_words(words, dtype, TERNARY)
        if DOT_FP32:
            # exact fp32 products: fp32 inputs (TF32 would round x), or the interpreter (see the launcher)
            acc = tl.dot(xg.to(tl.float32), signs.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(xg, signs, acc)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    out = acc * tl.load(h_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])
