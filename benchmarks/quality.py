"""Distillation quality on the real SmolLM2-135M-Instruct at equal time budgets, judged on the held-out test split.

Each row is one configuration of hf_onebit.training.pipeline, sized to ``--time-budget`` on this machine (step times
measured at the start of the row, hf_onebit.training.budget), then packed, saved, reloaded and evaluated on the
held-out sets (hf_onebit.eval: four domains; the ``test`` split is reported, ``val`` is what settings were chosen
on). Rows:

  teacher            the float model
  svid               1-bit, SVID initialisation only (no training)
  data-fit           1-bit, each block's scales fitted to its activations (no training): the data-aware fit alone
  today              end-to-end progressive distillation (the recipe before the block-wise stage existed)
  today-cached       the same, KL on cached top-64 teacher targets, each sequence seen twice
  blockwise-svid     block-wise stage (SVID scales) + end-to-end distillation
  blockwise          block-wise stage (data-aware scales) + end-to-end distillation
  all                block-wise stage (data-aware scales) + end-to-end on cached targets, each sequence seen twice
  all-progressive-blocks   the same with the progressive schedule inside each block (schedule="progressive")
  ternary-today / ternary-all   the same for BitNet b1.58 ternary codes

    python benchmarks/quality.py --row today --time-budget 15m --json benchmarks/results/quality/today-15m.json
    python benchmarks/quality.py --report benchmarks/results/quality/*.json --plot docs/quality_budget.png

Rows run as separate processes (one at a time on a quiet machine: the budget is wall time). Every JSON records the
CPU model, its ISA class, the plan, per-stage minutes and tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

ROWS = ("teacher", "svid", "data-fit", "today", "today-cached", "blockwise-svid", "blockwise", "all",
        "all-progressive-blocks", "ternary-today", "ternary-all")
TRAINED = ("today", "today-cached", "blockwise-svid", "blockwise", "all", "all-progressive-blocks", "ternary-today",
           "ternary-all")


def machine() -> dict:
    """CPU model (``lscpu``: name, family and model number) and ISA class, for every recorded figure."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        model = fields.get("Model name", model)
        if fields.get("CPU family") and fields.get("Model"):
            model += f" (family {fields['CPU family']} model {fields['Model']})"
    except (OSError, subprocess.SubprocessError):
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        pass
    isa = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512"
           if "avx512f" in flags else "AVX2" if "avx2" in flags else "other")
    code = code_paths()
    if code["capped"]:  # the CPU's flags say more than the code ran: name what ran
        isa = f"{isa} CPU running {code['capped']} code"
    return {"cpu": model, "isa": isa, "threads": torch.get_num_threads(), "code": code}


def code_paths() -> dict:
    """The code paths this process runs, which the environment can cap below what ``/proc/cpuinfo`` offers:
    torch's kernels (``ATEN_CPU_CAPABILITY``), oneDNN's (``ONEDNN_MAX_CPU_ISA``), hf_onebit's (``HF_ONEBIT_CPU_ISA``).
    ``capped`` names the ISA they were capped to (``"AVX2"`` when all three are), or is empty when none is capped."""
    from hf_onebit.ops.cpu.binding import active_isa_name, library

    paths = {"torch": torch.backends.cpu.get_cpu_capability(),
             "onednn_max": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "hf_onebit": active_isa_name() if library() is not None else "none"}
    caps = [paths["torch"].upper() if "ATEN_CPU_CAPABILITY" in os.environ else "", paths["onednn_max"].upper(),
            paths["hf_onebit"].upper() if "HF_ONEBIT_CPU_ISA" in os.environ else ""]
    caps = sorted({c for c in caps if c})
    paths["capped"] = "/".join(caps)
    return paths


def plan_for(row: str, args):
    from hf_onebit.training.blockwise import BlockwiseConfig
    from hf_onebit.training.losses import DistillationLoss
    from hf_onebit.training.pipeline import DistillPlan
    from hf_onebit.training.relations import parse_attention_layers

    cached = row in ("today-cached", "all", "all-progressive-blocks", "ternary-all")
    terms = {} if args.attention_weight is None else {"attention_weight": args.attention_weight}
    if args.attention_layers is not None:
        terms["attention_layers"] = parse_attention_layers(args.attention_layers)
    if args.attention_stride is not None:
        terms["attention_stride"] = args.attention_stride
    if args.hidden_weight is not None:
        terms["hidden_weight"] = args.hidden_weight
    if args.hidden_weight_end is not None:
        terms["hidden_weight_end"] = args.hidden_weight_end
    if cached:  # cached targets hold neither hidden states nor attention projections
        terms.update(attention_weight=0.0, hidden_weight=0.0)
    common = dict(batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed, bf16=args.bf16, lr=args.lr,
                  attn_implementation=args.attn_implementation, loss=DistillationLoss(**terms),
                  cache_targets=64 if cached else 0,
                  recipe_overrides={} if args.freeze_codes_at is None else {"freeze_codes_at": args.freeze_codes_at})
    common.update({name: getattr(args, name) for name in ("adam_beta1", "adam_beta2")
                   if getattr(args, name) is not None})
    if row in ("today", "today-cached", "ternary-today"):
        return DistillPlan(stages=("e2e",), **common)
    init = "svid" if row == "blockwise-svid" else "data"
    schedule = "progressive" if row == "all-progressive-blocks" else "hard"
    return DistillPlan(stages=("blockwise",) if row == "data-fit" else ("blockwise", "e2e"),
                       blockwise=BlockwiseConfig(scale_init=init, schedule=schedule),
                       blockwise_steps=0 if row == "data-fit" else 64,
                       **common)


def run_row(row: str, args) -> dict:
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_onebit  # noqa: F401
    from hf_onebit import OneBitConfig
    from hf_onebit.eval import evaluate_heldout, evaluate_heldout_cached
    from hf_onebit.fixtures.real_model import smollm2_checkpoint
    from hf_onebit.fixtures.real_text import real_text_files
    from hf_onebit.training.budget import plan_for_budget
    from hf_onebit.training.data import TokenBlocks, text_file_dataset
    from hf_onebit.training.pipeline import run_stages

    torch.manual_seed(args.seed)
    path = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    result = {"row": row, "machine": machine(), "budget_s": args.budget_s, "seconds": {}, "tokens": {},
              "precision": "bf16 autocast" if args.bf16 and row in TRAINED else "float32"}
    if row == "teacher":
        for split in ("val", "test"):
            result[split] = evaluate_heldout_cached(teacher, tok, split, progress=True).to_dict()
        return result
    fmt = "ternary" if row.startswith("ternary") else "binary"
    if row == "svid":
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(weight_format=fmt))
        for split in ("val", "test"):
            result[split] = evaluate_heldout(model, tok, split, progress=True).to_dict()
        return result
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(training=True,
                                                                                         weight_format=fmt))
    plan = plan_for(row, args)
    if row in TRAINED:
        # --fit-step: the step shape chosen as `hf-onebit distill --time-budget` and the main job choose it
        plan, budget = plan_for_budget(student, teacher, plan, args.budget_s, args.blockwise_share,
                                       fit_batch=args.fit_step, fit_seq_len=args.fit_step)
        print(budget.table(), flush=True)
        result["step_times"] = dataclasses.asdict(budget.times)
        result["seconds"]["measure"] = budget.times.measured_s
    data = TokenBlocks(torch.cat([text_file_dataset(p, tok, plan.seq_len).blocks for p in real_text_files()]))
    result["plan"] = {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("loss", "blockwise", "deadline")}
    result["plan"]["blockwise"] = dataclasses.asdict(plan.blockwise)
    result["plan"]["hidden_weight"] = plan.loss.hidden_weight
    result["plan"]["hidden_weight_end"] = plan.loss.hidden_weight_end
    result["plan"]["hidden_decay_start"] = plan.loss.hidden_decay_start
    result["plan"]["hidden_metric"] = plan.loss.hidden_metric
    result["plan"]["attention_weight"] = plan.loss.attention_weight
    result["plan"]["attention_layers"] = plan.loss.attention_layers
    result["plan"]["attention_stride"] = plan.loss.attention_stride
    with tempfile.TemporaryDirectory(prefix=f"quality-{row}-") as out:  # the checkpoint: scored, then removed
        summary = run_stages(student, teacher, data, plan, os.path.join(out, "trainer"))
        for stage in ("blockwise", "e2e"):
            if stage in summary:
                result["seconds"][stage] = summary[stage]["seconds"]
        result["attn_implementation"] = summary["attn_implementation"]
        if "e2e" in summary:
            result["seconds"]["target_cache"] = summary["e2e"]["target_cache_seconds"]
            result["tokens"]["e2e"] = summary["e2e"]["tokens"]
            result["e2e_steps"] = summary["e2e"]["steps"]  # after re-sizing to the deadline (plan: the first plan)
            result["replans"] = summary["e2e"]["replans"]
            result["e2e_log"] = summary["e2e"]["log"]
            result["tail_mass"] = summary["e2e"]["tail_mass"]
        if "blockwise" in summary:
            result["tokens"]["blockwise_per_block"] = summary["blockwise"]["tokens_per_block"]
            result["blockwise_records"] = summary["blockwise"]["records"]
        student.save_pretrained(os.path.join(out, "packed"))
        packed = AutoModelForCausalLM.from_pretrained(os.path.join(out, "packed"))
        for split in ("val", "test"):
            result[split] = evaluate_heldout(packed, tok, split, progress=True).to_dict()
    return result


def report(paths: list[str], plot: str | None) -> str:
    from hf_onebit.eval import HeldoutReport, format_table

    results = [json.load(open(p)) for p in paths]
    order = {r: i for i, r in enumerate(ROWS)}
    results.sort(key=lambda r: (r.get("budget_s") or 0, order.get(r["row"], 99)))
    teacher = next((HeldoutReport.from_dict(r["test"]) for r in results if r["row"] == "teacher"), None)
    rows = []
    for r in results:
        test = HeldoutReport.from_dict(r["test"])
        secs = r.get("seconds", {})
        minutes = sum(secs.values()) / 60 if secs else 0.0
        stages = "; ".join(f"{k} {v / 60:.1f}" for k, v in secs.items() if v > 1)
        toks = r.get("tokens", {})
        plan = r.get("plan", {})
        blocks = plan.get("blockwise_steps", 0)
        steps = " + ".join(
            ([f"{blocks} x 30 blocks" if blocks else "scale fit x 30 blocks"] if "blockwise" in plan.get("stages", [])
             else []) + ([f"{r.get('e2e_steps', plan.get('e2e_steps', 0))} e2e of {plan.get('batch_size', '?')} x "
                  f"{plan.get('seq_len', '?')}"] if "e2e" in plan.get("stages", []) else []))
        m = r.get("machine", {})
        budget = f"{(r.get('budget_s') or 0) / 60:g}" if r["row"] in TRAINED else "-"
        rows.append([r["row"], budget, f"{minutes:.1f}", stages or "-", steps or "-", f"{toks.get('e2e', 0):,}",
                     *[_ppl(d.ppl) for d in test.domains.values()], _ppl(test.geomean),
                     f"{test.geomean / teacher.geomean:.3g}" if teacher else "?",
                     f"{m.get('cpu', '?')}, {m.get('isa', '?')}, {r.get('precision', 'float32')}"])
    headers = ["row", "budget min", "wall min", "min per stage", "steps", "e2e tokens",
               *(list(HeldoutReport.from_dict(results[0]["test"]).domains) if results else []), "test geomean",
               "x teacher", "machine"]
    table = format_table(headers, rows)
    if plot:
        _plot(results, teacher, plot)
    return table


def _ppl(value: float) -> str:
    return f"{value:.1f}" if value < 1e5 else f"{value:.3g}"


def _plot_label(result: dict) -> str:
    """A bar's label: the row, and for a trained row its budget and end-to-end step (two rows of one name differ)."""
    if result["row"] not in TRAINED:
        return result["row"]
    plan = result.get("plan", {})
    step = f", {plan['batch_size']} x {plan['seq_len']}" if "batch_size" in plan and "seq_len" in plan else ""
    return f"{result['row']} ({result['budget_s'] / 60:g} min{step})"


def _plot(results, teacher, path: str) -> None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'hf_onebit[plot]')", file=sys.stderr)
        return
    from hf_onebit.eval import HeldoutReport

    trained = sorted((r for r in results if r["row"] not in ("teacher",)),
                     key=lambda r: HeldoutReport.from_dict(r["test"]).geomean)
    labels = [_plot_label(r) for r in trained]
    values = [HeldoutReport.from_dict(r["test"]).geomean for r in trained]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(trained) + 1.5))
    ax.barh(labels, values, color=["tab:blue" if r["row"] in TRAINED else "tab:gray" for r in trained])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    if teacher:
        ax.axvline(teacher.geomean, color="k", ls="--", label=f"teacher ({teacher.geomean:.1f})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled decades only
    ax.invert_yaxis()
    m = results[0].get("machine", {}) if results else {}
    ax.set_xlabel("held-out test perplexity, geometric mean of 4 domains (log scale)")
    ax.set_title(f"SmolLM2-135M, 1-bit: {m.get('cpu', '?')} ({m.get('isa', '?')}), {m.get('threads', '?')} threads",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", choices=ROWS)
    p.add_argument("--json", help="write the row's result here")
    p.add_argument("--report", nargs="*", help="result JSON files to tabulate")
    p.add_argument("--plot", help="with --report: test perplexity against the budget (PNG)")
    p.add_argument("--time-budget", default="15m", help="distillation time per trained row (default 15m)")
    p.add_argument("--blockwise-share", type=float, default=None, help="share of the block-wise stage")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--fit-step", action="store_true",
                   help="an end-to-end-only row shrinks its step (batch, then sequence) when the budget buys fewer "
                        "than MIN_E2E_STEPS steps of --batch-size x --seq-len, as hf-onebit distill --time-budget does")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the latent weights (default: the recipe's, DEFAULT_LR; the scale vectors "
                        "train at 3.3x it)")
    p.add_argument("--freeze-codes-at", type=float, default=None,
                   help="fraction of the end-to-end steps after which only scales, norms and embeddings train")
    p.add_argument("--hidden-weight", type=float, default=None,
                   help="weight of the hidden-state term of the end-to-end loss (default: the library's, "
                        "DEFAULT_HIDDEN_WEIGHT; rows on cached targets have none)")
    p.add_argument("--hidden-weight-end", type=float, default=None,
                   help="that term's weight at the end of the run, reached over its second half (default: the "
                        "library's, DEFAULT_HIDDEN_WEIGHT_END)")
    p.add_argument("--adam-beta1", type=float, default=None,
                   help="Adam's first-moment decay (default: the library's, DEFAULT_BETAS)")
    p.add_argument("--adam-beta2", type=float, default=None,
                   help="Adam's second-moment decay (default: the library's, DEFAULT_BETAS)")
    p.add_argument("--attention-weight", type=float, default=None,
                   help="weight of the attention-relation term of the end-to-end loss (default: the library's)")
    p.add_argument("--attention-layers", default=None,
                   help="blocks of that term: all, last or comma-separated indices (default: the library's)")
    p.add_argument("--attention-stride", type=int, default=None,
                   help="that term's rows: every n-th position (default: the library's)")
    from hf_onebit.training.attention import CHOICES as ATTENTION_CHOICES

    p.add_argument("--attn-implementation", choices=ATTENTION_CHOICES, default="auto",
                   help="attention the models train on (DistillPlan.attn_implementation; default auto: eager for bf16 "
                        "on a CPU)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the trained rows (default: where bf16 is fast - AMX / AVX512-BF16 - as in "
                        "the main job)")
    args = p.parse_args(argv)
    if args.bf16 is None:
        from hf_onebit.training.precision import bf16_is_fast

        args.bf16 = bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu")
    if args.report is not None:
        print(report(args.report, args.plot))
        return
    if not args.row:
        p.error("--row or --report is required")
    from hf_onebit.training.budget import parse_duration

    args.budget_s = parse_duration(args.time_budget)
    start = time.perf_counter()
    result = run_row(args.row, args)
    result["wall_s"] = time.perf_counter() - start
    print(json.dumps({k: result[k] for k in ("row", "budget_s", "seconds", "tokens") if k in result}))
    if "test" in result:
        from hf_onebit.eval import HeldoutReport

        print(HeldoutReport.from_dict(result["test"]).table())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
