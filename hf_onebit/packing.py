"""The on-disk bit layout of hf_onebit: the one file that defines how signs are stored.

Binary format, version 1
------------------------
A weight matrix ``W`` of shape ``(out_features, in_features)`` is stored as its signs ``S = sign(W)`` in
``{-1, +1}`` packed into a ``uint8`` tensor of shape ``(out_features, ceil(in_features / 8))``:

* row ``n`` of the packed tensor holds row ``n`` of ``S`` (rows are output channels);
* bit ``j`` (least significant bit first) of byte ``k`` holds ``S[n, 8 * k + j]``;
* a set bit means ``+1``, a clear bit means ``-1`` (``sign(0)`` is stored as ``+1``);
* padding bits past ``in_features`` in the last byte are zero and must be ignored by every kernel.

Because the layout is LSB-first and little-endian, four consecutive bytes viewed as one ``int32`` give 32
consecutive inputs with input ``32 * w + i`` in bit ``i`` -- GPU kernels can repack at load time without
changing the order of bits.

Every change to this layout bumps :data:`FORMAT_VERSION`; readers refuse versions they do not know.
"""

from __future__ import annotations

import torch

#: Version of the packed layout written into safetensors metadata and the quantization config.
FORMAT_VERSION = 1
#: Versions this release can read.
SUPPORTED_FORMAT_VERSIONS = (1,)
#: safetensors metadata key that carries the format version.
METADATA_KEY = "hf_onebit_format_version"

def packed_columns(in_features: int) -> int:
    """Number of bytes per output row for ``in_features`` inputs."""
    return (in_features + 7) // 8


def _bit_weights(device: torch.device) -> torch.Tensor:
    """``[1, 2, 4, ..., 128]`` (uint8) built on ``device`` itself: no host->device copy, and it traces under
    torch.compile (a cached module-level tensor would be a foreign constant there)."""
    ones = torch.ones(8, dtype=torch.uint8, device=device)
    return ones.bitwise_left_shift(torch.arange(8, dtype=torch.uint8, device=device))


def pack_signs(weight: torch.Tensor) -> torch.Tensor:
    """Pack the signs of a 2-D float tensor into the binary layout (``uint8``, ``(out, ceil(in/8))``).

    ``weight >= 0`` becomes a set bit (``+1``); negative values become a clear bit (``-1``).
    """
    if weight.dim() != 2:
        raise ValueError(f"pack_signs expects a 2-D weight (out_features, in_features), got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    cols = packed_columns(in_features)
    bits = (weight >= 0).to(torch.uint8)
    pad = cols * 8 - in_features
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.view(out_features, cols, 8)
    return (bits * _bit_weights(weight.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Unpack to a ``{0, 1}`` ``uint8`` tensor of shape ``(out_features, in_features)``."""
    check_packed_shape(packed, packed.shape[0], in_features, name="packed")
    bits = packed.unsqueeze(-1).bitwise_and(_bit_weights(packed.device)).ne(0)
    return bits.view(packed.shape[0], -1)[:, :in_features]


def unpack_signs(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack to the ``{-1, +1}`` sign matrix of shape ``(out_features, in_features)`` in ``dtype``."""
    bits = unpack_bits(packed, in_features)
    return bits.to(dtype) * 2 - 1


def check_packed_shape(packed: torch.Tensor, out_features: int, in_features: int, name: str = "weight") -> None:
    """Raise a ValueError naming ``name`` when ``packed`` is not a valid packed tensor for the given shape."""
    expected = (out_features, packed_columns(in_features))
    if packed.dtype != torch.uint8:
        raise ValueError(f"{name}: packed sign bits must be uint8, got {packed.dtype}")
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"{name}: packed sign bits have shape {tuple(packed.shape)}, expected {expected} for a "
            f"{in_features}->{out_features} layer (format version {FORMAT_VERSION})"
        )


def check_format_version(version) -> int:
    """Validate a format version read from a config or a file; return it as an int."""
    try:
        value = int(version)
    except (TypeError, ValueError):
        raise ValueError(f"format_version: {version!r} is not an integer; supported: {SUPPORTED_FORMAT_VERSIONS}") from None
    if value not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"format_version: {value} is not supported by this hf_onebit release (supported: "
            f"{SUPPORTED_FORMAT_VERSIONS}); upgrade hf_onebit to read this checkpoint"
        )
    return value


def bits_per_weight(in_features: int, out_features: int, scale_bits: int = 16, bias: bool = False) -> float:
    """Storage cost of one binary layer in bits per weight: sign bits (with row padding) plus scale vectors."""
    total = out_features * packed_columns(in_features) * 8 + (in_features + out_features) * scale_bits
    if bias:
        total += out_features * scale_bits
    return total / (in_features * out_features)
