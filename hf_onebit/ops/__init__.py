"""The op interface every backend implements.

Modules call :func:`linear` with a :class:`PackedWeight` (or the tensor-level :func:`packed_linear`,
:func:`binary_linear`, :func:`ternary_linear`) and never a backend directly.

Each format's op is declared once, as a ``torch.library`` custom op - ``torch.ops.hf_onebit.binary_linear(x, weight,
scale_in, scale_out, bias, in_features, act_bits)`` and its twin ``ternary_linear`` - with a fake (meta)
implementation for ``torch.compile`` and an analytic autograd formula. Its default implementation, on every device,
is the pure-PyTorch reference in :mod:`hf_onebit.ops.reference`, which is also the specification of every kernel.
A backend registers itself for one device type and format with :func:`register_kernel`::

    @register_kernel("cpu_simd", device_type="cpu", supports=lambda x, data, act_bits: x.dtype == torch.float32)
    def _cpu_linear(x, packed, act_bits): ...

which registers the op's implementation for that device type through torch's own ``register_kernel``: it runs the
first registered kernel of the device (highest ``priority``) whose ``supports`` accepts the call, else the reference.
A kernel reads one :class:`PackedWeight` (``packed``): the packed codes, scales, bias, sizes and format.

The backend is a setting of the caller (``OneBitLinear.backend``), not an argument of the op: :func:`linear`
takes ``"auto"`` (the op's dispatch), ``"reference"`` (the reference, always) or the name of a registered kernel (an
error if it cannot run the call). Eager calls that need no gradient skip the op's dispatcher (same body, ~12 us less
per call) and may take a kernel's ``eager`` shortcut first. :func:`prepare` lets a backend build its runtime layout
of a weight (call plan, huge pages, repacked words) before the first call instead of during it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import reference
from ..formats.packing import WEIGHT_FORMATS, check_weight_format
from .packed import PackedWeight
from .reference import SUPPORTED_ACT_BITS

__all__ = [
    "Kernel",
    "PackedWeight",
    "linear",
    "binary_linear",
    "ternary_linear",
    "packed_linear",
    "prepare",
    "available_backends",
    "register_kernel",
    "kernels_for",
    "select_kernel",
    "SUPPORTED_ACT_BITS",
    "AUTO_ACT_BITS",
    "resolve_act_bits",
]

#: What ``act_bits="auto"`` (the default of :class:`~hf_onebit.OneBitConfig`) means on each device type: int8
#: per-token activations on CPUs, where that path is the faster one on every CPU class measured (Intel AMX, AMD Zen 4
#: AVX-512, AVX2 on AMD Zen 1 and Zen 4: 1.6-3.8x the exact path at M = 1; docs/benchmarks-cpu.md), and exact
#: float activations on any other device (the int8 Triton paths have not been timed on a GPU).
AUTO_ACT_BITS = {"cpu": 8}


def resolve_act_bits(act_bits, device) -> int:
    """``act_bits`` as a number for a call on ``device``: ``"auto"`` becomes :data:`AUTO_ACT_BITS` of its type (0 for
    a type not listed); 0 and 8 stay (anything else is rejected by the calls that use it)."""
    if isinstance(act_bits, str) and act_bits == "auto":
        # a tensor's .device is already a torch.device: no constructor on the per-call path
        kind = device.type if isinstance(device, torch.device) else torch.device(device).type
        return AUTO_ACT_BITS.get(kind, 0)
    return act_bits


@dataclass
class Kernel:
    """A fast implementation of ``binary_linear`` (or ``ternary_linear``) for one device type."""

    name: str
    device_type: str
    #: ``fn(x, packed, act_bits) -> y``
    fn: Callable
    #: ``supports(x, data, act_bits)``: whether the kernel runs this input on these packed codes
    supports: Callable[[torch.Tensor, torch.Tensor, int], bool]
    priority: int = 0
    weight_format: str = "binary"
    #: optional eager shortcut with fn's arguments, returning y, or None when it does not cover the call (then the
    #: general path runs); used only outside torch.compile and without gradients
    eager: Optional[Callable] = None
    #: optional ``prepare(packed, act_bits, dtype) -> bool``: build the kernel's runtime layout of a weight now
    prepare: Optional[Callable] = None


_KERNELS: dict[tuple[str, str], list[Kernel]] = {}


def register_kernel(name: str, device_type: str, supports: Optional[Callable] = None, priority: int = 0,
                    weight_format: str = "binary", eager: Optional[Callable] = None,
                    prepare: Optional[Callable] = None):
    """Decorator registering ``fn(x, packed, act_bits) -> y`` (``packed``: a :class:`PackedWeight`).

    ``x`` arrives 2-D ``(M, in_features)`` and contiguous; the kernel returns ``(M, out_features)`` in ``x.dtype``.
    ``supports(x, data, act_bits)`` says whether it runs an input on packed codes ``data``. Higher ``priority``
    kernels are tried first. ``weight_format`` is the packed layout the kernel reads. ``eager`` (optional, same
    arguments) may serve eager no-grad calls first and return None for calls it does not cover; ``prepare``
    (optional) builds the kernel's runtime layout of a weight ahead of its first call (:func:`prepare`).
    """
    check_weight_format(weight_format)

    def wrap(fn):
        key = (device_type, weight_format)
        kernels = [k for k in _KERNELS.get(key, []) if k.name != name]
        kernels.append(Kernel(name, device_type, fn, supports or (lambda x, data, act_bits: True), priority,
                              weight_format, eager, prepare))
        kernels.sort(key=lambda k: -k.priority)
        _KERNELS[key] = kernels
        if key not in _DEVICE_ENTRIES:  # the op's implementation for this device type, registered with torch once
            _DEVICE_ENTRIES[key] = _device_entry(weight_format)
            _OPS[weight_format].register_kernel(device_type)(_DEVICE_ENTRIES[key])
        return fn

    return wrap


def _device_entry(weight_format: str):
    """The op's body on a device with registered kernels: the best one that supports the call, else the reference."""

    def entry(x, weight, scale_in, scale_out, bias, in_features, act_bits):
        return _run(x, PackedWeight(weight, scale_in, scale_out, bias, in_features, weight_format), act_bits, "auto")

    entry.__name__ = f"{weight_format}_linear_by_device"
    return entry


#: (device type, format) -> the function registered with torch for the op on that device type
_DEVICE_ENTRIES: dict[tuple[str, str], Callable] = {}


def kernels_for(device_type: str, weight_format: str = "binary") -> list[Kernel]:
    return list(_KERNELS.get((device_type, weight_format), []))


def available_backends() -> list[str]:
    """Names accepted as ``backend``: ``auto``, ``reference`` and every registered kernel."""
    return ["auto", "reference"] + sorted({k.name for ks in _KERNELS.values() for k in ks})


def select_kernel(x: torch.Tensor, weight: torch.Tensor, act_bits: int, backend: str = "auto",
                  weight_format: str = "binary") -> Optional[Kernel]:
    """The kernel that would run ``x`` on the packed codes ``weight``, or None for the reference path."""
    if backend == "reference":
        return None
    device_type = _device_type(x)
    for kernel in _KERNELS.get((device_type, weight_format), []):
        if backend not in ("auto", kernel.name):
            continue
        if kernel.supports(x, weight, act_bits):
            return kernel
    if backend != "auto":
        raise ValueError(
            f"backend: {backend!r} cannot run this call (device {device_type}, dtype {x.dtype}, act_bits {act_bits}, "
            f"weight_format {weight_format}); available: {available_backends()}"
        )
    return None


def _device_type(x: torch.Tensor) -> str:
    return "cpu" if x.is_cpu else x.device.type  # is_cpu: no device object on the hot CPU path


def _run(x: torch.Tensor, packed: PackedWeight, act_bits: int, backend: str) -> torch.Tensor:
    kernel = select_kernel(x, packed.data, act_bits, backend, packed.weight_format)
    if kernel is None:
        return _reference(x, packed, act_bits)
    if x.dim() == 2 and x.is_contiguous():  # no view ops on the common decode / linear shapes (each costs a dispatch)
        return kernel.fn(x, packed, act_bits)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = kernel.fn(x2, packed, act_bits)
    return y.reshape(*lead, y.shape[-1])


def _reference(x: torch.Tensor, packed: PackedWeight, act_bits: int) -> torch.Tensor:
    return reference.packed_linear(x, packed.data, packed.scale_in, packed.scale_out, packed.bias,
                                   packed.in_features, act_bits, packed.weight_format)


def _fake(x, weight, scale_in, scale_out, bias, in_features, act_bits):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, scale_in, scale_out, bias, in_features, act_bits = inputs
    ctx.save_for_backward(x, weight, scale_in, scale_out)
    ctx.in_features = in_features
    ctx.act_bits = act_bits
    ctx.has_bias = bias is not None


def _make_backward(weight_format: str):
    def backward(ctx, grad):
        # Gradients through the dense reference: training a packed model is not a hot path.
        x, weight, scale_in, scale_out = ctx.saved_tensors
        dtype = grad.dtype
        q_weight = reference.unpack_weight(weight, ctx.in_features, dtype, weight_format)
        gy = grad * scale_out.to(dtype)
        gxs = gy @ q_weight  # d loss / d (x * g); the int8 rounding is straight-through
        gx = gxs * scale_in.to(dtype) if ctx.needs_input_grad[0] else None
        gg = (gxs * x).reshape(-1, x.shape[-1]).sum(0).to(scale_in.dtype) if ctx.needs_input_grad[2] else None
        gh = None
        if ctx.needs_input_grad[3]:
            ones = torch.ones_like(scale_out)
            y0 = reference.packed_linear(x, weight, scale_in, ones, None, ctx.in_features, ctx.act_bits, weight_format)
            gh = (grad * y0).reshape(-1, grad.shape[-1]).sum(0).to(scale_out.dtype)
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[4] else None
        return gx, None, gg, gh, gb, None, None

    return backward


def _define_op(weight_format: str):
    """The custom op ``hf_onebit::<weight_format>_linear`` (fake implementation and analytic autograd attached); its
    default implementation, for every device type without registered kernels, is the reference."""

    def op(
        x: torch.Tensor,
        weight: torch.Tensor,
        scale_in: torch.Tensor,
        scale_out: torch.Tensor,
        bias: Optional[torch.Tensor],
        in_features: int,
        act_bits: int,
    ) -> torch.Tensor:
        return reference.packed_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits, weight_format)

    op.__name__ = f"{weight_format}_linear"
    custom = torch.library.custom_op(f"hf_onebit::{weight_format}_linear", mutates_args=())(op)
    custom.register_fake(_fake)
    custom.register_autograd(_make_backward(weight_format), setup_context=_setup_context)
    return custom


_OPS = {weight_format: _define_op(weight_format) for weight_format in WEIGHT_FORMATS}


def linear(x: torch.Tensor, packed: PackedWeight, act_bits: int | str = 0, backend: str = "auto") -> torch.Tensor:
    """``y = ((x * scale_in) @ Q.T) * scale_out (+ bias)`` on the packed weight ``packed``: sign bits (``"binary"``,
    see :func:`.reference.binary_linear`) or 2-bit ternary codes ``T`` in {-1, 0, +1} (``"ternary"``).
    ``act_bits``: 0 (exact float activations), 8 (int8 per token) or ``"auto"`` (:func:`resolve_act_bits`)."""
    act_bits = resolve_act_bits(act_bits, x.device)
    # First the best kernel's eager shortcut, if it has one and covers the call (decode calls every layer per token).
    # It runs before the argument checks below: a shortcut only covers settings it has validated (an unknown format
    # finds no kernel, unsupported act_bits make it decline), and everything it declines meets those checks.
    eager = _eager_inference(x, packed)
    kernels = _KERNELS.get((_device_type(x), packed.weight_format)) if eager else None
    if kernels and kernels[0].eager is not None and backend in ("auto", kernels[0].name):
        y = kernels[0].eager(x, packed, act_bits)
        if y is not None:
            return y
    _check_settings(packed, act_bits)
    if backend == "reference":
        return _reference(x, packed, act_bits)
    if eager:
        # Same body as the custom op, without the dispatcher's ~12 us per call.
        return _run(x, packed, act_bits, backend)
    if backend != "auto":
        select_kernel(x, packed.data, act_bits, backend, packed.weight_format)  # a named kernel that cannot run raises
    return _OPS[packed.weight_format](x, packed.data, packed.scale_in, packed.scale_out, packed.bias,
                                      packed.in_features, act_bits)


def packed_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_in: torch.Tensor,
    scale_out: torch.Tensor,
    bias: Optional[torch.Tensor],
    in_features: int,
    act_bits: int = 0,
    backend: str = "auto",
    weight_format: str = "binary",
) -> torch.Tensor:
    """:func:`linear` on loose tensors: ``weight`` holds the packed codes of ``weight_format``."""
    return linear(x, PackedWeight(weight, scale_in, scale_out, bias, in_features, weight_format), act_bits, backend)


def prepare(packed: PackedWeight, act_bits: int | str = 0, dtype: torch.dtype = torch.float32,
            backend: str = "auto") -> bool:
    """Build the runtime layout the kernel that would run ``dtype`` inputs on ``packed`` keeps for it (the CPU
    backend: its call plan, huge pages under a large weight, the t5 copy of ternary codes; Triton: the repacked
    words), so that the first call does not pay for it. Optional: every kernel builds what it lacks on its own.
    Returns True when a kernel prepared something."""
    act_bits = resolve_act_bits(act_bits, packed.data.device)
    _check_settings(packed, act_bits)
    probe = torch.empty((0, packed.in_features), dtype=dtype, device=packed.data.device)
    kernel = select_kernel(probe, packed.data, act_bits, backend, packed.weight_format)
    if kernel is None or kernel.prepare is None:
        return False
    packed.check()
    return bool(kernel.prepare(packed, act_bits, dtype))


def _check_settings(packed: PackedWeight, act_bits: int) -> None:
    check_weight_format(packed.weight_format)
    if act_bits not in SUPPORTED_ACT_BITS:
        raise ValueError(f"act_bits: {act_bits} is not supported; allowed: {SUPPORTED_ACT_BITS}")


def _eager_inference(x: torch.Tensor, packed: PackedWeight) -> bool:
    """True outside torch.compile tracing when no gradient is needed: the custom op adds nothing there."""
    if torch.compiler.is_compiling():
        return False
    scale_in, scale_out, bias = packed.scale_in, packed.scale_out, packed.bias
    if torch.is_grad_enabled() and (
        x.requires_grad or scale_in.requires_grad or scale_out.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    # Tensor subclasses other than nn.Parameter (fake, functional, distributed tensors) keep the op.
    plain = _PLAIN_TENSOR_TYPES
    return type(x) in plain and type(scale_in) in plain and type(scale_out) in plain and (
        bias is None or type(bias) in plain
    )


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def binary_linear(x, weight, scale_in, scale_out, bias, in_features: int, act_bits: int = 0,
                  backend: str = "auto") -> torch.Tensor:
    """``y = ((x * scale_in) @ sign(W).T) * scale_out (+ bias)`` on packed sign bits (:func:`packed_linear`)."""
    return packed_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits, backend, "binary")


def ternary_linear(x, weight, scale_in, scale_out, bias, in_features: int, act_bits: int = 0,
                   backend: str = "auto") -> torch.Tensor:
    """``y = ((x * scale_in) @ T.T) * scale_out (+ bias)`` on packed ternary codes (:func:`packed_linear`)."""
    return packed_linear(x, weight, scale_in, scale_out, bias, in_features, act_bits, backend, "ternary")


def _load_backends() -> None:
    """Import the optional fast backends; each registers itself and stays silent when it cannot load."""
    import importlib

    for module in ("hf_onebit.ops.cpu", "hf_onebit.ops.triton"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                warnings.warn(f"hf_onebit: backend {module} could not be imported ({err}); using the reference path")


# Register the fast backends that exist (their libraries are built lazily, on the first kernel call).
_load_backends()
