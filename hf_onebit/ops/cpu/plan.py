"""Call plans: the eager CPU path of a layer with its per-call Python work cut to the minimum.

A decode step calls every packed layer once, and the kernel of a 4096->11008 layer takes ~0.2 ms; the general path
(dispatch checks, shape checks, scale conversions) cost ~40 us on top, because the weight stream has just pushed the
interpreter's and torch's data out of the caches. The first call of a layer builds a plan through the general
path's own checks (:meth:`hf_onebit.ops.PackedWeight.check`, ``_float32``); later calls compare one key (identity, version and
address of the weight, the scales and the bias, plus the call's settings) and go straight to the library.
Anything the plan does not cover (float16 input, non-contiguous or other-shaped input, a changed tensor) takes the
general path. :func:`hf_onebit.ops.prepare` builds a weight's plan (and its second-call work) ahead of the first
call.

A plan is kept in the weight's ``"cpu.plan"`` slot of the backends' per-tensor state (:mod:`hf_onebit.ops.state`):
beside the tensor, never on it, and released with it. A plan never holds the weight it is kept for.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import state

#: the slot of hf_onebit.ops.state that holds a weight's plan
SLOT = "cpu.plan"


def _tensor_key(t: Optional[torch.Tensor]) -> tuple:
    return (None,) if t is None else (id(t), t._version, t.data_ptr())


def plan_key(packed, act_bits, dtype) -> tuple:
    """What a plan depends on: the weight's version and address, each scale's and the bias' identity, version and
    address, the sizes, the format and the call's settings (``packed``: a :class:`hf_onebit.ops.PackedWeight`)."""
    weight = packed.data
    return (
        weight._version, weight.data_ptr(), *_tensor_key(packed.scale_in), *_tensor_key(packed.scale_out),
        *_tensor_key(packed.bias), packed.in_features, act_bits, packed.weight_format, dtype,
    )  # fmt: skip


class CallPlan:
    """Library entry, pointers and sizes of one layer's kernel call; ``x`` and the output are per call."""

    __slots__ = ("key", "entry", "K", "N", "kbytes", "x_kind", "g", "h", "b", "copy", "sources", "g_ptr", "w_ptr",
                 "h_ptr", "b_ptr", "y_dtype", "y_bf16", "act_bits", "weight_format", "pending", "pages_pending",
                 "copy_pending", "t5", "lut", "extra")

    def __init__(self, *, key, entry, packed, w, x_kind, g, h, b, y_dtype, act_bits, keep_sources):
        """``packed``: the :class:`hf_onebit.ops.PackedWeight` of the call (sizes, format; the plan keeps none of its
        tensors but, with ``keep_sources``, the scales and bias of the key, so that no other tensor can take their id
        and address while the plan exists); ``w``: the contiguous codes the kernel reads (a copy of ``packed.data``,
        kept alive here, or ``packed.data`` itself, never held: a plan never holds the weight it is cached on);
        ``g``, ``h``, ``b``: the float32 scale and bias copies the kernel reads."""
        self.key, self.entry, self.x_kind = key, entry, x_kind
        self.K, self.N, self.kbytes = packed.in_features, w.shape[0], w.shape[1]
        self.g, self.h, self.b = g, h, b  # the float32 scale copies stay alive with the plan
        self.copy = w if w is not packed.data else None
        self.sources = (packed.scale_in, packed.scale_out, packed.bias) if keep_sources else ()
        #: work for the weight's second call (when it is seen to stay): huge pages (pages.advise_resident), a runtime
        #: copy of the codes (t5.py for ternary, lut.py for binary weights); ``pending`` is set while either is to come
        self.pending = self.pages_pending = self.copy_pending = False
        self.t5 = self.lut = None  # the runtime copy, once built
        self.extra = ()  # arguments after the common ones: the runtime copy's address (None: none)
        self.g_ptr = g.data_ptr() if g is not None else None
        self.w_ptr, self.h_ptr = w.data_ptr(), h.data_ptr()
        self.b_ptr = b.data_ptr() if b is not None else None
        self.y_dtype, self.y_bf16 = y_dtype, int(y_dtype == torch.bfloat16)
        self.act_bits, self.weight_format = act_bits, packed.weight_format


def plan_of(weight) -> Optional[CallPlan]:
    """The plan stored for this weight tensor, if any."""
    return state.get(weight, SLOT)


def cached_plan(weight, key) -> Optional[CallPlan]:
    plan = state.get(weight, SLOT)
    return plan if plan is not None and plan.key == key else None


def store_plan(weight, plan: CallPlan) -> bool:
    """Store ``plan`` for ``weight`` (replacing its previous plan); False when the weight takes no weak reference."""
    return state.put(weight, SLOT, plan)


def forget_plan(weight) -> None:
    """Drop the weight's plan: its next call builds a new one."""
    state.drop(weight, SLOT)
