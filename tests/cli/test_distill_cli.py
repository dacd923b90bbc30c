"""`hf-onebit distill` (run_distill) end to end on a tiny model with a word-level tokenizer and a text file."""

import dataclasses
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from distill_utils import tiny_teacher_dir
from hf_onebit.commands.distill import main


def _word_tokenizer(folder, vocab=97):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(vocab - 1)}
    words["[UNK]"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(folder)


def test_cli_distill_text_file(tmp_path, capsys):
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    rng = random.Random(0)
    text = " ".join(f"w{rng.randrange(96)}" for _ in range(2000))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "eval.txt").write_text(" ".join(f"w{rng.randrange(96)}" for _ in range(300)))
    out = tmp_path / "out"
    main(["distill", "--teacher", teacher, "--out", str(out), "--stages", "e2e", "--recipe", "progressive",
          "--max-steps", "4", "--data", str(tmp_path / "train.txt"), "--seq-len", "32", "--batch-size", "4",
          "--phases", "2", "--eval-text", str(tmp_path / "eval.txt")])
    table = capsys.readouterr().out
    assert re.search(r"\| end-to-end stage +\| 4 steps, recipe progressive, 512 tokens", table), table
    assert "perplexity on --eval-text, 1-bit" in table
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    assert (out / "distill_curves.png").exists()
    card = (out / "README.md").read_text()  # the model card records the run
    assert "| recipe | end-to-end progressive |" in card and "512 tokens, 4 steps" in card


def test_self_generated_data_defaults_to_one_pass_of_the_run(monkeypatch):
    from hf_onebit.cli import build_parser
    from hf_onebit.commands.distill import plan_from_args, self_data_sequences

    def sequences(*extra):
        args = build_parser().parse_args(["distill", "--teacher", "t", "--out", "o", "--max-steps", "30",
                                          "--batch-size", "4", "--stages", "e2e", *extra])
        return self_data_sequences(args, plan_from_args(args))

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert sequences() == 30 * 4
    assert sequences("--grad-accum", "3") == 30 * 4 * 3
    monkeypatch.setenv("WORLD_SIZE", "2")  # each process of a data-parallel run reads different batches
    assert sequences() == 30 * 4 * 2
    assert sequences("--data-sequences", "50") == 50
    # with the block-wise stage: at least its calibration set
    assert sequences("--stages", "blockwise", "--calibration-sequences", "300") == 300
    with pytest.raises(ValueError, match="--data-sequences: got 0"):
        sequences("--data-sequences", "0")


def test_cli_distill_self_generated_essays(tmp_path, monkeypatch, capsys):
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    monkeypatch.setenv("HF_ONEBIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    main(["distill", "--teacher", teacher, "--out", str(out), "--max-steps", "2", "--data", "self", "--stages",
          "e2e", "--data-style", "essays", "--seq-len", "16", "--batch-size", "2", "--phases", "2",
          "--eval-split", "none"])
    assert "| end-to-end stage" in capsys.readouterr().out
    cached = list((tmp_path / "cache" / "selfgen").glob("*-4.pt"))  # 2 steps x 2 sequences, one pass
    assert len(cached) == 1 and torch.load(cached[0]).shape == (4, 16)
    assert AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight.dtype == torch.uint8


@pytest.mark.parametrize("flags, extra, expected", [
    ({"avx512f", "amx_bf16"}, [], "bf16 autocast"),  # AMX: bf16 by default
    ({"avx512f", "avx512_bf16"}, [], "bf16 autocast"),
    ({"avx2", "fma"}, [], "float32"),  # bf16 would be emulated: float32 by default
    ({"avx2", "fma"}, ["--bf16"], "bf16 autocast"),
    ({"amx_bf16"}, ["--no-bf16"], "float32"),
])
def test_cli_distill_precision_follows_the_cpu(tmp_path, monkeypatch, capsys, flags, extra, expected):
    from hf_onebit.training import precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    (tmp_path / "train.txt").write_text(" ".join(f"w{i % 96}" for i in range(400)))
    main(["distill", "--teacher", teacher, "--out", str(tmp_path / "out"), "--max-steps", "1", "--data",
          str(tmp_path / "train.txt"), "--seq-len", "16", "--batch-size", "2", "--stages", "e2e", "--phases", "1",
          "--eval-split", "none", *extra])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| precision"))
    assert expected in row, row


def test_learning_rates_default_per_recipe():
    from hf_onebit.training.optim import learning_rates

    assert learning_rates("progressive", None, None) == pytest.approx((2e-3, 6.6e-3))
    assert learning_rates("onebit", None, None) == pytest.approx((3e-4, 9.9e-4))
    assert learning_rates("bitnet", None, None) == pytest.approx((3e-4, 9.9e-4))
    assert learning_rates("progressive", 5e-4, None) == pytest.approx((5e-4, 1.65e-3))
    assert learning_rates("onebit", 2e-4, 7e-3) == pytest.approx((2e-4, 7e-3))
    with pytest.raises(ValueError, match="--scale-lr: got -1"):
        learning_rates("progressive", None, -1.0)


@pytest.mark.parametrize("extra, expected", [
    ([], (2e-3, 6.6e-3, 2e-3)),  # progressive (the binary default)
    (["--recipe", "onebit"], (3e-4, 9.9e-4, 3e-4)),
    (["--lr", "4e-4", "--scale-lr", "2e-3"], (4e-4, 2e-3, 4e-4)),
    (["--embedding-lr", "1e-4"], (2e-3, 6.6e-3, 1e-4)),
])
def test_cli_distill_optimizer_gets_the_learning_rates(tmp_path, monkeypatch, capsys, extra, expected):
    from hf_onebit.training import optim

    seen = {}
    real = optim.onebit_optimizer

    def spy(model, **kw):
        opt = real(model, **kw)
        seen["lrs"] = [g["lr"] for g in opt.param_groups]
        return opt

    monkeypatch.setattr(optim, "onebit_optimizer", spy)
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    (tmp_path / "train.txt").write_text(" ".join(f"w{i % 96}" for i in range(400)))
    main(["distill", "--teacher", teacher, "--out", str(tmp_path / "out"), "--max-steps", "1", "--data",
          str(tmp_path / "train.txt"), "--seq-len", "16", "--batch-size", "2", "--stages", "e2e", "--phases", "1",
          "--no-bf16", "--eval-split", "none", *extra])
    assert seen["lrs"] == pytest.approx(list(expected))  # [latent weights, scale vectors, embeddings]
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| learning rates"))
    assert f"{expected[0]:g} / {expected[1]:g} / {expected[2]:g}" in row, row


def test_the_python_optimizer_and_the_cli_give_the_scales_the_same_default_learning_rate(tmp_path):
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training.optim import learning_rates, onebit_optimizer

    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    groups = onebit_optimizer(student, lr=1e-3).param_groups
    latent, scales = learning_rates("progressive", 1e-3, None)
    assert [g["lr"] for g in groups] == pytest.approx([latent, scales, latent])  # embeddings at the latent lr


def test_the_cli_and_the_python_loss_share_the_default_hidden_weight():
    from hf_onebit.cli import build_parser
    from hf_onebit.training.losses import DEFAULT_HIDDEN_WEIGHT, DistillationLoss
    from hf_onebit.training.pipeline import DistillPlan

    args = build_parser().parse_args(["distill", "--teacher", "t", "--out", "o"])
    assert args.hidden_weight == DistillationLoss().hidden_weight == DistillPlan().loss.hidden_weight
    assert DEFAULT_HIDDEN_WEIGHT == 30.0  # the weight chosen on the validation split (docs/benchmarks-quality-zen4.md)


def test_cli_distill_rejects_a_bad_learning_rate_before_loading(tmp_path):
    with pytest.raises(SystemExit, match="--lr: got 0.0; allowed: a number > 0"):
        main(["distill", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--lr", "0"])


def test_cli_distill_mixes_several_data_sources(tmp_path, monkeypatch):
    from hf_onebit.fixtures import real_text
    from hf_onebit.cli import build_parser
    from hf_onebit.commands.distill import dataset, plan_from_args

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher_dir)
    monkeypatch.setenv("HF_ONEBIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "mine.txt").write_text(" ".join(["w1"] * 64))  # 4 blocks of 16 tokens
    (tmp_path / "wiki.txt").write_text(" ".join(["w2"] * 32))  # 2 blocks
    (tmp_path / "news.txt").write_text(" ".join(["w3"] * 16))  # 1 block
    monkeypatch.setattr(real_text, "real_text_files", lambda: [str(tmp_path / "wiki.txt"), str(tmp_path / "news.txt")])
    # (two files stand for real-text here, so that their order is visible)
    args = build_parser().parse_args(["distill", "--teacher", teacher_dir, "--out", "o", "--max-steps", "3",
                                      "--batch-size", "1", "--seq-len", "16", "--no-bf16", "--stages", "e2e",
                                      "--data", "self", str(tmp_path / "mine.txt"), "real-text"])
    from transformers import AutoTokenizer

    data = dataset(args, plan_from_args(args), AutoModelForCausalLM.from_pretrained(teacher_dir),
                   AutoTokenizer.from_pretrained(teacher_dir))
    firsts = data.blocks[:, 0].tolist()
    assert len(data) == 3 + 4 + 2 + 1  # one pass of self-generated text, then the files' blocks, in order
    assert firsts[3:] == [1] * 4 + [2] * 2 + [3]
    assert not {1, 2, 3} >= set(data.blocks[:3].flatten().tolist())  # the teacher's own text comes first


@pytest.mark.parametrize("data, message", [
    (["nope.txt"], r"--data: 'nope.txt' is not 'self', 'real-text' or an existing text file"),
    (["self", "self"], r"--data: got \['self', 'self'\]; allowed: each source once"),
])
def test_cli_distill_rejects_bad_data_sources_before_loading(tmp_path, data, message):
    with pytest.raises(SystemExit, match=message):
        main(["distill", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--data", *data])


def test_cli_distill_runs_the_end_to_end_stage_by_default_and_both_stages_on_request(tmp_path, capsys):
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    (tmp_path / "train.txt").write_text(" ".join(f"w{i * 7 % 96}" for i in range(3000)))
    common = ["--teacher", teacher, "--max-steps", "2", "--data", str(tmp_path / "train.txt"), "--seq-len", "16",
              "--batch-size", "2", "--eval-split", "none"]
    main(["distill", "--out", str(tmp_path / "e2e"), *common])
    table = capsys.readouterr().out
    assert "| block-wise stage" not in table and "recipe progressive" in table
    out = tmp_path / "out"
    main(["distill", "--out", str(out), "--stages", "blockwise", "e2e", "--blockwise-steps", "3", *common])
    table = capsys.readouterr().out
    assert "| block-wise stage" in table and "3 steps per block, 64 calibration sequences" in table
    assert "recipe onebit" in table  # the end-to-end stage keeps the scales the block-wise stage left
    assert AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight.dtype == torch.uint8


def test_cli_distill_time_budget_sizes_the_stages(tmp_path, capsys, monkeypatch):
    from hf_onebit.training import budget

    fixed = budget.StepTimes(block_step_s=0.5, block_pass_s=0.1, e2e_step_s=10.0, n_blocks=2, measured_s=5.0)
    monkeypatch.setattr(budget, "measure_step_times", lambda *a, **k: fixed)
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    (tmp_path / "train.txt").write_text(" ".join(f"w{i * 7 % 96}" for i in range(3000)))
    main(["distill", "--teacher", teacher, "--out", str(tmp_path / "out"), "--time-budget", "105s",
          "--stages", "blockwise", "e2e", "--data", str(tmp_path / "train.txt"), "--seq-len", "16",
          "--batch-size", "2", "--eval-split", "none"])
    table = capsys.readouterr().out
    plan = budget.plan_budget(105, fixed, budget.DEFAULT_BLOCKWISE_SHARE, batch_size=2)
    assert plan.e2e_steps >= 1 and plan.blockwise_steps >= 1 and plan.estimated_s <= 105
    assert f"{plan.blockwise_steps} steps per block" in table
    assert re.search(rf"\| end-to-end stage +\| {plan.e2e_steps} steps", table), table
    with pytest.raises(SystemExit, match="--time-budget: got 'soon'"):
        main(["distill", "--teacher", teacher, "--out", str(tmp_path / "o2"), "--time-budget", "soon"])


@pytest.mark.parametrize("fit_batch, fit_seq_len, expected", [
    # 128 tokens as two sequences of 64; the batch's 4 sequences of 64 as well (as large as 1 x 256)
    (True, True, [(4, 256), (2, 256), (1, 256), (4, 64), (2, 64), (1, 64)]),
    (True, False, [(4, 256), (2, 256), (1, 256)]),
    (False, True, [(4, 256), (4, 128), (4, 64)]),
    (False, False, [(4, 256)]),
])
def test_the_step_shapes_a_budget_may_choose_halve_the_batch_then_the_sequence(fit_batch, fit_seq_len, expected):
    from hf_onebit.training.budget import step_shapes

    assert step_shapes(4, 256, fit_batch, fit_seq_len) == expected
    assert step_shapes(3, 100) == [(3, 100), (1, 100)]  # 100 // 2 < 64: the sequence stays
    assert step_shapes(1, 128) == [(1, 128), (1, 64)]  # two sequences only in place of a step the ladder made
    assert step_shapes(2, 128) == [(2, 128), (2, 64), (1, 64)]
    assert step_shapes(8, 256) == [(8, 256), (4, 256), (2, 256), (8, 64), (1, 256), (4, 64), (2, 64), (1, 64)]


def test_the_fallback_steps_are_the_shortest_sequences_with_more_than_one_a_step():
    from hf_onebit.training.budget import fallback_shapes, step_shapes

    assert fallback_shapes(step_shapes(4, 256)) == [(4, 64), (2, 64)]
    assert fallback_shapes(step_shapes(4, 256, True, False)) == [(4, 256), (2, 256)]
    assert fallback_shapes(step_shapes(4, 256, False, True)) == [(4, 128)]  # the batch stays: the second smallest
    assert fallback_shapes(step_shapes(1, 128)) == [(1, 128)]
    assert fallback_shapes([(4, 256)]) == []


def test_a_step_is_timed_after_its_warm_ups_as_the_faster_of_the_timed_calls(monkeypatch):
    """The first calls of a step are slower than its steady state: the warm-ups are not counted, and the budget takes
    the fastest timed call (the mean where asked). A fake clock makes call i take durations[i] seconds."""
    from hf_onebit.training import budget

    durations, clock, calls = [5.0, 3.0, 2.0, 1.5, 4.0], [0.0], []

    def fn():
        clock[0] += durations[len(calls)]
        calls.append(1)

    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
    assert budget._time(fn, repeats=2, warmups=2, fastest=True) == 1.5
    assert len(calls) == 4
    calls.clear()
    assert budget._time(fn, repeats=3, warmups=1) == pytest.approx((3.0 + 2.0 + 1.5) / 3)
    assert len(calls) == 4


def test_a_step_costs_a_fixed_part_and_a_part_per_token():
    from hf_onebit.training.budget import step_cost

    assert step_cost((64, 3.0), (128, 4.0)) == pytest.approx((2.0, 1 / 64))
    assert step_cost((64, 3.0), (128, 2.5)) == (3.0, 0.0)  # noise: the larger step measured faster
    assert step_cost((64, 3.0), (128, 9.0)) == (0.0, 6.0 / 64)  # no negative fixed part
    with pytest.raises(ValueError, match="step_cost: got 128 and 64 tokens"):
        step_cost((128, 1.0), (64, 2.0))


@pytest.mark.parametrize("seconds, expected", [(10_000, (4, 256)), (600, (4, 256)), (599, (2, 256)),
                                               (300, (2, 256)), (150, (1, 256)), (149, (4, 64)), (75, (4, 64)),
                                               (40, (4, 64)), (39, (2, 64)), (37.5, (2, 64)), (37, (2, 64)),
                                               (20, (2, 64)), (19, (1, 64)), (9, (1, 64))])
def test_a_short_budget_gets_a_smaller_step(seconds, expected):
    """The larger of the largest step of which the budget buys ``min_steps`` (here 150; 1/256 s a token, no fixed
    part) and the largest fallback step (4 x 64, 2 x 64) of which it buys ``fallback_steps`` (here 40), else the
    smallest: at 75 s, 2 x 64 buys 150 steps and 4 x 64 buys 75, and 4 x 64 is taken; at 150 s, 1 x 256 buys 150 and
    ties with 4 x 64 in tokens, and the first on the ladder is taken."""
    from hf_onebit.training.budget import fit_step_shape, step_shapes

    assert fit_step_shape(seconds, step_shapes(4, 256), 0.0, 2 ** -8, min_steps=150, fallback_steps=40) == expected
    assert fit_step_shape(37, step_shapes(4, 256), 0.0, 2 ** -8, min_steps=150, fallback_steps=150) == (1, 64)
    assert fit_step_shape(30, step_shapes(4, 256), 0.0, 2 ** -8, min_steps=150, fallback_steps=20) == (4, 64)
    assert fit_step_shape(24, step_shapes(4, 256), 0.0, 2 ** -8, min_steps=150, fallback_steps=25) == (2, 64)
    # a fixed part of 1 s a step: 4 x 256 costs 5 s, 2 x 256 3 s
    assert fit_step_shape(750, step_shapes(4, 256), 1.0, 2 ** -8, min_steps=150) == (4, 256)
    assert fit_step_shape(749, step_shapes(4, 256), 1.0, 2 ** -8, min_steps=150) == (2, 256)


def test_a_larger_budget_never_gets_a_smaller_step():
    """Sweeping the budget from 1 s to 20 minutes in steps of 1 s (a fixed part of 0.3 s a step, 1/512 s a token, the
    default thresholds), the chosen step's tokens never shrink: the budget that first buys 1000 steps of 1 x 64 keeps
    the 4 x 64 it had."""
    from hf_onebit.training.budget import fit_step_shape, step_shapes

    shapes = step_shapes(4, 256)
    chosen = [fit_step_shape(float(s), shapes, 0.3, 2 ** -9) for s in range(1, 1201)]
    sizes = [b * n for b, n in chosen]
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert {(1, 64), (2, 64), (4, 64)} <= set(chosen)  # the sweep went through the fallbacks
    assert chosen[-1] == (1, 256)  # buys 1000 steps at 4 x 64's price: the first of the two on the ladder
    assert fit_step_shape(425.0, shapes, 0.3, 2 ** -9) == (4, 64)  # 1 x 64 buys 1000+ steps here; 4 x 64 buys 530


def _fake_measure(measured, fixed_s, per_token_s):
    from hf_onebit.training import budget

    def measure(student, teacher, seq_len, batch_size, e2e_batch_size=None, **kwargs):
        measured.append((e2e_batch_size, seq_len))
        return budget.StepTimes(block_step_s=0.0, block_pass_s=0.0, n_blocks=2, measured_s=1.0,
                                e2e_step_s=fixed_s + per_token_s * e2e_batch_size * seq_len)
    return measure


def _table_measure(measured, seconds_of):
    """A measure_step_times whose end-to-end step takes ``seconds_of[(sequences, tokens)]``; 1 s of measuring each."""
    from hf_onebit.training import budget

    def measure(student, teacher, seq_len, batch_size, e2e_batch_size=None, **kwargs):
        measured.append((e2e_batch_size, seq_len))
        return budget.StepTimes(block_step_s=0.0, block_pass_s=0.0, n_blocks=2, measured_s=1.0,
                                e2e_step_s=seconds_of[(e2e_batch_size, seq_len)])
    return measure


# a step costs 1 s + 10 ms a token: 1 x 64 1.64 s, 2 x 64 2.28 s, 1 x 256 3.56 s, 2 x 256 6.12 s, 4 x 256 11.24 s;
# 4 x 64 3.56 s; the plan wants MIN_E2E_STEPS = 1000 steps, else FALLBACK_E2E_STEPS = 350 of 4 x 64 or 2 x 64
@pytest.mark.parametrize("seconds, fit_seq_len, measured_shapes, shape", [
    (4670, True, [(1, 64), (2, 64), (1, 256)], (1, 256)),   # 1000 steps of 1 x 256 fit: measured at that size too
    (2667, True, [(1, 64), (2, 64), (4, 64)], (4, 64)),     # 1000 of 2 x 64 fit, and 740 of 4 x 64: the larger
    (2000, True, [(1, 64), (2, 64), (4, 64)], (4, 64)),     # 1000 of 1 x 64 fit, and 560 of 4 x 64: the larger
    (1500, True, [(1, 64), (2, 64), (4, 64)], (4, 64)),     # not even 1000 of 1 x 64: 4 x 64 (420 fit)
    (1000, True, [(1, 64), (2, 64)], (2, 64)),
    (600, True, [(1, 64), (2, 64)], (1, 64)),               # not even 350 of 2 x 64: the smallest
    (2000, False, [(1, 256), (2, 256)], (1, 256)),          # the sequence length was given: it stays
    (20000, True, [(1, 64), (2, 64), (4, 256)], (4, 256)),  # a long budget keeps the default step
])
def test_time_budget_measures_the_two_smallest_steps_first_and_the_chosen_one(monkeypatch, tmp_path, seconds,
                                                                              fit_seq_len, measured_shapes, shape):
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.pipeline import DistillPlan

    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    measured = []
    monkeypatch.setattr(budget, "measure_step_times", _fake_measure(measured, 1.0, 0.01))
    plan, planned = budget.plan_for_budget(student, None, DistillPlan(), seconds, fit_batch=True,
                                           fit_seq_len=fit_seq_len)
    assert measured == measured_shapes
    assert (plan.batch_size, plan.seq_len) == shape
    assert planned.times.measured_s == len(measured)  # every measurement counts in the budget
    assert plan.e2e_steps == int((seconds - len(measured)) // (1.0 + 0.01 * shape[0] * shape[1]))


def test_time_budget_steps_down_when_the_chosen_step_measures_dearer_than_its_price(monkeypatch, tmp_path):
    """Noise in the two smallest steps (2 x 64 measured barely dearer than 1 x 64) prices 4 x 256 at ~1.3 s; measured at
    5.7 s it buys 630 steps of the 1000 wanted, so the plan drops it and prices the rest by the line through 1 x 64 and
    4 x 256: 2 x 256 (3.2 s) buys 1000 and is kept."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.pipeline import DistillPlan

    seconds_of = {(1, 64): 1.0, (2, 64): 1.02, (1, 256): 2.5, (2, 256): 3.2, (4, 256): 5.7}
    measured = []
    measure = _table_measure(measured, seconds_of)
    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    monkeypatch.setattr(budget, "measure_step_times", measure)
    plan, planned = budget.plan_for_budget(student, None, DistillPlan(), 3600, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (4, 256), (2, 256)]
    assert (plan.batch_size, plan.seq_len) == (2, 256)
    assert planned.times.measured_s == 4 and plan.e2e_steps == int((3600 - 4) // 3.2)
    # the same when even the re-priced step fails: 2 x 256 at 3.7 s buys 971 -> 1 x 256 (2.5 s, 1438 steps)
    seconds_of[(2, 256)] = 3.7
    measured.clear()
    plan, _ = budget.plan_for_budget(student, None, DistillPlan(), 3600, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (4, 256), (2, 256), (1, 256)] and (plan.batch_size, plan.seq_len) == (1, 256)


@pytest.mark.parametrize("four_by_256_s, shape", [(2.95, (4, 256)), (3.7, (2, 256))])
def test_time_budget_times_the_next_larger_step_when_the_line_overprices_it(monkeypatch, tmp_path, four_by_256_s,
                                                                            shape):
    """The two smallest steps (1.0 and 1.3 s) price 4 x 256 at 5.5 s (654 steps in an hour) and 2 x 256 at 3.1 s, which
    the plan times: 2.0 s. The line through 1 x 64 and 2 x 256 prices 4 x 256 at 3.14 s, which buys 1000: it is timed
    and kept when its own time buys 1000 too (2.95 s), else the plan stays at 2 x 256 (3.7 s buys 972)."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.pipeline import DistillPlan

    measured = []
    measure = _table_measure(measured, {(1, 64): 1.0, (2, 64): 1.3, (2, 256): 2.0, (4, 256): four_by_256_s})
    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    monkeypatch.setattr(budget, "measure_step_times", measure)
    plan, planned = budget.plan_for_budget(student, None, DistillPlan(), 3600, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (2, 256), (4, 256)]
    assert (plan.batch_size, plan.seq_len) == shape and planned.times.measured_s == 4


@pytest.mark.parametrize("four_by_256_s, shape", [(3.5, (4, 256)), (3.7, (2, 256))])
def test_time_budget_times_the_next_larger_step_when_its_price_is_near_the_threshold(monkeypatch, tmp_path,
                                                                                     four_by_256_s, shape):
    """2 x 256 timed at 2.3 s: the line through 1 x 64 (1.0 s) and it prices 4 x 256 at 3.79 s, 950 steps of the 1000
    wanted - within RECHECK_MARGIN, so it is timed; 3.5 s buys 1027 (kept), 3.7 s 971 (not). A price further off is
    not timed: with 2 x 256 at 2.6 s the line says 4.43 s (812 steps)."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.pipeline import DistillPlan

    seconds_of = {(1, 64): 1.0, (2, 64): 1.3, (2, 256): 2.3, (4, 256): four_by_256_s}
    measured = []
    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    monkeypatch.setattr(budget, "measure_step_times", _table_measure(measured, seconds_of))
    plan, _ = budget.plan_for_budget(student, None, DistillPlan(), 3600, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (2, 256), (4, 256)] and (plan.batch_size, plan.seq_len) == shape
    seconds_of[(2, 256)] = 2.6
    measured.clear()
    plan, _ = budget.plan_for_budget(student, None, DistillPlan(), 3600, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (2, 256)] and (plan.batch_size, plan.seq_len) == (2, 256)


def test_time_budget_drops_a_fallback_step_that_measures_too_dear(monkeypatch, tmp_path):
    """Priced at 1.6 s by the two smallest steps (1.0 and 1.2 s), 4 x 64 would buy 435 of the 350 fallback steps in
    700 s; measured at 2.0 s it buys 348, so the plan prices the smaller steps again and takes 2 x 64."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.pipeline import DistillPlan

    measured = []
    measure = _table_measure(measured, {(1, 64): 1.0, (2, 64): 1.2, (4, 64): 2.0})
    student = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir(str(tmp_path)),
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    monkeypatch.setattr(budget, "measure_step_times", measure)
    plan, _ = budget.plan_for_budget(student, None, DistillPlan(), 700, fit_batch=True, fit_seq_len=True)
    assert measured == [(1, 64), (2, 64), (4, 64)]
    assert (plan.batch_size, plan.seq_len) == (2, 64) and plan.e2e_steps == int((700 - 3) // 1.2)


def test_time_budget_shrinks_the_step_of_a_short_end_to_end_run(tmp_path, capsys, monkeypatch):
    from hf_onebit.training import budget

    measured = []
    monkeypatch.setattr(budget, "measure_step_times", _fake_measure(measured, 0.0, 0.05))
    teacher = tiny_teacher_dir(str(tmp_path))
    _word_tokenizer(teacher)
    (tmp_path / "train.txt").write_text(" ".join(f"w{i * 7 % 96}" for i in range(3000)))
    common = ["--teacher", teacher, "--data", str(tmp_path / "train.txt"), "--eval-split", "none",
              "--time-budget", "90s"]
    main(["distill", "--out", str(tmp_path / "auto"), *common])  # 88 s buy 27 steps of 1 x 64 (3.2 s each)
    out = capsys.readouterr().out
    assert measured == [(1, 64), (2, 64)], measured
    assert "end-to-end distillation: 27 steps of 1 x 64 tokens" in out, out
    measured.clear()
    main(["distill", "--out", str(tmp_path / "fixed"), *common, "--batch-size", "4", "--seq-len", "16"])
    assert measured == [(4, 16)] and "steps of 4 x 16 tokens" in capsys.readouterr().out  # the user's step stays


def test_time_budget_with_cached_targets_counts_the_teacher_once_per_cached_sequence():
    from hf_onebit.training import budget

    times = budget.StepTimes(block_step_s=0.5, block_pass_s=0.1, e2e_step_s=10.0, n_blocks=2, measured_s=5.0,
                             teacher_forward_s=4.0)
    live = budget.plan_budget(205, times, 0.0, batch_size=2)
    cached = budget.plan_budget(205, times, 0.0, batch_size=2, cached_epochs=2)
    assert times.e2e_step_cached_s(2) == pytest.approx(8.0)  # 10 - 4 in the step + 4 / 2 while caching
    assert (live.e2e_steps, cached.e2e_steps) == (20, 25)
    assert cached.estimated_s <= 205


@pytest.mark.parametrize("bf16", [False, True])
def test_step_measurement_runs_in_the_training_precision(tmp_path, bf16):
    """A bf16 run is timed as it trains (student under autocast, teacher on bf16 copies): timing a float32 step for
    a bf16 run planned 2.6x too few steps on an AMX CPU. The measurement changes neither model."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    before = {k: v.clone() for k, v in {**teacher.state_dict(), **student.state_dict()}.items()}
    seen = {}

    def record(key, value):
        seen[key] = value  # the last forward is the end-to-end step's (a hook returning None keeps the output)

    hooks = [teacher.model.layers[0].mlp.down_proj.register_forward_hook(
                 lambda m, i, o: record("teacher_weight", m.weight.dtype)),
             student.model.layers[0].mlp.down_proj.register_forward_hook(
                 lambda m, i, o: record("student_autocast", torch.is_autocast_enabled("cpu")))]
    times = budget.measure_step_times(student, teacher, seq_len=16, batch_size=2, bf16=bf16)
    for h in hooks:
        h.remove()
    assert seen == {"teacher_weight": torch.bfloat16 if bf16 else torch.float32, "student_autocast": bf16}
    assert times.e2e_step_s > 0 and 0 < times.teacher_forward_s < times.e2e_step_s
    assert teacher.model.layers[0].mlp.down_proj.weight.dtype == torch.float32  # the copies are gone again
    after = {**teacher.state_dict(), **student.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_step_measurement_runs_the_binarizer_the_recipe_trains_with(tmp_path):
    """``progressive=True`` times the end-to-end step with the progressive binarizer (what the progressive recipe's
    main stage runs), not the student's hard quantizer, and gives each layer its own binarizer back."""
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import budget
    from hf_onebit.training.binarizers import ProgressiveBinarizer
    from hf_onebit.training.recipes import latent_layers

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    own = {name: m.binarizer for name, m in latent_layers(student)}
    layer = student.model.layers[0].mlp.down_proj
    for progressive in (False, True):
        seen = []
        hook = layer.register_forward_hook(lambda m, i, o: seen.append(type(m.binarizer)))
        budget.measure_step_times(student, teacher, seq_len=16, batch_size=2, blockwise=False,
                                  progressive=progressive)
        hook.remove()
        assert seen and all((kind is ProgressiveBinarizer) == progressive for kind in seen)
        assert {name: m.binarizer for name, m in latent_layers(student)} == own


def test_cached_targets_cover_only_the_sequences_the_stage_sees(tmp_path, monkeypatch):
    import hf_onebit
    from transformers import AutoModelForCausalLM

    from hf_onebit.training import pipeline, targets
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.losses import DistillationLoss

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    seen = []
    real = targets.teacher_targets
    monkeypatch.setattr(targets, "teacher_targets", lambda t, data, **k: seen.append(len(data)) or real(t, data, **k))
    plan = pipeline.DistillPlan(stages=("e2e",), e2e_steps=3, batch_size=2, seq_len=16, cache_targets=8,
                                cache_epochs=2, loss=DistillationLoss(hidden_weight=0.0), recipe="onebit")
    summary = pipeline.run_stages(student, teacher, TokenBlocks(torch.randint(0, 96, (40, 16))), plan,
                                  str(tmp_path / "run"), progress=False, log=lambda *a: None)
    assert seen == [3]  # ceil(3 steps x 2 sequences / 2 epochs), not all 40
    assert summary["e2e"]["tokens"] == 3 * 2 * 16
    with pytest.raises(ValueError, match="cache_epochs"):
        pipeline.DistillPlan(cache_epochs=0.5)


def test_the_end_to_end_learning_rate_ends_at_min_lr_rate(tmp_path):
    import hf_onebit
    from hf_onebit.training import pipeline
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.losses import DistillationLoss

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                   quantization_config=hf_onebit.OneBitConfig(training=True))
    plan = pipeline.DistillPlan(stages=("e2e",), e2e_steps=6, batch_size=2, seq_len=16, lr=1e-3, scale_lr=1e-3,
                                min_lr_rate=0.5, loss=DistillationLoss(hidden_weight=0.0), recipe="onebit")
    summary = pipeline.run_stages(student, teacher, TokenBlocks(torch.randint(0, 96, (40, 16))), plan,
                                  str(tmp_path / "run"), progress=False, log=lambda *a: None)
    rates = [entry["learning_rate"] for entry in summary["e2e"]["log"]]
    # after the warm-up step the rate stays above the floor (it would reach ~1.4e-4 by step 6 with the default 0.05)
    assert len(rates) == 6 and rates[0] == 0.0 and min(rates[1:]) >= 0.5e-3 and rates[-1] < 0.6e-3
    for bad in (-0.1, 1.5, "0.3"):
        with pytest.raises(ValueError, match="min_lr_rate"):
            pipeline.DistillPlan(min_lr_rate=bad)


def test_the_plan_sets_adams_moment_decays(tmp_path, monkeypatch):
    import hf_onebit
    from hf_onebit.training import optim, pipeline
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.losses import DistillationLoss

    built = []
    real = optim.onebit_optimizer

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(optim, "onebit_optimizer", spy)
    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    cases = ((None, None, optim.DEFAULT_BETAS), (None, 0.5, (optim.DEFAULT_BETAS[0], 0.5)),
             (0.7, None, (0.7, optim.DEFAULT_BETAS[1])))
    for beta1, beta2, expected in cases:
        student = AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                       quantization_config=hf_onebit.OneBitConfig(training=True))
        betas = {name: value for name, value in (("adam_beta1", beta1), ("adam_beta2", beta2)) if value is not None}
        plan = pipeline.DistillPlan(stages=("e2e",), e2e_steps=2, batch_size=2, seq_len=16, recipe="onebit",
                                    loss=DistillationLoss(hidden_weight=0.0), **betas)
        pipeline.run_stages(student, teacher, TokenBlocks(torch.randint(0, 96, (8, 16))), plan,
                            str(tmp_path / f"run-{beta1}-{beta2}"), progress=False, log=lambda *a: None)
        assert {g["betas"] for g in built[-1].param_groups} == {expected}
    assert optim.DEFAULT_BETAS == (0.8, 0.95)  # chosen on the validation split (docs/benchmarks-quality-zen4.md)
    for name in ("adam_beta1", "adam_beta2"):
        for bad in (1.0, -0.1, True, "0.9"):
            with pytest.raises(ValueError, match=f"{name}: got"):
                pipeline.DistillPlan(**{name: bad})


def test_resuming_a_checkpoint_with_another_optimizer_layout_says_so(tmp_path):
    """A checkpoint whose optimizer state has two parameter groups (an older hf_onebit: latent weights, then scale
    vectors and embeddings together) cannot continue under three: the error names the checkpoint and the groups."""
    import hf_onebit
    from hf_onebit.training import pipeline
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.losses import DistillationLoss

    teacher_dir = tiny_teacher_dir(str(tmp_path))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)

    def student():
        return AutoModelForCausalLM.from_pretrained(teacher_dir,
                                                    quantization_config=hf_onebit.OneBitConfig(training=True))

    data = TokenBlocks(torch.randint(0, 96, (40, 16)))
    plan = pipeline.DistillPlan(stages=("e2e",), e2e_steps=2, batch_size=2, seq_len=16,
                                loss=DistillationLoss(hidden_weight=0.0), recipe="onebit")
    quiet = {"progress": False, "log": lambda *a: None}
    pipeline.run_stages(student(), teacher, data, plan, str(tmp_path / "run"), save_steps=1, **quiet)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert len(state["param_groups"]) == 3
    scales, embeddings = state["param_groups"][1:]
    merged = dict(scales, params=scales["params"] + embeddings["params"])
    state["param_groups"] = [state["param_groups"][0], merged]
    torch.save(state, checkpoint / "optimizer.pt")
    longer = dataclasses.replace(plan, e2e_steps=3)
    with pytest.raises(ValueError, match=r"resume: the checkpoint .*checkpoint-1' holds an optimizer state for other "
                                         r"parameter groups than this version's 3 .*start a new one"):
        pipeline.run_stages(student(), teacher, data, longer, str(tmp_path / "run"), resume=str(checkpoint), **quiet)
