"""``hf-onebit quantize SRC OUT``: quantize a float checkpoint to a packed 1-bit checkpoint."""

from __future__ import annotations

import os
import re
import time

from ..formats import get_format


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a float checkpoint to packed 1-bit weights (SVID init)",
                       description="Load SRC (a local folder, a Hub id, or 'smollm2' for the bundled real model), "
                       "replace the transformer blocks' linear layers by packed 1-bit layers and save to OUT.")
    p.add_argument("src", help="float model: folder, Hub id, or 'smollm2'")
    p.add_argument("out", help="output folder for the 1-bit checkpoint")
    p.add_argument("--init", choices=["svid", "nmf"], default="svid",
                   help="scale initialisation: SVID rank-1 fit by power iteration, or NMF (default: svid)")
    p.add_argument("--weight-format", choices=["binary", "ternary"], default="binary",
                   help="binary: sign bits, 1 bit/weight (default); ternary: BitNet b1.58 values {-1, 0, +1} in 2-bit "
                   "codes, ~2 bits/weight, lower reconstruction error")
    p.add_argument("--tie-input-scales", action="store_true",
                   help="keep the input scales llama.cpp folds tied, for an exact GGUF export (hf-onebit export gguf)")
    p.add_argument("--scale-dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--post-layernorm", action="store_true", help="add OneBit's non-affine post-LayerNorm")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="dtype of the layers kept in full precision (embeddings, norms, lm_head); default: as stored")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="extra module name to keep in full precision (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is a non-empty folder (only once the new checkpoint is complete)")
    p.set_defaults(run=run)


def resolve_model_path(src: str, field: str = "MODEL") -> str:
    """``src`` as a loadable name: ``'smollm2'`` -> the cached real model; an existing folder as it is; a Hub id
    (``name`` or ``owner/name``) as it is. Anything that looks like a path but does not exist is refused here, so
    that a mistyped folder is not reported as a bad Hub repo id."""
    if src == "smollm2":
        from ..fixtures.real_model import smollm2_checkpoint

        return smollm2_checkpoint()
    if os.path.exists(src):
        if not os.path.isdir(src):
            raise SystemExit(f"{field}: {src!r} is a file; expected a model folder (with config.json), a Hub id or "
                             "'smollm2'")
        return src
    looks_like_path = (src.startswith((".", "/", "~")) or src.endswith("/") or src.count("/") > 1
                       or os.path.isdir(src.split("/")[0]) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", src))
    if looks_like_path:
        raise SystemExit(f"{field}: folder {src!r} does not exist (and it is not a Hub repo id of the form "
                         "'owner/name')")
    return src


def load_model(cls, name: str, field: str, **kwargs):
    """``cls.from_pretrained(name, **kwargs)`` with the errors a user can fix named (missing folder, no network,
    not a model)."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as err:
        where = "the folder" if os.path.isdir(name) else "the Hub (is the network reachable? is the id right?)"
        raise SystemExit(f"{field}: could not load {name!r} from {where}: {str(err).splitlines()[0]}") from None


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import OneBitConfig
    from ..interop import hub
    from ..eval import format_table, size_on_disk, size_report
    from ..files.output import OutputFolder

    src = resolve_model_path(args.src, "SRC")
    weight_format = args.weight_format
    config = OneBitConfig(init=args.init, scale_dtype=args.scale_dtype, post_layernorm=args.post_layernorm,
                          modules_to_not_convert=args.skip or None, weight_format=weight_format,
                          tie_input_scales=args.tie_input_scales)
    src_bytes = size_on_disk(src) if os.path.isdir(src) else None  # measured before anything is written
    with OutputFolder(args.out, sources=[src], overwrite=args.overwrite) as staging:
        start = time.perf_counter()
        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        model = load_model(AutoModelForCausalLM, src, "SRC", quantization_config=config, dtype=dtype)
        elapsed = time.perf_counter() - start
        hub.save_pretrained(model, staging)  # weights, config and the model card
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(staging)
        except Exception as err:  # a checkpoint without a tokenizer is still a valid model
            print(f"note: no tokenizer saved ({type(err).__name__}: {err})")
    report = size_report(model)
    rows = [
        [layer_label(weight_format), f"{report.quantized_weights:,} weights", f"{report.bits_per_quantized_weight:.4f}"],
        ["whole model", f"{report.quantized_weights + report.other_params:,} params", f"{report.bits_per_weight_overall:.3f}"],
    ]
    print(format_table(["part", "size", "bits/weight"], rows))
    quantized_name = get_format(weight_format).label
    print(format_table(
        ["", "size on disk (MB)"],
        ([["source", src_bytes / 1e6]] if src_bytes else []) + [[quantized_name, size_on_disk(args.out) / 1e6]],
    ))
    print(f"quantized in {elapsed:.1f} s -> {args.out}  (load it with `import hf_onebit` + from_pretrained)")
    return 0


def layer_label(weight_format: str) -> str:
    """How tables name the quantized layers: ``"1-bit layers"`` or ``"ternary layers"``."""
    return f"{get_format(weight_format).label} layers"


