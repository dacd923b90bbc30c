"""``hf-onebit eval MODEL --text FILE``: perplexity, bits per weight and size on disk, as a table."""

from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity, bits/weight and size of one or more models",
                       description="Evaluate models (folders, Hub ids or 'smollm2') on a text file.")
    p.add_argument("models", nargs="+", help="model folders / Hub ids / 'smollm2'")
    p.add_argument("--text", default=None, help="text file (default: hf_onebit's bundled held-out English text)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.set_defaults(run=run)


def default_text_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "heldout_en.txt")


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..eval import format_table, perplexity, size_on_disk, size_report
    from .quantize import resolve_model_path

    text_path = args.text or default_text_path()
    if not os.path.exists(text_path):
        raise SystemExit(f"--text: file {text_path!r} does not exist")
    text = open(text_path, encoding="utf-8").read()
    rows = []
    for name in args.models:
        path = resolve_model_path(name)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ppl = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=True)
        report = size_report(model)
        bits = report.bits_per_quantized_weight if report.quantized_weights else 32.0
        disk = size_on_disk(path) / 1e6 if os.path.isdir(path) else float("nan")
        rows.append([name, ppl, bits, report.bits_per_weight_overall, disk])
    print(format_table(["model", "perplexity", "bits/weight (linear)", "bits/weight (all)", "disk MB"], rows))
    return 0
