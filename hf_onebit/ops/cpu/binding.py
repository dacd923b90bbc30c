"""ctypes binding of the CPU kernel library and the choice of ISA variant.

The library is built and loaded lazily, on the first kernel call; if that fails (no compiler, compiler error, load
error) a single warning says why and every call takes the PyTorch reference path.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from typing import Optional

from .build import build_library

#: ISA variants, in the order of the C enum (onebit.h).
ISA_NAMES = ("portable", "avx2", "avx512", "amx", "neon", "neon_dot")
#: What a negative return code of a library call means (onebit.h).
ERRORS = {-1: "invalid argument", -2: "ISA variant not available", -3: "out of memory"}
#: Environment variable forcing an ISA variant (one of ISA_NAMES); :func:`set_isa` takes precedence.
ISA_ENV = "HF_ONEBIT_CPU_ISA"

_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "error": None, "forced": None}


def _declare(lib: ctypes.CDLL) -> None:
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    c_int = ctypes.c_int
    # isa, M, K, N, x, x_kind, ldx, g, w, kbytes, h, bias, y, y_bf16, ldy, act_bits, nthreads
    linear_args = [c_int, i64, i64, i64, vp, c_int, i64, vp, vp, i64, vp, vp, vp, c_int, i64, c_int, c_int]
    for name in ("onebit_linear", "onebit_ternary_linear"):  # binary and ternary weights, same arguments
        getattr(lib, name).argtypes = linear_args
        getattr(lib, name).restype = ctypes.c_int
    # the same with a t5 copy of ternary weights (ternary.h) last
    lib.onebit_ternary_linear_t5.argtypes = [*linear_args, vp]
    lib.onebit_ternary_linear_t5.restype = c_int
    lib.onebit_ternary_to_t5.argtypes = [vp, i64, i64, vp, c_int]  # w, N, K, t5, nthreads
    lib.onebit_ternary_to_t5.restype = c_int
    lib.onebit_ternary_t5_row_bytes.argtypes = [i64]
    lib.onebit_ternary_t5_row_bytes.restype = i64
    # binary weights with a lut copy (lut.h) last
    lib.onebit_linear_lut.argtypes = [*linear_args, vp]
    lib.onebit_linear_lut.restype = c_int
    lib.onebit_binary_to_lut.argtypes = [vp, i64, i64, vp, c_int]  # w, N, kbytes, lut, nthreads
    lib.onebit_binary_to_lut.restype = c_int
    lib.onebit_binary_lut_bytes.argtypes = [i64, i64]
    lib.onebit_binary_lut_bytes.restype = i64
    # isa, M, K, N, x, x_bf16, ldx, w, ldw, bias, y, y_bf16, ldy, nthreads: bf16-weight float layers (gemv.h)
    lib.onebit_bf16_gemv.argtypes = [c_int, i64, i64, i64, vp, c_int, i64, vp, i64, vp, vp, c_int, i64, c_int]
    lib.onebit_bf16_gemv.restype = c_int
    # isa, M, K, N, x, x_bf16, ldx, w, ldw, scale, bias, y, y_bf16, ldy, nthreads: int8-weight float layers (gemv.h)
    lib.onebit_int8_gemv.argtypes = [c_int, i64, i64, i64, vp, c_int, i64, vp, i64, vp, vp, vp, c_int, i64, c_int]
    lib.onebit_int8_gemv.restype = c_int
    # isa, B, H, Hkv, L, D, q, qsb, qsh, k, ksb, ksh, ksl, v, vsb, vsh, vsl, mask, msb, scale, bf16, out, osb, osh,
    # nthreads: one query position against a key/value cache (attention.h)
    lib.onebit_decode_attention.argtypes = [c_int, i64, i64, i64, i64, i64, vp, i64, i64, vp, i64, i64, i64, vp, i64,
                                            i64, i64, vp, i64, ctypes.c_float, c_int, vp, i64, i64, c_int]
    lib.onebit_decode_attention.restype = c_int
    lib.onebit_set_flush_denormal.argtypes = [c_int, c_int]  # on, nthreads
    lib.onebit_set_flush_denormal.restype = c_int
    f32 = ctypes.c_float
    # isa, N, K, w, t, tanh_t, g, h, out, out_bf16, row_scale, nthreads
    lib.onebit_progressive_sign_forward.argtypes = [c_int, i64, i64, vp, f32, f32, vp, vp, vp, c_int, vp, c_int]
    lib.onebit_progressive_sign_forward.restype = c_int
    # isa, N, K, w, row_scale, t, tanh_t, g, h, grad, grad_bf16, grad_w, grad_g, grad_h, nthreads
    lib.onebit_progressive_sign_backward.argtypes = [c_int, i64, i64, vp, vp, f32, f32, vp, vp, vp, c_int, vp, vp, vp,
                                                     c_int]
    lib.onebit_progressive_sign_backward.restype = c_int
    # isa, N, K, w, t, inv_norm, g, h, out, out_bf16, row_scales, nthreads
    lib.onebit_progressive_ternary_forward.argtypes = [c_int, i64, i64, vp, f32, f32, vp, vp, vp, c_int, vp, c_int]
    lib.onebit_progressive_ternary_forward.restype = c_int
    # isa, N, K, w, row_scales, t, inv_norm, g, h, grad, grad_bf16, grad_w, grad_g, grad_h, nthreads
    lib.onebit_progressive_ternary_backward.argtypes = [c_int, i64, i64, vp, vp, f32, f32, vp, vp, vp, c_int, vp, vp,
                                                        vp, c_int]
    lib.onebit_progressive_ternary_backward.restype = c_int
    for name in ("onebit_isa_supported", "onebit_ternary_t5_supported", "onebit_binary_lut_supported"):
        getattr(lib, name).argtypes = [ctypes.c_int]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("onebit_best_isa", "onebit_isa_count"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = ctypes.c_int
    if lib.onebit_isa_count() != len(ISA_NAMES):
        raise RuntimeError(f"library reports {lib.onebit_isa_count()} ISA variants, expected {len(ISA_NAMES)}")


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, building it on first use; None (after one warning) when it cannot be had."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if not _state["tried"]:
            try:
                lib = ctypes.CDLL(str(build_library()))
                _declare(lib)
                _state["lib"] = lib
            except Exception as err:  # any failure means: reference path, said once
                _state["error"] = err
                warnings.warn(
                    f"hf_onebit: the CPU kernel library is unavailable ({err}); binary_linear on CPU uses the "
                    "PyTorch reference path (correct but slow). Install a C compiler (gcc or clang, or set CC) to "
                    "enable the fast kernels.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _state["tried"] = True
    return _state["lib"]


def load_error() -> Optional[Exception]:
    """Why the library is unavailable (None if it loaded or was not tried yet)."""
    return _state["error"]


def supported_isas() -> list[str]:
    """ISA variants compiled into the library that this CPU can run (empty when the library is unavailable)."""
    lib = library()
    if lib is None:
        return []
    return [name for i, name in enumerate(ISA_NAMES) if lib.onebit_isa_supported(i)]


def _check_isa(name: str, source: str) -> int:
    if name not in ISA_NAMES:
        raise ValueError(f"{source}: {name!r} is not an ISA variant; allowed: {ISA_NAMES}")
    supported = supported_isas()
    if name not in supported:
        raise ValueError(f"{source}: {name!r} is not available on this machine/build; available: {supported}")
    return ISA_NAMES.index(name)


def set_isa(name: Optional[str]) -> None:
    """Force an ISA variant for every later call (``None`` restores automatic choice); validated immediately."""
    _state["forced"] = None if name is None else _check_isa(name, "set_isa(name)")


def active_isa() -> int:
    """The ISA id the next call uses: :func:`set_isa`, else ``$HF_ONEBIT_CPU_ISA``, else the best supported one."""
    if _state["forced"] is not None:
        return _state["forced"]
    env = os.environ.get(ISA_ENV)
    if env:
        return _check_isa(env, ISA_ENV)
    best = _state.get("best")
    if best is None:  # asked once: the CPU does not change (every kernel call lands here)
        best = _state["best"] = library().onebit_best_isa()
    return best


def active_isa_name() -> str:
    return ISA_NAMES[active_isa()]
