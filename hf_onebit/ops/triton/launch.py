"""Python side of the Triton backend: argument checks, path choice by M and shape, launch configs.

:func:`packed_linear_triton` (binary sign bits or ternary codes; :func:`binary_linear_triton` and
:func:`ternary_linear_triton` fix the format) runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1``
was set before Triton was imported (how the tests check the kernels on machines without a GPU). Both formats share
the dispatcher, the configs and the kernels (a ``TERNARY`` constexpr switches the word layout); the configs were
measured for binary weights only.

``act_bits=8`` (int8 activations, :mod:`.launch_int8`) takes the same three paths with int8 operands: ``gemv``
on the quantised activations, ``dot`` on the integer tensor cores with the weight expanded tile by tile from the
packed bytes, ``dense`` with the weight expanded to int8 once per call.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import torch
import triton

from ...formats.packing import check_packed_shape, check_weight_format
from .dense import DenseConfig, dense_matmul
from .gemv import gemv_kernel
from .gemv_pairs import gemv_pairs_kernel
from .interpreter import interpreting
from .launch_int8 import Int8Config, int8_matmul, quantize_rows
from .matmul import matmul_kernel
from .repack import FORMATS, output_words, weight_words

PATHS = ("auto", "gemv", "dot", "dense")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: largest M served by the GEMV kernel (rows beyond 4 are cheaper on the tensor cores)
GEMV_MAX_M = 4
#: M from which the weight is expanded once and multiplied by cuBLAS (H100 crossover between M=128 and M=256 at
#: 4096->11008, docs/benchmarks-gpu.md)
DENSE_MIN_M = 256
#: the same crossover for int8 activations (expand to int8 once, then the int8 matmul)
A8_DENSE_MIN_M = 256
#: activation precisions the Triton kernels run
ACT_BITS = (0, 8)


@dataclass(frozen=True)
class GemvConfig:
    bits: int = 32  # outputs of one word handled by a program: 32, 16 or 8 (ternary words: 16 or 8)
    kpt: int = 4  # inputs per thread and step (a program covers 32 * num_warps * kpt inputs per step)
    num_warps: int = 4
    shift_by_mul: bool = True  # move the weight bit with an IMAD instead of a shift (see gemv.py)
    prefetch: bool = False  # load step i + 1 before computing step i
    pairs: bool = False  # act_bits=8 only: exact fp16 pair sums (gemv_pairs.py; always prefetches; opt-in)


@dataclass(frozen=True)
class DotConfig:
    block_m: int = 64
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def gemv_config(m: int, n: int, k: int, device: torch.device, weight_format: str = "binary") -> GemvConfig:
    """Launch config of the GEMV, from the H100 sweep in docs/benchmarks-gpu.md (``kernels_cuda.py --sweep``).

    Ternary words hold 16 outputs: the same configs with at most 16 outputs per program (not tuned on a GPU).
    """
    per_word = FORMATS[weight_format].per_word
    config = _binary_gemv_config(m, output_words(n, per_word), device)
    return replace(config, bits=min(config.bits, per_word))


def _binary_gemv_config(m: int, programs: int, device: torch.device) -> GemvConfig:
    if interpreting():
        return GemvConfig(bits=32, kpt=2, num_warps=1)
    if m == 2:
        return GemvConfig(bits=16, kpt=2, num_warps=4)
    if m > 2:
        return GemvConfig(bits=32, kpt=2, num_warps=4)
    # few word columns (N <= ~8k): more threads per program split K finer and fill the GPU
    warps = 8 if programs < 2 * _sm_count(device) else 4
    return GemvConfig(bits=32, kpt=4, num_warps=warps, prefetch=True)


def dot_config(m: int, n: int, k: int, device: torch.device) -> DotConfig:
    """Tile sizes of the tensor-core path: the best of the H100 path sweep (docs/benchmarks-gpu.md) per range of M."""
    if interpreting():
        return DotConfig(block_m=16, block_n=32, block_k=32, num_warps=1, num_stages=1)
    if m <= 16:
        return DotConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    if m <= 64:
        return DotConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=3)
    return DotConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)


def dense_config(m: int, n: int, k: int) -> DenseConfig:
    """Slicing of the prefill path: from the H100 sweep in docs/benchmarks-gpu.md (``kernels_cuda.py --dense``)."""
    return DenseConfig(chunks=1)


def choose_path(m: int, n: int, k: int, dtype: torch.dtype, act_bits: int = 0) -> str:
    if m <= GEMV_MAX_M:
        return "gemv"
    if act_bits == 8:
        return "dense" if m >= A8_DENSE_MIN_M else "dot"
    if dtype == torch.float32 or m >= DENSE_MIN_M:
        return "dense"  # fp32 tensor-core dots would be TF32; cuBLAS keeps full fp32
    return "dot"


def _check(x, weight, scale_in, scale_out, bias, in_features, act_bits, path, weight_format):
    if act_bits not in ACT_BITS:
        raise ValueError(f"act_bits: {act_bits} is not supported by the Triton kernels; allowed: {ACT_BITS}")
    if path not in PATHS:
        raise ValueError(f"path: {path!r} is not one of {PATHS}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x: dtype {x.dtype} is not supported; allowed: {DTYPES}")
    if x.shape[-1] != in_features:
        raise ValueError(f"x: last dimension {x.shape[-1]} does not match in_features={in_features}")
    out_features = weight.shape[0]
    check_packed_shape(weight, out_features, in_features, weight_format=weight_format)
    for name, t, size in (("scale_in", scale_in, in_features), ("scale_out", scale_out, out_features),
                          ("bias", bias, out_features)):
        if t is not None and tuple(t.shape) != (size,):
            raise ValueError(f"{name}: expected shape ({size},), got {tuple(t.shape)}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: on {t.device}, expected {x.device} like x")
    if weight.device != x.device:
        raise ValueError(f"weight: on {weight.device}, expected {x.device} like x")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"x: the Triton kernels need a CUDA tensor (got {x.device}); set TRITON_INTERPRET=1 for CPU")


def packed_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    bias: Optional[torch.Tensor],
    in_features: int,
    act_bits: int = 0,
    path: str = "auto",
    config=None,
    weight_format: str = "binary",
) -> torch.Tensor:
    """``y = ((x * scale_in) @ Q.T) * scale_out (+ bias)``, the semantics of ``reference.packed_linear``.

    ``Q`` = sign bits (``weight_format="binary"``) or ternary codes (``"ternary"``). ``path`` forces one kernel
    (``gemv``, ``dot`` or ``dense``); ``config`` overrides its launch config (tuning: ``GemvConfig``, ``DotConfig``,
    ``DenseConfig``, or ``Int8Config`` for the ``dot`` / ``dense`` paths with ``act_bits=8``). ``act_bits=8``
    quantises ``x * scale_in`` per token to int8 first, as the reference does.
    """
    check_weight_format(weight_format)
    _check(x, weight, scale_in, scale_out, bias, in_features, act_bits, path, weight_format)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    m, n, k = x2.shape[0], weight.shape[0], in_features
    if path == "auto":
        path = choose_path(m, n, k, x.dtype, act_bits)
    check_config(config, path, act_bits)
    guard = torch.cuda.device(x.device) if x.is_cuda else nullcontext()
    with guard:
        if act_bits == 8:
            y = _a8(x2, weight, scale_in, scale_out, bias, m, n, k, path, config, weight_format)
            return y.reshape(*lead, n)
        words = weight_words(weight, in_features, weight_format)
        if path == "dense":
            y = dense_matmul(x2, words, scale_in, scale_out, bias, n, k, config or dense_config(m, n, k),
                             weight_format)
        else:
            y = torch.empty(m, n, device=x.device, dtype=x.dtype)
            if m > 0:
                launch = _gemv if path == "gemv" else _dot
                launch(x2, words, scale_in, scale_out, bias, y, m, n, k, config, weight_format)
    return y.reshape(*lead, n)


def binary_linear_triton(x, weight, scale_in, scale_out, bias, in_features, act_bits=0, path="auto", config=None):
    """``y = ((x * scale_in) @ sign(W).T) * scale_out (+ bias)``, the semantics of ``reference.binary_linear``."""
    return packed_linear_triton(x, weight, scale_in, scale_out, bias, in_features, act_bits, path, config, "binary")


def ternary_linear_triton(x, weight, scale_in, scale_out, bias, in_features, act_bits=0, path="auto", config=None):
    """``y = ((x * scale_in) @ T.T) * scale_out (+ bias)``, the semantics of ``reference.ternary_linear``."""
    return packed_linear_triton(x, weight, scale_in, scale_out, bias, in_features, act_bits, path, config, "ternary")


def check_config(config, path: str, act_bits: int) -> None:
    """Raise a ValueError unless ``config`` is None or the config class of ``path`` (and ``act_bits``)."""
    expected = {"gemv": GemvConfig, "dot": DotConfig, "dense": DenseConfig}[path] if act_bits == 0 else (
        GemvConfig if path == "gemv" else Int8Config)
    if config is not None and not isinstance(config, expected):
        raise ValueError(f"config: {type(config).__name__} does not fit path {path!r} with act_bits={act_bits}; "
                         f"expected {expected.__name__} (or None)")


def check_gemv_config(config: GemvConfig, weight_format: str) -> GemvConfig:
    """``config`` if a program's outputs (``bits``) divide the outputs of one word of ``weight_format``."""
    per_word = FORMATS[weight_format].per_word
    if config.bits not in (8, 16, 32) or per_word % config.bits:
        allowed = tuple(b for b in (8, 16, 32) if per_word % b == 0)
        raise ValueError(f"config.bits: {config.bits} is not allowed for {weight_format} weights; use one of {allowed}")
    return config


def _a8(x2, weight, g, h, bias, m, n, k, path, config, weight_format):
    """``act_bits=8``: quantise ``x * g`` per token, then the int8 flavour of ``path``."""
    y = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    if m == 0:
        return y
    q, s = quantize_rows(x2, g, k)
    if path == "gemv":
        words = weight_words(weight, k, weight_format)
        # the float GEMV's config (fp32 sums of the int8 values); the exact fp16 pair sums (pairs=True) need ~28 %
        # fewer sm_90 SASS instructions per weight but have not run on a GPU yet, so they stay opt-in until measured
        cfg = config or gemv_config(m, n, k, x2.device, weight_format)
        if cfg.pairs:
            _gemv_pairs(q, words, h, bias, y, m, n, k, cfg, weight_format, s)
        else:
            _gemv(q, words, g, h, bias, y, m, n, k, cfg, weight_format, row_scale=s)
    else:
        int8_matmul(q, s, weight, h, bias, y, n, k, expanded=path == "dense", config=config,
                    ternary=FORMATS[weight_format].ternary)
    return y


def _gemv_block_m(m: int) -> int:
    """Rows of x per GEMV program (M <= GEMV_MAX_M)."""
    return 1 if m == 1 else 2 if m == 2 else 4


def _gemv(x2, words, g, h, bias, y, m, n, k, config, weight_format, row_scale=None):
    fmt = FORMATS[weight_format]
    cfg = check_gemv_config(config or gemv_config(m, n, k, x2.device, weight_format), weight_format)
    block_m = _gemv_block_m(m)
    grid = (output_words(n, fmt.per_word) * (fmt.per_word // cfg.bits), triton.cdiv(m, block_m))
    gemv_kernel[grid](
        x2, g, words, h, bias if bias is not None else h, y, row_scale if row_scale is not None else h,
        m, n, k,
        x2.stride(0), x2.stride(1), words.stride(0), y.stride(0),
        1,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BITS=cfg.bits, THREADS=32 * cfg.num_warps, KPT=cfg.kpt,
        SHIFT_BY_MUL=cfg.shift_by_mul, PREFETCH=cfg.prefetch, TERNARY=fmt.ternary, ROW_SCALE=row_scale is not None,
        num_warps=cfg.num_warps,
    )


def _gemv_pairs(q, words, h, bias, y, m, n, k, cfg, weight_format, s):
    fmt = FORMATS[weight_format]
    if cfg.kpt > 16:
        raise ValueError(f"config.kpt: {cfg.kpt} is not allowed with pairs=True; use at most 16 (exact fp16 sums)")
    block_m = _gemv_block_m(m)
    grid = (output_words(n, fmt.per_word), triton.cdiv(m, block_m))
    gemv_pairs_kernel[grid](
        q, words, h, bias if bias is not None else h, y, s,
        m, n, k,
        q.stride(0), q.stride(1), words.stride(0), y.stride(0),
        1,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, THREADS=32 * cfg.num_warps, KPT=cfg.kpt, TERNARY=fmt.ternary,
        EMULATE=interpreting(), num_warps=cfg.num_warps,
    )


def _dot(x2, words, g, h, bias, y, m, n, k, config, weight_format):
    ternary = FORMATS[weight_format].ternary
    cfg = config or dot_config(m, n, k, x2.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    matmul_kernel[grid](
        x2, g, words, h, bias if bias is not None else h, y,
        m, n, k,
        x2.stride(0), x2.stride(1), words.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        # Triton 3.9's interpreter multiplies bf16 dot operands as raw 16-bit integers: upcast there (exact for +-1)
        DOT_FP32=x2.dtype == torch.float32 or interpreting(),
        TERNARY=ternary, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
