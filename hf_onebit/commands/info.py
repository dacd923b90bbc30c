"""``hf-onebit info MODEL``: what a 1-bit checkpoint holds, read from its headers (no weights are loaded)."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}
FORMAT_NOTES = {"binary": "sign bits, 1 bit per weight", "ternary": "BitNet b1.58 values {-1, 0, +1}, 2-bit codes"}


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show the 1-bit layers, bits/weight, format version and available kernels",
                       description="Read a 1-bit checkpoint's config and safetensors headers (local folder or Hub "
                       "id) and print its quantized layers, bits per weight, format version and the kernels this "
                       "machine can run.")
    p.add_argument("model", help="checkpoint folder or Hub id")
    p.add_argument("--layers", action="store_true", help="list every 1-bit layer instead of one row per layer type")
    p.set_defaults(run=run)


def read_checkpoint(model: str) -> tuple[dict, dict, dict]:
    """``(config, tensors, metadata)``: config.json as a dict, ``{name: {"dtype", "shape"}}`` and file metadata."""
    from ..integration.checkpoint import read_safetensors_header

    if os.path.isdir(model):
        config_path = os.path.join(model, "config.json")
        if not os.path.exists(config_path):
            raise SystemExit(f"MODEL: {model!r} has no config.json (not a transformers checkpoint)")
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        tensors, metadata = {}, {}
        for name in sorted(os.listdir(model)):
            if name.endswith(".safetensors"):
                header, meta = read_safetensors_header(os.path.join(model, name))
                tensors.update(header)
                metadata.update(meta)
        return config, tensors, metadata
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    with open(hf_hub_download(model, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    tensors, metadata = {}, {}
    for file_meta in get_safetensors_metadata(model).files_metadata.values():
        metadata.update(file_meta.metadata or {})
        tensors.update({k: {"dtype": t.dtype, "shape": list(t.shape)} for k, t in file_meta.tensors.items()})
    return config, tensors, metadata


def onebit_layers(tensors: dict) -> "OrderedDict[str, dict]":
    """``{layer name: {"out", "in", "bits"}}`` for every packed layer (a U8 ``weight`` with a ``scale_in``)."""
    layers = OrderedDict()
    for key, info in tensors.items():
        if not key.endswith(".weight") or info["dtype"] != "U8":
            continue
        name = key[: -len(".weight")]
        scale_in = tensors.get(f"{name}.scale_in")
        if scale_in is None:
            continue
        out_f, in_f = info["shape"][0], scale_in["shape"][0]
        bits = 0
        for suffix in ("weight", "scale_in", "scale_out", "bias"):
            t = tensors.get(f"{name}.{suffix}")
            if t is not None:
                n = 1
                for d in t["shape"]:
                    n *= d
                bits += n * _BYTES.get(t["dtype"], 4) * 8
        layers[name] = {"out": out_f, "in": in_f, "bits": bits}
    return layers


def run(args) -> int:
    from ..eval import format_table
    from ..formats.packing import FORMAT_VERSION, METADATA_KEY
    from .quantize import layer_label, resolve_model_path

    path = resolve_model_path(args.model)
    config, tensors, metadata = read_checkpoint(path)
    quant = config.get("quantization_config") or {}
    print(f"model: {args.model}  ({', '.join(config.get('architectures') or ['?'])})")
    if quant.get("quant_method") != "onebit":
        print(f"not a 1-bit checkpoint (quant_method: {quant.get('quant_method')!r}); "
              "make one with `hf-onebit quantize SRC OUT`")
        return 1
    print(f"format version: config {quant.get('format_version', 'missing (= 1)')}, "
          f"weights {metadata.get(METADATA_KEY, 'missing (= 1)')}; this hf_onebit writes {FORMAT_VERSION}")
    settings = ", ".join(f"{k}={quant[k]}" for k in ("init", "scale_dtype", "post_layernorm", "act_bits", "head_bits",
                                                     "backend")
                         if k in quant)
    print(f"quantization: onebit ({settings})")
    weight_format = quant.get("weight_format", "binary")
    print(f"weight format: {weight_format} ({FORMAT_NOTES.get(weight_format, 'unknown to this hf_onebit release')})")

    layers = onebit_layers(tensors)
    if args.layers:
        rows = [[name, f"{v['out']} x {v['in']}", v["bits"] / (v["out"] * v["in"])] for name, v in layers.items()]
        headers = ["layer", "out x in", "bits/weight"]
    else:
        groups: "OrderedDict[tuple, list]" = OrderedDict()
        for name, v in layers.items():
            groups.setdefault((name.rsplit(".", 1)[-1], v["out"], v["in"]), []).append(v)
        rows = [[kind, len(vs), f"{o} x {i}", sum(v["bits"] for v in vs) / (len(vs) * o * i)]
                for (kind, o, i), vs in groups.items()]
        headers = ["layer type", "layers", "out x in", "bits/weight"]
    weights = sum(v["out"] * v["in"] for v in layers.values())
    bits = sum(v["bits"] for v in layers.values())
    rows.append([f"all {layer_label(weight_format)}", *([len(layers)] if not args.layers else []), f"{weights:,} weights",
                 bits / max(weights, 1)])
    print(format_table(headers, rows))

    total = sum(_tensor_bytes(t) for t in tensors.values())
    print(f"weights: {total / 1e6:.2f} MB in total, {bits / 8e6:.2f} MB in {layer_label(weight_format)}")
    print("kernels: " + kernel_summary(weight_format))
    card = config.get("onebit_card") or {}
    if card:
        print("card info: " + "; ".join(f"{k}={v}" for k, v in card.items()))
    return 0


def kernel_summary(weight_format: str = "binary") -> str:
    """Registered kernels for ``weight_format`` per device type, and whether this machine has that device (the
    reference runs anywhere)."""
    import torch

    from ..ops import kernels_for

    parts = []
    for device, present in (("cpu", True), ("cuda", torch.cuda.is_available())):
        names = [k.name for k in kernels_for(device, weight_format)]
        note = "" if present else " (no such device here)"
        parts.append(f"{device}: {', '.join(names + ['reference'])}{note}")
    return "; ".join(parts)


def _tensor_bytes(info: dict) -> int:
    n = 1
    for d in info["shape"]:
        n *= d
    return n * _BYTES.get(info["dtype"], 4)
