"""``hf-onebit export gguf MODEL OUT.gguf``: a 1-bit / ternary checkpoint as a GGUF file for llama.cpp."""

from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a 1-bit / ternary checkpoint in another runtime's format (llama.cpp GGUF)",
                       description="Write the hf_onebit checkpoint MODEL as a GGUF file that stock llama.cpp (and "
                       "ollama, LM Studio, llama-cpp-python) runs: binary layers as Q1_0, ternary as TQ2_0 or TQ1_0. "
                       "The per-input scales g are folded into llama.cpp's RMSNorm weights and row scales; that is "
                       "exact for a model quantized with tie_input_scales=True, and refused otherwise unless "
                       "--approximate (docs/how-to/llama-cpp.md).")
    p.add_argument("format", choices=["gguf"], help="the target format")
    p.add_argument("model", help="hf_onebit checkpoint folder (saved by save_pretrained)")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--type", dest="qtype", choices=["Q1_0", "TQ1_0", "TQ2_0"], default=None,
                   help="llama.cpp type of the linear layers (default: Q1_0 for binary, TQ2_0 for ternary)")
    p.add_argument("--approximate", action="store_true",
                   help="accept a fold of g that is not exact (models without tie_input_scales); the table states "
                        "the largest relative weight error")
    p.add_argument("--tokenizer-pre", default=None,
                   help="llama.cpp pre-tokenizer name written to the file (default: gpt-2, the GPT-2 byte-level regex, "
                        "for LLaMA / Mistral; qwen2 for Qwen2; e.g. smollm for SmolLM2, whose original splits digits)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def run(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_onebit  # noqa: F401  (registers the quantizer for the reload)
    from hf_onebit.interop.gguf import ExportError, export_gguf

    if os.path.exists(args.out) and not args.overwrite:
        raise SystemExit(f"hf-onebit export: {args.out} exists; pass --overwrite to replace it")
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    try:
        summary = export_gguf(model, tokenizer, args.out, qtype=args.qtype, approximate=args.approximate,
                              tokenizer_pre=args.tokenizer_pre)
    except ExportError as err:
        raise SystemExit(f"hf-onebit export: error: {err}") from None
    print(summary.table())
    return 0
