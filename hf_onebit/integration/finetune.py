"""Direct fine-tuning of a packed 1-bit model with the stock ``transformers.Trainer``.

The sign bits stay frozen (they are ``uint8``); what trains are the float vectors of every 1-bit layer - ``scale_in``
(g), ``scale_out`` (h) and the bias - through the packed op's autograd. Those vectors are stored in float16 by default;
updates of a small learning rate round away in 16 bits, so :func:`prepare_for_training` makes float32 master copies,
and :func:`restore_storage_dtypes` casts them back to the checkpoint's ``scale_dtype`` before saving::

    model = AutoModelForCausalLM.from_pretrained("my-1bit-model")
    hf_onebit.prepare_for_training(model)
    Trainer(model=model, args=TrainingArguments(...), train_dataset=...).train()
    hf_onebit.restore_storage_dtypes(model)
    model.save_pretrained("my-1bit-model-finetuned")

The Trainer accepts the quantized model because the quantizer reports ``is_trainable`` and ``is_qat_trainable``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.linear import OneBitLinear

_VECTORS = ("scale_in", "scale_out", "bias")


def _onebit_layers(model: nn.Module) -> list[OneBitLinear]:
    layers = [m for m in model.modules() if isinstance(m, OneBitLinear)]
    if not layers:
        raise ValueError("model: no OneBitLinear layer found (load it with `import hf_onebit` + from_pretrained)")
    return layers


def prepare_for_training(model: nn.Module, freeze_other: bool = True) -> nn.Module:
    """Make ``model``'s 1-bit layers trainable in place: float32 vectors with gradients, sign bits frozen.

    Args:
        model: a model with :class:`OneBitLinear` layers (packed or latent).
        freeze_other: also freeze every parameter outside the 1-bit layers (embeddings, norms, ``lm_head``).
            With ``False`` their ``requires_grad`` is left as it is.

    Latent-form layers (distillation) keep their float32 latent weights trainable. Returns ``model``.
    """
    layers = _onebit_layers(model)
    if freeze_other:
        for param in model.parameters():
            param.requires_grad_(False)
    for layer in layers:
        for name in _VECTORS:
            param = getattr(layer, name)
            if param is None:
                continue
            if param.dtype != torch.float32:
                setattr(layer, name, nn.Parameter(param.data.float()))
            getattr(layer, name).requires_grad_(True)
        layer.weight.requires_grad_(layer.is_latent)
    return model


def restore_storage_dtypes(model: nn.Module) -> nn.Module:
    """Cast the packed layers' ``scale_in`` / ``scale_out`` back to their ``scale_dtype`` (what checkpoints store).

    Biases keep their dtype (they are stored like any float parameter). Latent layers are left alone (saving packs
    them). Returns ``model``.
    """
    for layer in _onebit_layers(model):
        if layer.is_latent:
            continue
        for name in ("scale_in", "scale_out"):
            param = getattr(layer, name)
            if param.dtype != layer.scale_dtype:
                setattr(layer, name, nn.Parameter(param.data.to(layer.scale_dtype), requires_grad=param.requires_grad))
    return model


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Counts of trainable parameters inside and outside the 1-bit layers (for logs and tests)."""
    inside = {id(p) for layer in _onebit_layers(model) for p in layer.parameters()}
    counts = {"onebit_vectors": 0, "other": 0, "frozen": 0}
    for param in model.parameters():
        if not param.requires_grad:
            counts["frozen"] += param.numel()
        elif id(param) in inside:
            counts["onebit_vectors"] += param.numel()
        else:
            counts["other"] += param.numel()
    return counts
