"""The attention-relation term of the distillation loss (hf_onebit.training.relations): its value against a plain
per-head computation, the masks, the projection capture, and training with it in the Trainer (tiny models)."""

import math

import pytest
import torch
from transformers import Trainer

from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit.training import DistillationLoss, OneBitDistillationCallback
from hf_onebit.training.pipeline import DistillPlan
from hf_onebit.training.relations import (
    ProjectionCapture,
    attention_layer_indices,
    query_rows,
    relation_kl_reference,
    relation_kl_token_sum,
)


def _plain_relation_kl(s, t, head_dim, mask, attention_mask=None):
    """One row at a time: KL of the teacher's softmax over the earlier (attended) positions from the student's."""
    b, n, width = s.shape
    total = 0.0
    for i in range(b):
        for h in range(width // head_dim):
            a_s = s[i, :, h * head_dim:(h + 1) * head_dim].double()
            a_t = t[i, :, h * head_dim:(h + 1) * head_dim].double()
            for p in range(n - 1):
                if not mask[i, p]:
                    continue
                keys = [j for j in range(p + 1) if attention_mask is None or attention_mask[i, j]]
                log_s = torch.log_softmax(a_s[keys] @ a_s[p] / math.sqrt(head_dim), dim=0)
                log_t = torch.log_softmax(a_t[keys] @ a_t[p] / math.sqrt(head_dim), dim=0)
                total += float((log_t.exp() * (log_t - log_s)).sum())
    return total


def _projections(seed, shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in shapes]


def test_relation_kl_is_the_per_row_kl_over_the_causal_keys_averaged_over_heads():
    shapes = [(2, 7, 12), (2, 7, 8), (2, 7, 8)]  # Q with 3 heads of 4, K and V with 2
    s, t = _projections(0, shapes), _projections(1, shapes)
    mask = torch.rand(2, 6, generator=torch.Generator().manual_seed(2)) > 0.3
    got = relation_kl_token_sum(s, t, 4, mask)
    want = sum(_plain_relation_kl(a, b, 4, mask) for a, b in zip(s, t)) / (3 + 2 + 2)
    assert got.item() == pytest.approx(want, rel=1e-4)
    assert relation_kl_token_sum(t, t, 4, mask).item() == pytest.approx(0.0, abs=1e-5)


def test_relation_kl_leaves_padded_keys_out_and_has_a_finite_gradient():
    shapes = [(2, 6, 8)] * 3
    s = [a.requires_grad_() for a in _projections(3, shapes)]
    t = _projections(4, shapes)
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding in the first sequence
    mask = DistillationLoss().token_mask(torch.zeros(2, 6, dtype=torch.long), attention_mask)
    got = relation_kl_token_sum(s, t, 4, mask, attention_mask)
    want = sum(_plain_relation_kl(a.detach(), b, 4, mask, attention_mask) for a, b in zip(s, t)) / 6
    assert got.item() == pytest.approx(want, rel=1e-4)
    got.backward()
    assert all(torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0 for a in s)
    # a padded key of the first sequence changes nothing
    moved = [a.detach().clone() for a in s]
    for a in moved:
        a[0, 0] += 5.0
    assert relation_kl_token_sum(moved, t, 4, mask, attention_mask).item() == pytest.approx(got.item(), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 3])
def test_the_fused_relation_kl_and_its_gradient_equal_the_plain_autograd_reference(stride):
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 13, 12, dtype=torch.float64, generator=g).requires_grad_()
    t = torch.randn(2, 13, 12, dtype=torch.float64, generator=g)
    mask = torch.rand(2, 12, generator=g) > 0.3
    attention_mask = torch.ones(2, 13, dtype=torch.long)
    attention_mask[0, :2] = 0
    got = relation_kl_token_sum([s], [t], 4, mask, attention_mask, stride=stride)
    (got_grad,) = torch.autograd.grad(got, s)
    want = relation_kl_reference(s, t, 4, mask, attention_mask, stride=stride) / 3  # 3 heads
    (want_grad,) = torch.autograd.grad(want, s)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)


def test_a_row_stride_samples_every_context_length_and_estimates_the_full_sum():
    assert query_rows(10, 3).tolist() == [2, 5, 8]  # ends at the last position that predicts a token
    assert query_rows(10, 1).tolist() == list(range(9))
    shapes = [(4, 65, 16)] * 3
    s, t = _projections(9, shapes), [a * 0.7 + b * 0.3 for a, b in zip(_projections(9, shapes), _projections(10, shapes))]
    mask = torch.ones(4, 64, dtype=torch.bool)
    full = relation_kl_token_sum(s, t, 8, mask).item()
    assert relation_kl_token_sum(s, t, 8, mask, stride=4).item() == pytest.approx(full, rel=0.15)
    with pytest.raises(ValueError, match=r"attention_stride: got 0; allowed: an integer >= 1"):
        DistillationLoss(attention_stride=0)


def test_relation_kl_refuses_mismatched_projections():
    with pytest.raises(ValueError, match="same number"):
        relation_kl_token_sum([torch.zeros(1, 3, 8)], [], 4, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of head_dim=4"):
        relation_kl_token_sum([torch.zeros(1, 3, 6)], [torch.zeros(1, 3, 6)], 4, torch.ones(1, 2, dtype=torch.bool))


def test_attention_layers_are_checked_and_resolved():
    assert attention_layer_indices("all", 4) == [0, 1, 2, 3]
    assert attention_layer_indices("last", 4) == [3]
    assert attention_layer_indices((-1, 0, 3), 4) == [0, 3]
    with pytest.raises(ValueError, match="block 4 does not exist; allowed: -4 to 3"):
        attention_layer_indices((4,), 4)
    with pytest.raises(ValueError, match=r"attention_layers: got 'first'; allowed: 'all', 'last' or a"):
        DistillationLoss(attention_layers="first")
    with pytest.raises(ValueError, match=r"attention_weight: got -1"):
        DistillationLoss(attention_weight=-1)
    assert DistillationLoss(attention_layers=[1, 2]).attention_layers == (1, 2)


def test_projection_capture_records_q_k_v_of_the_chosen_blocks_only_while_recording(tmp_path):
    _, teacher = load_pair(tiny_teacher_dir(str(tmp_path), layers=3))
    capture = ProjectionCapture(teacher, (0, 2))
    ids = torch.randint(97, (2, 5))
    teacher(input_ids=ids)
    assert capture.take() == []
    with capture.recording():
        teacher(input_ids=ids)
    got = capture.take()
    assert [tuple(a.shape) for a in got] == [(2, 5, 48), (2, 5, 24), (2, 5, 24)] * 2  # 4 Q heads, 2 KV heads of 12
    assert capture.head_dim == 12 and capture.take() == []
    capture.remove()
    with capture.recording():
        teacher(input_ids=ids)
    assert capture.take() == []


def _capture_hooks(*models) -> int:
    """Forward hooks of a ProjectionCapture left on ``models``."""
    return sum(isinstance(getattr(hook, "__self__", None), ProjectionCapture)
               for model in models for m in model.modules() for hook in m._forward_hooks.values())


def _relation_gap(student, teacher, ids) -> float:
    """The attention-relation KL per counted position of ``student`` against ``teacher`` on ``ids``."""
    captures = ProjectionCapture(student, "all"), ProjectionCapture(teacher, "all")
    student.eval()
    with torch.no_grad():
        for model, capture in zip((student, teacher), captures):
            with capture.recording():
                model(input_ids=ids)
    mask = DistillationLoss().token_mask(ids)
    gap = relation_kl_token_sum(captures[0].take(), captures[1].take(), captures[0].head_dim, mask)
    for capture in captures:
        capture.remove()
    return gap.item() / mask.sum().item()


def test_training_with_the_attention_term_brings_the_relations_closer_and_logs_it(tmp_path):
    ids = token_data(8, 16, seed=5).blocks
    gaps = {}
    for weight in (0.0, 10.0):
        student, teacher = load_pair(tiny_teacher_dir(str(tmp_path)))
        loss = DistillationLoss(attention_weight=weight, hidden_weight=0.0)
        cb = OneBitDistillationCallback(teacher, recipe="onebit", loss=loss, plot=False)
        Trainer(model=student, args=train_args(str(tmp_path / f"out-{weight}"), 30, learning_rate=3e-3),
                train_dataset=token_data(64, 16), callbacks=[cb]).train()
        assert _capture_hooks(student, teacher) == 0  # the captures' hooks are gone after training
        if weight:
            values = [h["distill_attention"] for h in cb.history]
            assert len(values) == 30 and all(math.isfinite(v) for v in values)
        else:
            assert all("distill_attention" not in h for h in cb.history)
        gaps[weight] = _relation_gap(student, teacher, ids)
    assert gaps[10.0] < 0.85 * gaps[0.0], gaps


def test_cached_targets_refuse_the_attention_term():
    with pytest.raises(ValueError, match="attention projections"):
        DistillPlan(cache_targets=8, loss=DistillationLoss(hidden_weight=0.0, attention_weight=1.0))


def test_the_cli_passes_the_attention_term_to_the_plan_and_checks_it():
    from hf_onebit.cli import build_parser
    from hf_onebit.commands.distill import plan_from_args

    parse = build_parser().parse_args
    plan = plan_from_args(parse(["distill", "--teacher", "t", "--out", "o", "--attention-weight", "5",
                                 "--attention-layers", "0,-1", "--attention-stride", "4"]))
    assert plan.loss.attention_weight == 5 and plan.loss.attention_layers == (0, -1)
    assert plan.loss.attention_stride == 4
    default = plan_from_args(parse(["distill", "--teacher", "t", "--out", "o"]))
    assert default.loss.attention_weight == DistillationLoss().attention_weight
    with pytest.raises(SystemExit):
        parse(["distill", "--teacher", "t", "--out", "o", "--attention-layers", "first"])
    with pytest.raises(ValueError, match="--attention-weight: got 5 with --cache-targets 8"):
        plan_from_args(parse(["distill", "--teacher", "t", "--out", "o", "--attention-weight", "5",
                              "--cache-targets", "8"]))


def test_the_step_measurement_runs_the_attention_term_and_leaves_no_hook(tmp_path, monkeypatch):
    from hf_onebit.training.budget import measure_step_times

    student, teacher = load_pair(tiny_teacher_dir(str(tmp_path)))
    recorded = []
    real_terms = DistillationLoss.terms

    def terms(self, *args, relations=None, **kwargs):
        recorded.append(relations)
        return real_terms(self, *args, relations=relations, **kwargs)

    monkeypatch.setattr(DistillationLoss, "terms", terms)
    loss = DistillationLoss(attention_weight=1.0, attention_layers="last")
    times = measure_step_times(student, teacher, seq_len=8, batch_size=2, loss=loss, blockwise=False)
    assert times.e2e_step_s > 0 and recorded
    student_side, teacher_side, head_dim = recorded[-1]
    assert len(student_side) == len(teacher_side) == 3 and head_dim == 12  # Q, K, V of the last block
    assert _capture_hooks(student, teacher) == 0


def test_relation_kl_is_computed_in_float32_under_bf16_autocast():
    shapes = [(2, 6, 8)] * 3
    s = [a.to(torch.bfloat16).requires_grad_() for a in _projections(6, shapes)]
    t = [a.to(torch.bfloat16) for a in _projections(7, shapes)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relation_kl_token_sum(s, t, 4, mask)
    got.backward()
    want = sum(_plain_relation_kl(a.detach().float(), b.float(), 4, mask) for a, b in zip(s, t)) / 6
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-4)
    assert all(a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad).all() for a in s)


def test_a_model_without_llama_style_projections_is_refused_without_leaving_hooks(tmp_path):
    _, teacher = load_pair(tiny_teacher_dir(str(tmp_path)))
    attn = teacher.model.layers[1].self_attn
    attn.qkv = attn.q_proj  # block 1 as a fused-QKV model would have it: no q_proj
    del attn.q_proj
    with pytest.raises(ValueError, match=r"block 1 has no self_attn.q_proj; attention-relation distillation supports"):
        ProjectionCapture(teacher, "all")
    assert _capture_hooks(teacher) == 0


def test_reentrant_activation_checkpointing_is_refused_instead_of_training_nothing(tmp_path):
    student, teacher = load_pair(tiny_teacher_dir(str(tmp_path)))
    enable = getattr(student, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    cb = OneBitDistillationCallback(teacher, recipe="onebit", loss=DistillationLoss(attention_weight=1.0), plot=False)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 2), train_dataset=token_data(16, 8),
                      callbacks=[cb])
    with pytest.raises(ValueError, match="Q / K / V projections carry no gradient.*use_reentrant=False"):
        trainer.train()
    # refused before the callback's process-wide settings could outlive the run
    assert cb._heap is None and _capture_hooks(student, teacher) == 0
    assert not any(m._forward_pre_hooks for m in student.modules())
