"""Launchers of the ``act_bits=8`` kernels: per-token int8 quantisation and the int8 tensor-core matmul.

:func:`.launch.packed_linear_triton` routes ``act_bits=8`` calls here by path: ``gemv`` quantises and runs the
GEMV on the int8 activations (exact integer sums, scaled at the end), ``dot`` multiplies the quantised activations
with weights expanded from the packed bytes tile by tile, and ``dense`` expands the whole weight to int8 once per call
and then multiplies. The matmul configs come from the H100 sweep in docs/benchmarks-gpu.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .int8_matmul import int8_matmul_kernel
from .interpreter import interpreting
from .packed_bytes import unpack_int8_kernel
from .quant import quantize_rows_kernel

#: quantised activations and the expanded int8 weight are padded with zeros to a multiple of this many inputs,
#: so the matmul's inner loop needs no masks along K (every ``Int8Config.block_k`` divides it)
K_ALIGN = 128


@dataclass(frozen=True)
class Int8Config:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 128
    num_warps: int = 8
    num_stages: int = 4
    group_m: int = 8

    def __post_init__(self):
        if self.block_k < 32 or K_ALIGN % self.block_k:
            raise ValueError(f"block_k: {self.block_k} is not allowed; use 32, 64 or 128 (a divisor of {K_ALIGN})")


def int8_config(m: int, n: int, k: int, packed: bool) -> Int8Config:
    """Tile sizes of the int8 matmul by M (H100 sweep, docs/benchmarks-gpu.md)."""
    if interpreting():
        return Int8Config(block_m=16, block_n=32, block_k=32, num_warps=1, num_stages=1)
    if m <= 64:
        return Int8Config(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=4)
    return Int8Config()


def padded_k(k: int) -> int:
    return triton.cdiv(k, K_ALIGN) * K_ALIGN


def quantize_rows(x2: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, s)``: ``q`` int8 ``(M, padded_k(K))`` (zeros past ``K``) and ``s`` fp32 ``(M,)`` with
    ``q[:, :K] * s[:, None]`` = the reference's int8 grid of ``x2 * g``."""
    m = x2.shape[0]
    q = torch.empty(m, padded_k(k), device=x2.device, dtype=torch.int8)
    s = torch.empty(m, device=x2.device, dtype=torch.float32)
    if m:
        block = 256 if interpreting() else 1024
        quantize_rows_kernel[(m,)](x2, g, q, s, k, q.shape[1], x2.stride(0), x2.stride(1), q.stride(0),
                                   BLOCK_K=block, num_warps=4)
    return q, s


def expand_int8(weight: torch.Tensor, k: int, ternary: bool) -> torch.Tensor:
    """The packed ``weight`` as an int8 ``(N, padded_k(K))`` matrix of its values (zeros past ``K``)."""
    n = weight.shape[0]
    out = torch.empty(n, padded_k(k), device=weight.device, dtype=torch.int8)
    block_n, block_k = (16, 32) if interpreting() else (64, K_ALIGN)
    grid = (triton.cdiv(n, block_n), out.shape[1] // block_k)
    unpack_int8_kernel[grid](weight, out, n, k, weight.stride(0), out.stride(0), BLOCK_N=block_n, BLOCK_K=block_k,
                             TERNARY=ternary, num_warps=4)
    return out


def int8_matmul(q, s, weight, h, bias, y, n: int, k: int, expanded: bool, config: Int8Config | None,
                ternary: bool) -> None:
    """``y = (q @ Q.T) * s[:, None] * h (+ bias)`` from the packed ``weight`` (``expanded``: via :func:`expand_int8`)."""
    m = q.shape[0]
    cfg = config or int8_config(m, n, k, packed=not expanded)
    b = expand_int8(weight, k, ternary) if expanded else weight
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    int8_matmul_kernel[grid](
        q, s, b, h, bias if bias is not None else h, y,
        m, n, q.shape[1], weight.shape[1],
        q.stride(0), b.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m, PACKED=not expanded, TERNARY=ternary, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
