"""Cost of one distillation step vs one plain fine-tuning step of the same latent 1-bit student.

Both steps run through the stock Trainer's ``training_step`` on the same batch and the same student (SmolLM2-135M in
its latent form, progressive binarizer at phase 1): the plain step is the model's own causal-LM loss, the distillation
step adds the teacher's forward, the KL and hidden-state terms. The two are timed alternately in one process (the CPU
is shared, so only their ratio is meaningful); the median of ``--reps`` pairs is reported.

``--reference`` adds a third step, timed in the same rotation: the distillation step as it was before the fast paths
(the KL through ``F.kl_div`` on float32 copies of the masked logits, the progressive binarizer on its PyTorch reference
instead of the CPU kernel, and with ``--bf16`` the teacher left in float32 outside autocast), so that the table shows
what the fast paths save. ``--reference-binarizer`` adds a fourth: the fast step with only the binarizer on its
reference path. ``--weight-format ternary`` times a ternary student (the smooth ternary step instead of the sign).

    python benchmarks/distill_overhead.py --reps 5 --batch-size 4 --seq-len 256 [--bf16] [--tiny] [--reference]
    python benchmarks/distill_overhead.py --reps 5 --batch-size 1 --seq-len 64 --reference-binarizer \
        --weight-format ternary
    python benchmarks/distill_overhead.py --reps 10 --batch-size 1 --seq-len 64 --bf16 --heap

``--frozen-codes`` adds the distillation step of a run whose codes are frozen (``Recipe.freeze_codes_at``: the hard
codes cached in the matmul's dtype, no gradient to the latent weights), and ``--optimizer`` counts the optimizer
update (adaptive clipping and AdamW) in every timed step, where frozen codes save most:

    python benchmarks/distill_overhead.py --reps 5 --batch-size 4 --seq-len 256 --bf16 --frozen-codes --optimizer

Every step runs both models on the attention ``DistillPlan.attn_implementation="auto"`` trains on (transformers'
eager attention under ``--bf16`` on a CPU, the models' own otherwise); ``--sdpa`` adds the distillation step with
both models on transformers' ``"sdpa"`` (torch's fused attention kernel) to the rotation:

    python benchmarks/distill_overhead.py --reps 6 --batch-size 4 --seq-len 256 --bf16 --optimizer --sdpa
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def build(args):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig

    if args.tiny:
        path = tempfile.mkdtemp()
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    else:
        from hf_onebit.fixtures.real_model import smollm2_checkpoint

        path = smollm2_checkpoint()
    student = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=OneBitConfig(training=True, weight_format=args.weight_format))
    teacher = AutoModelForCausalLM.from_pretrained(path)
    return student, teacher


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a small random LLaMA instead of SmolLM2 (for a quick check)")
    p.add_argument("--weight-format", choices=("binary", "ternary"), default="binary")
    p.add_argument("--reference", action="store_true", help="also time the step without the fast paths")
    p.add_argument("--reference-binarizer", action="store_true",
                   help="also time the fast step with the binarizer on its reference path")
    p.add_argument("--frozen-codes", action="store_true",
                   help="also time the distillation step with the codes frozen (Recipe.freeze_codes_at)")
    p.add_argument("--sdpa", action="store_true",
                   help="also time the distillation step with both models on transformers' sdpa attention")
    p.add_argument("--optimizer", action="store_true",
                   help="count the optimizer update (clipping, AdamW) in every timed step")
    p.add_argument("--heap", action="store_true",
                   help="also time the distillation step with glibc's default heap (freed memory returned)")
    args = p.parse_args(argv)

    from transformers import Trainer, TrainingArguments

    from hf_onebit.eval import format_table
    from hf_onebit.training.attention import training_attention
    from hf_onebit.training import DistillationLoss, OneBitDistillationCallback, TokenBlocks, onebit_optimizer
    from hf_onebit.training.binarizers import FrozenCodes, ProgressiveBinarizer
    from hf_onebit.training.heap import RetainedHeap
    from hf_onebit.training.recipes import latent_layers
    from hf_onebit.training.teacher_cast import TeacherWeightCast

    student, teacher = build(args)
    vocab = student.config.vocab_size
    data = TokenBlocks(torch.randint(vocab, (args.batch_size * 4, args.seq_len), generator=torch.Generator().manual_seed(0)))
    cb = OneBitDistillationCallback(teacher, recipe="progressive", init_steps=0, plot=False, track_sign_flips=False,
                                    keep_heap=False)  # held here instead, so that --heap can switch it per step
    heap = RetainedHeap()
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=10, per_device_train_batch_size=args.batch_size,
                              report_to=[], use_cpu=True, bf16=args.bf16, disable_tqdm=True, save_strategy="no")
    trainer = Trainer(model=student, args=targs, train_dataset=data, callbacks=[cb],
                      optimizers=(onebit_optimizer(student), None))
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    # what Trainer.train does first: with bf16 this wraps the student's forward in autocast
    student = trainer.accelerator.prepare_model(student)
    state = trainer.state
    state.max_steps = 10
    cb.on_train_begin(targs, state, trainer.control, model=student, optimizer=trainer.optimizer)
    cb.on_step_begin(targs, state, trainer.control, model=student, optimizer=trainer.optimizer)
    batch = trainer.data_collator([data[i] for i in range(args.batch_size)])
    n_items = (batch["labels"][:, 1:] != -100).sum()

    fast_loss, reference_loss = cb.loss, DistillationLoss(chunked_kl=False)
    binarizers = [m.binarizer for _, m in latent_layers(student) if isinstance(m.binarizer, ProgressiveBinarizer)]
    assert binarizers, "the student has no progressive binarizer installed"
    frozen = {}  # layer -> its FrozenCodes (made once; the timing swaps them in and out instead of folding scales)
    if args.frozen_codes:
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        with torch.no_grad():
            frozen = {m: FrozenCodes(m.format.hard(m.weight).to(dtype)) for _, m in latent_layers(student)}

    def freeze(on: bool) -> None:
        for (m, codes), progressive in zip(frozen.items(), binarizers):
            m.binarizer = codes if on else progressive
            m.weight.requires_grad_(not on)

    def step(distill: bool, reference: bool = False, reference_binarizer: bool = False,
             default_heap: bool = False, frozen_codes: bool = False, attention: str = "auto") -> float:
        with training_attention((student, teacher), attention, args.bf16):
            return timed_step(distill, reference, reference_binarizer, default_heap, frozen_codes)

    def timed_step(distill, reference, reference_binarizer, default_heap, frozen_codes) -> float:
        nonlocal heap
        freeze(frozen_codes)
        if default_heap:
            heap.release()
        for b in binarizers:
            b.use_kernel = not (reference or reference_binarizer)
        cb._active = distill
        cb.loss = reference_loss if reference else fast_loss
        if args.bf16 and reference and cb._teacher_cast is not None:
            cb._teacher_cast = None  # the step without the fast path: the teacher runs in float32
        elif args.bf16 and not reference and cb._teacher_cast is None:
            cb._teacher_cast = TeacherWeightCast(teacher)
        t0 = time.perf_counter()
        trainer.training_step(student, dict(batch), n_items)
        if args.optimizer:
            cb.on_pre_optimizer_step(targs, state, trainer.control, model=student, optimizer=trainer.optimizer)
            trainer.optimizer.step()
        elapsed = time.perf_counter() - t0
        student.zero_grad(set_to_none=True)
        if default_heap:
            heap = RetainedHeap()
        return elapsed

    step(True), step(False)  # warm-up
    if args.reference:
        step(True, reference=True)
    if args.reference_binarizer:
        step(True, reference_binarizer=True)
    if args.heap:
        step(True, default_heap=True)
    if args.frozen_codes:
        step(True, frozen_codes=True)
    if args.sdpa:
        step(True, attention="sdpa")
    plain, distill, old, old_binarizer, default, cold, fused = [], [], [], [], [], [], []
    for _ in range(args.reps):
        plain.append(step(False))
        distill.append(step(True))
        if args.reference:
            old.append(step(True, reference=True))
        if args.reference_binarizer:
            old_binarizer.append(step(True, reference_binarizer=True))
        if args.heap:
            default.append(step(True, default_heap=True))
        if args.frozen_codes:
            cold.append(step(True, frozen_codes=True))
        if args.sdpa:
            fused.append(step(True, attention="sdpa"))
    heap.release()
    cb.release()  # the hooks and the denormal flushing that on_train_begin installed
    mp, md = statistics.median(plain), statistics.median(distill)
    tokens = args.batch_size * args.seq_len
    rows = [["plain fine-tuning (CE)", mp, tokens / mp, 1.0],
            ["distillation (teacher + KL + hidden)", md, tokens / md, md / mp]]
    if args.reference:
        mo = statistics.median(old)
        rows.append(["distillation, reference path", mo, tokens / mo, mo / mp])
    if args.reference_binarizer:
        mb = statistics.median(old_binarizer)
        rows.append(["distillation, reference binarizer", mb, tokens / mb, mb / mp])
    if args.heap:
        mh = statistics.median(default)
        rows.append(["distillation, glibc's default heap", mh, tokens / mh, mh / mp])
    if args.frozen_codes:
        mf = statistics.median(cold)
        rows.append(["distillation, codes frozen", mf, tokens / mf, mf / mp])
    if args.sdpa:
        ms = statistics.median(fused)
        rows.append(["distillation, sdpa attention", ms, tokens / ms, ms / mp])
    print(format_table(["step", "median s", "tokens / s", "x plain"], rows))
    print(f"\ndistillation / plain = {md / mp:.2f}x  ({args.weight_format}, batch {args.batch_size} x {args.seq_len} "
          "tokens, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}, {args.reps} alternating rounds, "
          f"{'forward+backward+optimizer' if args.optimizer else 'forward+backward only'})")
    if args.reference:
        print(f"reference path / fast path = {mo / md:.2f}x")
    if args.reference_binarizer:
        print(f"reference binarizer / fast path = {mb / md:.2f}x")
    if args.heap:
        print(f"default heap / retained heap = {mh / md:.2f}x")
    if args.frozen_codes:
        print(f"codes frozen / distillation = {mf / md:.2f}x")
    if args.sdpa:
        print(f"distillation / distillation on sdpa attention = {md / ms:.3f}x")


if __name__ == "__main__":
    main()
