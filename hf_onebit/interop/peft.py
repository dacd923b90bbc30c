"""LoRA adapters on 1-bit layers with PEFT.

:class:`OneBitLoraLinear` is PEFT's LoRA layer for a :class:`~hf_onebit.OneBitLinear`: the packed sign bits and scale
vectors stay frozen, a float LoRA pair ``B @ A`` is added to the layer's output. PEFT finds it through its own
custom-module API (``LoraConfig._register_custom_module``), which this module applies for you::

    import hf_onebit.interop.peft
    from hf_onebit.interop.peft import get_peft_model       # peft.get_peft_model, with the 1-bit layer registered

    model = AutoModelForCausalLM.from_pretrained("my-1bit-model")          # saved by hf_onebit
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=hf_onebit.interop.peft.target_modules(model)))
    ...                                                                     # train with transformers.Trainer
    peft_model.save_pretrained("adapter")

    base = AutoModelForCausalLM.from_pretrained("my-1bit-model")
    peft_model = hf_onebit.interop.peft.load_adapter(base, "adapter")

Where another library builds the PEFT model from a config (e.g. a trainer's ``peft_config=``), pass
:func:`lora_config` (a ``LoraConfig`` with the layer registered) or a config given to :func:`with_onebit_layers`.
A plain ``LoraConfig`` given to ``peft.get_peft_model`` fails on a 1-bit model with PEFT's "Target module ... is not
supported": PEFT keeps custom layer types per config and does not save them with the adapter, and hf_onebit does not
patch PEFT. ``target_modules="all-linear"`` only finds ``nn.Linear`` layers, not 1-bit ones: pass
:func:`target_modules` instead.

Merging (``merge_and_unload``) is **lossy**: the merged weight ``W + B A`` is re-quantized to signs (ternary values for
ternary layers) and refitted scale vectors; a warning reports how much of the adapter's update survived. Keep the
adapter unmerged for exact results (it costs ``r * (in + out)`` extra multiply-adds per token and layer).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn

from ..nn.linear import OneBitLinear, quantize_weight

try:
    import peft as _peft
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
except ImportError as err:  # pragma: no cover - peft is a dependency
    raise ImportError(f"hf_onebit.interop.peft needs the `peft` package (pip install peft): {err}") from None

logger = logging.getLogger(__name__)

_LOSSY_MERGE = (
    "hf_onebit: merging a LoRA adapter into a 1-bit layer is lossy: W + BA is re-quantized to signs and refitted "
    "scale vectors; the fraction of each layer's adapter update that is lost is logged (logger hf_onebit.interop.peft, INFO) "
    "and kept as `merge_error` on the LoRA layer. For exact results "
    "keep the adapter unmerged: save it with save_pretrained and reload it with hf_onebit.interop.peft.load_adapter."
)

__all__ = [
    "OneBitLoraLinear",
    "get_peft_model",
    "lora_config",
    "with_onebit_layers",
    "target_modules",
    "load_adapter",
]


class OneBitLoraLinear(nn.Module, LoraLayer):
    """LoRA on a frozen :class:`OneBitLinear`: ``y = onebit(x) + sum_adapters B(A(dropout(x))) * scaling``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs: Any) -> None:
        if config.lora_bias:
            raise ValueError(
                "LoraConfig.lora_bias=True is not supported on 1-bit layers (hf_onebit.interop.peft.OneBitLoraLinear); "
                "use lora_bias=False"
            )
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        return base.in_features, base.out_features

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        if config.use_dora:
            raise ValueError(
                "LoraConfig.use_dora=True is not supported on 1-bit layers (DoRA needs the dense weight norm every "
                "step); use plain LoRA (use_dora=False)"
            )
        return super().resolve_lora_variant(config=config, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_A.weight.dtype)
            update = lora_B(lora_A(self.lora_dropout[name](h))) * self.scaling[name]
            result = result + update.to(out_dtype)
        return result

    # ------------------------------------------------------------------ merge (lossy)
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The dense ``(out, in)`` update ``B @ A * scaling`` of one adapter (float32)."""
        a = self.lora_A[adapter].weight.float()
        b = self.lora_B[adapter].weight.float()
        return (b @ a) * self.scaling[adapter]

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Merge adapters into the 1-bit layer by re-quantizing ``W + B A`` (lossy; a warning says how lossy).

        The original packed tensors are kept, so :meth:`unmerge` restores the base layer exactly.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.lora_A]
        if not adapter_names:
            return
        base = self.get_base_layer()
        if base.post_layernorm:
            raise ValueError(
                "merge: this OneBitLinear has post_layernorm=True, where the LoRA update is added after the "
                "LayerNorm and cannot be folded into the weight; keep the adapter unmerged"
            )
        if not self.merged:
            self._onebit_original = {k: v.clone() for k, v in base.packed_state().items()}
        before = base.dequantize_weight(torch.float32)
        delta = sum(self.get_delta_weight(name) for name in adapter_names).to(before.device)
        target = before + delta
        if safe_merge and not torch.isfinite(target).all():
            raise ValueError(f"merge: adapters {adapter_names} produce non-finite merged weights")
        from ..config import OneBitConfig

        config = OneBitConfig(scale_dtype=str(base.scale_dtype).replace("torch.", ""), weight_format=base.weight_format)
        base.load_quantized_(quantize_weight(target, config, latent=base.is_latent))
        after = base.dequantize_weight(torch.float32)
        # How much of the adapter's update the 1-bit layer failed to represent (0 = exact, >= 1 = all of it lost).
        self.merge_error = float((after - target).norm() / delta.norm().clamp_min(1e-30))
        logger.info("hf_onebit: merged %s: weight error %.0f%% of the adapter update", adapter_names, 100 * self.merge_error)
        warnings.warn(_LOSSY_MERGE, stacklevel=2)
        self.merged_adapters.extend(adapter_names)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base layer's original packed tensors (exact)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        original = self._onebit_original
        if base.is_latent:
            from ..formats.packing import unpack_weight

            original = dict(original, weight=unpack_weight(original["weight"], base.in_features, torch.float32,
                                                           base.weight_format))
        base.load_quantized_(original)
        del self._onebit_original
        self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def with_onebit_layers(config: LoraConfig) -> LoraConfig:
    """Register :class:`OneBitLoraLinear` for OneBitLinear targets on ``config`` (PEFT's custom-module API); returns it.

    Idempotent. ``config`` must be a ``peft.LoraConfig``: PEFT's other adapter types have no layer for 1-bit weights.
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config: a peft.LoraConfig is needed for 1-bit layers, got {type(config).__name__}")
    if (config._custom_modules or {}).get(OneBitLinear) is not OneBitLoraLinear:
        config._register_custom_module({OneBitLinear: OneBitLoraLinear})
    return config


def lora_config(**kwargs: Any) -> LoraConfig:
    """A ``LoraConfig(**kwargs)`` that wraps OneBitLinear layers with :class:`OneBitLoraLinear`."""
    return with_onebit_layers(LoraConfig(**kwargs))


def get_peft_model(model: nn.Module, peft_config: LoraConfig, *args: Any, **kwargs: Any):
    """``peft.get_peft_model`` with :func:`with_onebit_layers` applied to ``peft_config`` (same arguments, same result).

    ``peft_config`` is registered in place (a ``LoraConfig``; PEFT's other adapter types have no 1-bit layer).
    """
    return _peft.get_peft_model(model, with_onebit_layers(peft_config), *args, **kwargs)


def target_modules(model: nn.Module) -> list[str]:
    """The distinct leaf names of the model's 1-bit layers (``["down_proj", "gate_proj", ...]``), for LoraConfig."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, OneBitLinear)}
    if not names:
        raise ValueError("target_modules: the model has no OneBitLinear layer (was it loaded with hf_onebit?)")
    return sorted(names)


def load_adapter(model: nn.Module, path: str, adapter_name: str = "default", is_trainable: bool = False,
                 **kwargs: Any) -> PeftModel:
    """Load a LoRA adapter saved from a 1-bit model onto a (re)loaded 1-bit ``model``; returns the ``PeftModel``.

    ``kwargs`` (e.g. ``revision``, ``token``) go to both ``LoraConfig.from_pretrained`` and
    ``PeftModel.from_pretrained``.
    """
    config = with_onebit_layers(LoraConfig.from_pretrained(path, **kwargs))
    return PeftModel.from_pretrained(model, path, adapter_name=adapter_name, is_trainable=is_trainable,
                                     config=config, **kwargs)

