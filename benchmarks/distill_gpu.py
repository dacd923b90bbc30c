"""Progressive distillation of SmolLM2-135M on a CUDA device within a wall-clock budget, with a perplexity curve.

    python benchmarks/distill_gpu.py --minutes 4 --json out.json

The teacher writes its own training text on the GPU; the student (latent 1-bit form) is trained by
OneBitDistillationCallback in the stock Trainer with bf16 autocast; every ``--eval-every`` steps the hard-sign held-out
perplexity is measured (the function the packed model has). At the end the student is saved packed, reloaded with one
line and evaluated again. ``max_steps`` fixes the progressive schedule; a time guard stops early if the budget runs out
(the row then says so).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="wall-clock guard for the training loop")
    p.add_argument("--max-steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--sequences", type=int, default=4096, help="teacher self-generated sequences")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--scale-lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda", help="cuda (the point of this script) or cpu for a smoke run")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig
    from hf_onebit.eval import perplexity_ids
    from hf_onebit.fixtures.real_model import smollm2_checkpoint
    from hf_onebit.training import OneBitDistillationCallback, onebit_optimizer, self_generated_dataset
    from quality import heldout_ids

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    t_start = time.perf_counter()
    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    ids = heldout_ids(tok)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    ppl_teacher = perplexity_ids(teacher, ids, seq_len=512)
    t0 = time.perf_counter()
    data = self_generated_dataset(teacher, tok, args.sequences, args.seq_len, batch_size=1024 if cuda else 8, dtype="bfloat16",
                                  top_k=50, progress=False)
    gen_s = time.perf_counter() - t0
    print(f"teacher ppl {ppl_teacher:.2f}; generated {len(data)} x {args.seq_len} tokens in {gen_s:.0f} s", flush=True)

    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(training=True)).to(device)
    ppl_svid = perplexity_ids(student, ids, seq_len=512)
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=round(0.04 * args.max_steps), plot=False)
    curve = [{"step": 0, "tokens": 0, "ppl": ppl_svid}]
    tokens_per_step = args.batch_size * args.seq_len
    deadline = time.perf_counter() + 60 * args.minutes

    class Probe(TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kwargs):
            step = state.global_step
            if step % args.eval_every == 0 and step < state.max_steps:
                saved = cb.temperature.t if cb.temperature is not None else None
                if cb.temperature is not None:
                    cb.temperature.t = math.inf
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    ppl = perplexity_ids(model, ids, seq_len=512)
                if cb.temperature is not None:
                    cb.temperature.t = saved
                curve.append({"step": step, "tokens": step * tokens_per_step, "ppl": ppl,
                              "wall_s": time.perf_counter() - train_start})
                print(f"[probe] step {step} tokens {step * tokens_per_step} hard-sign ppl {ppl:.2f}", flush=True)
            if time.perf_counter() > deadline:
                control.should_training_stop = True

    out = tempfile.mkdtemp(prefix="distill-gpu-")
    targs = TrainingArguments(
        output_dir=out, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=0.01, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.05},
        warmup_steps=max(1, args.max_steps // 20), logging_steps=50, save_strategy="no", report_to=[], bf16=True,
        dataloader_num_workers=2 if cuda else 0, disable_tqdm=True, use_cpu=not cuda,
    )
    trainer = Trainer(model=student, args=targs, train_dataset=data, callbacks=[cb, Probe()],
                      optimizers=(onebit_optimizer(student, lr=args.lr, scale_lr=args.scale_lr), None))
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    steps = trainer.state.global_step
    student.save_pretrained(os.path.join(out, "packed"))
    packed = AutoModelForCausalLM.from_pretrained(os.path.join(out, "packed")).to(device)
    ppl_packed = perplexity_ids(packed, ids, seq_len=512)
    curve.append({"step": steps, "tokens": steps * tokens_per_step, "ppl": ppl_packed, "wall_s": train_s})
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "teacher_ppl": ppl_teacher, "svid_ppl": ppl_svid,
        "packed_ppl": ppl_packed, "steps": steps, "max_steps": args.max_steps, "stopped_early": steps < args.max_steps,
        "tokens": steps * tokens_per_step, "train_s": train_s, "selfgen_s": gen_s,
        "total_s": time.perf_counter() - t_start, "curve": curve, "settings": vars(args),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
