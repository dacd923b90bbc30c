"""Shared Triton helper and kernel for the on-disk packed layout (:mod:`hf_onebit.formats.packing`) read as int8 values.

The int8-activation paths (``act_bits=8``) multiply on the integer tensor cores, which take both operands K-major:
the on-disk layout already is (bits or 2-bit codes along ``in_features``, one row per output), so these paths read
the packed bytes as they are, with no word repack. :func:`expand_bytes` turns a tile of bytes into ``+-1`` (binary:
bit ``j`` of byte ``c`` = input ``8 c + j``, set = +1) or ``-1 / 0 / +1`` (ternary: bits ``2 j, 2 j + 1`` of byte
``c`` = the code ``T + 1`` of input ``4 c + j``) as int8; :func:`unpack_int8_kernel` writes a whole ``(N, K_pad)``
int8 matrix that way for the prefill path (zeros past ``K``).
"""

import triton
import triton.language as tl


@triton.jit
def expand_bytes(packed, TERNARY: tl.constexpr):
    """``packed [R, C]`` uint8 -> ``[R, C * per_byte]`` int8 weight values (8 per byte, or 4 with ``TERNARY``)."""
    if TERNARY:
        j = tl.arange(0, 4)
        codes = (packed[:, :, None].to(tl.int32) >> (2 * j)[None, None, :]) & 3
        values = (codes - 1).to(tl.int8)
        return tl.reshape(values, [packed.shape[0], packed.shape[1] * 4])
    else:
        j = tl.arange(0, 8)
        bits = (packed[:, :, None].to(tl.int32) >> j[None, None, :]) & 1
        values = (2 * bits - 1).to(tl.int8)
        return tl.reshape(values, [packed.shape[0], packed.shape[1] * 8])


@triton.jit
def unpack_int8_kernel(
    w_ptr, out_ptr,
    N, K,
    stride_w, stride_out,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TERNARY: tl.constexpr = False,
):
    """``out[n, k]`` = the int8 value of weight ``(n, k)`` for ``k < K``, 0 for ``K <= k < BLOCK_K * grid``."""
    PER_BYTE: tl.constexpr = 4 if TERNARY else 8
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_k * (BLOCK_K // PER_BYTE) + tl.arange(0, BLOCK_K // PER_BYTE)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    packed = tl.load(w_ptr + offs_n[:, None] * stride_w + offs_c[None, :],
                     mask=n_mask[:, None] & (offs_c < tl.cdiv(K, PER_BYTE))[None, :], other=0)
    values = expand_bytes(packed, TERNARY)
    values = tl.where((offs_k < K)[None, :], values, 0)
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], values, mask=n_mask[:, None])
