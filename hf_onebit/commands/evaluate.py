"""``hf-onebit eval MODEL ...``: held-out perplexity (per domain and geometric mean), bits per weight, size on disk."""

from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="held-out perplexity, bits/weight and size of one or more models",
        description="Evaluate models (folders, Hub ids or 'smollm2') on hf_onebit's held-out English sets (four "
                    "domains: wiki, news, fiction, technical; see hf_onebit.eval.corpora) or on a text file of yours.")
    p.add_argument("models", nargs="+", help="model folders / Hub ids / 'smollm2'")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="held-out split: 'test' to report (default), 'val' to choose settings on")
    p.add_argument("--windows", type=int, default=None,
                   help="windows per domain (default: 16 on test, 8 on val)")
    p.add_argument("--text", default=None, help="a UTF-8 text file to evaluate on instead of the held-out sets")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--max-tokens", type=int, default=None, help="with --text: evaluate only the first N tokens")
    p.add_argument("--act-bits", type=act_bits_arg, choices=(0, 8, "auto"), default=None,
                   help="run the 1-bit layers with exact float (0), int8 per-token (8) or the device's fast mode "
                        "('auto': int8 on CPUs) activations instead of the saved setting (hf_onebit.set_runtime)")
    p.set_defaults(run=run)


def act_bits_arg(value: str):
    """``--act-bits`` (``hf-onebit eval``, ``benchmarks/tune.py``): the integers 0 and 8, or ``auto``; anything else
    is left for argparse's choices to reject."""
    return int(value) if value in ("0", "8") else value


def _positive(name: str, value, minimum: int) -> None:
    if value is not None and value < minimum:
        raise SystemExit(f"{name}: got {value}; allowed: an integer >= {minimum}")


def read_text(path: str, field: str = "--text") -> str:
    """The UTF-8 text of ``path``, or a SystemExit naming the problem (missing, a folder, not UTF-8, empty)."""
    if not os.path.exists(path):
        raise SystemExit(f"{field}: file {path!r} does not exist")
    if not os.path.isfile(path):
        raise SystemExit(f"{field}: {path!r} is not a file")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SystemExit(f"{field}: {path!r} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
                         "allowed: a UTF-8 text file") from None
    if not text.strip():
        raise SystemExit(f"{field}: {path!r} is empty")
    return text


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..eval import evaluate_heldout, format_table, perplexity, size_on_disk, size_report
    from ..integration.runtime import set_runtime
    from .quantize import load_model, resolve_model_path

    _positive("--seq-len", args.seq_len, 2)
    _positive("--max-tokens", args.max_tokens, 2)
    _positive("--windows", args.windows, 1)
    text = read_text(args.text) if args.text else None
    rows, reports = [], []
    for name in args.models:
        path = resolve_model_path(name)
        model = load_model(AutoModelForCausalLM, path, "MODEL", dtype=torch.float32)
        tokenizer = load_model(AutoTokenizer, path, "MODEL")
        if args.act_bits is not None:
            try:
                set_runtime(model, act_bits=args.act_bits)
            except ValueError as err:  # a float model: no 1-bit layer
                raise SystemExit(f"--act-bits: {name!r}: {err}") from None
        report = size_report(model)
        bits = report.bits_per_quantized_weight if report.quantized_weights else 32.0
        disk = size_on_disk(path) / 1e6 if os.path.isdir(path) else float("nan")
        if text is not None:
            ids = tokenizer(text, return_tensors="pt").input_ids[0][: args.max_tokens]
            if ids.numel() < 2:
                raise SystemExit(f"--text: {args.text!r} has {ids.numel()} token(s); at least 2 are needed")
            ppl = perplexity(model, tokenizer, text, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=True)
            rows.append([name, ppl, bits, report.bits_per_weight_overall, disk])
        else:
            heldout = evaluate_heldout(model, tokenizer, args.split, args.seq_len, args.windows, progress=True)
            reports.append((name, heldout))
            rows.append([name, *[r.ppl for r in heldout.domains.values()], heldout.geomean, bits,
                         report.bits_per_weight_overall, disk])
    if text is not None:
        print(format_table(["model", "perplexity", "bits/weight (linear)", "bits/weight (all)", "disk MB"], rows))
    else:
        domains = list(reports[0][1].domains)
        tokens = sum(r.tokens for r in reports[0][1].domains.values())
        print(f"held-out {args.split} split: {len(domains)} domains, {tokens} predicted tokens each model, "
              f"{args.seq_len}-token windows")
        print(format_table(["model", *domains, "geometric mean", "bits/weight (linear)", "bits/weight (all)",
                            "disk MB"], rows))
    return 0
