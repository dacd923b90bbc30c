"""LoRA adapters on 1-bit layers with PEFT.

``import hf_onebit.peft`` (or :func:`register`) teaches PEFT's LoRA how to wrap a :class:`~hf_onebit.OneBitLinear`:
the packed sign bits and scale vectors stay frozen, a float LoRA pair ``B @ A`` is added to the layer's output::

    import hf_onebit.peft
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained("my-1bit-model")          # saved by hf_onebit
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=hf_onebit.peft.target_modules(model)))
    ...                                                                     # train with transformers.Trainer
    peft_model.save_pretrained("adapter")

    base = AutoModelForCausalLM.from_pretrained("my-1bit-model")
    peft_model = hf_onebit.peft.load_adapter(base, "adapter")              # or PeftModel.from_pretrained

PEFT keeps custom layer types in a per-config mapping that is not saved with the adapter (``LoraConfig.
_register_custom_module``); :func:`register` therefore installs hf_onebit's dispatch globally, and
:func:`load_adapter` / :func:`lora_config` also work without it.

``target_modules="all-linear"`` only finds ``nn.Linear`` layers, not 1-bit ones: pass :func:`target_modules` instead.

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

from .modules import OneBitLinear, quantize_weight

try:
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer, LoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
except ImportError as err:  # pragma: no cover - peft is a dependency
    raise ImportError(f"hf_onebit.peft needs the `peft` package (pip install peft): {err}") from None

logger = logging.getLogger(__name__)

_LOSSY_MERGE = (
    "hf_onebit: merging a LoRA adapter into a 1-bit layer is lossy: W + BA is re-quantized to signs and refitted "
    "scale vectors; the fraction of each layer's adapter update that is lost is logged (logger hf_onebit.peft, INFO) "
    "and kept as `merge_error` on the LoRA layer. For exact results "
    "keep the adapter unmerged: save it with save_pretrained and reload it with hf_onebit.peft.load_adapter."
)

__all__ = [
    "OneBitLoraLinear",
    "dispatch_onebit",
    "register",
    "is_registered",
    "lora_config",
    "target_modules",
    "load_adapter",
]


class OneBitLoraLinear(nn.Module, LoraLayer):
    """LoRA on a frozen :class:`OneBitLinear`: ``y = onebit(x) + sum_adapters B(A(dropout(x))) * scaling``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs: Any) -> None:
        if config.lora_bias:
            raise ValueError(
                "LoraConfig.lora_bias=True is not supported on 1-bit layers (hf_onebit.peft.OneBitLoraLinear); "
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
        from .config import OneBitConfig

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
            from .packing import unpack_weight

            original = dict(original, weight=unpack_weight(original["weight"], base.in_features, torch.float32,
                                                           base.weight_format))
        base.load_quantized_(original)
        del self._onebit_original
        self.merged_adapters.clear()

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def dispatch_onebit(target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> Optional[nn.Module]:
    """PEFT dispatch function: a :class:`OneBitLoraLinear` for a OneBitLinear target, else None."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, OneBitLinear):
        return OneBitLoraLinear(target, adapter_name, config=config, **kwargs)
    return None


def _with_onebit_dispatch(original):
    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        module = dispatch_onebit(target, adapter_name, lora_config, **kwargs)
        if module is None:
            module = original(lora_config, adapter_name, target, **kwargs)
        return module

    _create_new_module.__wrapped__ = original
    _create_new_module._hf_onebit_dispatch = True
    return staticmethod(_create_new_module)


def is_registered() -> bool:
    """Whether PEFT's LoRA currently dispatches OneBitLinear targets to :class:`OneBitLoraLinear`."""
    return bool(getattr(LoraModel._create_new_module, "_hf_onebit_dispatch", False))


def register() -> None:
    """Make every PEFT LoRA model wrap OneBitLinear layers with :class:`OneBitLoraLinear` (idempotent).

    PEFT has no public plugin registry for layer types across configs, so this wraps
    ``LoraModel._create_new_module``: OneBitLinear targets go to :func:`dispatch_onebit`, everything else to PEFT.
    """
    current = LoraModel._create_new_module
    while getattr(current, "_hf_onebit_dispatch", False):  # a reloaded hf_onebit.peft replaces its own wrapper
        current = current.__wrapped__
    LoraModel._create_new_module = _with_onebit_dispatch(current)


def lora_config(**kwargs: Any) -> LoraConfig:
    """A ``LoraConfig(**kwargs)`` with OneBitLinear registered through PEFT's own custom-module API."""
    config = LoraConfig(**kwargs)
    config._register_custom_module({OneBitLinear: OneBitLoraLinear})
    return config


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
    config = LoraConfig.from_pretrained(path, **kwargs)
    config._register_custom_module({OneBitLinear: OneBitLoraLinear})
    return PeftModel.from_pretrained(model, path, adapter_name=adapter_name, is_trainable=is_trainable,
                                     config=config, **kwargs)


register()
