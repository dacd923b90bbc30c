"""The distillation step's fast paths give the same numbers as the plain computation they replace."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from distill_utils import load_pair, tiny_teacher_dir, token_data, train_args
from hf_onebit.training import DistillationLoss, OneBitDistillationCallback, onebit_optimizer
from hf_onebit.training import losses
from hf_onebit.training.teacher_cast import TeacherWeightCast


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_teacher_dir(str(tmp_path_factory.mktemp("speed")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_chunked_kl_matches_kl_div_value_and_gradient(monkeypatch, dtype, tau):
    monkeypatch.setattr(losses, "KL_CHUNK_ROWS", 7)  # several chunks, the last one partial
    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(3, 20, 50, generator=g)).to(dtype).requires_grad_(True)
    t = (3 * torch.randn(3, 20, 50, generator=g)).to(dtype)
    mask = torch.rand(3, 19, generator=g) > 0.3
    got = losses.kl_token_sum(s, t, mask, tau)
    got.backward(torch.tensor(1.7))
    grad = s.grad.clone()
    s.grad = None
    want = losses.kl_token_sum_reference(s, t, mask, tau)
    (want * 1.7).backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # bf16: the stored gradient is rounded once more before the chain-rule product (within 2 bf16 ulps)
    rtol, atol = (0, 1e-6) if dtype == torch.float32 else (2 ** -6, 1e-3)
    torch.testing.assert_close(grad.float(), s.grad.float(), rtol=rtol, atol=atol)
    # rows outside the mask (and every sequence's last position) get no gradient
    assert grad[:, -1].abs().max() == 0 and grad[:, :-1][~mask].abs().max() == 0


def test_chunked_kl_refuses_a_vocabulary_mismatch():
    with pytest.raises(ValueError, match="same tokenizer"):
        losses.kl_token_sum(torch.randn(1, 4, 10), torch.randn(1, 4, 12), torch.ones(1, 3, dtype=torch.bool))


def test_loss_terms_equal_the_masked_reference():
    loss = DistillationLoss(kl_weight=1.0, hidden_weight=1.0, temperature=1.5)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 9, 13, generator=g), torch.randn(2, 9, 13, generator=g)
    hs = tuple(torch.randn(2, 9, 6, generator=g) for _ in range(3))
    ht = tuple(torch.randn(2, 9, 6, generator=g) for _ in range(3))
    mask = torch.rand(2, 8, generator=g) > 0.4
    terms = loss.terms(s, t, mask, hs, ht)
    hidden = sum((F.normalize(a[:, :-1][mask], dim=-1) - F.normalize(b[:, :-1][mask], dim=-1)).pow(2).sum()
                 for a, b in zip(hs[1:], ht[1:])) / 2
    torch.testing.assert_close(terms["kl"], losses.kl_token_sum_reference(s, t, mask, 1.5))
    plain = DistillationLoss(kl_weight=1.0, hidden_weight=1.0, temperature=1.5, chunked_kl=False).terms(s, t, mask, hs, ht)
    torch.testing.assert_close(plain["kl"], terms["kl"])
    torch.testing.assert_close(terms["hidden"], hidden)


def test_teacher_weight_cast_gives_the_autocast_outputs_and_keeps_the_weights_outside_its_block(teacher_dir):
    _, teacher = load_pair(teacher_dir)
    x = token_data(2, 12).blocks
    originals = {n: p for n, p in teacher.named_parameters()}
    copies = {n: p.detach().clone() for n, p in originals.items()}
    cast = TeacherWeightCast(teacher)
    assert cast.count == 2 * 7 + 1  # 7 linears per layer and the (tied) lm_head
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = teacher(x).logits
        with cast.applied():
            assert teacher.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
            got = teacher(x).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="inside"):
        with cast.applied():
            raise RuntimeError("an error inside the teacher forward")
    assert teacher.lm_head.weight is teacher.model.embed_tokens.weight  # tied again
    for n, p in teacher.named_parameters():
        assert p is originals[n] and p.dtype == torch.float32 and torch.equal(p, copies[n])


def test_an_error_during_bf16_training_leaves_the_teacher_in_float32(teacher_dir, tmp_path):
    student, teacher = load_pair(teacher_dir, scale_dtype="float32")
    originals = {n: p for n, p in teacher.named_parameters()}

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("boom at step 2")

    cb = OneBitDistillationCallback(teacher, loss=DistillationLoss(), init_steps=1, phases=2, plot=False)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 4, bf16=True), train_dataset=token_data(16, 16),
                      callbacks=[cb, Boom()], optimizers=(onebit_optimizer(student, lr=1e-3), None))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    for n, p in teacher.named_parameters():
        assert p is originals[n] and p.dtype == torch.float32
    x = token_data(2, 12).blocks
    with torch.no_grad():
        assert torch.isfinite(teacher(x).logits).all()  # float32 forward, no dtype mismatch
    # the same callback in a float32 run afterwards runs the teacher from its float32 weights, not the old copies
    student, _ = load_pair(teacher_dir, scale_dtype="float32")
    seen = []
    handle = teacher.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, inp, out: seen.append(m.weight.dtype))
    Trainer(model=student, args=train_args(str(tmp_path / "fp32"), 2, bf16=False), train_dataset=token_data(16, 16),
            callbacks=[cb], optimizers=(onebit_optimizer(student, lr=1e-3), None)).train()
    handle.remove()
    assert seen and set(seen) == {torch.float32}


def test_bf16_training_runs_the_teacher_in_bf16_and_gives_it_back_in_float32(teacher_dir, tmp_path):
    student, teacher = load_pair(teacher_dir, scale_dtype="float32")
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    seen = []
    handle = teacher.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, inp, out: seen.append((m.weight.dtype, out.dtype)))
    cb = OneBitDistillationCallback(teacher, loss=DistillationLoss(), init_steps=1, phases=2, plot=False)
    trainer = Trainer(model=student, args=train_args(str(tmp_path / "out"), 3, bf16=True), train_dataset=token_data(16, 16),
                      callbacks=[cb], optimizers=(onebit_optimizer(student, lr=1e-3), None))
    trainer.train()
    handle.remove()
    assert seen and all(s == (torch.bfloat16, torch.bfloat16) for s in seen)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    assert teacher.lm_head.weight is teacher.model.embed_tokens.weight
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
