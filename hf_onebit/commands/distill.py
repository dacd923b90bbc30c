"""``hf-onebit distill``: distil a float checkpoint into a packed 1-bit (or ternary) one, in stages.

    hf-onebit distill --teacher DIR --out DIR --time-budget 60m

A thin wrapper around :func:`hf_onebit.training.pipeline.run_stages` (and, with ``--time-budget``,
:func:`hf_onebit.training.budget.plan_budget`): the arguments become a :class:`~hf_onebit.training.pipeline.DistillPlan`.
"""

from __future__ import annotations

import argparse
import os

from ..training.attention import CHOICES as ATTENTION_CHOICES
from ..training.blockwise import INPUTS, SCALE_INITS
from ..training.budget import FALLBACK_E2E_STEPS, MIN_E2E_STEPS
from ..training.data import STYLES
from ..training.losses import DEFAULT_HIDDEN_METRIC, DEFAULT_HIDDEN_WEIGHT, DEFAULT_HIDDEN_WEIGHT_END, HIDDEN_METRICS
from ..training.recipes import RECIPES
from ..training.relations import parse_attention_layers

DESCRIPTION = """\
Distil a float checkpoint (--teacher) into a packed 1-bit (or ternary) checkpoint (--out).

Stages (--stages): 'e2e' (the default) distils the whole model in the stock transformers Trainer (KL on the logits
plus hidden states); 'blockwise' first trains each transformer block of the 1-bit student to reproduce its teacher
block on a few calibration sequences (scale vectors first fitted to the block's activations). On SmolLM2-135M at a
15-minute CPU budget the two tied on held-out perplexity, the end-to-end stage alone in less time
(docs/benchmarks-quality.md). --time-budget
sizes the stages to the given time on this machine (measured at the start); otherwise --blockwise-steps and
--max-steps do.

--data takes one or more sources whose blocks are mixed: 'real-text' (human-written Wikipedia articles, the Sphinx
manual and two books, built once offline; the default), 'self' (text the teacher writes itself, cached), a UTF-8 text
file, or a folder written by datasets.Dataset.save_to_disk. Progress bars show every stage; a summary table (tokens, minutes per
stage, losses, held-out perplexity, size) is printed at the end. --out receives the packed model, its tokenizer and
distill_curves.png only when the run completes (an interrupted run leaves --out untouched).

examples:
  hf-onebit distill --teacher DIR --out DIR --time-budget 60m
  hf-onebit distill --teacher DIR --out DIR --max-steps 300 --data self real-text
  hf-onebit distill --teacher DIR --out DIR --stages blockwise e2e --blockwise-steps 64 --max-steps 100
"""


def attention_layers_arg(text: str):
    try:
        return parse_attention_layers(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("distill", help="distil a float model into a packed 1-bit model",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="float checkpoint folder (or Hub id) of the teacher")
    p.add_argument("--out", required=True, help="folder for the packed 1-bit model")
    p.add_argument("--weight-format", choices=("binary", "ternary"), default="binary",
                   help="1-bit signs, or BitNet b1.58 ternary codes (2 bits/weight)")
    p.add_argument("--tie-input-scales", action="store_true",
                   help="keep the input scales llama.cpp folds tied, for an exact GGUF export (hf-onebit export gguf)")
    p.add_argument("--stages", nargs="+", choices=("blockwise", "e2e"), default=["e2e"],
                   help="end-to-end distillation (default), block-wise reconstruction, or both (run in that order: "
                        "blockwise e2e)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="size every stage to this much time on this machine, e.g. 15m, 60m, 1.5h (measured at the "
                        "start; generating training text is not counted); replaces --blockwise-steps and --max-steps")
    p.add_argument("--blockwise-share", type=float, default=None,
                   help="with --time-budget: fraction of the time for the block-wise stage (default: "
                        "hf_onebit.training.budget.DEFAULT_BLOCKWISE_SHARE)")
    p.add_argument("--blockwise-steps", type=int, default=64, help="block-wise steps per block (default 64)")
    p.add_argument("--calibration-sequences", type=int, default=None,
                   help="sequences the block-wise stage trains on (default: each seen twice)")
    p.add_argument("--blockwise-init", choices=SCALE_INITS, default="data",
                   help="scale vectors of each block before its training: fitted to its activations ('data', the "
                        "default), signs chosen with error feedback as well ('gptq'), or SVID's ('svid')")
    p.add_argument("--blockwise-inputs", choices=INPUTS, default="student",
                   help="what each block trains on: the student's own stream (default) or the teacher's")
    p.add_argument("--blockwise-lr", type=float, default=1e-3, help="block-wise learning rate of the latent weights")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="end-to-end recipe (default: onebit after the block-wise stage - bitnet for ternary - else "
                        "progressive)")
    p.add_argument("--max-steps", type=int, default=100, help="end-to-end optimizer steps (default 100)")
    p.add_argument("--cache-targets", type=int, default=0, metavar="K",
                   help="end-to-end stage: compute the teacher's top-K targets once instead of running the teacher "
                        "every step (KL only; pays off when sequences are seen more than once; default 0 = off)")
    p.add_argument("--data", nargs="+", default=["real-text"], metavar="SOURCE",
                   help="one or more of: 'real-text' (default), 'self', a text file, a saved datasets folder (their "
                        "blocks are mixed)")
    p.add_argument("--data-sequences", type=int, default=None,
                   help="self-generated sequences (with --data self); default: one pass of the end-to-end stage, or "
                        "the calibration set if larger")
    p.add_argument("--data-style", choices=STYLES, default="essays",
                   help="with --data self: the teacher's answers to writing prompts (default), or LLM-QAT sampling "
                        "from a random first token")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per training sequence (default 256; with --time-budget and the end-to-end stage alone, "
                        "the step shrinks along 4, 2, 1 x 256, 4, 2, 1 x 64 tokens to the largest of which the budget "
                        f"buys {MIN_E2E_STEPS} steps, else to 4 or 2 x 64 if it buys {FALLBACK_E2E_STEPS}, else to "
                        "1 x 64)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per micro-batch (default 4; with --time-budget and the end-to-end stage alone, "
                        f"smaller when the budget buys fewer than {MIN_E2E_STEPS} steps of 4)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="end-to-end learning rate of the latent weights (default: per recipe, "
                        "hf_onebit.training.optim.DEFAULT_LR)")
    p.add_argument("--scale-lr", type=float, default=None,
                   help="learning rate of the scale vectors (default: 3.3 x --lr)")
    p.add_argument("--embedding-lr", type=float, default=None,
                   help="learning rate of the embedding matrices (default: that of the latent weights, --lr)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="of the latent weights (0 in the last phase)")
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="fraction of the steps spent warming up the "
                   "learning rate (default 0.05)")
    p.add_argument("--phases", type=int, default=20, help="progressive recipe: phases of the temperature schedule")
    p.add_argument("--init-steps", type=int, default=None, help="progressive recipe: binary-aware init steps "
                   "(default: 1)")
    p.add_argument("--no-dual-scaling", action="store_true",
                   help="progressive recipe: no learnable row scale on top of the row absmean")
    p.add_argument("--no-binary-aware-init", action="store_true",
                   help="progressive recipe: skip the first stage that learns the per-input scales")
    p.add_argument("--freeze-codes-at", type=float, default=None,
                   help="fraction of the end-to-end steps after which the codes are frozen and only the scale "
                        "vectors, norms and embeddings train (cheaper steps; default: never)")
    p.add_argument("--post-layernorm", action="store_true", help="onebit: LayerNorm after every 1-bit linear")
    p.add_argument("--hidden-weight", type=float, default=DEFAULT_HIDDEN_WEIGHT,
                   help=f"alpha of the hidden-state MSE term (default {DEFAULT_HIDDEN_WEIGHT:g})")
    p.add_argument("--hidden-weight-end", type=float, default=DEFAULT_HIDDEN_WEIGHT_END,
                   help="the hidden-state term's weight at the end of the end-to-end stage, reached geometrically over "
                        f"its second half (default {DEFAULT_HIDDEN_WEIGHT_END:g}; equal to --hidden-weight: constant)")
    p.add_argument("--hidden-metric", choices=HIDDEN_METRICS, default=DEFAULT_HIDDEN_METRIC,
                   help="distance of the hidden-state term: of the L2-normalised states ('cosine'), or of the states "
                        "with every dimension divided by the teacher's median |value| first ('dim-scaled'); default "
                        f"{DEFAULT_HIDDEN_METRIC}")
    p.add_argument("--attention-weight", type=float, default=0.0,
                   help="weight of the attention-relation term: the KL between the teacher's and the student's Q-Q, "
                        "K-K and V-V relations per position (MiniLMv2 / BitDistill); default 0 (off)")
    p.add_argument("--attention-layers", type=attention_layers_arg, default="all",
                   help="blocks of the attention-relation term: all (default), last, or comma-separated 0-based "
                        "block indices")
    p.add_argument("--attention-stride", type=int, default=1,
                   help="rows of the attention-relation term: every n-th position, the sum estimated at ~1/n of the "
                        "cost (default 1: every position)")
    p.add_argument("--ce-weight", type=float, default=0.0, help="weight of the cross-entropy on the text itself")
    p.add_argument("--kd-temperature", type=float, default=1.0, help="softmax temperature of the KL term")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for training and self-generation (default: on where bf16 is fast - CPUs with "
                        "AMX / AVX512-BF16, GPUs with bf16 - off elsewhere)")
    p.add_argument("--attn-implementation", choices=ATTENTION_CHOICES, default="auto",
                   help="attention the models train on: auto (default: eager for bf16 on a CPU, where it is faster "
                        "than the fused kernel; the models' own elsewhere), sdpa, eager, or model (their own)")
    p.add_argument("--save-steps", type=int, default=0, help="Trainer checkpoints (latent, resumable) every N steps")
    p.add_argument("--resume", default=None, help="resume the end-to-end stage from a Trainer checkpoint folder")
    p.add_argument("--eval-split", choices=("test", "val", "none"), default="test",
                   help="held-out split for the perplexity in the summary (default test; 'none' skips it)")
    p.add_argument("--eval-text", default=None,
                   help="a UTF-8 text file to report perplexity on instead of hf_onebit's held-out sets")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, sampling and initialisation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a non-empty folder (only once the new model is complete)")
    p.set_defaults(func=run_distill)
    return p


def self_data_sequences(args, plan) -> int:
    """How many sequences to self-generate: ``--data-sequences``, else what the plan needs (one pass of the
    end-to-end stage over every process, or the calibration set)."""
    if args.data_sequences is not None:
        if args.data_sequences < 1:
            raise ValueError(f"--data-sequences: got {args.data_sequences}; allowed: an integer >= 1")
        return args.data_sequences
    return plan.sequences_needed(int(os.environ.get("WORLD_SIZE", "1")))


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


def dataset(args, plan, teacher, tokenizer):
    """The training blocks of every ``--data`` source, mixed."""
    import torch

    from ..fixtures.real_text import real_text_files
    from ..training.data import TokenBlocks, hf_dataset, self_generated_dataset, text_file_dataset

    parts = []
    for source in args.data:
        if source == "self":
            parts.append(self_generated_dataset(teacher, tokenizer, self_data_sequences(args, plan), plan.seq_len,
                                                style=args.data_style, seed=args.seed, batch_size=64,
                                                dtype="bfloat16" if args.bf16 else None, top_k=50))
        elif source == "real-text":
            parts += [text_file_dataset(path, tokenizer, plan.seq_len) for path in real_text_files()]
        elif os.path.isdir(source):
            parts.append(hf_dataset(source, tokenizer, plan.seq_len))
        else:
            parts.append(text_file_dataset(source, tokenizer, plan.seq_len))
    return parts[0] if len(parts) == 1 else TokenBlocks(torch.cat([part.blocks for part in parts]))


def plan_from_args(args):
    """The :class:`~hf_onebit.training.pipeline.DistillPlan` the arguments describe (before any time budget)."""
    from ..training.blockwise import BlockwiseConfig
    from ..training.losses import DistillationLoss
    from ..training.pipeline import DistillPlan

    overrides = {}
    if args.recipe == "progressive":
        overrides = {"phases": args.phases, "dual_scaling": not args.no_dual_scaling,
                     "binary_aware_init": not args.no_binary_aware_init}
        if args.no_binary_aware_init:
            overrides["init_steps"] = 0
        elif args.init_steps is not None:
            overrides["init_steps"] = args.init_steps
    if args.freeze_codes_at is not None:
        if not 0 < args.freeze_codes_at < 1:
            raise ValueError(f"--freeze-codes-at: got {args.freeze_codes_at:g}; allowed: a fraction in (0, 1) of the "
                             "end-to-end steps")
        overrides["freeze_codes_at"] = args.freeze_codes_at
    hidden = 0.0 if args.cache_targets else args.hidden_weight
    if args.cache_targets and args.attention_weight:
        raise ValueError(f"--attention-weight: got {args.attention_weight:g} with --cache-targets "
                         f"{args.cache_targets}; cached targets hold no attention projections: allowed 0 with them")
    return DistillPlan(
        stages=tuple(args.stages), blockwise_steps=args.blockwise_steps,
        calibration_sequences=args.calibration_sequences,
        blockwise=BlockwiseConfig(lr=args.blockwise_lr, inputs=args.blockwise_inputs, scale_init=args.blockwise_init),
        e2e_steps=args.max_steps, batch_size=DistillPlan.batch_size if args.batch_size is None else args.batch_size,
        seq_len=DistillPlan.seq_len if args.seq_len is None else args.seq_len, grad_accum=args.grad_accum,
        recipe=args.recipe, lr=args.lr, scale_lr=args.scale_lr, embedding_lr=args.embedding_lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, cache_targets=args.cache_targets, recipe_overrides=overrides,
        loss=DistillationLoss(hidden_weight=hidden, hidden_weight_end=args.hidden_weight_end,
                              hidden_metric=args.hidden_metric, ce_weight=args.ce_weight,
                              temperature=args.kd_temperature, attention_weight=args.attention_weight,
                              attention_layers=args.attention_layers, attention_stride=args.attention_stride),
        bf16=bool(args.bf16), attn_implementation=args.attn_implementation, seed=args.seed)


def run_distill(args) -> dict:
    import dataclasses

    import torch

    from .evaluate import read_text
    from .quantize import resolve_model_path
    from ..interop import hub
    from ..eval import evaluate_heldout, format_table, perplexity, size_report
    from ..files.output import OutputFolder
    from ..training.budget import parse_duration, plan_for_budget
    from ..training.pipeline import card_facts
    from ..training.optim import learning_rates
    from ..training.precision import bf16_is_fast

    for name, value, low in (("--max-steps", args.max_steps, 0), ("--blockwise-steps", args.blockwise_steps, 0),
                             ("--calibration-sequences", args.calibration_sequences, 1),
                             ("--cache-targets", args.cache_targets, 0)):
        if value is not None and value < low:
            raise SystemExit(f"{name}: got {value}; allowed: an integer >= {low}")
    if args.bf16 is None:
        args.bf16 = bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu")
    try:
        budget = parse_duration(args.time_budget) if args.time_budget else None
        if args.blockwise_share is not None and not 0 <= args.blockwise_share <= 1:
            raise ValueError(f"--blockwise-share: got {args.blockwise_share}; allowed: 0 to 1")
        plan = plan_from_args(args)
        learning_rates(plan.e2e_recipe(args.weight_format), args.lr, args.scale_lr)  # checks the values
        check_data_sources(args.data)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    text = read_text(args.eval_text, "--eval-text") if args.eval_text else None
    teacher_path = resolve_model_path(args.teacher, "--teacher")
    with OutputFolder(args.out, sources=[teacher_path], overwrite=args.overwrite, keep_partial=True) as staging:
        student, teacher, tokenizer = load_models(args, teacher_path)
        rows = []
        if budget is not None:
            plan, budget_plan = plan_for_budget(student, teacher, plan, budget, args.blockwise_share,
                                                fit_batch=args.batch_size is None, fit_seq_len=args.seq_len is None)
            print(budget_plan.table())
            rows.append(["time budget", f"{budget / 60:g} min (planned {budget_plan.estimated_s / 60:.1f} min)"])
        data = dataset(args, plan, teacher, tokenizer)
        summary = run_stages_and_report(student, teacher, data, plan, staging, args.resume, args.save_steps, rows)
        hub.set_card_info(student, **card_facts(summary))  # recorded in the model card
        hub.save_pretrained(student, staging)  # packed, with its model card
        tokenizer.save_pretrained(staging)
    rows += [["weight format", args.weight_format], ["precision", "bf16 autocast" if args.bf16 else "float32"],
             ["attention while training", summary["attn_implementation"]]]
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
    summary["plan"] = dataclasses.asdict(plan) if hasattr(plan, "__dataclass_fields__") else None
    return summary


def load_models(args, teacher_path: str):
    """``(student, teacher, tokenizer)``: the latent student of ``--weight-format`` and the float teacher."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import OneBitConfig
    from .quantize import load_model

    tokenizer = load_model(AutoTokenizer, teacher_path, "--teacher")
    teacher = load_model(AutoModelForCausalLM, teacher_path, "--teacher", dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(
        teacher_path, dtype=torch.float32,
        quantization_config=OneBitConfig(training=True, post_layernorm=args.post_layernorm,
                                         weight_format=args.weight_format,
                                         tie_input_scales=args.tie_input_scales))
    return student, teacher, tokenizer


def run_stages_and_report(student, teacher, data, plan, output_dir, resume, save_steps, rows) -> dict:
    """:func:`~hf_onebit.training.pipeline.run_stages`, with the stages' figures appended to ``rows``."""
    from ..training.pipeline import run_stages

    summary = run_stages(student, teacher, data, plan, output_dir, resume=resume, save_steps=save_steps)
    if "blockwise" in summary:
        b = summary["blockwise"]
        rows += [["block-wise stage", f"{b['steps_per_block']} steps per block, {b['calibration_sequences']} "
                                      f"calibration sequences, {b['seconds'] / 60:.1f} min"],
                 ["block-wise error of the last block", f"{b['records'][-1]['error_after']:.3g}"]]
    if "e2e" in summary:
        e = summary["e2e"]
        rows += [["end-to-end stage", f"{e['steps']} steps, recipe {e['recipe']}, {e['tokens']:,} tokens, "
                                      f"{e['seconds'] / 60:.1f} min"],
                 ["learning rates (latent / scales / embeddings)",
                  f"{e['lr']:g} / {e['scale_lr']:g} / {e['embedding_lr']:g}"]]
        if e["log"]:
            rows.append(["first / last loss", f"{e['log'][0]['loss']:.4g} / {e['log'][-1]['loss']:.4g}"])
            for key in ("distill_kl", "distill_hidden", "distill_attention", "distill_ce"):
                if key in e["log"][-1]:
                    rows.append([f"last {key}", e["log"][-1][key]])
        if e["tail_mass"] is not None:
            rows.append(["teacher mass outside the cached top-k", f"{e['tail_mass']:.3g}"])
    summary["wall_s"] = sum(summary[s]["seconds"] for s in ("blockwise", "e2e") if s in summary)
    summary["tokens"] = summary["e2e"]["tokens"] if "e2e" in summary else 0
    return summary


def add_parser(sub) -> None:
    """Register ``distill`` with the ``hf-onebit`` command (:mod:`hf_onebit.cli`)."""
    parser = add_distill_parser(sub)
    parser.set_defaults(run=lambda args: (run_distill(args), 0)[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="hf-onebit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_distill_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
