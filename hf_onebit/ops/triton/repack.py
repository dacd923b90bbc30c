"""Sign words for the Triton kernels, built once per packed weight and cached.

The on-disk layout (:mod:`hf_onebit.packing`) packs 8 inputs per byte along ``in_features``. The kernels want 32
*outputs* per ``int32`` word instead: word ``(w, k)`` holds the signs of outputs ``32 w + j`` (bit ``j``, set = +1)
for input ``k``, in a ``(ceil(N / 32), K_pad)`` tensor contiguous along ``k``. One word then feeds 32 outputs from a
single activation, and the threads of a warp read consecutive words. Padding (outputs past ``N``, inputs past ``K``)
is zero and never reaches an output.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ...packing import pack_signs, unpack_bits

#: row stride of the word tensor is a multiple of this many words (64 bytes), so rows start aligned
ROW_ALIGN = 16
#: inputs converted per step when building the words (bounds the temporary dense bit matrix)
_CHUNK = 4096

_cache: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def output_words(out_features: int) -> int:
    return (out_features + 31) // 32


def build_sign_words(weight: torch.Tensor, in_features: int) -> torch.Tensor:
    """Convert packed ``uint8 (N, ceil(K/8))`` signs into ``int32 (ceil(N/32), K_pad)`` sign words."""
    out_features = weight.shape[0]
    n_words = output_words(out_features)
    k_pad = (in_features + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    words = torch.zeros(n_words, k_pad, dtype=torch.int32, device=weight.device)
    bits = unpack_bits(weight, in_features)  # (N, K) bool
    for k0 in range(0, in_features, _CHUNK):
        block = bits[:, k0 : k0 + _CHUNK].t()  # (k, N)
        signs = torch.zeros(block.shape[0], n_words * 32, dtype=torch.int8, device=weight.device)
        signs[:, :out_features] = block.to(torch.int8) * 2 - 1
        signs[:, out_features:] = -1  # padding outputs: clear bits
        # packing 32 outputs LSB-first into 4 bytes and reading them as one little-endian int32 puts output j at bit j
        packed = pack_signs(signs).view(torch.int32)  # (k, n_words)
        words[:, k0 : k0 + block.shape[0]] = packed.t()
    return words


def sign_words(weight: torch.Tensor, in_features: int) -> torch.Tensor:
    """The cached sign words of ``weight``; rebuilt when the tensor's storage or version changed.

    Nothing is cached while a CUDA graph is being captured (the words would live in the graph's private pool): the
    conversion is then recorded into the graph. Warm up once outside the capture to avoid that.
    """
    key = (weight.data_ptr(), weight._version, in_features, tuple(weight.shape), weight.device)
    hit = _cache.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    words = build_sign_words(weight, in_features)
    capturing = weight.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing:
        _cache[weight] = (key, words)
    return words


def clear_cache() -> None:
    """Drop every cached word tensor (they are also freed with their weight)."""
    _cache.clear()
