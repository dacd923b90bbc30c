"""Which attention implementation the models run while they train (``DistillPlan.attn_implementation``).

On a CPU under bf16 autocast, torch's fused scaled-dot-product attention (transformers' ``"sdpa"``, its default) is
slower than the plain matmul-softmax-matmul of transformers' ``"eager"`` at the shapes a distillation step has:
SmolLM2-135M's 9 heads of 64 over 4 x 256 tokens, forward and backward, 13.4-13.8 ms against 7.6-8.1 ms a layer
(AMD EPYC Zen 5, 2 cores). In float32 it is the other way round (12.4 against 17.0 ms), so ``"auto"`` picks eager
only for bf16 on a CPU and leaves the models' own choice everywhere else. Eager under autocast rounds the attention
scores to bf16 before the float32 softmax; the fused kernel keeps them in float32.

The choice holds while the stages run (:func:`training_attention`); afterwards each model has its own back, so a
saved or evaluated model is not affected.
"""

from __future__ import annotations

import contextlib

#: ``DistillPlan.attn_implementation`` values: ``auto`` (eager for bf16 on a CPU, else the models' own), transformers'
#: ``sdpa`` or ``eager`` for both models, or ``model`` (each model keeps the implementation it was loaded with).
CHOICES = ("auto", "sdpa", "eager", "model")


def check_choice(value) -> str:
    """``value`` if it is one of :data:`CHOICES`; a ValueError naming the field otherwise."""
    if value not in CHOICES:
        raise ValueError(f"attn_implementation: got {value!r}; allowed: one of {CHOICES}")
    return value


def resolve(choice: str, device_type: str, bf16: bool) -> str | None:
    """The implementation ``choice`` means for training on ``device_type`` (``"cpu"``, ``"cuda"``) with or without
    bf16 autocast; None: keep each model's own."""
    check_choice(choice)
    if choice == "auto":
        return "eager" if device_type == "cpu" and bf16 else None
    return None if choice == "model" else choice


def _current(model) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


@contextlib.contextmanager
def training_attention(models, choice: str, bf16: bool):
    """Run the block with every model of ``models`` (None entries skipped) on the implementation ``choice`` resolves
    to (:func:`resolve`, by the first model's device), and each one's own implementation back afterwards."""
    models = [m for m in models if m is not None]
    device_type = next(models[0].parameters()).device.type if models else "cpu"
    name = resolve(choice, device_type, bf16)
    saved = [(m, _current(m)) for m in models]
    try:
        if name is not None:
            for m, current in saved:
                if current != name:
                    m.set_attn_implementation(name)
        yield name
    finally:
        if name is not None:
            for m, current in saved:
                if current is not None and _current(m) != current:
                    m.set_attn_implementation(current)
