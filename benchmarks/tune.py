"""Choose distillation settings on the held-out VALIDATION split: one fixed-length end-to-end run per call.

    python benchmarks/tune.py --name base --text wiki                 # training text: Wikipedia only
    python benchmarks/tune.py --name no-books --text wiki-docs        # Wikipedia and the Sphinx manual
    python benchmarks/tune.py --name mix                              # the default training text (real-text)
    python benchmarks/tune.py --name mix124 --text-repeats 1,2,4      # the manual twice, the books four times
    python benchmarks/tune.py --name lr2e-3 --lr 2e-3
    python benchmarks/tune.py --name decay025 --hidden-decay-start 0.25   # the hidden-state weight falls from 1/4 on
    python benchmarks/tune.py --name b8 --batch 8 --steps 125         # about the same minutes as 200 x 4
    python benchmarks/tune.py --name ph10 --override '{"phases": 10, "t_end": 104.6}'
    python benchmarks/tune.py --name t-prog --weight-format ternary --recipe progressive

Each run distils SmolLM2-135M-Instruct into a 1-bit student for exactly ``--steps`` end-to-end steps (no time
budget: the runs compare settings at equal steps, or at equal minutes by choosing the steps), packs and reloads it,
and scores the **validation** split only (8 windows of 512 tokens per domain); the test split is for reporting
(``benchmarks/quality.py``, the main job) and is never read here. The packed student is scored with exact float
activations unless ``--act-bits`` says otherwise, so that rows compare with each other whatever the library's default.
Trains in bf16 autocast where bf16 is fast. Writes ``--json`` (default ``benchmarks/results/tune/<name>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quality import machine  # noqa: E402

from hf_onebit.commands.evaluate import act_bits_arg  # noqa: E402
from hf_onebit.training.losses import DEFAULT_HIDDEN_METRIC, HIDDEN_METRICS  # noqa: E402
from hf_onebit.training.optim import DEFAULT_BETAS  # noqa: E402
from hf_onebit.training.pipeline import DistillPlan  # noqa: E402
from hf_onebit.training.recipes import RECIPES  # noqa: E402


#: ``--text`` choices: how many of :func:`real_text_files` (Wikipedia, the Sphinx manual, the books) to train on.
TEXTS = {"real-text": 3, "wiki-docs": 2, "wiki": 1}


def _repeats(value: str) -> tuple[int, ...]:
    try:
        repeats = tuple(int(v) for v in value.split(","))
    except ValueError:
        repeats = ()
    if len(repeats) != 3 or min(repeats) < 1:
        raise argparse.ArgumentTypeError(f"got {value!r}; allowed: three integers >= 1, e.g. 1,2,4")
    return repeats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--text", choices=tuple(TEXTS), default="real-text",
                   help="training text: Wikipedia, the Sphinx manual and the books (default), Wikipedia and the manual, "
                        "or Wikipedia alone")
    p.add_argument("--text-repeats", type=_repeats, default=(1, 1, 1),
                   help="how many times each training file's blocks are in the pool the steps draw from, comma-"
                        "separated in the --text order (default 1,1,1: the files' own proportions)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--weight-format", choices=("binary", "ternary"), default="binary")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="end-to-end recipe (default: the weight format's, progressive for both)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--scale-lr", type=float, default=None)
    p.add_argument("--hidden-weight", type=float, default=None,
                   help="weight of the hidden-state term (default: the library's, DEFAULT_HIDDEN_WEIGHT)")
    p.add_argument("--hidden-weight-end", type=float, default=None,
                   help="that weight at the end of the run, reached over its second half (default: the library's, "
                        "DEFAULT_HIDDEN_WEIGHT_END)")
    p.add_argument("--hidden-decay-start", type=float, default=None,
                   help="the fraction of the run after which that weight starts to fall (default: the library's, 0.5)")
    p.add_argument("--embedding-lr", type=float, default=None,
                   help="learning rate of the embedding matrices (default: the latent weights')")
    p.add_argument("--hidden-metric", choices=HIDDEN_METRICS, default=DEFAULT_HIDDEN_METRIC,
                   help="distance of the hidden-state term (DistillationLoss.hidden_metric)")
    p.add_argument("--ce-weight", type=float, default=0.0,
                   help="weight of the cross-entropy on the training text's next tokens (DistillationLoss.ce_weight)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the KL term")
    p.add_argument("--attention-weight", type=float, default=0.0,
                   help="weight of the attention-relation term (DistillationLoss.attention_weight; 0: off)")
    p.add_argument("--attention-layers", default="all",
                   help="blocks of the attention-relation term: all, last or comma-separated indices")
    p.add_argument("--attention-stride", type=int, default=1,
                   help="rows of the attention-relation term: every n-th position (DistillationLoss.attention_stride)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and of the run (spread between runs)")
    p.add_argument("--min-lr-rate", type=float, default=0.05, help="where the cosine ends, as a fraction of the lr")
    p.add_argument("--weight-decay", type=float, default=DistillPlan.weight_decay,
                   help="AdamW's decoupled weight decay of the latent weights (default: DistillPlan's)")
    p.add_argument("--adam-beta1", type=float, default=DEFAULT_BETAS[0],
                   help="Adam's first-moment decay (default: the library's, DEFAULT_BETAS)")
    p.add_argument("--adam-beta2", type=float, default=DEFAULT_BETAS[1],
                   help="Adam's second-moment decay (default: the library's, DEFAULT_BETAS)")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the (tied) embedding / output matrix at the teacher's values instead of training it")
    p.add_argument("--act-bits", type=act_bits_arg, choices=(0, 8, "auto"), default=0,
                   help="activations of the packed student when scored: exact float (default, as every tune row so "
                        "far), int8 per token, or the library default 'auto'")
    p.add_argument("--override", default="{}", help="recipe fields as JSON, e.g. '{\"phases\": 10}'")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig, set_runtime
    from hf_onebit.eval import evaluate_heldout, evaluate_heldout_cached
    from hf_onebit.fixtures.real_model import smollm2_checkpoint
    from hf_onebit.fixtures.real_text import real_text_files
    from hf_onebit.training.data import TokenBlocks, text_file_dataset
    from hf_onebit.training.losses import DistillationLoss
    from hf_onebit.training.pipeline import run_stages
    from hf_onebit.training.precision import bf16_is_fast
    from hf_onebit.training.relations import parse_attention_layers

    torch.manual_seed(args.seed)
    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=OneBitConfig(training=True, weight_format=args.weight_format))
    if args.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    files = real_text_files()[:TEXTS[args.text]]
    data = TokenBlocks(torch.cat([text_file_dataset(f, tok, args.seq_len).blocks.repeat(r, 1)
                                  for f, r in zip(files, args.text_repeats)]))
    bf16 = bf16_is_fast("cpu")
    weight = {} if args.hidden_weight is None else {"hidden_weight": args.hidden_weight}
    if args.hidden_weight_end is not None:
        weight["hidden_weight_end"] = args.hidden_weight_end
    if args.hidden_decay_start is not None:
        weight["hidden_decay_start"] = args.hidden_decay_start
    loss = DistillationLoss(hidden_metric=args.hidden_metric, attention_weight=args.attention_weight,
                            ce_weight=args.ce_weight, temperature=args.temperature,
                            attention_layers=parse_attention_layers(args.attention_layers),
                            attention_stride=args.attention_stride, **weight)
    args.hidden_weight = loss.hidden_weight  # the values used, in the result's args
    args.hidden_weight_end = loss.hidden_weight_end
    args.hidden_decay_start = loss.hidden_decay_start
    plan = DistillPlan(stages=("e2e",), e2e_steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, bf16=bf16,
                       recipe=args.recipe,
                       lr=args.lr, scale_lr=args.scale_lr, embedding_lr=args.embedding_lr, min_lr_rate=args.min_lr_rate,
                       weight_decay=args.weight_decay,
                       adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2,
                       seed=args.seed, loss=loss,
                       recipe_overrides=json.loads(args.override))
    with tempfile.TemporaryDirectory(prefix=f"tune-{args.name}-") as out:  # the checkpoint: scored, then removed
        start = time.perf_counter()
        summary = run_stages(student, teacher, data, plan, os.path.join(out, "trainer"), progress=False)
        train_s = time.perf_counter() - start
        student.save_pretrained(os.path.join(out, "packed"))
        packed = AutoModelForCausalLM.from_pretrained(os.path.join(out, "packed"))
        set_runtime(packed, act_bits=args.act_bits)
        report = evaluate_heldout(packed, tok, "val", progress=False)
    teacher_report = evaluate_heldout_cached(teacher, tok, "val", progress=False)
    result = {"name": args.name, "args": vars(args), "machine": machine(),
              "precision": "bf16 autocast" if bf16 else "float32", "train_s": train_s,
              "tokens": summary["e2e"]["tokens"], "val": report.to_dict(),
              "x_teacher": report.geomean / teacher_report.geomean}
    print(report.table(teacher_report))
    print(json.dumps({k: result[k] for k in ("name", "train_s", "tokens", "x_teacher")}))
    target = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tune",
                                       f"{args.name}.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
