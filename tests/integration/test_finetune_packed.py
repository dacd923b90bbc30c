"""Direct fine-tuning of a packed 1-bit model with the stock Trainer: float32 vectors train, sign bits stay."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit.integration.finetune import prepare_for_training, restore_storage_dtypes, trainable_summary

from ecosystem_helpers import assert_loss_decreases, onebit_checkpoint, train_losses


@pytest.fixture(scope="module")
def onebit_dir(tmp_path_factory):
    return onebit_checkpoint(str(tmp_path_factory.mktemp("ft")))[1]


def layers(model):
    return [m for m in model.modules() if isinstance(m, hf_onebit.OneBitLinear)]


def test_prepare_for_training_makes_float32_masters_and_freezes_bits(onebit_dir):
    model = AutoModelForCausalLM.from_pretrained(onebit_dir)
    assert layers(model)[0].scale_in.dtype == torch.float16  # the stored dtype
    ids = torch.randint(0, 256, (1, 8))
    before = model(ids).logits
    assert hf_onebit.prepare_for_training(model) is model
    for layer in layers(model):
        assert layer.scale_in.dtype == layer.scale_out.dtype == torch.float32
        assert layer.scale_in.requires_grad and layer.scale_out.requires_grad
        assert layer.weight.dtype == torch.uint8 and not layer.weight.requires_grad
    counts = trainable_summary(model)
    assert counts["onebit_vectors"] > 0 and counts["other"] == 0
    assert torch.allclose(model(ids).logits, before, atol=1e-5)  # fp16 -> fp32 is exact: same function
    prepare_for_training(model, freeze_other=False)
    assert trainable_summary(model)["other"] == 0  # left as it was


def test_stock_trainer_lowers_the_loss_and_the_result_saves_and_reloads(onebit_dir, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(onebit_dir)
    bits = {id(m): m.weight.clone() for m in layers(model)}
    prepare_for_training(model)
    ids = torch.randint(0, 256, (8, 24))
    losses = train_losses(model, ids, str(tmp_path / "run"), steps=12, lr=3e-2, gradient_checkpointing=True)
    assert_loss_decreases(losses, 0.97)
    for layer in layers(model):
        assert torch.equal(layer.weight, bits[id(layer)])  # the sign bits did not move

    restore_storage_dtypes(model)
    assert layers(model)[0].scale_out.dtype == torch.float16
    model.save_pretrained(tmp_path / "tuned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned")
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids[:2]).logits, model(ids[:2]).logits)


def test_prepare_for_training_needs_onebit_layers():
    with pytest.raises(ValueError, match="no OneBitLinear"):
        prepare_for_training(torch.nn.Linear(2, 2))
