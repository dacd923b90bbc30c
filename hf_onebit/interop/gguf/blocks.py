"""llama.cpp's 1-bit and ternary block types as bytes: Q1_0, TQ1_0 and TQ2_0, encoded and decoded with torch.

Every type cuts a row into blocks along the **input** dimension and gives each block one float16 scale ``d``:

=======  ===========  ===========  ===================================================================
type     weights per  bytes per    block layout (bytes in file order)
         block        block
=======  ===========  ===========  ===================================================================
Q1_0     128          18           ``d`` (fp16), then 16 bytes of signs: weight ``j`` is bit ``j % 8`` of
                                   byte ``j // 8``; bit 1 = ``+d``, bit 0 = ``-d``
TQ2_0    256          66           64 bytes of 2-bit codes ``t + 1``, then ``d``: weight
                                   ``128 c + 32 s + m`` is bits ``2s, 2s + 1`` of byte ``32 c + m``
TQ1_0    256          54           48 + 4 bytes of base-3 digits (five, then four, trits per byte, each
                                   byte holding ``ceil(256 * n / 243)`` of its number ``n``), then ``d``
=======  ===========  ===========  ===================================================================

(TQ1_0 in detail: weights 0-159 are 32 bytes, byte ``m`` holding weights ``m, 32 + m, ..., 128 + m`` as the digits
of ``n`` from the most significant; weights 160-239 are 16 bytes the same way with stride 16; weights 240-255 are 4
bytes, byte ``m`` holding weights ``240 + m, 244 + m, 248 + m, 252 + m`` as the top four of five digits.)

Decoding a block gives ``d * value`` with ``value`` in ``{-1, +1}`` or ``{-1, 0, +1}``: the encoders here take the
values and one scale per row (``h`` of a OneBitLinear after the exporter's folding), so a row of such blocks is the
layer's row exactly, up to the float16 rounding of the scale. The decoders are the specification the tests hold the
encoders to (and llama.cpp's own dequantization to, in the round-trip test).
"""

from __future__ import annotations

import torch

#: weights per block and bytes per block of each type (llama.cpp's ggml-common.h)
BLOCKS = {"Q1_0": (128, 18), "TQ1_0": (256, 54), "TQ2_0": (256, 66)}
#: the values a type can hold
TERNARY_TYPES = ("TQ1_0", "TQ2_0")


def block_size(qtype: str) -> int:
    if qtype not in BLOCKS:
        raise ValueError(f"GGUF type: got {qtype!r}; allowed: {', '.join(BLOCKS)}")
    return BLOCKS[qtype][0]


def _check(values: torch.Tensor, scales: torch.Tensor, qtype: str) -> tuple[int, int, int]:
    size = block_size(qtype)
    if values.dim() != 2:
        raise ValueError(f"values: expected a 2-D (rows, inputs) tensor, got shape {tuple(values.shape)}")
    rows, cols = values.shape
    if cols % size:
        raise ValueError(f"values: {cols} inputs per row is not a multiple of {qtype}'s block of {size}")
    if tuple(scales.shape) != (rows,):
        raise ValueError(f"scales: expected shape ({rows},), got {tuple(scales.shape)}")
    allowed = (-1, 0, 1) if qtype in TERNARY_TYPES else (-1, 1)
    bad = ~torch.isin(values, torch.tensor(allowed, dtype=values.dtype))
    if bool(bad.any()):
        raise ValueError(f"values: {qtype} holds only {allowed}; found {values[bad][0].item()}")
    return rows, cols // size, size


def _scale_bytes(scales: torch.Tensor, rows: int, blocks: int) -> torch.Tensor:
    """``(rows, blocks, 2)`` little-endian float16 bytes of each row's scale, repeated for every block."""
    d = scales.detach().to(torch.float16).contiguous().view(torch.uint8).view(rows, 1, 2)
    return d.expand(rows, blocks, 2)


def encode(values: torch.Tensor, scales: torch.Tensor, qtype: str) -> torch.Tensor:
    """``(rows, blocks * bytes_per_block)`` uint8: ``values`` (int, ``(rows, inputs)``) times one scale per row."""
    rows, blocks, size = _check(values, scales, qtype)
    v = values.to(torch.int16).view(rows, blocks, size)
    d = _scale_bytes(scales, rows, blocks)
    if qtype == "Q1_0":
        bits = (v > 0).to(torch.int16).view(rows, blocks, 16, 8)
        qs = (bits << torch.arange(8, dtype=torch.int16)).sum(-1)
        out = torch.cat([d, qs.to(torch.uint8)], dim=-1)
    elif qtype == "TQ2_0":
        codes = (v + 1).view(rows, blocks, 2, 4, 32)  # [chunk c, shift s, byte m]
        qs = (codes << (2 * torch.arange(4, dtype=torch.int16)).view(4, 1)).sum(-2)
        out = torch.cat([qs.reshape(rows, blocks, 64).to(torch.uint8), d], dim=-1)
    else:  # TQ1_0
        trits = (v + 1).to(torch.int32)
        parts = []
        for start, stop, digits, stride in ((0, 160, 5, 32), (160, 240, 5, 16), (240, 256, 4, 4)):
            t = trits[..., start:stop].reshape(rows, blocks, digits, stride)
            powers = torch.tensor([3 ** (4 - i) for i in range(digits)], dtype=torch.int32).view(digits, 1)
            n = (t * powers).sum(-2)  # the number whose base-3 digits are the trits (most significant first)
            parts.append(((n * 256 + 242) // 243).to(torch.uint8))  # ceil(256 n / 243): a byte per 5 trits
        out = torch.cat(parts + [d], dim=-1)
    return out.reshape(rows, -1)


def decode(data: torch.Tensor, qtype: str, inputs: int) -> torch.Tensor:
    """The float32 ``(rows, inputs)`` matrix of encoded rows (each value times its block's float16 scale)."""
    size, nbytes = BLOCKS[qtype] if qtype in BLOCKS else (block_size(qtype), 0)
    rows = data.shape[0]
    blocks = inputs // size
    raw = data.view(rows, blocks, nbytes)
    if qtype == "Q1_0":
        d = raw[..., :2].contiguous().view(torch.float16).float()
        bits = (raw[..., 2:].to(torch.int16).unsqueeze(-1) >> torch.arange(8, dtype=torch.int16)) & 1
        values = bits.reshape(rows, blocks, size).float() * 2 - 1
    elif qtype == "TQ2_0":
        d = raw[..., 64:].contiguous().view(torch.float16).float()
        qs = raw[..., :64].to(torch.int16).view(rows, blocks, 2, 1, 32)
        codes = (qs >> (2 * torch.arange(4, dtype=torch.int16)).view(4, 1)) & 3
        values = codes.reshape(rows, blocks, size).float() - 1
    else:  # TQ1_0: multiplying a byte by 3^i (mod 256) brings digit i to the top; (byte * 3) >> 8 reads it
        d = raw[..., 52:].contiguous().view(torch.float16).float()
        parts = []
        for start, stop, digits in ((0, 32, 5), (32, 48, 5), (48, 52, 4)):
            q = raw[..., start:stop].to(torch.int32).unsqueeze(-2)
            shifted = (q * torch.tensor([3 ** i for i in range(digits)], dtype=torch.int32).view(digits, 1)) & 255
            parts.append(((shifted * 3) >> 8).reshape(rows, blocks, -1))
        values = torch.cat(parts, dim=-1).float() - 1
    return (values * d).reshape(rows, inputs)
