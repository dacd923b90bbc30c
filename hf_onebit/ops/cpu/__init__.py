"""CPU backend: SIMD kernels for ``binary_linear`` and ``ternary_linear`` in a small C library (no libtorch link),
called through ctypes.

Registers the kernel ``"cpu"`` for device type ``cpu``, for both weight formats. Importing this module compiles
nothing: the library is built on the first call (see :mod:`.build`) and, when that is impossible, the op falls back to
the reference path after one warning. See docs/kernels-cpu.md for the design.
"""

from __future__ import annotations

import os

import torch

from .. import register_kernel, state
from ..packed import PackedWeight
from ...formats import get_format
from ...formats.packing import unpack_weight
from . import lut, t5
from .pages import HUGE_PAGE, advise_resident
from .plan import CallPlan, cached_plan, plan_key, store_plan
from .binding import (ERRORS, ISA_ENV, ISA_NAMES, active_isa, active_isa_name, library, load_error, set_isa,
                      supported_isas)

__all__ = [
    "ISA_ENV",
    "ISA_NAMES",
    "active_isa_name",
    "cpu_binary_linear",
    "cpu_ternary_linear",
    "is_available",
    "load_error",
    "set_isa",
    "supported_isas",
]

_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# onebit.h ONEBIT_X_*: float32, bfloat16 (read natively), float32 holding float16 values.
_X_KIND = {torch.float32: 0, torch.bfloat16: 1}
_X_F16 = 2


def is_available() -> bool:
    """True when the kernel library is built and loaded (builds it on first call)."""
    return library() is not None


def _supports(x: torch.Tensor, data: torch.Tensor, act_bits: int) -> bool:
    return (
        x.is_cpu  # (cheaper than x.device.type: no device object per call)
        and x.dtype in _X_DTYPES
        and data.is_cpu
        and data.dtype == torch.uint8
        and data.dim() == 2
        and data.shape[1] > 0  # a layer of zero inputs: the reference returns the bias (the C library refuses K=0)
        and act_bits in (0, 8)
        and is_available()
    )


#: the slot of hf_onebit.ops.state holding a tensor's conversions by :func:`_float32`: {via dtype: (key, copy)}
F32_SLOT = "cpu.float32"


def _float32(t: torch.Tensor, via: torch.dtype = torch.float32) -> torch.Tensor:
    """``t`` rounded to ``via`` and held as contiguous float32; cached for ``t`` while ``t`` is unchanged."""
    if via == torch.float32 and t.dtype == torch.float32 and t.is_contiguous():
        return t
    key = (via, t._version, t.data_ptr(), t.dtype, tuple(t.shape))
    cache = state.get(t, F32_SLOT)
    if cache is None:
        cache = {}
        state.put(t, F32_SLOT, cache)  # (a tensor that takes no weak reference: not cached)
    hit = cache.get(via)
    if hit is not None and hit[0] == key:
        return hit[1]
    converted = t.detach().to(via).to(torch.float32).contiguous()
    cache[via] = (key, converted)
    return converted


def _make_plan(dtype: torch.dtype, packed: PackedWeight, act_bits: int, key=None) -> CallPlan:
    """Everything about a call of ``dtype`` inputs but the input itself (``packed`` already checked by
    :meth:`PackedWeight.check`). float16 inputs get ``g`` applied in torch (no float16 arithmetic in C: the
    reference's rounding), so their plan has no ``g`` and a float32 output."""
    lib = library()
    weight = packed.data
    ternary = get_format(packed.weight_format).is_ternary
    entry = lib.onebit_ternary_linear_t5 if ternary else lib.onebit_linear_lut  # the runtime copy last (None: none yet)
    if dtype == torch.float16:
        x_kind, g, y_dtype = _X_F16, None, torch.float32
    else:
        # float32 as is; bfloat16 is read natively and x * g rounded to bfloat16 in C, like the reference's product.
        x_kind, g, y_dtype = _X_KIND[dtype], _float32(packed.scale_in, via=dtype), dtype
    w = weight if weight.is_contiguous() else weight.contiguous()
    large = w.numel() >= HUGE_PAGE
    if large:
        advise_resident(w)  # huge pages for the weight stream (pages.py), once the weight is seen to stay
    h = _float32(packed.scale_out)
    b = _float32(packed.bias) if packed.bias is not None else None
    plan = CallPlan(key=key, entry=entry, packed=packed, w=w, x_kind=x_kind, g=g, h=h, b=b, y_dtype=y_dtype,
                    act_bits=act_bits, keep_sources=key is not None)
    plan.extra = (None,)
    # a cached plan on the weight itself: its second call does the work for weights that stay
    stays = key is not None and w is weight
    plan.pages_pending = stays and large
    copies = t5 if ternary else lut
    plan.copy_pending = stays and act_bits == 8 and copies.supported(lib, active_isa())
    plan.pending = plan.pages_pending or plan.copy_pending
    return plan


def _second_call(plan: CallPlan, weight: torch.Tensor) -> None:
    """The weight came by again at the same address: it stays. Huge pages under it, and the runtime copy of its codes
    (t5 for ternary, lut for binary weights)."""
    plan.pending = False
    if plan.pages_pending:
        plan.pages_pending = False
        advise_resident(weight)
    if plan.copy_pending:
        plan.copy_pending = False
        if get_format(plan.weight_format).is_ternary:
            plan.t5 = t5.build_t5(library(), weight, plan.K)
            copy = plan.t5
        else:
            plan.lut = lut.build_lut(library(), weight)
            copy = plan.lut
        if copy is not None:
            plan.extra = (copy.data_ptr(),)


def _execute(plan: CallPlan, x: torch.Tensor, M: int, lead: tuple = ()) -> torch.Tensor:
    """One library call; ``x`` contiguous, M rows of K, of the plan's kind; the output is (*lead, N), or (M, N)."""
    y = torch.empty((*lead, plan.N) if lead else (M, plan.N), dtype=plan.y_dtype)
    rc = plan.entry(
        active_isa(), M, plan.K, plan.N, x.data_ptr(), plan.x_kind, plan.K, plan.g_ptr, plan.w_ptr, plan.kbytes,
        plan.h_ptr, plan.b_ptr, y.data_ptr(), plan.y_bf16, plan.N, plan.act_bits, torch.get_num_threads(), *plan.extra,
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(
            f"hf_onebit CPU kernel failed: {ERRORS.get(rc, rc)} (M={M}, K={plan.K}, N={plan.N}, "
            f"act_bits={plan.act_bits}, weight_format={plan.weight_format})"
        )
    return y


#: From this many rows an exact (``act_bits=0``) float32 call on a CPU without AVX-512 (x86 with AVX2 or less, ARM)
#: multiplies with torch's GEMM on the weight expanded to float32: a register-blocked FMA loop beats the kernel's
#: AND + add per weight there (measured on x86 AVX2; ARM unmeasured)
#: (docs/kernels-cpu.md, "Prefill without AVX-512"). Below it, and with AVX-512 or AMX, the kernel is faster.
DENSE_MIN_ROWS = 512
#: Environment variable overriding :data:`DENSE_MIN_ROWS` (an integer; 0: never).
DENSE_ENV = "HF_ONEBIT_CPU_DENSE_ROWS"
#: Most bytes of expanded float32 weight at a time (the weight is expanded in blocks of output rows).
DENSE_BLOCK_BYTES = 32 << 20
_DENSE_ISAS = tuple(ISA_NAMES.index(name) for name in ("portable", "avx2", "neon", "neon_dot"))


def dense_min_rows() -> int | None:
    """Rows from which an exact float32 call without AVX-512 takes torch's GEMM (None: never);
    ``$HF_ONEBIT_CPU_DENSE_ROWS`` overrides :data:`DENSE_MIN_ROWS`."""
    value = os.environ.get(DENSE_ENV)
    if value is None:
        return DENSE_MIN_ROWS
    try:
        rows = int(value)
    except ValueError:
        rows = -1
    if rows < 0:
        raise ValueError(f"{DENSE_ENV}: got {value!r}; allowed: an integer >= 0 (0: never)")
    return rows or None


def _dense(plan: CallPlan, M: int) -> bool:
    """Whether :func:`_execute_dense` serves a call of ``M`` rows under ``plan``."""
    if M == 1 or plan.act_bits != 0 or plan.x_kind != 0:  # decode: no environment lookup on the hot path
        return False
    rows = dense_min_rows()
    return rows is not None and M >= rows and active_isa() in _DENSE_ISAS


def _execute_dense(plan: CallPlan, weight: torch.Tensor, x: torch.Tensor, M: int, lead: tuple = ()) -> torch.Tensor:
    """The exact call of :func:`_execute` (float32 ``x``) as ``((x * g) @ Q.T) * h + b`` with torch's GEMM on blocks
    of the weight expanded to float32 - the reference path's own arithmetic."""
    xs = x.reshape(M, plan.K) * plan.g
    rows = max(1, DENSE_BLOCK_BYTES // max(1, 4 * plan.K))
    if rows >= plan.N:
        y = torch.mm(xs, unpack_weight(weight, plan.K, torch.float32, plan.weight_format).t())
    else:
        y = torch.empty((M, plan.N), dtype=torch.float32)
        for n0 in range(0, plan.N, rows):
            block = unpack_weight(weight[n0:n0 + rows], plan.K, torch.float32, plan.weight_format)
            y[:, n0:n0 + rows] = torch.mm(xs, block.t())
    y.mul_(plan.h)
    if plan.b is not None:
        y.add_(plan.b)
    return y.view(*lead, plan.N) if lead else y


def _linear(x, packed: PackedWeight, act_bits: int) -> torch.Tensor:
    """``((x * g) @ Q.T) * h (+ bias)`` for a 2-D ``x``; float32 arithmetic inside, output in ``x.dtype``."""
    packed.check(x.shape[-1])
    if x.shape[0] == 0:
        return x.new_empty((0, packed.out_features))
    plan = _make_plan(x.dtype, packed, act_bits)
    if x.dtype == torch.float16:
        return _execute(plan, (x * packed.scale_in.to(x.dtype)).float(), x.shape[0]).to(x.dtype)
    if _dense(plan, x.shape[0]):
        return _execute_dense(plan, packed.data, x, x.shape[0])
    return _execute(plan, x, x.shape[0])


def _new_plan(dtype: torch.dtype, packed: PackedWeight, act_bits: int, key: tuple):
    """Build the plan of ``key`` (:func:`plan_key`) and keep it on the weight; None for a weight a plan cannot cover
    (not contiguous). ``packed`` is checked by the caller."""
    if not packed.data.is_contiguous():
        return None
    plan = _make_plan(dtype, packed, act_bits, key)
    store_plan(packed.data, plan)
    return plan


def _eager(x, packed: PackedWeight, act_bits: int):
    """The eager no-grad path through a plan cached on the weight (plan.py); None for calls a plan does not cover
    (the general path then runs)."""
    dtype = x.dtype
    shape = x.shape  # (M, K), or (..., K) as a model's layers get it: rows in memory order either way
    if dtype not in _X_KIND or len(shape) < 2 or not x.is_contiguous():
        return None
    M = x.numel() // shape[-1] if shape[-1] else 0
    if M == 0:
        return None
    key = plan_key(packed, act_bits, dtype)
    plan = cached_plan(packed.data, key)
    if plan is None:
        if not _supports(x, packed.data, act_bits):
            return None
        packed.check(shape[-1])
        plan = _new_plan(dtype, packed, act_bits, key)
        if plan is None:
            return None
    else:
        if shape[-1] != plan.K:
            packed.check(shape[-1])  # raises, naming the argument
        if plan.pending:  # the weight's second call: it stays
            _second_call(plan, packed.data)
    lead = shape[:-1] if len(shape) > 2 else ()
    if _dense(plan, M):
        return _execute_dense(plan, packed.data, x, M, lead)
    return _execute(plan, x, M, lead)


def _prepare(packed: PackedWeight, act_bits: int, dtype: torch.dtype) -> bool:
    """:func:`hf_onebit.ops.prepare`: the call plan of ``dtype`` inputs, and the work a plan otherwise leaves for the
    weight's second call (huge pages, the runtime copy): the caller says the weight stays."""
    if dtype not in _X_KIND or not is_available():
        return False
    key = plan_key(packed, act_bits, dtype)
    plan = cached_plan(packed.data, key) or _new_plan(dtype, packed, act_bits, key)
    if plan is None:
        return False
    if plan.pending:
        _second_call(plan, packed.data)
    return True


for _weight_format in ("binary", "ternary"):
    register_kernel("cpu", device_type="cpu", supports=_supports, priority=10, weight_format=_weight_format,
                    eager=_eager, prepare=_prepare)(_linear)


def cpu_binary_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits=0):
    """The CPU kernel on loose tensors: ``((x * g) @ sign(W).T) * h (+ bias)`` for a 2-D ``x``."""
    return _linear(x, PackedWeight(weight, scale_in, scale_out, bias, in_features, "binary"), act_bits)


def cpu_ternary_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits=0):
    """The CPU kernel on loose tensors: ``((x * g) @ T.T) * h (+ bias)`` on 2-bit ternary codes (formats/packing.py)."""
    return _linear(x, PackedWeight(weight, scale_in, scale_out, bias, in_features, "ternary"), act_bits)
