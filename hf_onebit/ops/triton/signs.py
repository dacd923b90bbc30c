"""Shared Triton helpers: expand 32-bit sign words into +-1 values of a float dtype."""

import triton
import triton.language as tl


@triton.jit
def expand_signs(words, DTYPE: tl.constexpr):
    """``words [R, C]`` int32 -> ``[R, C * 32]`` of ``+-1`` in ``DTYPE``; column ``c * 32 + j`` is bit ``j`` of word c.

    Built from raw bits (no int->float conversion): +1 and -1 differ only in the sign bit.
    """
    j = tl.arange(0, 32)
    bit = (words[:, :, None] >> j[None, None, :]) & 1
    if DTYPE == tl.float32:
        value = ((bit ^ 1) << 31) | 0x3F800000
        signs = value.to(tl.float32, bitcast=True)
    else:
        neg_one = 0xBF80 if DTYPE == tl.bfloat16 else 0xBC00
        value = ((bit << 15) ^ neg_one).to(tl.int16)
        signs = value.to(DTYPE, bitcast=True)
    return tl.reshape(signs, [words.shape[0], words.shape[1] * 32])
