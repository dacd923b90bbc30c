"""Large M (prefill): expand the sign words once into the dense transposed weight ``(K, N)`` with ``g`` and ``h``
folded in (``W_hat[k, n] = g[k] * sign * h[n]``), then let cuBLAS do the matmul. The dense matrix lives for one call.
With ``TERNARY`` the words are code words (16 outputs each) and ``sign`` is the ternary value.
"""

import triton
import triton.language as tl

from .codes import expand_words


@triton.jit
def dequant_kernel(
    w_ptr, g_ptr, h_ptr, out_ptr,
    N, K,
    stride_w, stride_out,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TERNARY: tl.constexpr = False,
):
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    PER_WORD: tl.constexpr = 16 if TERNARY else 32
    WORDS: tl.constexpr = BLOCK_N // PER_WORD
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_w = pid_n * WORDS + tl.arange(0, WORDS)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = offs_k < K
    n_mask = offs_n < N
    words = tl.load(w_ptr + offs_w[None, :] * stride_w + offs_k[:, None],
                    mask=k_mask[:, None] & (offs_w < tl.cdiv(N, PER_WORD))[None, :], other=0)
    signs = expand_words(words, tl.float32, TERNARY)
    g = tl.load(g_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    dense = signs * g[:, None] * h[None, :]
    tl.store(out_ptr + offs_k[:, None] * stride_out + offs_n[None, :], dense.to(out_ptr.dtype.element_ty),
             mask=k_mask[:, None] & n_mask[None, :])
