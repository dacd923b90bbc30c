"""Weight words for the Triton kernels, built once per packed weight and cached.

The on-disk layout (:mod:`hf_onebit.formats.packing`) packs 8 inputs per byte along ``in_features``. The kernels want 32
*outputs* per ``int32`` word instead: word ``(w, k)`` holds the signs of outputs ``32 w + j`` (bit ``j``, set = +1)
for input ``k``, in a ``(ceil(N / 32), K_pad)`` tensor contiguous along ``k``. One word then feeds 32 outputs from a
single activation, and the threads of a warp read consecutive words. Padding (outputs past ``N``, inputs past ``K``)
is zero and never reaches an output.

Ternary weights (2-bit codes, 4 inputs per byte on disk) become *code words* the same way, with 16 outputs per
``int32``: word ``(w, k)`` holds the code ``c = T + 1`` of output ``16 w + j`` in bits ``2 j, 2 j + 1``, shape
``(ceil(N / 16), K_pad)``. Padding outputs get code 1 (value 0). :data:`FORMATS` says which layout a format uses.

The words of a weight are kept in its ``"triton.words"`` slot of the backends' per-tensor state
(:mod:`hf_onebit.ops.state`) and released with the weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import state
from ...formats import get_format
from ...formats.packing import pack_signs, unpack_bits, unpack_ternary_codes

#: row stride of the word tensor is a multiple of this many words (64 bytes), so rows start aligned
ROW_ALIGN = 16
#: inputs converted per step when building the words (bounds the temporary dense bit matrix)
_CHUNK = 4096

#: the slot of hf_onebit.ops.state holding a weight's (key, words)
SLOT = "triton.words"


def output_words(out_features: int, per_word: int = 32) -> int:
    return (out_features + per_word - 1) // per_word


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


def build_code_words(weight: torch.Tensor, in_features: int) -> torch.Tensor:
    """Convert packed ternary ``uint8 (N, ceil(K/4))`` codes into ``int32 (ceil(N/16), K_pad)`` code words.

    Plain tensor ops without host synchronisation, so it can also be recorded into a CUDA graph being captured.
    """
    out_features = weight.shape[0]
    n_words = output_words(out_features, 16)
    k_pad = (in_features + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    words = torch.full((n_words, k_pad), 0x55555555, dtype=torch.int32, device=weight.device)  # every code 1
    codes = unpack_ternary_codes(weight, in_features)  # (N, K) uint8 in {0, 1, 2}
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=weight.device)
    for k0 in range(0, in_features, _CHUNK):
        block = codes[:, k0 : k0 + _CHUNK].t()  # (k, N)
        padded = torch.ones(block.shape[0], n_words * 16, dtype=torch.uint8, device=weight.device)  # code 1 = 0
        padded[:, :out_features] = block
        # 4 outputs per byte, LSB pair first (the on-disk packing, along outputs); 4 bytes read as one little-endian
        # int32 put output j of the word at bits 2j, 2j + 1
        fields = padded.view(block.shape[0], n_words * 4, 4).bitwise_left_shift(shifts)
        packed = fields.sum(dim=-1, dtype=torch.uint8).view(torch.int32)  # (k, n_words); disjoint fields: sum = or
        words[:, k0 : k0 + block.shape[0]] = packed.t()
    return words


@dataclass(frozen=True)
class WordFormat:
    """How the kernels see one weight format: outputs per ``int32`` word and the builder of the words."""

    name: str
    per_word: int
    build: Callable[[torch.Tensor, int], torch.Tensor]

    @property
    def ternary(self) -> bool:
        return get_format(self.name).is_ternary


FORMATS = {"binary": WordFormat("binary", 32, build_sign_words), "ternary": WordFormat("ternary", 16, build_code_words)}


def sign_words(weight: torch.Tensor, in_features: int) -> torch.Tensor:
    """The cached sign words of a binary ``weight`` (see :func:`weight_words`)."""
    return weight_words(weight, in_features, "binary")


def weight_words(weight: torch.Tensor, in_features: int, weight_format: str = "binary") -> torch.Tensor:
    """The cached words of ``weight`` in ``weight_format``; rebuilt when the tensor's storage or version changed.

    Nothing is cached while a CUDA graph is being captured (the words would live in the graph's private pool): the
    conversion is then recorded into the graph. Warm up once outside the capture to avoid that.
    """
    key = (weight.data_ptr(), weight._version, in_features, tuple(weight.shape), weight.device, weight_format)
    hit = state.get(weight, SLOT)
    if hit is not None and hit[0] == key:
        return hit[1]
    words = FORMATS[weight_format].build(weight, in_features)
    capturing = weight.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing:
        state.put(weight, SLOT, (key, words))
    return words


def clear_cache() -> None:
    """Drop every cached word tensor (they are also freed with their weight)."""
    state.clear(SLOT)
