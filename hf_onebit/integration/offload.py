"""accelerate disk offload of packed 1-bit weights.

Loading a *pre-quantized* checkpoint with ``device_map="auto"`` and a tight ``max_memory`` works as is: the packed
``uint8`` weights are read from the checkpoint's safetensors when an offloaded layer runs.

Quantizing *on the fly* while offloading to disk needs one repair in transformers 5.23: the disk-offload index is built
from the source checkpoint before any weight is converted, and a converted tensor is only re-saved when it was
produced by a ``WeightConverter`` - hf_onebit's quantize op is not one, so every disk-offloaded 1-bit layer keeps
pointing at the *float* weight of the source checkpoint (its scale vectors, new names, are saved correctly), and
the layer's meta ``weight`` is still the float placeholder of the on-the-fly load. :func:`repair_disk_offloaded_signs`
runs after dispatch: for each such layer it packs the signs (or, for ternary layers, the absmean ternary codes) of that
float weight (exactly what the quantize op stores) into the offload folder, repoints the index, and gives the layer a
packed-shape meta ``weight``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..nn.linear import OneBitLinear, hard_quantize
from ..formats.packing import packed_columns

logger = logging.getLogger(__name__)


def _offload_maps(module: nn.Module):
    """The ``(loader, prefix)`` pairs of the accelerate hooks attached to ``module`` (a hook may be a chain)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))
    for h in hooks:
        weights_map = getattr(h, "weights_map", None)
        loader = getattr(weights_map, "dataset", None)
        if loader is not None and isinstance(getattr(loader, "index", None), dict):
            yield loader, getattr(weights_map, "prefix", "")


def repair_disk_offloaded_signs(model: nn.Module) -> list[str]:
    """Re-point disk-offloaded 1-bit weights that still refer to a float source tensor to packed sign bits.

    For on-the-fly quantization to the packed form only (latent layers keep float weights). Returns the names of the
    repaired weights (empty when nothing was offloaded or all were already packed). Raises a ValueError when a repair
    is needed but the model was loaded without ``offload_folder``.
    """
    repaired = []
    for name, module in model.named_modules():
        if not isinstance(module, OneBitLinear) or module.weight.device.type != "meta":
            continue
        packed_shape = (module.out_features, packed_columns(module.in_features, module.weight_format))
        for loader, prefix in _offload_maps(module):
            key = f"{prefix}weight"
            info = loader.index.get(key)
            if not info or info.get("safetensors_file") is None:
                continue
            with safe_open(info["safetensors_file"], framework="pt") as fh:
                source_name = info.get("weight_name", key)
                if fh.get_slice(source_name).get_dtype() == "U8":
                    continue  # already packed (pre-quantized checkpoint)
                float_weight = fh.get_tensor(source_name)
            if not loader.save_folder:
                raise ValueError(
                    f"{name}.weight: quantizing on the fly with disk offload needs `offload_folder=` in from_pretrained "
                    "(the packed sign bits of offloaded layers are written there)"
                )
            os.makedirs(loader.save_folder, exist_ok=True)
            path = os.path.join(loader.save_folder, f"{key}.safetensors")
            save_file({key: hard_quantize(float_weight, module.weight_format).contiguous()}, path)
            loader.index[key] = {"safetensors_file": path, "weight_name": key, "dtype": "uint8"}
            repaired.append(key)
        if module.weight.dtype != torch.uint8:  # the float placeholder of an on-the-fly load
            module.weight = nn.Parameter(torch.empty(packed_shape, dtype=torch.uint8, device="meta"), requires_grad=False)
    if repaired:
        logger.info("hf_onebit: packed %d disk-offloaded 1-bit weights into the offload folder", len(repaired))
    return repaired
