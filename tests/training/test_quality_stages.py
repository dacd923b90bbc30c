"""The pieces of the small-budget recipe, on tiny models (seconds each): the data-aware scale fit lowers the output
error, the block-wise stage lowers each block's error and leaves the packed function, cached teacher targets give the
live loss where they should, and the held-out sets are split and evaluated as documented."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_onebit  # noqa: F401
from hf_onebit import OneBitConfig
from hf_onebit.formats.init import svid_rank1
from hf_onebit.nn.linear import OneBitLinear
from hf_onebit.training.blockwise import BlockwiseConfig, blockwise_reconstruct_, decoder_layers
from hf_onebit.training.losses import (DistillationLoss, kl_token_sum, sparse_kl_token_sum,
                                       sparse_kl_token_sum_reference)
from hf_onebit.training.scale_fit import codes_to_latent, fit_scales, gptq_codes, output_error


# ---------------------------------------------------------------------------------------------- scale fit
@pytest.mark.parametrize("shape", [(48, 40), (17, 90)])
def test_data_aware_fit_never_worse_than_svid_and_better_with_skewed_inputs(shape):
    torch.manual_seed(0)
    n, k = shape
    weight = torch.randn(n, k) * 0.05
    x = torch.randn(2000, k)
    x[:, :3] *= 30  # a few large input channels, as in real LLM activations
    cov = x.T @ x
    h, g = svid_rank1(weight)
    codes = torch.where(weight >= 0, 1.0, -1.0)
    g2, h2 = fit_scales(weight, codes, cov, g, h, iters=4)
    before, after = output_error(weight, codes, g, h, cov), output_error(weight, codes, g2, h2, cov)
    assert after < 0.9 * before
    # with isotropic inputs the output error is the weight error: the fit cannot do much better than SVID
    eye = torch.eye(k) * 2000
    g3, h3 = fit_scales(weight, codes, eye, g, h, iters=4)
    assert output_error(weight, codes, g3, h3, eye) <= output_error(weight, codes, g, h, eye) * (1 + 1e-6)


def test_fit_scales_steps_are_monotone_and_handle_ternary_zero_columns():
    torch.manual_seed(1)
    weight = torch.randn(20, 30)
    codes = torch.sign(weight) * (weight.abs() > 0.5)
    codes[:, 4] = 0  # a column without any code keeps its start value
    x = torch.randn(500, 30) * torch.linspace(0.1, 5, 30)
    cov = x.T @ x
    h, g = svid_rank1(weight)
    errors = [output_error(weight, codes, g, h, cov)]
    for iters in (1, 2, 3, 6):
        g2, h2 = fit_scales(weight, codes, cov, g, h, iters=iters)
        errors.append(output_error(weight, codes, g2, h2, cov))
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errors, errors[1:])), errors
    assert g2[4] == g[4]


@pytest.mark.parametrize("weight_format", ["binary", "ternary"])
def test_gptq_codes_lower_the_output_error_and_the_latent_form_reproduces_them(weight_format):
    from hf_onebit.nn.linear import DEFAULT_BINARIZERS

    torch.manual_seed(2)
    n, k = 40, 64
    weight = torch.randn(n, k) * 0.05
    mix = torch.randn(k, k) * 0.3 + torch.eye(k)  # correlated inputs: where error feedback has something to use
    x = torch.randn(3000, k) @ mix
    cov = x.T @ x
    h, g = svid_rank1(weight)
    rounded = DEFAULT_BINARIZERS[weight_format](weight).detach()  # each weight on its own
    g1, h1 = fit_scales(weight, rounded, cov, g, h)
    codes = gptq_codes(weight, cov, g1, weight_format)
    assert set(codes.unique().tolist()) <= ({-1.0, 1.0} if weight_format == "binary" else {-1.0, 0.0, 1.0})
    g2, h2 = fit_scales(weight, codes, cov, g1, h1)
    assert output_error(weight, codes, g2, h2, cov) < 0.85 * output_error(weight, rounded, g1, h1, cov)
    latent = codes_to_latent(codes, weight / g2, weight_format)
    assert torch.equal(DEFAULT_BINARIZERS[weight_format](latent).detach(), codes)


# ---------------------------------------------------------------------------------------------- block-wise
@pytest.fixture
def teacher_and_student(tiny_checkpoint):
    path, teacher = tiny_checkpoint("llama", layers=3)
    student = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig(training=True, act_bits=0))
    return path, AutoModelForCausalLM.from_pretrained(path), student


@pytest.mark.parametrize("schedule, inputs, init", [("hard", "student", "gptq"), ("hard", "student", "data"),
                                                    ("progressive", "student", "data"), ("hard", "teacher", "svid")])
def test_blockwise_stage_lowers_every_block_error(teacher_and_student, schedule, inputs, init):
    _, teacher, student = teacher_and_student
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    config = BlockwiseConfig(steps=30, batch_size=4, lr=3e-3, schedule=schedule, inputs=inputs, scale_init=init,
                             report_start_error=True)
    records = blockwise_reconstruct_(student, teacher, calib, config, progress=False)
    assert len(records) == 3
    for r in records:
        assert r["error_after"] < r["error_before"], r
    # the student is left with the hard quantizer: its latent forward is exactly its packed forward
    ids = torch.randint(0, 128, (2, 11))
    latent = student(ids).logits
    for module in student.modules():
        if isinstance(module, OneBitLinear):
            module.pack_()
    assert torch.allclose(student(ids).logits, latent, atol=2e-3)  # g, h stored as float16 when packed


def test_blockwise_stage_trains_under_bf16_autocast(teacher_and_student):
    _, teacher, student = teacher_and_student
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    seen = []
    handle = decoder_layers(student)[0].register_forward_hook(
        lambda m, a, o: seen.append(torch.is_autocast_enabled("cpu")) if torch.is_grad_enabled() else None)
    try:
        records = blockwise_reconstruct_(student, teacher, calib, BlockwiseConfig(steps=30, lr=3e-3, bf16=True,
                                                                                  report_start_error=True),
                                         progress=False)
    finally:
        handle.remove()
    assert seen and all(seen)  # every training step of the block ran under autocast
    assert all(r["error_after"] < r["error_before"] for r in records), records
    assert all(p.dtype == torch.float32 for p in student.parameters() if p.is_floating_point())
    with pytest.raises(ValueError, match="BlockwiseConfig.bf16: got 'yes'"):
        BlockwiseConfig(bf16="yes")


def test_blockwise_brings_the_student_closer_to_the_teacher(teacher_and_student):
    _, teacher, student = teacher_and_student
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(1))

    def kl():
        with torch.no_grad():
            s, t = student(ids).logits, teacher(ids).logits
        return float(kl_token_sum(s, t, torch.ones(4, 23, dtype=torch.bool)))

    before = kl()
    blockwise_reconstruct_(student, teacher, calib, BlockwiseConfig(steps=30, lr=3e-3), progress=False)
    assert kl() < 0.95 * before


def test_blockwise_leaves_trainable_flags_and_modes_as_they_were(teacher_and_student):
    _, teacher, student = teacher_and_student
    student.train()
    teacher.eval().requires_grad_(False)
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    blockwise_reconstruct_(student, teacher, torch.randint(0, 128, (4, 12)), BlockwiseConfig(steps=2),
                           progress=False)
    assert student.training and not teacher.training
    assert {n: p.requires_grad for n, p in student.named_parameters()} == flags
    assert not any(p.requires_grad for p in teacher.parameters())


def test_blockwise_checks_its_inputs(teacher_and_student, tiny_checkpoint):
    path, teacher, student = teacher_and_student
    with pytest.raises(ValueError, match="BlockwiseConfig.inputs"):
        BlockwiseConfig(inputs="both")
    with pytest.raises(ValueError, match="calibration: expected token ids"):
        blockwise_reconstruct_(student, teacher, torch.randint(0, 128, (12,)), progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        blockwise_reconstruct_(student, teacher, torch.randint(0, 128, (2, 12)), BlockwiseConfig(batch_size=4),
                               progress=False)
    packed = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig())
    with pytest.raises(ValueError, match="no latent OneBitLinear"):
        blockwise_reconstruct_(packed, teacher, torch.randint(0, 128, (4, 12)), progress=False)
    assert len(decoder_layers(teacher)) == 3


# ---------------------------------------------------------------------------------------------- cached targets
def test_sparse_kl_matches_its_reference_and_the_full_kl_when_k_is_the_vocabulary():
    torch.manual_seed(0)
    s = torch.randn(2, 9, 50, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 9, 50) * 2
    mask = torch.rand(2, 8) > 0.2
    for tau in (1.0, 2.0):
        values, index = torch.log_softmax(t / tau, -1).topk(7, -1)
        a = sparse_kl_token_sum(s, index, values, mask, tau)
        (ga,) = torch.autograd.grad(a, s)
        b = sparse_kl_token_sum_reference(s, index, values, mask, tau)
        (gb,) = torch.autograd.grad(b, s)
        assert torch.allclose(a.double(), b.double(), rtol=1e-5) and torch.allclose(ga, gb, atol=1e-6)
        assert float(a) <= float(kl_token_sum(s, t, mask, tau)) + 1e-5  # merging outcomes never increases a KL
        values, index = torch.log_softmax(t / tau, -1).topk(50, -1)
        assert float(sparse_kl_token_sum(s, index, values, mask, tau)) == pytest.approx(
            float(kl_token_sum(s, t, mask, tau)), rel=1e-5)


def test_cached_targets_give_the_live_loss_and_skip_the_teacher(teacher_and_student):
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.targets import teacher_targets

    _, teacher, student = teacher_and_student
    data = TokenBlocks(torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(2)))
    full = teacher_targets(teacher, data, k=128, dtype=torch.float32, progress=False)  # k = the whole vocabulary
    assert full.tail_mass() < 1e-5
    ids = data.blocks[[4, 1, 1]]  # any order, repeats allowed: rows are found by their tokens
    loss = DistillationLoss(hidden_weight=0.0)
    with torch.no_grad():
        s = student(ids).logits
        t = teacher(ids).logits
    mask = loss.token_mask(ids)
    live = loss.terms(s, t, mask)["kl"]
    cached = loss.terms(s, None, mask, teacher_topk=full.lookup(ids))["kl"]
    assert float(cached) == pytest.approx(float(live), rel=1e-3)  # k = vocabulary: equal up to float32 rounding
    top8 = teacher_targets(teacher, data, k=8, progress=False)
    index, logp = top8.lookup(ids)
    assert 0 < top8.tail_mass() < 1 and index.shape == (3, 16, 8)
    assert float(loss.terms(s, None, mask, teacher_topk=(index, logp))["kl"]) <= float(live) + 1e-5
    with pytest.raises(ValueError, match="not one of the cached sequences"):
        top8.lookup(torch.randint(0, 128, (1, 16)))


def test_cached_targets_train_through_the_trainer_without_the_teacher(teacher_and_student, tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_onebit.training import OneBitDistillationCallback
    from hf_onebit.training.data import TokenBlocks
    from hf_onebit.training.targets import teacher_targets

    _, teacher, student = teacher_and_student
    data = teacher_targets(teacher, TokenBlocks(torch.randint(0, 128, (8, 16))), k=16, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher must not run with cached targets")

    callback = OneBitDistillationCallback(teacher, recipe="onebit", loss=DistillationLoss(hidden_weight=0.0),
                                          plot=False, targets=data)
    teacher.forward = refuse
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    Trainer(model=student, args=args, train_dataset=data, callbacks=[callback]).train()
    assert [h for h in callback.history if "distill_kl" in h]
    with pytest.raises(ValueError, match="carry no hidden states"):
        OneBitDistillationCallback(teacher, recipe="onebit", targets=data)
    with pytest.raises(ValueError, match="computed at temperature 1.0"):
        OneBitDistillationCallback(teacher, recipe="onebit", targets=data,
                                   loss=DistillationLoss(hidden_weight=0.0, temperature=2.0))


# ---------------------------------------------------------------------------------------------- held-out sets
def test_split_documents_deals_a_third_to_validation_in_order():
    from hf_onebit.eval.corpora import split_documents

    docs = [f"d{i}" * (10 + i) for i in range(12)]
    split = split_documents(docs)
    assert sorted(split["val"] + split["test"], key=docs.index) == docs
    assert not set(split["val"]) & set(split["test"])
    val, test = (sum(map(len, split[s])) for s in ("val", "test"))
    assert 1.5 < test / val < 2.6


def test_heldout_report_per_domain_and_geometric_mean(monkeypatch):
    from hf_onebit.eval import corpora, heldout
    from hf_onebit.fixtures.tiny_model import byte_tokenizer, tiny_llama

    texts = {("wiki", "val"): "an encyclopedia article. " * 100, ("news", "val"): "a news story today. " * 100,
             ("fiction", "val"): "once upon a time. " * 100, ("technical", "val"): "the parser reads tokens. " * 100}
    monkeypatch.setattr(heldout, "heldout_text", lambda domain, split: texts[(domain, split)])
    model, tok = tiny_llama(), byte_tokenizer()
    report = heldout.evaluate_heldout(model, tok, "val", seq_len=64, max_windows=3)
    assert list(report.domains) == list(corpora.DOMAINS)
    for result in report.domains.values():
        assert result.windows == 3 and result.tokens == 3 * 63 and result.ppl > 1
    logs = [math.log(r.ppl) for r in report.domains.values()]
    assert report.geomean == pytest.approx(math.exp(sum(logs) / 4))
    assert report.ratios(report)["geomean"] == pytest.approx(1.0)
    again = heldout.HeldoutReport.from_dict(report.to_dict())
    assert again.geomean == pytest.approx(report.geomean) and "geometric mean" in again.table(report)
    with pytest.raises(ValueError, match="split: got"):
        heldout.evaluate_heldout(model, tok, "train")
    with pytest.raises(ValueError, match="max_windows: got 0"):
        heldout.evaluate_heldout(model, tok, "val", max_windows=0)


def test_heldout_seconds_times_the_fastest_window_and_scales_to_the_split(monkeypatch):
    from hf_onebit.eval import heldout
    from hf_onebit.fixtures.tiny_model import byte_tokenizer, tiny_llama

    monkeypatch.setattr(heldout, "heldout_text", lambda domain, split: "some held-out text. " * 200)
    model, tok = tiny_llama(), byte_tokenizer()
    clock = [100.0]
    costs = iter([0.9, 0.4, 0.25, 7.0])  # fake seconds of successive windows: warm-up, then the timed ones
    forward = model.forward

    def slow_forward(*args, **kwargs):
        clock[0] += next(costs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow_forward)
    monkeypatch.setattr(heldout.time, "perf_counter", lambda: clock[0])
    assert heldout.TIMED_WINDOWS == 2
    # 4 domains x 3 windows of 64 tokens; one warm-up and two timed windows run (the faster counts), nothing is scored
    assert heldout.heldout_seconds(model, tok, "val", seq_len=64, max_windows=3) == pytest.approx(12 * 0.25)
    assert clock[0] == pytest.approx(101.55)
    with pytest.raises(ValueError, match="split: got"):
        heldout.heldout_seconds(model, tok, "train")


@pytest.mark.real_model
def test_heldout_sets_are_built_from_the_pinned_sources_and_never_overlap_training_text():
    from hf_onebit.eval.corpora import DOMAINS, heldout_documents
    from hf_onebit.fixtures.real_text import real_text_files

    sets = heldout_documents()
    assert set(sets) == set(DOMAINS)
    wiki, docs, books = (open(path, encoding="utf-8").read() for path in real_text_files())
    for domain, splits in sets.items():
        for split in ("val", "test"):
            assert sum(len(d) for d in splits[split]) > 50_000, (domain, split)  # >= ~12k tokens each
        assert not set(splits["val"]) & set(splits["test"])
    for article in sets["wiki"]["val"] + sets["wiki"]["test"]:
        assert article[:200] not in wiki
    for document in sets["technical"]["val"] + sets["technical"]["test"]:  # docutils' manual, not Sphinx's
        assert document[:200] not in docs
        assert not any(paragraph in docs for paragraph in document.split("\n\n") if len(paragraph) > 300)
    for document in sum((splits["val"] + splits["test"] for splits in sets.values()), []):  # none in the books
        assert not any(paragraph in books for paragraph in document.split("\n\n") if len(paragraph) > 200)
    assert books.count("CHAPTER ") == 12 and "Workshop on Electronic Texts" in books
