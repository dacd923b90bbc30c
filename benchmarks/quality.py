"""Distillation quality on the real SmolLM2-135M-Instruct: held-out perplexity per recipe at a fixed token budget.

Rows: teacher (float), svid (packed 1-bit, no training), onebit, progressive, progressive without binary-aware init,
progressive without dual scaling; ternary (BitNet b1.58 codes, 2 bits/weight): its absmean init without training,
the ``bitnet`` recipe (the ternary default) and ``progressive`` ternarisation. Every distilled row trains on the same teacher self-generated tokens with the same
optimizer settings and states its tokens and wall time; the perplexity is measured on hf_onebit/data/heldout_en.txt
(never in the training data) with the PACKED model reloaded from ``save_pretrained``.

    python benchmarks/quality.py --row progressive --tokens 200000 --json results/progressive.json   # one row
    python benchmarks/quality.py --report results/*.json --plot docs/quality_ppl_vs_tokens.png     # table + plot

Rows run as separate processes so that they can be scheduled around a shared machine; the CPU is shared, so wall
times are indicative and tokens are the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

from hf_onebit.training.data import STYLES

ROWS = ("teacher", "svid", "onebit", "progressive", "progressive-no-bai", "progressive-no-dual",
        "ternary-init", "ternary", "ternary-progressive")
#: Rows whose student uses the ternary (BitNet b1.58) format.
TERNARY_ROWS = ("ternary-init", "ternary", "ternary-progressive")
#: Teacher self-generation settings shared by every row (the cache key includes them).
DEFAULT_DATA_SEQUENCES = 512
DATA_SETTINGS = {"batch_size": 128, "dtype": "bfloat16", "top_k": 50, "top_p": 0.95, "temperature": 1.0}
HELDOUT = os.path.join(os.path.dirname(__file__), "..", "hf_onebit", "data", "heldout_en.txt")


def heldout_ids(tokenizer) -> torch.Tensor:
    with open(HELDOUT, encoding="utf-8") as fh:
        return tokenizer(fh.read(), return_tensors="pt").input_ids[0]


def recipe_kwargs(row: str, args) -> dict:
    if row == "onebit":
        return {"recipe": "onebit"}
    if row == "ternary":
        return {"recipe": "bitnet"}
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    init_steps = args.init_steps if args.init_steps is not None else max(1, round(0.06 * steps))
    kw = {"recipe": "progressive", "init_steps": init_steps, "phases": args.phases, "t_end": args.t_end}
    if row == "progressive-no-bai":
        kw["binary_aware_init"] = False
    if row == "progressive-no-dual":
        kw["dual_scaling"] = False
    return kw


class PerplexityProbe:
    """Trainer callback: hard-sign held-out perplexity every ``every`` steps (the function the packed model has)."""

    def __init__(self, cb, ids, every: int, tokens_per_step: int, seq_len: int, bf16: bool = False):
        from transformers import TrainerCallback

        self.cb, self.ids, self.every, self.tps, self.seq_len = cb, ids, every, tokens_per_step, seq_len
        self.curve = []
        self.bf16 = bf16
        outer = self

        class _Probe(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % outer.every == 0 and state.global_step < state.max_steps:
                    outer.measure(model, state.global_step)

        self.callback = _Probe()

    def measure(self, model, step: int) -> None:
        from hf_onebit.eval import perplexity_ids

        temp = self.cb.temperature
        saved = temp.t if temp is not None else None
        if temp is not None:
            temp.t = math.inf
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            ppl = perplexity_ids(model, self.ids, seq_len=self.seq_len)
        if temp is not None:
            temp.t = saved
        self.curve.append({"step": step, "tokens": step * self.tps, "ppl": ppl})
        print(f"[probe] step {step} tokens {step * self.tps} hard-sign held-out ppl {ppl:.1f}", flush=True)


def run_row(row: str, args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig
    from hf_onebit.eval import perplexity_ids
    from hf_onebit.real_model import smollm2_checkpoint
    from hf_onebit.training import (DistillationLoss, OneBitDistillationCallback, TokenBlocks, onebit_optimizer,
                                    self_generated_dataset)
    from hf_onebit.training.data import text_file_dataset
    from hf_onebit.training.optim import GROUP_KEY

    torch.manual_seed(args.seed)
    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    ids = heldout_ids(tok)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    result = {"row": row, "heldout_tokens": int(ids.numel()), "tokens": 0, "wall_s": 0.0, "steps": 0}
    if row == "teacher":
        result["ppl"] = perplexity_ids(teacher, ids, seq_len=args.eval_seq_len)
        result["curve"] = []
        return result
    fmt = "ternary" if row in TERNARY_ROWS else "binary"
    if row in ("svid", "ternary-init"):
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=OneBitConfig(scale_dtype="float32", weight_format=fmt))
        result["ppl"] = perplexity_ids(model, ids, seq_len=args.eval_seq_len)
        return result

    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    n_seq = max(args.data_sequences, args.batch_size)
    data_seeds = args.data_seeds if args.data_seeds else [args.seed]
    sampling = {**DATA_SETTINGS, "top_k": args.data_top_k, "top_p": args.data_top_p,
                "temperature": args.data_temperature}
    sets = [self_generated_dataset(teacher, tok, n_seq, args.data_block_len, style=args.data_style, seed=s, **sampling)
            for s in data_seeds] if args.data_sequences else []
    sets += [text_file_dataset(f, tok, args.seq_len) for f in args.data_file]
    # Each set is one contiguous stream cut into blocks: re-cut it at the training length (main() checks it divides).
    data = TokenBlocks(torch.cat([d.blocks.reshape(-1, args.seq_len) for d in sets]))
    result["train_blocks"] = len(data)
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(training=True,
                                                                                         weight_format=fmt))
    if args.freeze_embeddings:
        student.get_input_embeddings().requires_grad_(False)
        student.get_output_embeddings().requires_grad_(False)
    loss = DistillationLoss(kl_weight=1.0, hidden_weight=args.hidden_weight, temperature=1.0)
    cb = OneBitDistillationCallback(teacher, loss=loss, clip_multiplier=args.clip_multiplier, plot=False,
                                    **recipe_kwargs(row, args))
    tps = args.batch_size * args.seq_len
    probe = PerplexityProbe(cb, ids, args.eval_every, tps, args.eval_seq_len, bf16=args.bf16)
    out = tempfile.mkdtemp(prefix=f"quality-{row}-")
    targs = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.05}, warmup_steps=max(1, int(0.05 * steps)), logging_steps=args.log_every,
        save_strategy="no", report_to=[], seed=args.seed, use_cpu=True, disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0, bf16=args.bf16,
    )
    opt = onebit_optimizer(student, lr=args.lr, scale_lr=args.scale_lr, weight_decay=args.weight_decay)
    if args.embedding_lr is not None and not args.freeze_embeddings:
        emb = student.get_input_embeddings().weight
        for group in opt.param_groups:  # no optimizer state exists yet: moving a parameter is safe
            group["params"] = [p for p in group["params"] if p is not emb]
        opt.add_param_group({"params": [emb], "lr": args.embedding_lr, "weight_decay": 0.0, GROUP_KEY: "embedding"})
    trainer = Trainer(model=student, args=targs, train_dataset=data, callbacks=[cb, probe.callback],
                      optimizers=(opt, None))
    probe.measure(student, 0)
    t0 = time.perf_counter()
    trainer.train()
    result["wall_s"] = time.perf_counter() - t0
    result["steps"] = steps
    result["tokens"] = steps * tps
    result["ppl_latent"] = perplexity_ids(student, ids, seq_len=args.eval_seq_len)
    student.save_pretrained(os.path.join(out, "packed"))
    packed = AutoModelForCausalLM.from_pretrained(os.path.join(out, "packed"))
    result["ppl"] = perplexity_ids(packed, ids, seq_len=args.eval_seq_len)
    probe.curve.append({"step": steps, "tokens": steps * tps, "ppl": result["ppl"]})
    result["curve"] = probe.curve
    result["history"] = cb.history
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("report", "json")}
    return result


def label(result: dict) -> str:
    """The row name, plus its training set's size and style when they are not the defaults."""
    settings = result.get("settings", {})
    if result["steps"] == 0:
        return result["row"]
    notes = []
    if settings.get("data_sequences") == 0:
        notes.append("no self-generated text")
    else:
        n_sets = len(settings.get("data_seeds") or [0])
        if settings.get("data_sequences", DEFAULT_DATA_SEQUENCES) != DEFAULT_DATA_SEQUENCES or n_sets > 1:
            notes.append(f"{n_sets * settings.get('data_sequences', DEFAULT_DATA_SEQUENCES)} seqs")
        if settings.get("data_style", "random-start") != "random-start":
            notes.append(settings["data_style"])
    files = settings.get("data_file") or []
    if files:
        notes.append(f"+ {len(files)} text files")
    return f"{result['row']} ({', '.join(notes)})" if notes else result["row"]


def report(paths: list[str], plot: str | None) -> str:
    from hf_onebit.eval import format_table

    results = []
    for p in paths:
        with open(p) as fh:
            results.append(json.load(fh))
    order = {r: i for i, r in enumerate(ROWS)}
    results.sort(key=lambda r: (order.get(r["row"], 99), r["tokens"]))
    teacher = next((r["ppl"] for r in results if r["row"] == "teacher"), None)
    rows = []
    for r in results:
        rows.append([label(r), r["tokens"], r["steps"], round(r["wall_s"] / 60, 1), r["ppl"],
                     (r["ppl"] / teacher) if teacher else float("nan")])
    table = format_table(["row", "tokens", "steps", "wall min", "held-out ppl (packed)", "x teacher"], rows)
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'hf_onebit[plot]')", file=sys.stderr)
        else:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for r in results:
                if r.get("curve"):
                    pts = [(c["tokens"], c["ppl"]) for c in r["curve"]]
                    ax.plot(*zip(*pts), marker=".", label=f"{label(r)} ({r['tokens'] // 1000}k tok)")
            if teacher:
                ax.axhline(teacher, color="k", ls="--", label="teacher")
            ax.set_xlabel("training tokens")
            ax.set_ylabel("held-out perplexity (hard sign)")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(plot, dpi=100)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", choices=ROWS)
    p.add_argument("--json", help="write the row's result here")
    p.add_argument("--report", nargs="*", help="result JSON files to tabulate")
    p.add_argument("--plot", help="with --report: perplexity vs tokens PNG")
    p.add_argument("--tokens", type=int, default=100_000, help="training token budget per distilled row")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data-sequences", type=int, default=DEFAULT_DATA_SEQUENCES, help="self-generated sequences (cached, reused)")
    p.add_argument("--data-seeds", type=int, nargs="+", default=None,
                   help="generate --data-sequences sequences with each of these sampling seeds and train on all of "
                        "them (default: --seed only); each seed's set is cached on its own")
    p.add_argument("--data-file", nargs="+", default=[],
                   help="UTF-8 text files whose tokens are added to the training blocks (with --data-sequences 0: "
                        "the only training text)")
    p.add_argument("--real-text", action="store_true",
                   help="add the cached human-written text of hf_onebit.real_text (Wikipedia articles, news) as "
                        "--data-file does")
    p.add_argument("--data-block-len", type=int, default=None,
                   help="length of the self-generated blocks (part of the cache key; default --seq-len); each set "
                        "is one contiguous stream, re-cut at --seq-len for training")
    p.add_argument("--data-top-k", type=int, default=DATA_SETTINGS["top_k"],
                   help="self-generation: sample from the k most likely tokens (0: no limit)")
    p.add_argument("--data-top-p", type=float, default=DATA_SETTINGS["top_p"],
                   help="self-generation: nucleus mass (1.0: no limit)")
    p.add_argument("--data-temperature", type=float, default=DATA_SETTINGS["temperature"],
                   help="self-generation: sampling temperature")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the (float) embedding and LM head fixed instead of training them with the scales")
    p.add_argument("--embedding-lr", type=float, default=None,
                   help="learning rate of the (float) embedding / tied LM head (default: --scale-lr, its group)")
    p.add_argument("--data-style", choices=STYLES, default="random-start",
                   help="self-generated text: random first token (LLM-QAT) or answers to writing prompts")
    p.add_argument("--lr", type=float, default=2e-4, help="latent weights")
    p.add_argument("--scale-lr", type=float, default=1e-3, help="scale vectors")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--clip-multiplier", type=float, default=2.0)
    p.add_argument("--init-steps", type=int, default=None, help="binary-aware init steps (default: 6%% of the steps)")
    p.add_argument("--phases", type=int, default=20)
    p.add_argument("--t-end", type=float, default=None, help="t of the last phase (default: the paper's curve)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 instead of bf16 autocast")
    args = p.parse_args(argv)
    if args.report is not None:
        print(report(args.report, args.plot))
        return
    if not args.row:
        p.error("--row or --report is required")
    if args.data_seeds and len(set(args.data_seeds)) != len(args.data_seeds):
        p.error(f"--data-seeds: got {args.data_seeds}; allowed: distinct seeds (a repeated seed repeats its text)")
    if args.real_text:
        from hf_onebit.real_text import real_text_files

        args.data_file = args.data_file + real_text_files()
    if args.data_sequences < 0 or (args.data_sequences == 0 and not args.data_file):
        p.error(f"--data-sequences: got {args.data_sequences}; allowed: >= 1, or 0 together with --data-file")
    for f in args.data_file:
        if not os.path.isfile(f):
            p.error(f"--data-file: {f!r} is not a file; allowed: UTF-8 text files")
    args.data_block_len = args.data_block_len or args.seq_len
    block = args.data_block_len
    if (args.data_sequences * block) % args.seq_len:
        p.error(f"--data-block-len {block} x --data-sequences {args.data_sequences} is not a multiple of "
                f"--seq-len {args.seq_len}; allowed: a whole number of training sequences per set")
    result = run_row(args.row, args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "curve", "settings")}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
