"""Distil SmolLM2-135M-Instruct into a packed 1-bit model with the stock transformers Trainer.

    python examples/distill_smollm2.py --max-steps 300 --out smollm2-1bit      # the real thing (CPU: ~1 h)
    python examples/distill_smollm2.py --max-steps 2 --tiny --out /tmp/x        # CI smoke run (seconds)

The teacher writes its own training text (cached); the student is trained by OneBitDistillationCallback with the
progressive recipe, then saved packed and reloaded with one line to check its perplexity on the held-out test split
(hf_onebit.eval: four domains of text it never trained on).
"""

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

import hf_onebit  # noqa: F401  (registers the "onebit" quantization method)
from hf_onebit import OneBitConfig
from hf_onebit.eval import evaluate_heldout
from hf_onebit.training import OneBitDistillationCallback, TokenBlocks, onebit_optimizer, self_generated_dataset
from hf_onebit.training.optim import DEFAULT_LR
from hf_onebit.training.precision import bf16_is_fast


def tiny_checkpoint(path: str) -> str:
    """A random 2-layer LLaMA with the SmolLM2 tokenizer's vocabulary size (for smoke runs), saved under `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--out", default="smollm2-1bit")
    p.add_argument("--tiny", action="store_true", help="random tiny model and random tokens (CI)")
    args = p.parse_args()

    from hf_onebit.fixtures.real_model import smollm2_checkpoint

    tokenizer_dir = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with tempfile.TemporaryDirectory(prefix="hf_onebit_tiny_teacher_") as tmp:  # removed once both are loaded
        teacher_dir = tiny_checkpoint(tmp) if args.tiny else tokenizer_dir
        student = AutoModelForCausalLM.from_pretrained(teacher_dir, quantization_config=OneBitConfig(training=True))
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    bf16 = bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu") and not args.tiny
    if args.tiny:
        data = TokenBlocks(torch.randint(49152, (16, 32)))
    else:
        # one pass of the run (every sequence seen once): fresh text beats repeated text at an equal budget
        # bf16 only where this machine computes it natively (AVX512-BF16 / AMX / a CUDA GPU); elsewhere float32
        data = self_generated_dataset(teacher, tokenizer, num_sequences=args.max_steps * 8, seq_len=256,
                                      batch_size=128, dtype="bfloat16" if bf16 else None, top_k=50)

    training_args = TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        weight_decay=0.01, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.05},
        warmup_steps=max(1, args.max_steps // 20), logging_steps=max(1, args.max_steps // 30), save_strategy="no",
        report_to=[], bf16=bf16,
    )
    callback = OneBitDistillationCallback(teacher, recipe="progressive",
                                          init_steps=1 if args.max_steps > 1 else 0)
    trainer = Trainer(model=student, args=training_args, train_dataset=data, callbacks=[callback],
                      # the library's rates (2e-3 for the latent weights, 3.3x that for the scales), chosen on the
                      # validation split in docs/benchmarks-quality-zen4.md
                      optimizers=(onebit_optimizer(student, lr=DEFAULT_LR["progressive"]), None))
    trainer.train()

    windows = dict(seq_len=128, max_windows=1) if args.tiny else {}
    ppl_trained = evaluate_heldout(student, tokenizer, "test", **windows).geomean
    student.save_pretrained(args.out)  # packed: 1 bit per weight + two float vectors per layer
    reloaded = AutoModelForCausalLM.from_pretrained(args.out)  # one line (after `import hf_onebit`)
    report = evaluate_heldout(reloaded, tokenizer, "test", **windows)
    print(report.table())
    print(f"held-out test perplexity (geometric mean of the domains): end of training {ppl_trained:.2f}, "
          f"packed and reloaded {report.geomean:.2f}")


if __name__ == "__main__":
    main()
