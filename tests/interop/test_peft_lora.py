"""LoRA on 1-bit layers with PEFT: dispatch, Trainer training with gradient checkpointing, adapter reload, merge."""

import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

import hf_onebit
import hf_onebit.interop.peft as onebit_peft
from hf_onebit.integration.compat import is_checkpointing
from hf_onebit.interop.peft import OneBitLoraLinear, get_peft_model

from ecosystem_helpers import assert_loss_decreases, onebit_checkpoint, train_losses


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return onebit_checkpoint(str(tmp_path_factory.mktemp("peft")))[1]


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, OneBitLoraLinear)]


def test_get_peft_model_wraps_every_onebit_layer_and_starts_as_the_base(base_dir):
    model = load(base_dir)
    ids = torch.randint(0, 256, (2, 9))
    before = model(ids).logits
    names = onebit_peft.target_modules(model)
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=names))
    assert len(lora_layers(peft_model)) == 14
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.equal(peft_model(ids).logits, before)  # B starts at zero


def test_the_layer_is_registered_per_config_and_peft_itself_is_untouched(base_dir):
    import peft

    config = onebit_peft.lora_config(r=2, target_modules=["q_proj"])
    assert config._custom_modules == {hf_onebit.OneBitLinear: OneBitLoraLinear}
    assert onebit_peft.with_onebit_layers(config) is config and len(config._custom_modules) == 1  # idempotent
    with pytest.raises(TypeError, match="peft.LoraConfig"):
        onebit_peft.with_onebit_layers(peft.IA3Config(target_modules=["q_proj"]))
    # without the registration PEFT refuses the 1-bit layer: hf_onebit patches nothing in PEFT
    with pytest.raises(ValueError, match="not supported"):
        peft.get_peft_model(load(base_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    assert isinstance(peft.get_peft_model(load(base_dir), config).base_model.model.model.layers[0].self_attn.q_proj,
                      OneBitLoraLinear)


def test_trainer_with_gradient_checkpointing_trains_lora_and_reload_is_identical(base_dir, tmp_path):
    torch.manual_seed(0)
    model = load(base_dir)
    packed_before = model.model.layers[0].mlp.down_proj.weight.clone()
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=onebit_peft.target_modules(model)))
    ids = torch.randint(0, 256, (8, 24))
    losses = train_losses(peft_model, ids, str(tmp_path / "run"), steps=12, lr=1e-2, gradient_checkpointing=True)
    assert_loss_decreases(losses, 0.95)
    assert is_checkpointing(model)  # the Trainer switched it on for the 1-bit base
    # the packed base did not change
    assert torch.equal(model.model.layers[0].mlp.down_proj.base_layer.weight, packed_before)

    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(ids[:2]).logits
        with_helper = onebit_peft.load_adapter(load(base_dir), str(tmp_path / "adapter"))
        assert torch.equal(with_helper(ids[:2]).logits, expected)
        config = onebit_peft.with_onebit_layers(LoraConfig.from_pretrained(str(tmp_path / "adapter")))
        with_peft = PeftModel.from_pretrained(load(base_dir), str(tmp_path / "adapter"), config=config)
        assert torch.equal(with_peft(ids[:2]).logits, expected)
        assert not torch.equal(load(base_dir)(ids[:2]).logits, expected)  # the adapter matters


def test_merge_is_lossy_with_a_warning_and_unmerge_restores_exactly(base_dir):
    model = load(base_dir)
    packed = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, hf_onebit.OneBitLinear)}
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    ids = torch.randint(0, 256, (1, 7))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model.merge_adapter()
    assert any("lossy" in str(w.message) for w in caught)
    layer = lora_layers(peft_model)[0]
    assert layer.merged and 0.0 < layer.merge_error
    with torch.no_grad():
        peft_model.unmerge_adapter()
    for name, module in model.named_modules():
        if isinstance(module, hf_onebit.OneBitLinear):
            assert torch.equal(module.weight, packed[name.replace(".base_layer", "")]), name
    with pytest.warns(UserWarning, match="lossy"):
        merged = peft_model.merge_and_unload()
    assert isinstance(merged.model.layers[0].self_attn.q_proj, hf_onebit.OneBitLinear)
    assert merged(ids).logits.isfinite().all()


def test_unsupported_options_fail_with_a_clear_error(base_dir):
    model = load(base_dir)
    with pytest.raises(ValueError, match="use_dora"):
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="lora_bias"):
        get_peft_model(load(base_dir), LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True))
    with pytest.raises(ValueError, match="no OneBitLinear"):
        onebit_peft.target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.real_model
def test_lora_on_real_smollm2_one_bit_loss_goes_down(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_pretrained(
        smollm2_dir, quantization_config=hf_onebit.OneBitConfig(init_iters=10), dtype=torch.float32
    ).save_pretrained(tmp_path / "base")
    model = load(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = "A compiler reads source code, builds a syntax tree, checks types and emits machine code. " * 4
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :32]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    # the same sample every step: a few LoRA steps must lower its loss (the 1-bit base starts near loss 15)
    losses = train_losses(peft_model, ids, str(tmp_path / "run"), steps=5, lr=1e-3, batch=1)
    assert_loss_decreases(losses, 0.95)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(ids[:1, :16]).logits
        reloaded = onebit_peft.load_adapter(load(tmp_path / "base"), str(tmp_path / "adapter"))
        assert torch.equal(reloaded(ids[:1, :16]).logits, expected)
