"""How far from its teacher the progressive recipe's student starts: KL(teacher || student) at each temperature t.

    python benchmarks/progressive_start.py                      # SmolLM2-135M, binary, the default t values
    python benchmarks/progressive_start.py --weight-format ternary --t 0.05 0.32 104.6

The progressive recipe (Tu et al. 2025) binarises with ``F(W, t) = tanh(t W / S_a) / tanh(t)``, the identity as
``t -> 0`` and the sign as ``t -> inf``, so that the student starts as its teacher and is made binary step by step.
This script builds the student as the recipe's main stage does (scales at 1, no training) and prints, for each ``t``,
the mean per-token KL of its next-token distribution from the teacher's on 16 sequences of 64 tokens of the training
text (Wikipedia; nothing of the held-out sets). The schedule's t values are those of ``recipe.schedule.temperature``
(phase 1: 0.32). Forward passes only: about a minute on 2 cores.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weight-format", choices=("binary", "ternary"), default="binary")
    p.add_argument("--t", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.2, 0.32, 0.72, 1.8, 10.4, 104.6])
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig
    from hf_onebit.fixtures.real_model import smollm2_checkpoint
    from hf_onebit.fixtures.real_text import real_text_files
    from hf_onebit.training.data import text_file_dataset
    from hf_onebit.training.recipes import apply_recipe_, get_recipe, start_main_stage_

    torch.manual_seed(0)
    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=OneBitConfig(training=True, weight_format=args.weight_format)).eval()
    blocks = text_file_dataset(real_text_files()[0], tok, args.seq_len).blocks
    ids = blocks[torch.randperm(len(blocks))[: args.sequences]]
    recipe = get_recipe("progressive")
    temperature = apply_recipe_(student, recipe)
    start_main_stage_(student, recipe, temperature, transform_weights=True)
    print(f"SmolLM2-135M, {args.weight_format} student before training, {args.sequences} x {args.seq_len} tokens; "
          f"the schedule's phases 1 / 10 / 20 use t = {recipe.schedule.temperature(1):.2f} / "
          f"{recipe.schedule.temperature(10):.1f} / {recipe.schedule.temperature(recipe.schedule.phases):.1f}")
    print("| t | KL(teacher || student), nats per token |")
    print("|---|---|")
    with torch.no_grad():
        target = teacher(ids).logits.float().log_softmax(-1)
        for t in args.t:
            temperature.t = t
            logp = student(ids).logits.float().log_softmax(-1)
            kl = (target.exp() * (target - logp)).sum(-1).mean().item()
            print(f"| {t:g} | {kl:.3f} |", flush=True)


if __name__ == "__main__":
    main()
