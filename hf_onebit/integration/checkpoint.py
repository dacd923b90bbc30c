"""Checks on pre-quantized checkpoints before any weight is loaded: no tensor is ever left with random values.

:func:`validate_checkpoint` reads the tensor names, dtypes and shapes of every checkpoint file (safetensors headers,
or the index of a ``.bin`` archive, memory-mapped, never unpickling code) and compares them with what the model
expects: the packed tensors of every 1-bit layer **and** every other tensor (embeddings, norms, ``lm_head`` unless
tied). It also compares the settings the weights were saved with (format version, weight format, post-LayerNorm,
recorded in the safetensors metadata) with the model's ``quantization_config``. Anything that does not match raises
:class:`CheckpointError` naming the tensor or setting.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct

from ..formats.packing import METADATA_KEY, WEIGHT_FORMATS, check_format_version, packed_columns

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
#: safetensors metadata key naming the packed weight format ("binary" / "ternary"); absent in older files = binary.
WEIGHT_FORMAT_KEY = "hf_onebit_weight_format"
#: safetensors metadata keys of the other settings that change what the saved weights compute.
POST_LAYERNORM_KEY = "hf_onebit_post_layernorm"
ACT_BITS_KEY = "hf_onebit_act_bits"
#: safetensors refuses headers larger than this; so do we, before reading them.
MAX_HEADER_BYTES = 100_000_000
_TORCH_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64", "uint8": "U8",
                 "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL"}


class CheckpointError(ValueError):
    """A pre-quantized checkpoint that does not match the model (missing, truncated or malformed tensors)."""


def saved_settings_metadata(config) -> dict[str, str]:
    """The safetensors metadata hf_onebit writes with a packed model (read back by :func:`validate_checkpoint`)."""
    from ..formats.packing import FORMAT_VERSION

    return {METADATA_KEY: str(FORMAT_VERSION), WEIGHT_FORMAT_KEY: config.weight_format,
            POST_LAYERNORM_KEY: "true" if config.post_layernorm else "false", ACT_BITS_KEY: str(config.act_bits)}


# ------------------------------------------------------------------------------------------------- reading headers
def _corrupted(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: corrupted safetensors header ({what})")


def _check_entry(path: str, name, info) -> None:
    if not isinstance(name, str) or not isinstance(info, dict):
        raise _corrupted(path, f"entry {name!r} is not a tensor description")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(info.get("dtype"), str):
        raise _corrupted(path, f"tensor {name!r} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _corrupted(path, f"tensor {name!r} has shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise _corrupted(path, f"tensor {name!r} has data_offsets {offsets!r}")


def read_safetensors_header(path: str) -> tuple[dict, dict]:
    """Return ``(tensors, metadata)`` from a safetensors header, checking that the file is complete and the header
    well formed (every entry a dtype, a shape and data offsets inside the file)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, file has {size})")
        if header_len > MAX_HEADER_BYTES:
            raise _corrupted(path, f"a header of {header_len} bytes; at most {MAX_HEADER_BYTES} are allowed")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as err:
            raise _corrupted(path, str(err)) from None
    if not isinstance(header, dict):
        raise _corrupted(path, f"a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise _corrupted(path, "__metadata__ is not a map of strings")
    for name, info in header.items():
        _check_entry(path, name, info)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: the header describes {8 + header_len + end} bytes, the file has {size}"
        )
    return header, metadata


def read_bin_header(path: str) -> dict:
    """``{name: {"dtype", "shape"}}`` of a ``torch.save`` checkpoint (``pytorch_model.bin``), memory-mapped with
    ``weights_only=True`` (no code is run, the data is not read)."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) archive
    except Exception as err:  # truncated zip, pickle refused by weights_only, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {name: {"dtype": _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), str(t.dtype)),
                   "shape": list(t.shape)}
            for name, t in state.items() if hasattr(t, "shape")}


def checkpoint_tensors(files) -> tuple[dict, dict, list[str]]:
    """``(tensors, metadata, files)`` over every checkpoint file (``.safetensors`` and ``.bin``; others ignored)."""
    tensors: dict = {}
    metadata: dict = {}
    used = []
    for path in files or []:
        path = str(path)
        if path.endswith(".safetensors"):
            header, meta = read_safetensors_header(path)
            metadata.update(meta)
        elif path.endswith(".bin") or path.endswith(".pt") or path.endswith(".pth"):
            header = read_bin_header(path)
        else:
            continue
        tensors.update(header)
        used.append(path)
    return tensors, metadata, used


# ------------------------------------------------------------------------------------------------- validation
def _lookup(tensors: dict, name: str, prefix: str):
    for key in (name, f"{prefix}.{name}" if prefix else None, name.removeprefix(f"{prefix}.") if prefix else None):
        if key and key in tensors:
            return key, tensors[key]
    return None, None


def _check_settings(path_hint: str, metadata: dict, config) -> str | None:
    """Compare the settings recorded with the weights to ``config``; returns the stored weight format (or None)."""
    if METADATA_KEY in metadata:
        try:
            check_format_version(metadata[METADATA_KEY])
        except ValueError as err:
            raise CheckpointError(f"{path_hint}: {err}") from None
    stored_format = metadata.get(WEIGHT_FORMAT_KEY)
    if stored_format is not None and stored_format not in WEIGHT_FORMATS:
        raise CheckpointError(f"{path_hint}: {WEIGHT_FORMAT_KEY}={stored_format!r} is not one of {WEIGHT_FORMATS}")
    if config is None:
        return stored_format
    stored_pln = metadata.get(POST_LAYERNORM_KEY)
    if stored_pln is not None and stored_pln != ("true" if config.post_layernorm else "false"):
        raise CheckpointError(
            f"{path_hint}: the weights were saved with post_layernorm={stored_pln == 'true'} but the config's "
            f"quantization_config says post_layernorm={config.post_layernorm}; the model would compute another "
            "function. The config.json and the weights of this checkpoint do not belong together")
    stored_bits = metadata.get(ACT_BITS_KEY)
    if stored_bits is not None and stored_bits != str(config.act_bits):
        logger.warning("hf_onebit: %s was saved from a model running with act_bits=%s; it now runs with act_bits=%s "
                       "(int8 activations approximate float ones; the weights are the same)", path_hint, stored_bits,
                       config.act_bits)
    return stored_format


def _has_key_conversions(model) -> bool:
    """Whether transformers renames or merges this model's checkpoint tensors on load (then checkpoint names differ
    from the model's and only the 1-bit layers are checked here)."""
    try:
        from transformers.conversion_mapping import extract_weight_conversions_for_model
    except ImportError:
        return False
    try:
        return bool(extract_weight_conversions_for_model(model))
    except Exception:  # an unusual model: be conservative and do not check names we cannot map
        return True


def _expected_other_tensors(model, layer_names) -> dict[str, tuple]:
    """``{name: shape}`` of every tensor of ``model`` other than the 1-bit layers' that a checkpoint must hold."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    prefixes = tuple(f"{name}." for name in layer_names)
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefixes) or name in tied or any(p.search(name) for p in ignore):
            continue
        out[name] = (tuple(tensor.shape), tensor.is_floating_point())
    return out


def validate_checkpoint(checkpoint_files, layers: dict, base_model_prefix: str = "", model=None,
                        config=None) -> None:
    """Check a onebit checkpoint against the model before anything is loaded (see the module docstring).

    ``layers`` is ``{name: OneBitLinear}``; ``model`` (optional) adds the check of every other tensor; ``config``
    (the ``OneBitConfig``) adds the check of the recorded settings. Raises :class:`CheckpointError` naming the tensor
    for a missing packed weight / scale vector / other tensor, a wrong shape or dtype, a weight format (binary /
    ternary) or post-LayerNorm setting that differs from the config's, an unknown format version, or a truncated or
    corrupted file.
    """
    tensors, metadata, files = checkpoint_tensors(checkpoint_files)
    if not files:
        return
    stored_format = _check_settings(files[0] if len(files) == 1 else os.path.dirname(files[0]), metadata, config)
    for name, module in layers.items():
        fmt = module.weight_format
        expected = {
            "weight": ({"U8"}, (module.out_features, module.format.packed_columns(module.in_features))),
            "scale_in": (_FLOAT_DTYPES, (module.in_features,)),
            "scale_out": (_FLOAT_DTYPES, (module.out_features,)),
        }
        if module.bias is not None:
            expected["bias"] = (_FLOAT_DTYPES, (module.out_features,))
        for tensor_name, (dtypes, shape) in expected.items():
            key, info = _lookup(tensors, f"{name}.{tensor_name}", base_model_prefix)
            if info is None:
                raise CheckpointError(
                    f"{name}.{tensor_name}: missing from the onebit checkpoint; refusing to load this layer with "
                    "random weights (was the checkpoint saved by hf_onebit, and completely?)"
                )
            if tensor_name == "weight":
                _check_weight_format(key, info, module, fmt, stored_format)
            if info["dtype"] not in dtypes or tuple(info["shape"]) != shape:
                raise CheckpointError(
                    f"{key}: the checkpoint holds {info['dtype']} {tuple(info['shape'])}, expected "
                    f"{'/'.join(sorted(dtypes))} {shape} for a {module.in_features}->{module.out_features} 1-bit layer"
                )
    if model is None:
        return
    if _has_key_conversions(model):
        logger.info("hf_onebit: %s renames checkpoint tensors on load; only its 1-bit layers were checked",
                    type(model).__name__)
        return
    for name, (shape, is_float) in _expected_other_tensors(model, layers).items():
        key, info = _lookup(tensors, name, base_model_prefix)
        if info is None:
            raise CheckpointError(
                f"{name}: missing from the onebit checkpoint; refusing to load it with random values (was the "
                "checkpoint saved completely, from the same architecture?)")
        if tuple(info["shape"]) != shape or (is_float and info["dtype"] not in _FLOAT_DTYPES):
            raise CheckpointError(f"{key}: the checkpoint holds {info['dtype']} {tuple(info['shape'])}, the model "
                                  f"expects {'a float' if is_float else 'a'} tensor of shape {shape}")


def _check_weight_format(key: str, info: dict, module, fmt: str, stored_format) -> None:
    """Raise when the packed weight was written in another weight format than the model's config says."""
    other = None
    if stored_format is not None and stored_format != fmt:
        other = stored_format
    elif info["dtype"] == "U8":
        shape = tuple(info["shape"])
        for candidate in WEIGHT_FORMATS:
            if candidate != fmt and shape == (module.out_features, packed_columns(module.in_features, candidate)):
                other = candidate
    if other is not None:
        raise CheckpointError(
            f"{key}: the checkpoint holds {other} packed weights (U8 {tuple(info['shape'])}) but the model's "
            f"quantization_config says weight_format={fmt!r} (expected U8 "
            f"{(module.out_features, packed_columns(module.in_features, fmt))}); the config.json and the weights "
            "of this checkpoint do not belong together"
        )
