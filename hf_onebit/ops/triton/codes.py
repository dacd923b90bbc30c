"""Shared Triton helpers for ternary code words: expand them into -1 / 0 / +1 of a float dtype.

A code word (:mod:`.repack`) holds 16 outputs of one input: bits ``2 j, 2 j + 1`` are the code ``c = T + 1`` of
output ``j``, so bit ``2 j`` set means ``T = 0`` and bit ``2 j + 1`` set means ``T = +1`` (both clear: ``T = -1``).
"""

import triton
import triton.language as tl

from .signs import expand_signs


@triton.jit
def expand_codes(words, DTYPE: tl.constexpr):
    """``words [R, C]`` int32 -> ``[R, C * 16]`` of ``-1 / 0 / +1`` in ``DTYPE``; column ``c * 16 + j`` is code j of
    word c. Built from raw bits like :func:`.signs.expand_signs`: the +1 bit picks the sign of a +-1, and the zero bit
    clears the whole value."""
    j = tl.arange(0, 16)
    code = (words[:, :, None] >> (2 * j)[None, None, :]) & 3
    plus = code >> 1
    keep = (code & 1) - 1  # all ones unless the value is 0
    if DTYPE == tl.float32:
        value = ((((plus ^ 1) << 31) | 0x3F800000) & keep).to(tl.float32, bitcast=True)
    else:
        neg_one = 0xBF80 if DTYPE == tl.bfloat16 else 0xBC00
        value = (((plus << 15) ^ neg_one) & keep).to(tl.int16).to(DTYPE, bitcast=True)
    return tl.reshape(value, [words.shape[0], words.shape[1] * 16])


@triton.jit
def expand_words(words, DTYPE: tl.constexpr, TERNARY: tl.constexpr):
    """Sign words (32 outputs each) or, with ``TERNARY``, code words (16 outputs each) -> float weights."""
    if TERNARY:
        return expand_codes(words, DTYPE)
    else:
        return expand_signs(words, DTYPE)
