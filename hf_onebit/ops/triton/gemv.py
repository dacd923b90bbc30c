"""GEMV over 32-bit sign words for small M (decode).

Weights come repacked by :mod:`.repack`: word ``(w, k)`` holds the signs of outputs ``32 w .. 32 w + 31`` for input
``k`` (bit ``j`` set = +1), rows contiguous along ``k``. A program owns ``BITS`` outputs of one word column and all
of ``K``: its ``THREADS`` threads split ``K`` between them (split-K inside the program, one cross-thread reduction at
the end), so a thread loads one ``x[k] * g[k]`` and one word per ``k`` and expands that word against the same
activation ``BITS`` times. Each thread takes ``KPT`` inputs per step (``THREADS`` apart, so every load is coalesced)
and folds them into ``BLOCK_M x BITS`` fp32 accumulators at once, which keeps registers low.

Per weight and row the inner loop costs one ``LOP3`` (xor the weight bit, moved to the sign position, into ``-x g``)
and one fp32 add, plus one shift per weight shared by the rows; no weight is ever converted to a float.

With ``ROW_SCALE`` (``act_bits=8``) ``x`` holds the int8 activations of :mod:`.quant` (``g`` already applied) and
``s_ptr`` their per-row scales: the sums are exact integers in fp32, scaled by ``s[m] * h[n]`` at the end.

With ``TERNARY`` the words are code words (16 outputs each, :mod:`.repack`): the ``+1`` bit of a code is moved to the
sign position the same way, and its ``0`` bit (one below) is spread into a mask that clears the term, so a weight
costs two more integer instructions (the mask) and one more ``LOP3`` per row.
"""

import triton
import triton.language as tl

# int32 with only the sign bit set
_SIGN = tl.constexpr(-2147483648)


@triton.jit
def _load_step(x_rows, g_ptr, w_row, k, K, stride_xk, m_mask, ROW_SCALE: tl.constexpr):
    """Sign words ``[KPT, THREADS]`` and ``-(x * g)`` as raw bits ``[BLOCK_M, KPT, THREADS]`` for inputs ``k``
    (``-x`` with ``ROW_SCALE``: ``x`` holds int8 activations, ``g`` is already in them)."""
    k_mask = k < K
    xv = tl.load(x_rows + k[None, :, :] * stride_xk, mask=m_mask[:, None, None] & k_mask[None, :, :], other=0)
    if ROW_SCALE:
        neg_xg = (-xv.to(tl.float32)).to(tl.int32, bitcast=True)
    else:
        g = tl.load(g_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        neg_xg = (xv.to(tl.float32) * -g[None, :, :]).to(tl.int32, bitcast=True)
    w = tl.load(w_row + k, mask=k_mask, other=0)
    return w, neg_xg


@triton.jit
def _accumulate(acc, w, neg_xg, shift, mult, SHIFT_BY_MUL: tl.constexpr, TERNARY: tl.constexpr):
    if SHIFT_BY_MUL:
        moved = w[None, None, :, :] * mult
    else:
        moved = w[None, None, :, :] << shift
    # xor-ing the weight bit into the sign of -(x g) gives +(x g) for a set bit, -(x g) for a clear one
    terms = neg_xg[:, None, :, :] ^ (moved & _SIGN)
    if TERNARY:
        # the code's zero bit sits just below the sign: sign-extend it into a mask that clears the term
        terms = terms & ~((moved << 1) >> 31)
    return acc + tl.sum(terms.to(tl.float32, bitcast=True), axis=2)


@triton.jit(do_not_specialize=["one"])
def gemv_kernel(
    x_ptr, g_ptr, w_ptr, h_ptr, b_ptr, y_ptr, s_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_w, stride_ym,
    one,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BITS: tl.constexpr,
    THREADS: tl.constexpr,
    KPT: tl.constexpr,
    SHIFT_BY_MUL: tl.constexpr,
    PREFETCH: tl.constexpr,
    TERNARY: tl.constexpr = False,
    ROW_SCALE: tl.constexpr = False,
):
    BLOCK_K: tl.constexpr = THREADS * KPT
    PER_WORD: tl.constexpr = 16 if TERNARY else 32
    pid = tl.program_id(0)
    pid_m = tl.program_id(1)
    parts: tl.constexpr = PER_WORD // BITS
    word = pid // parts
    j = (pid % parts) * BITS + tl.arange(0, BITS)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, KPT)[:, None] * THREADS + tl.arange(0, THREADS)[None, :]
    m_mask = offs_m < M
    if TERNARY:
        shift = (30 - 2 * j)[None, :, None, None]  # the +1 bit of code j to bit 31
    else:
        shift = (31 - j)[None, :, None, None]
    # `one` is a runtime 1 the compiler cannot see: w * (one << s) stays an IMAD (FMA pipe) instead of a shift (ALU
    # pipe, already busy with the LOP3), which balances the two integer-capable pipes.
    mult = one << shift
    acc = tl.zeros([BLOCK_M, BITS, THREADS], dtype=tl.float32)
    w_row = w_ptr + word * stride_w
    x_rows = x_ptr + offs_m[:, None, None] * stride_xm
    if PREFETCH:
        # issue the next step's loads before this step's arithmetic
        w_next, xg_next = _load_step(x_rows, g_ptr, w_row, offs_k, K, stride_xk, m_mask, ROW_SCALE)
        for k0 in range(0, K, BLOCK_K):
            w, neg_xg = w_next, xg_next
            w_next, xg_next = _load_step(x_rows, g_ptr, w_row, k0 + BLOCK_K + offs_k, K, stride_xk, m_mask,
                                           ROW_SCALE)
            acc = _accumulate(acc, w, neg_xg, shift, mult, SHIFT_BY_MUL, TERNARY)
    else:
        for k0 in range(0, K, BLOCK_K):
            w, neg_xg = _load_step(x_rows, g_ptr, w_row, k0 + offs_k, K, stride_xk, m_mask, ROW_SCALE)
            acc = _accumulate(acc, w, neg_xg, shift, mult, SHIFT_BY_MUL, TERNARY)
    store_outputs(tl.sum(acc, axis=2), offs_m, m_mask, word * PER_WORD + j, N, h_ptr, b_ptr, s_ptr, y_ptr, stride_ym,
                  HAS_BIAS, ROW_SCALE)


@triton.jit
def store_outputs(total, offs_m, m_mask, offs_n, N, h_ptr, b_ptr, s_ptr, y_ptr, stride_ym,
                  HAS_BIAS: tl.constexpr, ROW_SCALE: tl.constexpr):
    """``y[m, n] = total * h[n] (* s[m]) (+ bias[n])`` for the ``[BLOCK_M, outputs]`` sums ``total``."""
    n_mask = offs_n < N
    h = tl.load(h_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    out = total * h[None, :]
    if ROW_SCALE:
        out *= tl.load(s_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])
