"""Prefill path (large M): expand the sign words into a dense ``(K, N)`` weight and let cuBLAS multiply.

The expansion (:mod:`.dequant`) is memory-bound and the matmul compute-bound, so with ``chunks > 1`` the weight is
expanded and multiplied in slices of ``N``: slice ``i + 1`` is expanded on a side stream while slice ``i`` is being
multiplied on the caller's stream, and each matmul writes its columns of ``y`` in place (cuBLAS takes the row stride,
no copy). Works inside CUDA-graph capture (the side stream forks from and joins back into the capturing stream).
On the H100 this did not pay off reliably (docs/benchmarks-gpu.md, run D), so the dispatcher uses ``chunks=1``.
Ternary code words (``weight_format="ternary"``) go through the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton

from .dequant import dequant_kernel
from .interpreter import interpreting
from .repack import FORMATS

@dataclass(frozen=True)
class DenseConfig:
    chunks: int = 1  # slices of N expanded and multiplied one after the other
    overlap: bool = True  # expand slice i + 1 on a side stream while slice i multiplies (CUDA only)
    align: int = 256  # slices start at multiples of this many outputs (whole sign words, whole cuBLAS tiles)

    def __post_init__(self):
        if self.chunks < 1:
            raise ValueError(f"chunks: {self.chunks} is not allowed; use 1 or more")
        if self.align < 32 or self.align % 32:
            raise ValueError(f"align: {self.align} is not allowed; use a positive multiple of 32 (one sign word)")


def expand_into(out, words, g, h, n0: int, n1: int, weight_format: str = "binary") -> None:
    """Write columns ``n0:n1`` of the dense transposed weight: ``out[k, n] = g[k] * sign(W[n, k]) * h[n]``
    (``n0`` a multiple of the outputs per word; ternary: the value ``T[n, k]`` instead of the sign)."""
    fmt = FORMATS[weight_format]
    k = out.shape[0]
    block_k, block_n = (32, 64) if interpreting() else (64, 128)
    cols = out[:, n0:n1]
    grid = (triton.cdiv(k, block_k), triton.cdiv(n1 - n0, block_n))
    dequant_kernel[grid](words[n0 // fmt.per_word :], g, h[n0:n1], cols, n1 - n0, k, words.stride(0), cols.stride(0),
                         BLOCK_K=block_k, BLOCK_N=block_n, TERNARY=fmt.ternary, num_warps=4)


def dense_weight(words, g, h, n: int, k: int, dtype, weight_format: str = "binary") -> torch.Tensor:
    """The dequantized weight, transposed: ``(K, N)`` with ``W_hat[k, n] = g[k] * sign(W[n, k]) * h[n]``."""
    out = torch.empty(k, n, device=words.device, dtype=dtype)
    expand_into(out, words, g, h, 0, n, weight_format)
    return out


def slices(n: int, chunks: int, align: int) -> list[tuple[int, int]]:
    """``chunks`` (or fewer) column ranges covering ``0..n``, each starting at a multiple of ``align``."""
    size = triton.cdiv(triton.cdiv(n, chunks), align) * align
    return [(n0, min(n0 + size, n)) for n0 in range(0, n, size)]


@lru_cache(maxsize=None)
def _side_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=index)


def dense_matmul(x2, words, g, h, bias, n: int, k: int, config: DenseConfig,
                 weight_format: str = "binary") -> torch.Tensor:
    """``y = x2 @ W_hat (+ bias)`` with the expansion pipelined against the matmul as ``config`` says."""
    m = x2.shape[0]
    dense = torch.empty(k, n, device=x2.device, dtype=x2.dtype)
    bias = None if bias is None else bias.to(x2.dtype)
    parts = slices(n, config.chunks, config.align)
    if len(parts) == 1:
        expand_into(dense, words, g, h, 0, n, weight_format)
        return torch.matmul(x2, dense) if bias is None else torch.addmm(bias, x2, dense)
    y = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    side = None
    if config.overlap and x2.is_cuda:
        main = torch.cuda.current_stream()
        side = _side_stream(x2.device.index if x2.device.index is not None else torch.cuda.current_device())
        side.wait_stream(main)  # the words, g and h were produced on the caller's stream
    events = []
    for n0, n1 in parts:  # all expansions are queued first: the side stream runs ahead of the matmuls
        if side is None:
            break
        with torch.cuda.stream(side):
            expand_into(dense, words, g, h, n0, n1, weight_format)
            events.append(torch.cuda.Event())
            events[-1].record(side)
    for i, (n0, n1) in enumerate(parts):
        if side is None:
            expand_into(dense, words, g, h, n0, n1, weight_format)
        else:
            torch.cuda.current_stream().wait_event(events[i])
        out = y[:, n0:n1]
        if bias is None:
            torch.mm(x2, dense[:, n0:n1], out=out)
        else:
            torch.addmm(bias[n0:n1], x2, dense[:, n0:n1], out=out)
    # the caller's stream waited for every expansion, so freeing `dense` on it afterwards is safe
    return y
