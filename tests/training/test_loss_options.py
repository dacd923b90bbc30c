"""Options of the distillation loss and the optimizer's parameter groups (tiny tensors and models, milliseconds)."""

import pytest
import torch
import torch.nn.functional as F

from distill_utils import dim_scaled_hidden_reference, load_pair, tiny_teacher_dir
from hf_onebit.training import DistillationLoss, onebit_optimizer, onebit_param_groups
from hf_onebit.training.losses import dimension_scale, scored_rows
from hf_onebit.training.optim import GROUP_KEY


def _states(seed: int, layers: int = 3, batch: int = 2, seq: int = 9, hidden: int = 6):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, seq, hidden, generator=g) for _ in range(layers))


def test_dim_scaled_hidden_term_is_the_cosine_distance_of_states_divided_by_the_teachers_median():
    hs, ht = _states(1), _states(2)
    mask = torch.rand(2, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    got = DistillationLoss(hidden_metric="dim-scaled").terms(torch.zeros(2, 9, 5), torch.zeros(2, 9, 5), mask, hs, ht)
    torch.testing.assert_close(got["hidden"], dim_scaled_hidden_reference(hs, ht, mask))


@pytest.mark.parametrize("masked", [False, True])
def test_the_hidden_and_ce_terms_score_the_masked_positions_with_their_gradients(masked):
    """Every position scored (the view path) or some left out (the boolean gather): the hidden-state and CE terms and
    the student states' gradients equal those of the masked rows taken one by one."""
    hs = tuple(h.requires_grad_() for h in _states(6))
    ht = _states(7)
    logits = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(8), requires_grad=True)
    labels = torch.randint(5, (2, 9), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 8, dtype=torch.bool)
    if masked:
        mask[0, 5:] = False
        mask[1, 0] = False
    # the plain distance, so that each position's term stands alone (dim-scaled divides by a median over the rows)
    loss = DistillationLoss(ce_weight=1.0, hidden_metric="cosine")
    terms = loss.terms(logits, logits.detach(), mask, hs, ht, labels=labels)
    (terms["hidden"] + terms["ce"]).backward()
    pos = [(b, p) for b in range(2) for p in range(8) if mask[b, p]]
    want_hidden = sum(sum((F.normalize(s[b, p], dim=-1) - F.normalize(t[b, p], dim=-1)).pow(2).sum() for b, p in pos)
                      for s, t in zip(hs[1:], ht[1:])) / 2
    want_ce = sum(F.cross_entropy(logits[b, p][None], labels[b, p + 1][None]) for b, p in pos)
    torch.testing.assert_close(terms["hidden"], want_hidden)
    torch.testing.assert_close(terms["ce"], want_ce)
    for s in hs[1:]:
        assert (s.grad[:, -1] == 0).all()  # the last position predicts nothing
        assert (s.grad[:, :-1][~mask] == 0).all() and (s.grad[:, :-1][mask].abs().sum(-1) > 0).all()
    assert scored_rows(hs[1], mask).shape == (len(pos), 6) and scored_rows(hs[1], mask).dtype == torch.float32


def test_dim_scaled_hidden_term_ignores_a_rescaled_dimension_where_the_cosine_term_does_not():
    hs, ht = _states(4), _states(5)
    mask = torch.ones(2, 8, dtype=torch.bool)
    factor = torch.ones(6)
    factor[2] = 50.0  # one dimension 50 times larger in both models, as a pretrained model's outlier dimension
    big_s, big_t = tuple(h * factor for h in hs), tuple(h * factor for h in ht)
    zeros = torch.zeros(2, 9, 5)
    for metric, same in (("dim-scaled", True), ("cosine", False)):
        loss = DistillationLoss(hidden_metric=metric)
        before = loss.terms(zeros, zeros, mask, hs, ht)["hidden"]
        after = loss.terms(zeros, zeros, mask, big_s, big_t)["hidden"]
        assert torch.isclose(before, after, rtol=1e-4).item() is same, metric


def test_dimension_scale_is_not_moved_by_one_massive_token_and_is_never_zero():
    states = torch.randn(33, 4, generator=torch.Generator().manual_seed(6))
    base = dimension_scale(states)
    states[0] = 1e4  # an attention-sink token
    assert torch.allclose(dimension_scale(states), base, rtol=0.2)
    assert (dimension_scale(torch.zeros(5, 4)) > 0).all()
    assert dimension_scale(torch.zeros(0, 4)).shape == (4,)


def test_the_hidden_weight_falls_geometrically_over_the_second_half_of_the_run():
    loss = DistillationLoss(hidden_weight=30.0, hidden_weight_end=3.0)
    assert [loss.hidden_weight_at(p) for p in (None, -1.0, 0.0, 0.3, 0.5)] == [30.0] * 5
    assert loss.hidden_weight_at(0.75) == pytest.approx(30.0 * 0.1 ** 0.5)
    assert loss.hidden_weight_at(1.0) == pytest.approx(3.0) and loss.hidden_weight_at(2.0) == pytest.approx(3.0)
    assert DistillationLoss(hidden_weight=30.0, hidden_weight_end=None).hidden_weight_at(0.9) == 30.0
    assert DistillationLoss(hidden_weight=0.0).hidden_weight_at(0.9) == 0.0
    early = DistillationLoss(hidden_weight=8.0, hidden_weight_end=2.0, hidden_decay_start=0.0)
    assert early.hidden_weight_at(0.5) == pytest.approx(4.0)
    terms = {"kl": torch.tensor(2.0), "hidden": torch.tensor(0.5)}
    assert float(loss.combine(terms)) == pytest.approx(2.0 + 30.0 * 0.5)
    assert float(loss.combine(terms, 1.0)) == pytest.approx(2.0 + 3.0 * 0.5)
    for kwargs, message in (
            ({"hidden_weight_end": 0}, r"hidden_weight_end: got 0; allowed: None or a number > 0"),
            ({"hidden_weight_end": "3"}, r"hidden_weight_end: got '3'; allowed: None or a number > 0"),
            ({"hidden_decay_start": 1.0}, r"hidden_decay_start: got 1.0; allowed: a number in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            DistillationLoss(**kwargs)


def test_the_callback_weighs_the_hidden_term_by_the_runs_progress_and_logs_the_weight(tmp_path):
    """4 steps, the weight falls from step 2 (half the run) on: each logged loss is the KL plus the logged weight
    times the hidden term, and the weights are 30, 30, 30, 30 * 0.1 ** 0.5 (progress 0, 1/4, 2/4, 3/4)."""
    from transformers import Trainer

    from distill_utils import token_data, train_args
    from hf_onebit.training import OneBitDistillationCallback

    student, teacher = load_pair(tiny_teacher_dir(str(tmp_path)))
    cb = OneBitDistillationCallback(teacher, loss=DistillationLoss(hidden_weight=30.0, hidden_weight_end=3.0),
                                    init_steps=1, plot=False)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "run"), 4), train_dataset=token_data(),
                      callbacks=[cb], optimizers=(onebit_optimizer(student, lr=1e-3), None))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["hidden_weight"] for h in logs] == pytest.approx([30.0, 30.0, 30.0, 30.0 * 0.1 ** 0.5], rel=1e-5)
    for h in logs:
        assert h["loss"] == pytest.approx(h["distill_kl"] + h["hidden_weight"] * h["distill_hidden"], rel=2e-3)


def test_hidden_metric_is_checked():
    with pytest.raises(ValueError, match=r"hidden_metric: got 'l2'; allowed: one of \('cosine', 'dim-scaled'\)"):
        DistillationLoss(hidden_metric="l2")


def test_the_tied_embedding_matrix_has_its_own_group_at_the_latent_lr_unless_embedding_lr_says(tmp_path):
    student, _ = load_pair(tiny_teacher_dir(str(tmp_path)))
    embedding = student.get_input_embeddings().weight
    default = {g[GROUP_KEY]: g for g in onebit_param_groups(student, lr=1e-3)}
    assert set(default) == {"latent_weights", "scales", "embeddings"}
    assert default["embeddings"]["lr"] == 1e-3 and default["scales"]["lr"] == pytest.approx(3.3e-3)
    assert [p is embedding for p in default["embeddings"]["params"]] == [True]

    groups = {g[GROUP_KEY]: g for g in onebit_param_groups(student, lr=1e-3, embedding_lr=5e-4)}
    assert set(groups) == {"latent_weights", "scales", "embeddings"}
    assert groups["embeddings"]["lr"] == 5e-4 and groups["embeddings"]["weight_decay"] == 0.0
    assert all(p is not embedding for p in groups["scales"]["params"])
    # a tied output matrix is the same parameter: listed once
    assert sum(p is embedding for p in groups["embeddings"]["params"]) == 1
    every = [p for g in groups.values() for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len([p for p in student.parameters() if p.requires_grad])
    optimizer = onebit_optimizer(student, lr=1e-3, embedding_lr=5e-4)
    assert [g["lr"] for g in optimizer.param_groups][-1] == 5e-4
    with pytest.raises(ValueError, match=r"embedding_lr: got 0; allowed: None or a number > 0"):
        onebit_param_groups(student, lr=1e-3, embedding_lr=0)


def test_the_cli_passes_hidden_metric_and_embedding_lr_to_the_plan_and_checks_them():
    from hf_onebit.cli import build_parser, main
    from hf_onebit.commands.distill import plan_from_args

    args = build_parser().parse_args(["distill", "--teacher", "t", "--out", "o", "--hidden-metric", "dim-scaled",
                                      "--embedding-lr", "4e-4"])
    plan = plan_from_args(args)
    assert plan.loss.hidden_metric == "dim-scaled" and plan.embedding_lr == 4e-4
    default = plan_from_args(build_parser().parse_args(["distill", "--teacher", "t", "--out", "o"]))
    assert default.loss.hidden_metric == DistillationLoss().hidden_metric and default.embedding_lr is None
    assert default.loss.hidden_weight_end == DistillationLoss().hidden_weight_end == 3.0
    end = plan_from_args(build_parser().parse_args(["distill", "--teacher", "t", "--out", "o", "--hidden-weight-end",
                                                     "30"]))
    assert end.loss.hidden_weight_end == 30.0 and end.loss.hidden_weight_at(1.0) == 30.0  # constant
    with pytest.raises(SystemExit, match=r"hidden_weight_end: got 0.0; allowed: None or a number > 0"):
        main(["distill", "--teacher", "missing", "--out", "o", "--hidden-weight-end", "0"])
    with pytest.raises(SystemExit, match=r"embedding_lr: got -1.0; allowed: None or a number > 0"):
        main(["distill", "--teacher", "missing", "--out", "o", "--embedding-lr", "-1"])


def test_the_convenience_trainer_builds_the_three_groups_from_its_arguments(tmp_path):
    from transformers import TrainingArguments

    from hf_onebit.training.trainer import OneBitDistillationTrainer

    student, _ = load_pair(tiny_teacher_dir(str(tmp_path)))
    args = TrainingArguments(output_dir=str(tmp_path / "run"), learning_rate=1e-3, weight_decay=0.02,
                             adam_beta2=0.95, report_to=[], use_cpu=True)
    trainer = OneBitDistillationTrainer(model=student, args=args, scale_lr=2e-3, scale_weight_decay=0.001,
                                        embedding_lr=5e-4)
    optimizer = trainer.create_optimizer()
    groups = {g[GROUP_KEY]: g for g in optimizer.param_groups}
    assert {k: (g["lr"], g["weight_decay"]) for k, g in groups.items()} == {
        "latent_weights": (1e-3, 0.02), "scales": (2e-3, 0.001), "embeddings": (5e-4, 0.001)}
    assert all(g["betas"] == (0.9, 0.95) for g in groups.values())
    assert trainer.create_optimizer() is optimizer  # built once
    default = OneBitDistillationTrainer(model=student, args=args).create_optimizer()
    assert [g["lr"] for g in default.param_groups] == [1e-3, pytest.approx(3.3e-3), 1e-3]
