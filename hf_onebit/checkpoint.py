"""Checks on pre-quantized checkpoints before any weight is loaded: no layer is ever left with random weights."""

from __future__ import annotations

import json
import os
import struct

from .packing import METADATA_KEY, WEIGHT_FORMATS, check_format_version, packed_columns

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
#: safetensors metadata key naming the packed weight format ("binary" / "ternary"); absent in older files = binary.
WEIGHT_FORMAT_KEY = "hf_onebit_weight_format"


class CheckpointError(ValueError):
    """A pre-quantized checkpoint that does not match the model (missing, truncated or malformed tensors)."""


def read_safetensors_header(path: str) -> tuple[dict, dict]:
    """Return ``(tensors, metadata)`` from a safetensors header, checking that the file is complete."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, file has {size})")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as err:
            raise CheckpointError(f"{path}: corrupted safetensors header ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: the header describes {8 + header_len + end} bytes, the file has {size}"
        )
    return header, metadata


def _lookup(tensors: dict, name: str, prefix: str):
    for key in (name, f"{prefix}.{name}" if prefix else None, name.removeprefix(f"{prefix}.") if prefix else None):
        if key and key in tensors:
            return key, tensors[key]
    return None, None


def validate_checkpoint(checkpoint_files, layers: dict, base_model_prefix: str = "") -> None:
    """Check every OneBitLinear (``{name: module}``) against the checkpoint's safetensors headers.

    Raises :class:`CheckpointError` naming the tensor for a missing packed weight / scale vector, a wrong shape or dtype,
    a weight format (binary / ternary) that differs from the model's, an unknown format version, or a truncated file.
    """
    files = [f for f in (checkpoint_files or []) if str(f).endswith(".safetensors")]
    if not files:
        return
    tensors: dict = {}
    stored_format = None
    for path in files:
        header, metadata = read_safetensors_header(path)
        if METADATA_KEY in metadata:
            try:
                check_format_version(metadata[METADATA_KEY])
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}") from None
        if WEIGHT_FORMAT_KEY in metadata:
            stored_format = metadata[WEIGHT_FORMAT_KEY]
            if stored_format not in WEIGHT_FORMATS:
                raise CheckpointError(f"{path}: {WEIGHT_FORMAT_KEY}={stored_format!r} is not one of {WEIGHT_FORMATS}")
        tensors.update(header)
    for name, module in layers.items():
        fmt = getattr(module, "weight_format", "binary")
        expected = {
            "weight": ({"U8"}, (module.out_features, packed_columns(module.in_features, fmt))),
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
