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

Ternary format (``weight_format="ternary"``), version 1
-----------------------------------------------------
A weight matrix with values ``T`` in ``{-1, 0, +1}`` (BitNet b1.58) is stored as 2-bit codes ``c = T + 1`` in
``{0, 1, 2}`` packed into a ``uint8`` tensor of shape ``(out_features, ceil(in_features / 4))``:

* row ``n`` of the packed tensor holds row ``n`` of ``T``;
* bits ``2 j`` and ``2 j + 1`` (least significant pair first) of byte ``k`` hold code ``c[n, 4 * k + j]``;
* code ``0`` = ``-1``, ``1`` = ``0``, ``2`` = ``+1``; code ``3`` is invalid;
* padding codes past ``in_features`` are ``1`` (value 0), so a kernel may run over whole bytes.

``c = T + 1`` is the code of bitnet.cpp's I2_S and of transformers' BitNet packing (which packs along output rows
instead; :mod:`hf_onebit.interop` converts). With int8 activations ``sum(x * T) = sum(x * c) - sum(x)``: unsigned
codes times signed activations, the operand order of ``vpmaddubsw`` / ``vpdpbusd``.

Every change to a layout bumps :data:`FORMAT_VERSION`; readers refuse versions they do not know.
"""

from __future__ import annotations

import torch

#: Version of the packed layout written into safetensors metadata and the quantization config.
FORMAT_VERSION = 1
#: Versions this release can read.
SUPPORTED_FORMAT_VERSIONS = (1,)
#: safetensors metadata key that carries the format version.
METADATA_KEY = "hf_onebit_format_version"

#: Weight formats: 1-bit signs, or 2-bit codes of {-1, 0, +1}.
WEIGHT_FORMATS = ("binary", "ternary")
#: Weights stored per byte in each format.
WEIGHTS_PER_BYTE = {"binary": 8, "ternary": 4}


def check_weight_format(weight_format: str, name: str = "weight_format") -> str:
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"{name}: got {weight_format!r}; allowed: one of {WEIGHT_FORMATS}")
    return weight_format


def packed_columns(in_features: int, weight_format: str = "binary") -> int:
    """Number of bytes per output row for ``in_features`` inputs in ``weight_format``."""
    per_byte = WEIGHTS_PER_BYTE[check_weight_format(weight_format)]
    return (in_features + per_byte - 1) // per_byte


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
    return bits.view(packed.shape[0], packed.shape[1] * 8)[:, :in_features]


def _all_bytes(device: torch.device) -> torch.Tensor:
    """The 256 byte values as a packed tensor of 256 rows of one byte (for unpacking tables)."""
    return torch.arange(256, device=device).to(torch.uint8).unsqueeze(1)


def _expand_bytes(packed: torch.Tensor, table: torch.Tensor, in_features: int) -> torch.Tensor:
    """Each byte of ``packed`` replaced by its row of ``table`` (256 x weights per byte): one gather, several times
    faster than shifting and masking every weight; a contiguous ``(out_features, in_features)`` result."""
    rows, cols = packed.shape
    dense = torch.nn.functional.embedding(packed.long(), table).view(rows, cols * table.shape[1])
    return dense if dense.shape[1] == in_features else dense[:, :in_features].contiguous()


def unpack_signs(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack to the ``{-1, +1}`` sign matrix of shape ``(out_features, in_features)`` in ``dtype``."""
    check_packed_shape(packed, packed.shape[0], in_features, name="packed")
    table = unpack_bits(_all_bytes(packed.device), 8).to(dtype) * 2 - 1  # (256, 8): the signs of every byte
    return _expand_bytes(packed, table, in_features)


def _code_shifts(device: torch.device) -> torch.Tensor:
    """``[0, 2, 4, 6]`` (uint8) on ``device``: the bit offset of each 2-bit code in a byte."""
    return torch.arange(0, 8, 2, dtype=torch.uint8, device=device)


def ternarize_values(weight: torch.Tensor) -> torch.Tensor:
    """Check that ``weight`` holds only -1, 0, +1 and return it as int8."""
    if weight.dim() != 2:
        raise ValueError(f"ternary weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    values = weight.to(torch.int8) if not weight.is_floating_point() else weight.round().to(torch.int8)
    if weight.is_floating_point() and not torch.equal(values.to(weight.dtype), weight):
        raise ValueError("ternary weight: values must be exactly -1, 0 or +1 (round / threshold the weight first)")
    if bool(((values < -1) | (values > 1)).any()):
        raise ValueError("ternary weight: values must be -1, 0 or +1")
    return values


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """Pack a 2-D tensor of -1 / 0 / +1 into the ternary layout (``uint8``, ``(out, ceil(in/4))``)."""
    values = ternarize_values(values)
    out_features, in_features = values.shape
    cols = packed_columns(in_features, "ternary")
    codes = (values + 1).to(torch.uint8)
    pad = cols * 4 - in_features
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad), value=1)
    codes = codes.view(out_features, cols, 4).bitwise_left_shift(_code_shifts(values.device))
    return codes.sum(dim=-1, dtype=torch.uint8)  # disjoint bit fields: the sum is the bitwise or


def unpack_ternary_codes(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Unpack to the ``{0, 1, 2}`` codes (``uint8``, ``(out_features, in_features)``)."""
    check_packed_shape(packed, packed.shape[0], in_features, name="packed", weight_format="ternary")
    codes = packed.unsqueeze(-1).bitwise_right_shift(_code_shifts(packed.device)).bitwise_and(3)
    return codes.view(packed.shape[0], packed.shape[1] * 4)[:, :in_features]


def unpack_ternary(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack to the ``{-1, 0, +1}`` matrix of shape ``(out_features, in_features)`` in ``dtype``."""
    check_packed_shape(packed, packed.shape[0], in_features, name="packed", weight_format="ternary")
    table = unpack_ternary_codes(_all_bytes(packed.device), 4).to(dtype) - 1  # (256, 4): the values of every byte
    return _expand_bytes(packed, table, in_features)


_UNPACKERS = {"binary": unpack_signs, "ternary": unpack_ternary}


def unpack_weight(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32,
                  weight_format: str = "binary") -> torch.Tensor:
    """The dense ``{-1, +1}`` (binary) or ``{-1, 0, +1}`` (ternary) matrix of a packed weight."""
    return _UNPACKERS[check_weight_format(weight_format)](packed, in_features, dtype)


#: How messages name the packed tensor of each format.
_PACKED_WHAT = {"binary": "packed sign bits", "ternary": "packed ternary codes"}


def check_packed_shape(packed: torch.Tensor, out_features: int, in_features: int, name: str = "weight",
                       weight_format: str = "binary") -> None:
    """Raise a ValueError naming ``name`` when ``packed`` is not a valid packed tensor for the given shape."""
    expected = (out_features, packed_columns(in_features, weight_format))
    what = _PACKED_WHAT[check_weight_format(weight_format)]
    if packed.dtype != torch.uint8:
        raise ValueError(f"{name}: {what} must be uint8, got {packed.dtype}")
    if tuple(packed.shape) != expected:
        raise ValueError(
            f"{name}: {what} have shape {tuple(packed.shape)}, expected {expected} for a "
            f"{in_features}->{out_features} {weight_format} layer (format version {FORMAT_VERSION})"
        )


def check_format_version(version) -> int:
    """Validate a format version read from a config (an int) or a file's metadata (its decimal string); return it as
    an int. ``1.9``, ``True`` or ``"1.0"`` are refused, never rounded."""
    if isinstance(version, str) and version.strip().isdigit():
        value = int(version)
    elif isinstance(version, int) and not isinstance(version, bool):
        value = version
    else:
        raise ValueError(f"format_version: {version!r} is not an integer; supported: {SUPPORTED_FORMAT_VERSIONS}")
    if value not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"format_version: {value} is not supported by this hf_onebit release (supported: "
            f"{SUPPORTED_FORMAT_VERSIONS}); upgrade hf_onebit to read this checkpoint"
        )
    return value


def bits_per_weight(in_features: int, out_features: int, scale_bits: int = 16, bias: bool = False,
                    weight_format: str = "binary") -> float:
    """Storage cost of one layer in bits per weight: packed codes (with row padding) plus scale vectors."""
    total = out_features * packed_columns(in_features, weight_format) * 8 + (in_features + out_features) * scale_bits
    if bias:
        total += out_features * scale_bits
    return total / (in_features * out_features)
