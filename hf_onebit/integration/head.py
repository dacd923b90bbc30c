"""The output head of a 1-bit model: kept float, run by :class:`~hf_onebit.nn.float_head.FloatHead`.

:func:`use_float_head` is called wherever hf_onebit makes or loads a 1-bit model (the quantizer after loading,
:func:`hf_onebit.quantize_`), so that decoding on a CPU reads the head at the memory's speed - by default from an
int8 copy of its weights (``OneBitConfig.head_bits``); the state dict, the tie to the input embeddings and every
result of the model other than decode-size calls on a CPU stay those of ``nn.Linear``.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..nn.float_head import FloatHead
from .convert import set_submodule


def use_float_head(model: nn.Module, weight_bits: int = 16) -> Optional[str]:
    """Replace ``model``'s output embeddings (``get_output_embeddings()``), when they are a plain ``nn.Linear``, with a
    :class:`FloatHead` holding the same parameters and reading ``weight_bits`` (16: the float weights, 8: an int8 copy
    on decode calls; ``OneBitConfig.head_bits``); returns the module's name, or None when there is none to replace
    (no output embeddings, another module type, already a FloatHead, or a module with hooks - e.g. accelerate's
    offloading - that a new module would not carry)."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if type(head) is not nn.Linear or hasattr(head, "_hf_hook") or head._forward_hooks or head._forward_pre_hooks:
        return None
    name = next((n for n, m in model.named_modules() if m is head), None)
    if not name:
        return None
    set_submodule(model, name, FloatHead.from_linear(head, weight_bits))
    return name
