"""``hf-onebit distill``: distil a float checkpoint into a packed 1-bit one with the stock Trainer.

    hf-onebit distill --teacher DIR --out DIR --recipe progressive --max-steps 300 --data self

``--data`` takes one or more sources whose blocks are mixed: ``self`` (teacher self-generated text, cached),
``real-text`` (human-written Wikipedia and news text, :mod:`hf_onebit.real_text`, built once offline), a UTF-8 text
file, or a folder written by ``datasets.Dataset.save_to_disk``; e.g. ``--data self real-text``. The Trainer's
progress bar shows the run; a summary table (tokens, wall time, losses, held-out perplexity when ``--eval-text`` is
given, size) is printed at the end and the packed model, its tokenizer and ``distill_curves.png`` are written to
``--out``.
"""

from __future__ import annotations

import argparse
import os
import time

from .data import STYLES

DESCRIPTION = """\
Distil a float checkpoint (--teacher) into a packed 1-bit (or ternary) checkpoint (--out) with the stock
transformers Trainer and hf_onebit's distillation callback.

--data takes one or more sources whose blocks are mixed: 'self' (text the teacher writes itself, cached),
'real-text' (human-written Wikipedia text, built once offline), a UTF-8 text file, or a folder written by
datasets.Dataset.save_to_disk. The Trainer's progress bar shows the run; a summary table (tokens, wall time, losses,
held-out perplexity, size) is printed at the end. --out receives the packed model, its tokenizer and
distill_curves.png only when the run completes (an interrupted run leaves --out untouched).

example:
  hf-onebit distill --teacher DIR --out DIR --max-steps 300 --data self real-text
"""


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("distill", help="distil a float model into a packed 1-bit model",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="float checkpoint folder (or Hub id) of the teacher")
    p.add_argument("--out", required=True, help="folder for the packed 1-bit model")
    p.add_argument("--weight-format", choices=("binary", "ternary"), default="binary",
                   help="1-bit signs, or BitNet b1.58 ternary codes (2 bits/weight)")
    p.add_argument("--recipe", choices=("progressive", "onebit", "bitnet"), default=None,
                   help="default: progressive for binary, bitnet for ternary")
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--data", nargs="+", default=["self"], metavar="SOURCE",
                   help="one or more of: 'self', 'real-text', a text file, a saved datasets folder (their blocks are "
                        "mixed; 'self real-text' gave the best 60-minute SmolLM2 run, docs/benchmarks.md)")
    p.add_argument("--data-sequences", type=int, default=None,
                   help="self-generated sequences (with --data self); default: one pass of the run, i.e. max-steps x "
                        "batch-size x grad-accum x processes, so that no sequence is seen twice")
    p.add_argument("--data-style", choices=STYLES, default="essays",
                   help="with --data self: the teacher's answers to writing prompts (ordinary prose; the default: "
                        "a lower held-out perplexity at the same budget, docs/benchmarks.md), or LLM-QAT sampling "
                        "from a random first token")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the latent weights (default: 1e-3 for the progressive recipe, the best of "
                        "3e-4 / 6e-4 / 1e-3 / 2e-3 on SmolLM2-135M, docs/benchmarks.md; 3e-4 for onebit and bitnet)")
    p.add_argument("--scale-lr", type=float, default=None,
                   help="learning rate of the scale vectors (default: 3.3 x --lr)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="of the latent weights (0 in the last phase)")
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="fraction of the steps spent warming up the "
                   "learning rate (default 0.05)")
    p.add_argument("--phases", type=int, default=20, help="progressive recipe: phases of the temperature schedule")
    p.add_argument("--init-steps", type=int, default=None, help="binary-aware init steps (default: 6%% of the run)")
    p.add_argument("--no-dual-scaling", action="store_true",
                   help="progressive recipe: no learnable row scale on top of the row absmean")
    p.add_argument("--no-binary-aware-init", action="store_true",
                   help="progressive recipe: skip the first stage that learns the per-input scales")
    p.add_argument("--post-layernorm", action="store_true", help="onebit: LayerNorm after every 1-bit linear")
    p.add_argument("--hidden-weight", type=float, default=1.0, help="alpha of the hidden-state MSE term")
    p.add_argument("--ce-weight", type=float, default=0.0, help="weight of the cross-entropy on the text itself")
    p.add_argument("--kd-temperature", type=float, default=1.0, help="softmax temperature of the KL term")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for training and self-generation (default: on where bf16 is fast - CPUs with "
                        "AMX / AVX512-BF16, GPUs with bf16 - off elsewhere)")
    p.add_argument("--save-steps", type=int, default=0, help="Trainer checkpoints (latent, resumable) every N steps")
    p.add_argument("--resume", default=None, help="resume from a Trainer checkpoint folder")
    p.add_argument("--eval-split", choices=("test", "val", "none"), default="test",
                   help="held-out split for the perplexity in the summary (default test; 'none' skips it)")
    p.add_argument("--eval-text", default=None,
                   help="a UTF-8 text file to report perplexity on instead of hf_onebit's held-out sets")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, sampling and initialisation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a non-empty folder (only once the new model is complete)")
    p.set_defaults(func=run_distill)
    return p


def self_data_sequences(args) -> int:
    """How many sequences to self-generate: ``--data-sequences``, else one pass of the whole run.

    Measured on SmolLM2-135M (docs/benchmarks.md): at the same 532k-token budget, 2080 fresh sequences (each seen once)
    gave a held-out perplexity of 650 where 512 sequences seen four times gave 918 (random-start text).
    """
    if args.data_sequences is not None:
        if args.data_sequences < 1:
            raise ValueError(f"--data-sequences: got {args.data_sequences}; allowed: an integer >= 1")
        return args.data_sequences
    return max(1, args.max_steps * args.batch_size * args.grad_accum * int(os.environ.get("WORLD_SIZE", "1")))


#: Default learning rate of the latent weights per recipe (``--lr``); the scale vectors get ``SCALE_LR_RATIO`` times it.
DEFAULT_LR = {"progressive": 1e-3, "onebit": 3e-4, "bitnet": 3e-4}
SCALE_LR_RATIO = 3.3


def learning_rates(recipe: str, lr: float | None, scale_lr: float | None) -> tuple[float, float]:
    """``(lr, scale_lr)``: the given values, else the recipe's default and ``SCALE_LR_RATIO`` times the latent lr.

    Progressive distillation of SmolLM2-135M on 98k tokens (docs/benchmarks.md, short ablations): held-out perplexity
    1804 / 1237 / 911 / 1383 at lr 3e-4 / 6e-4 / 1e-3 / 2e-3 (scales 3.3x). The other recipes keep 3e-4 (not re-tuned).
    """
    for name, value in (("--lr", lr), ("--scale-lr", scale_lr)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}: got {value}; allowed: a number > 0")
    lr = DEFAULT_LR[recipe] if lr is None else lr
    return lr, SCALE_LR_RATIO * lr if scale_lr is None else scale_lr


#: ``--data`` sources that are not paths.
DATA_KEYWORDS = ("self", "real-text")


def check_data_sources(sources: list[str]) -> None:
    """Reject a ``--data`` source that is neither a keyword nor an existing file or folder, before any loading."""
    for source in sources:
        if source not in DATA_KEYWORDS and not os.path.exists(source):
            raise ValueError(f"--data: {source!r} is not 'self', 'real-text' or an existing text file or saved "
                             "datasets folder")
    if len(set(sources)) != len(sources):
        raise ValueError(f"--data: got {sources}; allowed: each source once (a repeated source repeats its text)")


def _dataset(args, teacher, tokenizer):
    import torch

    from ..real_text import real_text_files
    from .data import TokenBlocks, hf_dataset, self_generated_dataset, text_file_dataset

    parts = []
    for source in args.data:
        if source == "self":
            parts.append(self_generated_dataset(teacher, tokenizer, self_data_sequences(args), args.seq_len,
                                                style=args.data_style, seed=args.seed, batch_size=64,
                                                dtype="bfloat16" if args.bf16 else None, top_k=50))
        elif source == "real-text":
            parts += [text_file_dataset(path, tokenizer, args.seq_len) for path in real_text_files()]
        elif os.path.isdir(source):
            parts.append(hf_dataset(source, tokenizer, args.seq_len))
        else:
            parts.append(text_file_dataset(source, tokenizer, args.seq_len))
    return parts[0] if len(parts) == 1 else TokenBlocks(torch.cat([part.blocks for part in parts]))


def run_distill(args) -> dict:
    import torch

    from ..commands.evaluate import read_text
    from ..commands.quantize import resolve_model_path
    from ..eval import evaluate_heldout, format_table, perplexity, size_report
    from ..output import OutputFolder
    from .precision import bf16_is_fast

    if args.max_steps < 1:
        raise SystemExit(f"--max-steps: got {args.max_steps}; allowed: an integer >= 1")
    if args.bf16 is None:
        args.bf16 = bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu")
    if args.recipe is None:
        args.recipe = "bitnet" if args.weight_format == "ternary" else "progressive"
    try:
        args.lr, args.scale_lr = learning_rates(args.recipe, args.lr, args.scale_lr)
        check_data_sources(args.data)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    text = read_text(args.eval_text, "--eval-text") if args.eval_text else None
    teacher_path = resolve_model_path(args.teacher, "--teacher")
    with OutputFolder(args.out, sources=[teacher_path], overwrite=args.overwrite, keep_partial=True) as staging:
        summary, student, teacher, tokenizer = _train(args, teacher_path, staging)
        student.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    rows = summary.pop("rows")
    if text is not None:
        summary["teacher_ppl"] = perplexity(teacher, tokenizer, text)
        summary["student_ppl"] = perplexity(student, tokenizer, text)
        rows += [["perplexity on --eval-text, teacher", summary["teacher_ppl"]],
                 ["perplexity on --eval-text, 1-bit", summary["student_ppl"]]]
    elif args.eval_split != "none":
        t_report = evaluate_heldout(teacher, tokenizer, args.eval_split, progress=True)
        s_report = evaluate_heldout(student, tokenizer, args.eval_split, progress=True)
        summary["teacher_heldout"], summary["student_heldout"] = t_report.to_dict(), s_report.to_dict()
        rows += [[f"held-out {args.eval_split} perplexity (geometric mean), teacher", t_report.geomean],
                 [f"held-out {args.eval_split} perplexity (geometric mean), 1-bit", s_report.geomean],
                 ["x teacher", s_report.geomean / t_report.geomean]]
    size = size_report(student)
    rows += [["bits / quantized weight", round(size.bits_per_quantized_weight, 4)],
             ["packed model size (MB)", round(size.total_bytes / 1e6, 1)], ["saved to", args.out]]
    print(format_table(["", "value"], rows))
    return summary


def _train(args, teacher_path: str, output_dir: str):
    """Load teacher and student, build the data, run the Trainer with the callback; ``(summary, student, teacher,
    tokenizer)`` with the student finalised (hard quantizer, the packed function)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from .. import OneBitConfig
    from ..commands.quantize import load_model
    from .callback import OneBitDistillationCallback
    from .losses import DistillationLoss
    from .optim import onebit_optimizer

    tokenizer = load_model(AutoTokenizer, teacher_path, "--teacher")
    teacher = load_model(AutoModelForCausalLM, teacher_path, "--teacher", dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(
        teacher_path, dtype=torch.float32,
        quantization_config=OneBitConfig(training=True, post_layernorm=args.post_layernorm,
                                         weight_format=args.weight_format))
    data = _dataset(args, teacher, tokenizer)
    recipe = {"recipe": args.recipe}
    if args.recipe == "progressive":
        init_steps = args.init_steps if args.init_steps is not None else max(1, round(0.06 * args.max_steps))
        if args.no_binary_aware_init:
            init_steps = 0
        recipe.update(phases=args.phases, init_steps=min(init_steps, args.max_steps - 1),
                      dual_scaling=not args.no_dual_scaling, binary_aware_init=not args.no_binary_aware_init)
    loss = DistillationLoss(hidden_weight=args.hidden_weight, ce_weight=args.ce_weight, temperature=args.kd_temperature)
    callback = OneBitDistillationCallback(teacher, loss=loss, **recipe)
    targs = TrainingArguments(
        output_dir=output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, weight_decay=args.weight_decay,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.05},
        warmup_steps=max(1, round(args.warmup_ratio * args.max_steps)), logging_steps=max(1, args.max_steps // 50),
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500, report_to=[],
        seed=args.seed, bf16=args.bf16, dataloader_num_workers=0,
        use_cpu=args.bf16 and not torch.cuda.is_available(),  # the Trainer refuses CPU bf16 without it
    )
    optimizer = onebit_optimizer(student, lr=args.lr, scale_lr=args.scale_lr, weight_decay=args.weight_decay)
    trainer = Trainer(model=student, args=targs, train_dataset=data, callbacks=[callback],
                      optimizers=(optimizer, None))
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume)
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = args.max_steps * args.batch_size * args.grad_accum * args.seq_len * max(targs.world_size, 1)
    rows = [["recipe", args.recipe], ["weight format", args.weight_format], ["steps", args.max_steps], ["training tokens", tokens],
            ["precision", "bf16 autocast" if args.bf16 else "float32"],
            ["learning rates (latent / scales)", f"{args.lr:g} / {args.scale_lr:g}"],
            ["wall time (min)", round(wall / 60, 2)]]
    if logs:
        rows += [["first / last loss", f"{logs[0]['loss']:.4g} / {logs[-1]['loss']:.4g}"]]
        for key in ("distill_kl", "distill_hidden", "distill_ce"):
            if key in logs[-1]:
                rows.append([f"last {key}", logs[-1][key]])
    return {"wall_s": wall, "tokens": tokens, "rows": rows}, student, teacher, tokenizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hf-onebit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_distill_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
