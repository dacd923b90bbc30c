"""Module swap: which linear layers become OneBitLinear, for transformers models and plain torch modules alike."""

from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn

from ..nn.linear import OneBitLinear

logger = logging.getLogger(__name__)

#: Module names never converted, whatever the config says (kept in full precision).
DEFAULT_SKIPS = ("lm_head",)


def is_skipped(name: str, skips: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``skips`` or lies inside one (a skip matches whole dotted name parts)."""
    for skip in skips:
        if name == skip or name.endswith("." + skip) or name.startswith(skip + ".") or ("." + skip + ".") in name:
            return True
    return False


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D

        return Conv1D
    except ImportError:  # pragma: no cover - transformers always has it
        return None


def find_linear_layers(model: nn.Module, skips: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """Names and modules of every ``nn.Linear`` that will be converted (skips and default skips applied).

    GPT-2-style ``Conv1D`` layers are not converted; a warning names them.
    """
    skips = tuple(DEFAULT_SKIPS) + tuple(skips)
    conv1d = _conv1d_class()
    found, conv_names = [], []
    for name, module in model.named_modules():
        if not name or is_skipped(name, skips):
            continue
        if isinstance(module, nn.Linear) and not isinstance(module, OneBitLinear):
            found.append((name, module))
        elif conv1d is not None and isinstance(module, conv1d):
            conv_names.append(name)
    if conv_names:
        logger.warning(
            "hf_onebit: %d GPT-2-style Conv1D layers are kept in full precision (only nn.Linear is quantized): %s%s",
            len(conv_names),
            ", ".join(conv_names[:4]),
            " ..." if len(conv_names) > 4 else "",
        )
    return found


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``model`` with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_with_empty_onebit_linear(
    model: nn.Module, config, skips: Iterable[str] = (), latent: bool = False, float_placeholder: bool = False
) -> list[str]:
    """Swap converted linears for empty OneBitLinear modules (used on the meta device before weights load).

    ``float_placeholder`` keeps a float ``weight`` of the linear's shape and dtype until the loader's quantize op
    replaces it (on-the-fly quantization).
    """
    names = []
    for name, linear in find_linear_layers(model, skips):
        bias_dtype = linear.bias.dtype if linear.bias is not None else None
        new = OneBitLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            latent=latent,
            device=linear.weight.device,
            dtype=bias_dtype,
            **config.layer_kwargs(),
        )
        if float_placeholder and not latent:
            new.weight = nn.Parameter(torch.empty_like(linear.weight), requires_grad=False)
        set_submodule(model, name, new)
        names.append(name)
    return names


def quantize_(model: nn.Module, config=None, skips: Iterable[str] = (), progress: bool = True) -> nn.Module:
    """Convert the linear layers of any torch module to OneBitLinear in place (SVID / NMF init); returns ``model``.

    ``config.modules_to_not_convert`` and ``skips`` add to the default skips (``lm_head``). Layers on any device work;
    a progress bar shows one step per layer. ``config.tie_input_scales``: the shared ``g`` are tied afterwards
    (:func:`hf_onebit.integration.tying.tie_input_scales_`). The output head, kept float, becomes a
    :class:`~hf_onebit.nn.float_head.FloatHead` (:func:`hf_onebit.integration.head.use_float_head`), and a model on
    transformers' ``sdpa`` attention runs ``onebit_sdpa`` (:func:`hf_onebit.integration.attention.use_decode_attention`).
    """
    from ..config import OneBitConfig

    config = config or OneBitConfig()
    extra = list(skips) + list(config.modules_to_not_convert or [])
    extra += _tied_and_output_names(model)
    layers = find_linear_layers(model, extra)
    iterator = layers
    if progress and layers:
        from tqdm.auto import tqdm

        iterator = tqdm(layers, desc="hf_onebit: quantizing", unit="layer")
    for name, linear in iterator:
        set_submodule(model, name, OneBitLinear.from_linear(linear, config))
        del linear
    if config.tie_input_scales:
        from .tying import tie_input_scales_

        tie_input_scales_(model)
    from .attention import use_decode_attention
    from .head import use_float_head

    use_float_head(model, config.head_bits)
    use_decode_attention(model)
    return model


def _tied_and_output_names(model: nn.Module) -> list[str]:
    """Output embeddings and tied weights of a transformers model (never quantized)."""
    names = []
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        names += [n for n, m in model.named_modules() if m is out]
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for key, value in dict(tied).items():
        names += [key.removesuffix(".weight"), str(value).removesuffix(".weight")]
    return names


def _float_dtype(dtype) -> torch.dtype | None:
    """``dtype`` as a floating ``torch.dtype``: a ``torch.dtype``, its name (``"float32"``, ``"torch.bfloat16"``:
    what ``config.dtype`` holds after a save) or None / ``"auto"`` (each layer's own)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype: got {dtype!r}; allowed: a floating torch dtype or its name, e.g. 'float32'")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: got {dtype!r}; allowed: a floating torch dtype or its name, e.g. 'float32'")
    return dtype


def dequantize_(model: nn.Module, dtype: torch.dtype | str | None = None) -> nn.Module:
    """Replace every OneBitLinear by an ``nn.Linear`` with the same function, in place (``dtype``: of the new
    layers, a ``torch.dtype`` or its name; default: each layer's bias dtype, else float32)."""
    dtype = _float_dtype(dtype)
    for name, module in list(model.named_modules()):
        if not isinstance(module, OneBitLinear):
            continue
        if module.post_layernorm:
            raise ValueError(
                f"{name}: a OneBitLinear with post_layernorm=True has no nn.Linear equivalent (the LayerNorm "
                "normalises each output row); dequantize is only available for post_layernorm=False"
            )
        target = dtype or (module.bias.dtype if module.bias is not None else torch.float32)
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=module.weight.device, dtype=target)
        with torch.no_grad():
            linear.weight.copy_(module.dequantize_weight(target))
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        set_submodule(model, name, linear)
    return model
