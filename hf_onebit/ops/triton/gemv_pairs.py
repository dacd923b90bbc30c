"""GEMV for int8 activations (``act_bits=8``, small M) that adds two weights per instruction, exactly.

Same word layout, grid and split-K as :mod:`.gemv`, but a program always owns a whole word and pairs output ``j``
with output ``j + half`` (``half`` = 16 sign bits or 8 ternary codes): one ``int32`` holds ``-q`` twice as fp16,
one shift moves both weights' bits to the two fp16 sign positions, one ``LOP3`` applies them, and one ``add.f16x2``
adds the two terms. That is about half the instructions per weight of the fp32 kernel, which is instruction-bound at
M=1 on the H100 (docs/benchmarks-gpu.md).

Exact: ``q`` is an integer in ``[-127, 127]``, a step adds ``KPT <= 16`` of them per pair, so every fp16 partial sum
is an integer of magnitude ``<= 2032 < 2048`` (fp16 holds those exactly); each step's pair sums then go into fp32
accumulators (exact up to ``2**24``). The pair add is inline PTX; with ``EMULATE`` (set under the interpreter, which
has no inline PTX) each half's terms are summed on their own instead (the same exact integers), so everything but
the pair add itself is tested on the CPU too.
"""

import triton
import triton.language as tl

from .gemv import store_outputs

# int32 with the sign bits of both fp16 halves set
_SIGNS2 = tl.constexpr(-2147450880)  # 0x80008000


@triton.jit
def _add_f16x2(a, b):
    return tl.inline_asm_elementwise("add.rn.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                     pack=1)


@triton.jit
def _half_bits(value):
    return value.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _load_pairs(x_rows, w_row, k, K, stride_xk, m_mask):
    """Words ``[KPT, THREADS]`` and ``-q`` as two fp16 copies in one int32 ``[BLOCK_M, KPT, THREADS]``."""
    k_mask = k < K
    q = tl.load(x_rows + k[None, :, :] * stride_xk, mask=m_mask[:, None, None] & k_mask[None, :, :], other=0)
    half = _half_bits(-q.to(tl.float32))
    w = tl.load(w_row + k, mask=k_mask, other=0)
    return w, half | (half << 16)


@triton.jit
def _half_to_f32(bits):
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _accumulate_pairs(acc_lo, acc_hi, w, neg_q, mult, TERNARY: tl.constexpr, EMULATE: tl.constexpr):
    moved = w[None, None, :, :] * mult  # both weights' +1 bits at bits 15 and 31
    terms = neg_q[:, None, :, :] ^ (moved & _SIGNS2)
    if TERNARY:
        # the codes' zero bits sit just below (bits 14 and 30): spread each over its fp16 half, clear that term
        zero = (moved >> 14) & 0x00010001
        terms = terms & ~(zero * 0xFFFF)
    if EMULATE:
        # the same integer sums, each half on its own (what the fp16 pair adds give, exactly)
        return (acc_lo + tl.sum(_half_to_f32(terms & 0xFFFF), axis=2),
                acc_hi + tl.sum(_half_to_f32(terms >> 16), axis=2))
    sums = tl.reduce(terms, 2, _add_f16x2)  # over the step's KPT inputs: within a thread
    return acc_lo + _half_to_f32(sums & 0xFFFF), acc_hi + _half_to_f32(sums >> 16)


@triton.jit(do_not_specialize=["one"])
def gemv_pairs_kernel(
    x_ptr, w_ptr, h_ptr, b_ptr, y_ptr, s_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_w, stride_ym,
    one,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    THREADS: tl.constexpr,
    KPT: tl.constexpr,
    TERNARY: tl.constexpr = False,
    EMULATE: tl.constexpr = False,
):
    tl.static_assert(KPT <= 16, "fp16 pair sums stay exact for at most 16 int8 terms")
    BLOCK_K: tl.constexpr = THREADS * KPT
    HALF: tl.constexpr = 8 if TERNARY else 16
    word = tl.program_id(0)
    j = tl.arange(0, HALF)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, KPT)[:, None] * THREADS + tl.arange(0, THREADS)[None, :]
    m_mask = offs_m < M
    # the +1 bits of outputs j and j + HALF to bits 15 and 31 (an IMAD, see gemv.py for the runtime `one`)
    mult = one << ((14 - 2 * j) if TERNARY else (15 - j))[None, :, None, None]
    acc_lo = tl.zeros([BLOCK_M, HALF, THREADS], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_M, HALF, THREADS], dtype=tl.float32)
    w_row = w_ptr + word * stride_w
    x_rows = x_ptr + offs_m[:, None, None] * stride_xm
    w_next, q_next = _load_pairs(x_rows, w_row, offs_k, K, stride_xk, m_mask)
    for k0 in range(0, K, BLOCK_K):
        w, neg_q = w_next, q_next
        w_next, q_next = _load_pairs(x_rows, w_row, k0 + BLOCK_K + offs_k, K, stride_xk, m_mask)  # prefetch
        acc_lo, acc_hi = _accumulate_pairs(acc_lo, acc_hi, w, neg_q, mult, TERNARY, EMULATE)
    first = word * (2 * HALF) + j
    store_outputs(tl.sum(acc_lo, axis=2), offs_m, m_mask, first, N, h_ptr, b_ptr, s_ptr, y_ptr, stride_ym,
                  HAS_BIAS, True)
    store_outputs(tl.sum(acc_hi, axis=2), offs_m, m_mask, first + HALF, N, h_ptr, b_ptr, s_ptr, y_ptr, stride_ym,
                  HAS_BIAS, True)
