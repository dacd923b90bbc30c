"""The distillation step's fast paths give the same numbers as the plain computation they replace."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from distill_utils import dim_scaled_hidden_reference, load_pair, tiny_teacher_dir, token_data, train_args
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
    hidden = dim_scaled_hidden_reference(hs, ht, mask)  # the default distance
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
    cb.release()  # what run_stages does after a run that raised (the Trainer has no event for it)
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


def _latent_weight(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3
    w[2:8, 0] = torch.tensor([0.0, 1e-30, -1e-6, 40.0, -40.0, 0.3])  # zeros, tiny values, heavy tails
    w[1] = 0.0  # an all-zero row: the row scale's floor
    return w


@pytest.mark.parametrize("t", [0.02, 0.32, 1.0, 7.5, 104.6])
@pytest.mark.parametrize("cols", [1, 63, 577, 1536])
def test_progressive_sign_kernel_matches_the_reference(t, cols):
    """The CPU kernel's forward and backward equal progressive_sign(w, t, row_absmean(w)) and its autograd gradient
    (float32: to a few ulp of the tanh; bfloat16 output: the reference rounded, at most one bf16 step apart)."""
    from hf_onebit.ops.cpu import progressive as kernel
    from hf_onebit.training.binarizers import progressive_sign, row_absmean

    if not kernel.supports(torch.zeros(1, 1), torch.float32):
        pytest.fail(f"the CPU kernel library did not load: {kernel.library()}")
    w = _latent_weight(37, cols)
    ref_w = w.clone().requires_grad_(True)
    ref = progressive_sign(ref_w, t, row_absmean(ref_w))
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    ref.backward(grad)

    out, row_scale = kernel.progressive_sign_forward(w, t, torch.float32)
    torch.testing.assert_close(row_scale, row_absmean(w), rtol=2e-6, atol=0)
    torch.testing.assert_close(out, ref.detach(), rtol=4e-6, atol=1e-7)
    # the gradient's 1 - y^2 cancels where |y| is near 1, so both float32 paths are held to the exact float64 value
    # within what a few ulp of y allow there
    y64 = torch.tanh(w.double() * (t / row_scale.double()))
    slope = t / math.tanh(t)
    exact = grad.double() * (1 - y64 * y64) * slope
    allowed = grad.double().abs() * slope * 4 * 2 ** -23 * 2 + exact.abs() * 1e-5 + 1e-30
    for got in (kernel.progressive_sign_backward(w, row_scale, t, grad)[0], ref_w.grad):
        assert ((got.double() - exact).abs() <= allowed).all()

    out16, _ = kernel.progressive_sign_forward(w, t, torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    ref16 = ref.detach().to(torch.bfloat16).float()
    assert ((out16.float() - ref16).abs() <= ref16.abs() * 2 ** -7 + 1e-30).all()
    grad16 = grad.to(torch.bfloat16)
    exact16 = grad16.double() * (1 - y64 * y64) * slope
    allowed16 = grad16.double().abs() * slope * 4 * 2 ** -23 * 2 + exact16.abs() * 1e-5 + 1e-30
    assert ((kernel.progressive_sign_backward(w, row_scale, t, grad16)[0].double() - exact16).abs() <= allowed16).all()


def test_progressive_sign_kernel_keeps_nan_and_refuses_bad_t():
    from hf_onebit.ops.cpu import progressive as kernel

    w = _latent_weight(9, 70)
    w[3, 5] = float("nan")
    out, _ = kernel.progressive_sign_forward(w, 2.0, torch.float32)
    assert out[3].isnan().all() and out[torch.arange(9) != 3].isfinite().all()  # the NaN spreads through its row's scale only
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="t: got"):
            kernel.progressive_sign_forward(w, bad, torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_progressive_kernel_with_folded_scales_matches_the_reference(out_dtype):
    """With the layer's scales folded in, the kernel's output and its gradients of W, scale_in and scale_out equal
    autograd's through scale_out[:, None] * progressive_sign(W) * scale_in[None, :]."""
    from hf_onebit.ops.cpu import progressive as kernel
    from hf_onebit.training.binarizers import progressive_sign, row_absmean

    gen = torch.Generator().manual_seed(3)
    w = _latent_weight(70, 200)
    g, h = torch.rand(200, generator=gen) + 0.5, torch.rand(70, generator=gen) + 0.5
    grad = torch.randn(70, 200, generator=gen).to(out_dtype)
    rw, rg, rh = (v.clone().requires_grad_(True) for v in (w, g, h))
    ref = rh[:, None] * progressive_sign(rw, 2.0, row_absmean(rw)) * rg[None, :]
    ref.backward(grad.float())

    out, row_scale = kernel.progressive_sign_forward(w, 2.0, out_dtype, g, h)
    if out_dtype == torch.float32:
        torch.testing.assert_close(out, ref.detach(), rtol=4e-6, atol=1e-6)
    else:
        ref16 = ref.detach().to(torch.bfloat16).float()
        assert ((out.float() - ref16).abs() <= ref16.abs() * 2 ** -7 + 1e-30).all()
    grad_w, grad_g, grad_h = kernel.progressive_sign_backward(w, row_scale, 2.0, grad, g, h)
    torch.testing.assert_close(grad_w, rw.grad, rtol=1e-4, atol=1e-5 * rw.grad.abs().max().item())
    torch.testing.assert_close(grad_g, rg.grad, rtol=1e-4, atol=1e-5 * rg.grad.abs().max().item())
    torch.testing.assert_close(grad_h, rh.grad, rtol=1e-4, atol=1e-5 * rh.grad.abs().max().item())
    with pytest.raises(RuntimeError, match="invalid argument"):  # a scale without room for its gradient
        kernel._call("onebit_progressive_sign_backward", kernel.active_isa(), 70, 200, w.data_ptr(),
                     row_scale.data_ptr(), 2.0, math.tanh(2.0), g.data_ptr(), None, grad.data_ptr(),
                     int(out_dtype == torch.bfloat16), grad_w.data_ptr(), None, None, 1)


def _latent_layer(weight_format):
    """A latent 96 -> 48 OneBitLinear with a bias and non-trivial scales, and an input for it."""
    from hf_onebit.nn.linear import OneBitLinear

    torch.manual_seed(0)
    layer = OneBitLinear(96, 48, bias=True, latent=True, weight_format=weight_format)
    with torch.no_grad():
        layer.weight.copy_(_latent_weight(48, 96))
        layer.scale_in.uniform_(0.5, 1.5)
        layer.scale_out.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    return layer, torch.randn(2, 5, 96)


@pytest.mark.parametrize("autocast", [False, True])
def test_latent_layer_on_the_kernel_trains_like_the_reference(autocast):
    """A progressive (dual-scaling) binary OneBitLinear gives the same output and the same gradients of its weight and
    both scales on the kernel (scales folded into the weight in float32; under bf16 autocast the binarizer alone) as on
    the reference path."""
    from hf_onebit.training.binarizers import ProgressiveBinarizer, Temperature

    layer, x = _latent_layer("binary")
    results = []
    for use_kernel in (True, False):
        layer.binarizer = ProgressiveBinarizer(Temperature(3.0), use_kernel=use_kernel)
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if use_kernel:
                folded = layer.binarizer.scaled_weight(layer.weight, layer.scale_in, layer.scale_out,
                                                       torch.bfloat16 if autocast else torch.float32)
                if autocast:  # under bf16 the binarizer alone, written in bf16 (the scales stay on the activations)
                    assert folded is None
                    binarized = layer.binarizer(layer.weight)
                    assert type(binarized.grad_fn).__name__ == "_ProgressiveRowsBackward"
                    assert binarized.dtype == torch.bfloat16
                else:
                    assert type(folded.grad_fn).__name__ == "_ProgressiveRowsBackward"
            y = layer(x)
        assert y.dtype == (torch.bfloat16 if autocast else torch.float32)  # as nn.Linear's under autocast
        y.float().square().sum().backward()
        results.append((y.detach().float(), *(p.grad.clone() for p in (layer.weight, layer.scale_in, layer.scale_out))))
    (y_k, *grads_k), (y_r, *grads_r) = results
    # bf16: the same products, the binarized weight rounded to bf16 by the kernel instead of by autocast
    tol = dict(rtol=2e-2, atol=2e-2 * y_r.abs().max().item()) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_k, y_r, **tol)
    for got, want in zip(grads_k, grads_r):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=3e-2 if autocast else 1e-4, atol=(3e-2 if autocast else 1e-5) * scale)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("weight_format", ["binary", "ternary"])
def test_binarizer_takes_the_kernel_path_in_the_matmul_dtype_and_trains_like_the_reference(autocast, weight_format):
    """A progressive (dual-scaling) layer's binarizer runs on the kernel, written in the matmul's dtype (float32, or
    bfloat16 under bf16 autocast, which then does not cast it again), and gives the reference path's output and
    weight gradient: float32 to a few ulp; bf16 the same products but for an entry whose few-ulp difference rounds to
    the neighbouring bf16 value."""
    from hf_onebit.training.binarizers import ProgressiveBinarizer, Temperature

    torch.manual_seed(0)
    w = _latent_weight(48, 96).requires_grad_(True)
    x = torch.randn(5, 96)
    results = []
    for use_kernel in (True, False):
        binarizer = ProgressiveBinarizer(Temperature(3.0), weight_format=weight_format, use_kernel=use_kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            wb = binarizer(w)
            if use_kernel:
                assert type(wb.grad_fn).__name__ == "_ProgressiveRowsBackward"
                assert wb.dtype == (torch.bfloat16 if autocast else torch.float32)
            else:
                assert type(wb.grad_fn).__name__ != "_ProgressiveRowsBackward" and wb.dtype == torch.float32
            y = F.linear(x, wb)
        y.float().square().sum().backward()
        results.append((y.detach().float(), w.grad.clone()))
        w.grad = None
    (y_k, grad_k), (y_r, grad_r) = results
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(y_k, y_r, rtol=tol, atol=tol * y_r.abs().max().item())
    # (where |y| is near 1 the two float32 gradients differ by a few ulp of y times the slope: tiny against the largest)
    torch.testing.assert_close(grad_k, grad_r, rtol=3e-2 if autocast else 1e-4,
                               atol=(3e-2 if autocast else 1e-4) * grad_r.abs().max().item())


@pytest.mark.parametrize("t", [0.02, 0.32, 1.0, 7.5, 104.6])
@pytest.mark.parametrize("cols", [1, 63, 577])
@pytest.mark.parametrize("scales", [True, False])
def test_progressive_ternary_kernel_matches_the_reference(t, cols, scales):
    """The ternary kernel's output and its gradients of W, scale_in and scale_out equal autograd's through
    scale_out[:, None] * ProgressiveBinarizer(ternary)(W) * scale_in[None, :] (the smooth ternary step with its
    least-squares row scale), to a few float32 ulp of the tanh; without scales, through the binarizer alone."""
    from hf_onebit.ops.cpu import progressive as kernel
    from hf_onebit.training.binarizers import (
        ProgressiveBinarizer,
        Temperature,
        least_squares_row_scale,
        progressive_ternary,
        row_absmean,
    )

    if not kernel.supports(torch.zeros(1, 1), torch.float32):
        pytest.fail(f"the CPU kernel library did not load: {kernel.library()}")
    gen = torch.Generator().manual_seed(3)
    w = _latent_weight(37, cols)
    g, h = (torch.rand(cols, generator=gen) + 0.5, torch.rand(37, generator=gen) + 0.5) if scales else (None, None)
    binarizer = ProgressiveBinarizer(Temperature(t), weight_format="ternary", use_kernel=False)
    rw = w.clone().requires_grad_(True)
    rg, rh = (None, None) if not scales else (g.clone().requires_grad_(True), h.clone().requires_grad_(True))
    ref = binarizer(rw) if not scales else rh[:, None] * binarizer(rw) * rg[None, :]
    grad = torch.randn(ref.shape, generator=gen)
    ref.backward(grad)

    out, row_scales = kernel.progressive_ternary_forward(w, t, g, h)
    torch.testing.assert_close(row_scales[:, :1], row_absmean(w), rtol=2e-6, atol=0)
    soft = progressive_ternary(w, t, row_absmean(w)) / row_absmean(w)  # G
    torch.testing.assert_close(row_scales[:, 1:], least_squares_row_scale(w, soft), rtol=1e-5, atol=0)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    got = kernel.progressive_ternary_backward(w, row_scales, t, grad, g, h)
    assert (got[1] is None) == (got[2] is None) == (not scales)
    # the gradient's 2 - a^2 - b^2 cancels where both tanh are near +-1: a few ulp of them against the largest
    for mine, want in zip(got, (rw.grad, None if rg is None else rg.grad, None if rh is None else rh.grad)):
        if want is not None:
            torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())

    # bfloat16 output: the float32 output rounded (the same row scales); a bfloat16 gradient: read as its float32 value
    out16, row_scales16 = kernel.progressive_ternary_forward(w, t, g, h, out_dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(row_scales16, row_scales, rtol=0, atol=0)
    torch.testing.assert_close(out16, out.to(torch.bfloat16), rtol=0, atol=0)
    grad16 = grad.to(torch.bfloat16)
    for mine, want in zip(kernel.progressive_ternary_backward(w, row_scales, t, grad16, g, h),
                          kernel.progressive_ternary_backward(w, row_scales, t, grad16.float(), g, h)):
        if want is not None:
            torch.testing.assert_close(mine, want, rtol=0, atol=0)


def test_progressive_ternary_kernel_keeps_nan_in_its_row_and_refuses_bad_t():
    from hf_onebit.ops.cpu import progressive as kernel

    w = _latent_weight(9, 70)
    w[3, 5] = float("nan")
    out, _ = kernel.progressive_ternary_forward(w, 2.0)
    assert out[3].isnan().all() and out[torch.arange(9) != 3].isfinite().all()
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="t: got"):
            kernel.progressive_ternary_forward(w, bad)


@pytest.mark.parametrize("autocast", [False, True])
def test_latent_ternary_layer_on_the_kernel_trains_like_the_reference(autocast):
    """A progressive (dual-scaling) ternary OneBitLinear gives the same output and gradients of its weight and both
    scales on the kernel (float32: scales folded into the weight; under bf16 autocast the ternary step alone, written
    in bf16) as on the reference path."""
    from hf_onebit.training.binarizers import ProgressiveBinarizer, Temperature

    layer, x = _latent_layer("ternary")
    results = []
    for use_kernel in (True, False):
        layer.binarizer = ProgressiveBinarizer(Temperature(3.0), weight_format="ternary", use_kernel=use_kernel)
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            folded = layer.binarizer.scaled_weight(layer.weight, layer.scale_in, layer.scale_out,
                                                   torch.bfloat16 if autocast else torch.float32)
            if use_kernel and not autocast:
                assert type(folded.grad_fn).__name__ == "_ProgressiveRowsBackward"
            else:
                assert folded is None
            if use_kernel and autocast:
                binarized = layer.binarizer(layer.weight)
                assert type(binarized.grad_fn).__name__ == "_ProgressiveRowsBackward"
                assert binarized.dtype == torch.bfloat16
            y = layer(x)
        y.float().square().sum().backward()
        results.append((y.detach().float(), *(p.grad.clone() for p in (layer.weight, layer.scale_in, layer.scale_out))))
    (y_k, *grads_k), (y_r, *grads_r) = results
    # bf16: the same products, the ternary step rounded to bf16 by the kernel instead of by autocast
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(y_k, y_r, rtol=tol, atol=tol * y_r.abs().max().item())
    for got, want in zip(grads_k, grads_r):
        grad_tol = 3e-2 if autocast else 1e-4
        torch.testing.assert_close(got, want, rtol=grad_tol, atol=grad_tol * want.abs().max().item())


def test_adaptive_clipper_scales_only_above_its_threshold_like_clip_grad_norm():
    from hf_onebit.training.optim import AdaptiveGradClipper

    def params(scale):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.zeros(n)) for n in (5, 7)]
        for p in ps:
            p.grad = torch.randn(p.shape) * scale
        return ps

    clipper = AdaptiveGradClipper(multiplier=2.0, initial=1.0)
    below = params(0.01)
    before = [p.grad.clone() for p in below]
    norm = clipper.clip_(below)
    assert norm == pytest.approx(float(torch.cat(before).norm())) and norm < 1.0
    assert all(torch.equal(p.grad, b) for p, b in zip(below, before))  # untouched, not multiplied by 1
    assert clipper.clipped_steps == 0 and clipper.ema == pytest.approx(norm)

    above, reference = params(10.0), params(10.0)
    threshold = clipper.threshold
    norm = clipper.clip_(above)
    expected = torch.nn.utils.clip_grad_norm_(reference, threshold)
    assert norm == pytest.approx(float(expected)) and norm > threshold
    for p, r in zip(above, reference):
        torch.testing.assert_close(p.grad, r.grad)  # the same scaling as torch's clip_grad_norm_
    assert float(torch.cat([p.grad for p in above]).norm()) == pytest.approx(threshold, rel=1e-4)
    assert clipper.clipped_steps == 1

    broken = params(1.0)
    broken[0].grad[0] = float("nan")
    assert math.isnan(clipper.clip_(broken))  # reported, and the gradients carry the NaN on as torch's clipping does
    assert torch.isnan(broken[1].grad).all()
