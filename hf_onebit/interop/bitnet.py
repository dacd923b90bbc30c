"""transformers' BitNet (b1.58) checkpoints -> hf_onebit ternary layers.

transformers ships a ``"bitnet"`` quantization method (``transformers.integrations.bitnet``) with two layer classes:

* ``BitLinear`` (``linear_class="bitlinear"``, the default): the checkpoint's ``weight`` is ``uint8
  (ceil(out / 4), in)`` written by ``pack_weights``, which packs along the **output** rows: byte ``[r, k]`` holds rows
  ``r``, ``R + r``, ``2R + r``, ``3R + r`` (``R = ceil(out / 4)``) in its bit pairs 0-1, 2-3, 4-5, 6-7, each as the
  code ``T + 1``. A ``weight_scale`` tensor (one value) divides the output::

      y = (q @ T.T) / (weight_scale * s) + bias,   q = round(x * s) clamped to int8,  s = 127 / max|x|  (per token)

* ``AutoBitLinear`` (``linear_class="autobitlinear"``): ``quantization_mode="offline"`` stores the same packed
  weight (unpacked to floats while loading) and **multiplies** by ``weight_scale``, bias included:
  ``y = (x_q @ T.T + bias) * weight_scale``; ``quantization_mode="online"`` keeps float weights and ternarizes them
  on every call with one per-tensor ``gamma = mean|W|``: ``y = x_q @ (gamma * RoundClip(W / gamma)).T + bias``.

All three are ``y = ((x * g) @ T.T) * h (+ bias)`` with per-token absmax int8 activations - exactly a ternary
:class:`~hf_onebit.OneBitLinear` with ``act_bits=8``, ``g = 1`` and a constant ``h`` (``1 / weight_scale``,
``weight_scale`` or ``gamma``). :func:`convert_bitnet_model_` re-packs the codes along the inputs (our layout,
:func:`hf_onebit.formats.packing.pack_ternary`) and swaps the layers, after which the model runs on hf_onebit's kernels and
``save_pretrained`` writes an hf_onebit checkpoint that ``from_pretrained`` reloads (after ``import hf_onebit``).

Not convertible, refused with :class:`BitNetConversionError`: ``use_rms_norm=True`` (an RMSNorm with its own
per-token factor inside the layer), a ``weight_scale`` that is neither one value nor one per output, and BitNet layers
that hf_onebit keeps in full precision on reload (the output embedding / ``lm_head``).

Exactness: in float32 the converted layer differs from transformers' forward only by float rounding order (and the
activation scale of a token whose max |x| is below 1e-5, which transformers clamps). A bf16 BitNet model quantizes its
activations in bf16, hf_onebit in float32: the results then agree to bf16 precision, not bit for bit.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..config import OneBitConfig
from ..integration.convert import DEFAULT_SKIPS, is_skipped, set_submodule
from ..nn.linear import OneBitLinear
from ..formats.packing import pack_ternary, ternarize_values

logger = logging.getLogger(__name__)

#: Ternary values per byte in transformers' BitNet packing (blocks of output rows).
_ROWS_PER_BYTE = 4


class BitNetConversionError(ValueError):
    """A BitNet layer or checkpoint that has no exact hf_onebit equivalent (or is malformed)."""


def unpack_bitnet_rows(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """Undo transformers' ``pack_weights``: ``uint8 (ceil(out / 4), in)`` -> ``int8 (out, in)`` values in {-1, 0, 1}.

    Padding rows past ``out_features`` are dropped; a code 3 in a real row raises :class:`BitNetConversionError`.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise BitNetConversionError(
            f"weight: a packed BitNet weight is a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    rows = packed.shape[0]
    if rows != (out_features + _ROWS_PER_BYTE - 1) // _ROWS_PER_BYTE:
        raise BitNetConversionError(
            f"weight: packed BitNet weight has {rows} rows, expected ceil({out_features} / 4) = "
            f"{(out_features + 3) // 4} for {out_features} outputs")
    blocks = [packed.bitwise_right_shift(2 * i).bitwise_and(3) for i in range(_ROWS_PER_BYTE)]
    codes = torch.cat(blocks, dim=0)[:out_features]
    if bool((codes == 3).any()):
        raise BitNetConversionError("weight: packed BitNet weight holds the invalid 2-bit code 3")
    return codes.to(torch.int8) - 1


def _bitnet_classes():
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear

    return BitLinear, AutoBitLinear


def _per_output(scale: torch.Tensor, out_features: int, name: str) -> torch.Tensor:
    """A float32 ``(out_features,)`` vector from a BitNet ``weight_scale`` of one value or one per output."""
    flat = scale.detach().float().reshape(-1)
    if flat.numel() not in (1, out_features):
        raise BitNetConversionError(
            f"{name}.weight_scale: has {flat.numel()} values; convertible: 1 (per tensor) or {out_features} (per output)")
    if not bool(torch.isfinite(flat).all()) or bool((flat == 0).any()):
        raise BitNetConversionError(f"{name}.weight_scale: must be finite and non-zero, got {flat[:4].tolist()}")
    return flat.expand(out_features).clone()


def bitnet_layer_parts(name: str, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(values int8 (out, in), h float32 (out,), bias or None)`` with the same function as a BitNet layer."""
    BitLinear, AutoBitLinear = _bitnet_classes()
    if getattr(module, "rms_norm", None) is not None:
        raise BitNetConversionError(
            f"{name}: BitNet layers with use_rms_norm=True normalise every token inside the layer (an RMSNorm with its "
            "own weight before the int8 quantization); hf_onebit's ternary layer has no such norm, so this model "
            "cannot be converted exactly")
    out_features = module.out_features
    bias = module.bias.detach() if module.bias is not None else None
    if isinstance(module, BitLinear):
        values = unpack_bitnet_rows(module.weight.detach(), out_features)
        h = 1.0 / _per_output(module.weight_scale, out_features, name)  # BitLinear divides by weight_scale
        return values, h, bias
    if not isinstance(module, AutoBitLinear):
        raise BitNetConversionError(f"{name}: {type(module).__name__} is not a transformers BitNet layer")
    weight = module.weight.detach()
    if module.online_quant:
        # transformers' WeightQuant: one gamma per tensor, forward weight = RoundClip(W / gamma) * gamma
        w = weight.float()
        inv_gamma = 1.0 / w.abs().mean().clamp(min=1e-5)
        values = (w * inv_gamma).round().clamp(-1, 1).to(torch.int8)
        return values, (1.0 / inv_gamma).expand(out_features).clone(), bias
    if weight.dtype == torch.uint8:
        values = unpack_bitnet_rows(weight, out_features)
    else:
        try:
            values = ternarize_values(weight.float())
        except ValueError as err:
            raise BitNetConversionError(f"{name}.weight: {err} (an offline AutoBitLinear holds ternary weights)") from None
    ws = _per_output(module.weight_scale, out_features, name)  # AutoBitLinear multiplies, bias included
    if bias is not None:
        bias = (bias.float() * ws).to(bias.dtype)
    return values, ws, bias


def _ternary_layer(values, h, bias, in_features, scale_dtype, backend) -> OneBitLinear:
    layer = OneBitLinear(in_features, values.shape[0], bias=bias is not None, weight_format="ternary", act_bits=8,
                         scale_dtype=scale_dtype, backend=backend, device=values.device,
                         dtype=bias.dtype if bias is not None else None)
    with torch.no_grad():
        layer.weight = nn.Parameter(pack_ternary(values), requires_grad=False)
        layer.scale_in.data = torch.ones(in_features, dtype=scale_dtype, device=values.device)
        layer.scale_out.data = h.to(device=values.device, dtype=scale_dtype)
        if bias is not None:
            layer.bias.data = bias.clone()
    return layer


def bitnet_layer_names(model: nn.Module) -> list[str]:
    BitLinear, AutoBitLinear = _bitnet_classes()
    return [n for n, m in model.named_modules() if isinstance(m, (BitLinear, AutoBitLinear))]


def convert_bitnet_model_(model: nn.Module, scale_dtype: str = "float32", backend: str = "auto") -> nn.Module:
    """Replace every transformers BitNet layer of ``model`` by a ternary :class:`~hf_onebit.OneBitLinear`, in place.

    The new layers have ``act_bits=8`` (BitNet's per-token absmax int8 activations), ``g = 1`` and the layer's scale
    in ``h`` (stored as ``scale_dtype``; the default ``"float32"`` keeps the function exact). On a transformers model
    the quantization config and quantizer become hf_onebit's, so ``save_pretrained`` writes an hf_onebit ternary
    checkpoint. Raises :class:`BitNetConversionError` naming the layer when a layer cannot be converted exactly
    (nothing is modified then).
    """
    config = OneBitConfig(weight_format="ternary", act_bits=8, scale_dtype=scale_dtype, backend=backend)
    names = bitnet_layer_names(model)
    if not names:
        raise BitNetConversionError(
            f"{type(model).__name__}: no transformers BitNet layer (BitLinear / AutoBitLinear) found; load the model "
            "with its BitNet quantization config first (or use hf_onebit.interop.load_bitnet(path))")
    BitLinear, AutoBitLinear = _bitnet_classes()
    float_linears = [n for n, m in model.named_modules()
                     if isinstance(m, nn.Linear) and not isinstance(m, (AutoBitLinear, OneBitLinear))]
    default_skips = list(DEFAULT_SKIPS) + _reload_skips(model)
    # float linears the reload would convert unless the config lists them
    float_linears = [n for n in float_linears if not is_skipped(n, default_skips)]
    skips = default_skips + float_linears
    for name in names:
        if is_skipped(name, skips):
            raise BitNetConversionError(
                f"{name}: is a BitNet layer, but hf_onebit keeps this module in full precision when it reloads a "
                f"checkpoint (output embeddings, tied weights, {DEFAULT_SKIPS}); this model cannot be converted exactly")
    parts = {name: bitnet_layer_parts(name, model.get_submodule(name)) for name in names}  # validate all first
    for name, (values, h, bias) in parts.items():
        module = model.get_submodule(name)
        set_submodule(model, name, _ternary_layer(values, h, bias, module.in_features, config.torch_scale_dtype,
                                                   backend))
    logger.info("hf_onebit: converted %d BitNet layers to ternary OneBitLinear", len(names))
    if hasattr(model, "config") and hasattr(model, "save_pretrained"):
        config.modules_to_not_convert = float_linears or None
        _attach_onebit(model, config)
    return model


def _reload_skips(model: nn.Module) -> list[str]:
    """Module names hf_onebit's quantizer always keeps in full precision when it reloads a checkpoint of ``model``
    (output embeddings and tied weights, as transformers finds them)."""
    if not hasattr(model, "config"):
        return []
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None),
                                                  add_default_skips=True)


def _attach_onebit(model: nn.Module, config: OneBitConfig) -> None:
    """Make a converted transformers model an hf_onebit model: its config, quantizer and save path."""
    from transformers.integrations.bitnet import BitNetDeserialize

    from . import hub
    from ..integration.quantizer import OneBitHfQuantizer

    # The BitNet load op (offline AutoBitLinear) has no reverse op: save_pretrained would raise on it. The layers it
    # filled are gone; the packed tensors are saved as they are.
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [
            c for c in conversions if not any(isinstance(op, BitNetDeserialize) for op in getattr(c, "operations", ()))
        ]

    quantizer = OneBitHfQuantizer(config, pre_quantized=True)
    quantizer.modules_to_not_convert = list(config.modules_to_not_convert or [])
    model.config.quantization_config = config
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = config.quant_method
    hub.record_teacher(model, None)


def load_bitnet(path_or_model, scale_dtype: str = "float32", backend: str = "auto", **from_pretrained_kwargs):
    """Load a transformers BitNet checkpoint (folder or Hub id) - or take a model already loaded with it - and return
    it converted to hf_onebit ternary layers (:func:`convert_bitnet_model_`).

    ``from_pretrained_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``dtype=torch.float32``).
    """
    if isinstance(path_or_model, nn.Module):
        return convert_bitnet_model_(path_or_model, scale_dtype=scale_dtype, backend=backend)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path_or_model, **{k: v for k, v in from_pretrained_kwargs.items()
                                                           if k in ("revision", "token", "trust_remote_code")})
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method)) != "bitnet":
        raise BitNetConversionError(
            f"{path_or_model}: quantization_config.quant_method is {method!r}, expected 'bitnet' (a checkpoint made "
            "with transformers' BitNet quantization)")
    if isinstance(quant, dict) and quant.get("use_rms_norm"):
        raise BitNetConversionError(
            f"{path_or_model}: quantization_config.use_rms_norm=True (an RMSNorm inside every BitNet layer) has no "
            "exact hf_onebit equivalent")
    # Eager: transformers' BitNet load op unpacks through torch.compile (needs a compiler, compiles per shape); the
    # result is the same.
    with torch.compiler.set_stance("force_eager"):
        model = AutoModelForCausalLM.from_pretrained(path_or_model, **from_pretrained_kwargs)
    return convert_bitnet_model_(model, scale_dtype=scale_dtype, backend=backend)
