"""Run-time settings of a loaded 1-bit model: its 1-bit layers' activation mode (``act_bits``) and kernel backend, and
what its output head reads on CPU decode calls (``head_bits``).

transformers keeps the ``quantization_config`` saved with a checkpoint and ignores one passed to
``from_pretrained(path, quantization_config=...)`` for it, so these two settings of a saved model are changed after
loading::

    model = AutoModelForCausalLM.from_pretrained(path)
    hf_onebit.set_runtime(model, act_bits=0)          # exact float activations (the default "auto": int8 on CPUs)

No setting touches the stored weights: they choose how a packed layer or the head computes. The model's
``config.quantization_config`` is updated too, so that a later ``save_pretrained`` records what the model runs with.
"""

from __future__ import annotations

from torch import nn

from ..config import ACT_BITS, BACKENDS, HEAD_BITS
from ..nn.float_head import FloatHead
from ..nn.linear import OneBitLinear


def _check(name: str, value, allowed: tuple) -> None:
    if value is None:
        return
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"set_runtime: {name}: got {value!r}; allowed: one of {allowed} (or None to keep it)")


def set_runtime(model: nn.Module, *, act_bits: int | str | None = None, backend: str | None = None,
                head_bits: int | None = None) -> int:
    """Set ``act_bits`` (0: exact float activations, 8: int8 per token, ``"auto"``: int8 on CPUs and exact elsewhere)
    and/or ``backend`` (``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``) on every :class:`OneBitLinear` of
    ``model``, and/or ``head_bits`` (16: the float weights, 8: an int8 copy on CPU decode calls) on its
    :class:`FloatHead`; returns how many modules changed. A forced backend that cannot run a call raises at that call,
    naming the backend."""
    _check("act_bits", act_bits, ACT_BITS)
    _check("backend", backend, BACKENDS)
    _check("head_bits", head_bits, HEAD_BITS)
    layers = [m for m in model.modules() if isinstance(m, OneBitLinear)]
    if not layers:
        raise ValueError("set_runtime: the model has no 1-bit layer (OneBitLinear); allowed: a model loaded with "
                         "hf_onebit imported, or quantized with OneBitConfig")
    changed = 0
    for layer in layers:
        before = (layer.act_bits, layer.backend)
        if act_bits is not None:
            layer.act_bits = act_bits
        if backend is not None:
            layer.backend = backend
        changed += (layer.act_bits, layer.backend) != before
    if head_bits is not None:
        heads = [m for m in model.modules() if isinstance(m, FloatHead)]
        if not heads:
            raise ValueError("set_runtime: head_bits: the model has no FloatHead (its output head is not a plain "
                             "nn.Linear, or carries hooks); allowed: head_bits=None for it")
        for head in heads:
            changed += head.weight_bits != head_bits
            head.weight_bits = head_bits
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    for name, value in (("act_bits", act_bits), ("backend", backend), ("head_bits", head_bits)):
        if value is None or config is None:
            continue
        if isinstance(config, dict):
            config[name] = value
        else:
            setattr(config, name, value)
    return changed
