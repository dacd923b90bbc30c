"""from_pretrained(quantization_config=OneBitConfig()) -> save -> plain from_pretrained, on tiny models of 3 families."""

import logging
import os

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.eval import size_on_disk, size_report
from hf_onebit.formats.packing import METADATA_KEY, FORMAT_VERSION

LINEAR_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

CASES = [
    ("llama", dict(hidden=72, tied=False)),
    ("llama", dict(hidden=100, intermediate=76, tied=True)),
    ("qwen2", dict(hidden=72, tied=False)),
    ("gemma", dict(hidden=64, intermediate=100, tied=True)),
]


def onebit_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, OneBitLinear)}


@pytest.mark.parametrize("family,kwargs", CASES)
def test_quantize_save_reload_dequantize(tmp_path, tiny_checkpoint, input_ids, family, kwargs):
    src, float_model = tiny_checkpoint(family, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(act_bits=0))
    layers = onebit_layers(model)
    # every linear of the transformer blocks, nothing else
    assert {n.rsplit(".", 1)[1] for n in layers} == LINEAR_NAMES
    assert len(layers) == 7 * float_model.config.num_hidden_layers
    assert not isinstance(model.lm_head, OneBitLinear) and isinstance(model.lm_head, nn.Linear)
    # the on-the-fly op is SVID of each float weight: same as converting the float module directly
    for name, layer in layers.items():
        expected = OneBitLinear.from_linear(float_model.get_submodule(name), OneBitConfig(act_bits=0))
        assert torch.equal(layer.weight, expected.weight), name
        assert torch.equal(layer.scale_in, expected.scale_in) and torch.equal(layer.scale_out, expected.scale_out)
        if layer.bias is not None:  # qwen2 q/k/v have biases
            assert torch.equal(layer.bias, float_model.get_submodule(name).bias)
    # no hidden float copy of quantized weights
    for layer in layers.values():
        assert layer.weight.dtype == torch.uint8
    with torch.no_grad():
        logits = model(input_ids).logits
    out = tmp_path / "q"
    model.save_pretrained(out)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()[METADATA_KEY] == str(FORMAT_VERSION)
        keys = set(f.keys())
        name = next(iter(layers))
        assert f.get_tensor(f"{name}.weight").dtype == torch.uint8
        assert {f"{name}.scale_in", f"{name}.scale_out"} <= keys
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids).logits, logits)
    assert reloaded.config.quantization_config.quant_method == "onebit"
    # dequantize -> plain nn.Linear with the same function
    reloaded.dequantize()
    assert not onebit_layers(reloaded)
    assert not hasattr(reloaded.config, "quantization_config")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_bits_on_disk_and_in_memory(tmp_path, tiny_checkpoint):
    src, _ = tiny_checkpoint("llama", hidden=128, intermediate=256, layers=2)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    report = size_report(model)
    # per layer (no bias, fp16 vectors): in * out sign bits + 16 (in + out); head_dim 16 x 4 heads, 2 kv heads
    shapes = [(128, 64), (128, 32), (128, 32), (64, 128), (128, 256), (128, 256), (256, 128)]
    expected_bits = 2 * sum(i * o + 16 * (i + o) for i, o in shapes)
    assert report.quantized_bits == expected_bits
    model.save_pretrained(tmp_path / "q")
    float_bytes = sum(p.numel() * 4 for p in model.parameters() if p.dtype != torch.uint8 and p.dim() == 2)
    packed = [p for p in model.parameters() if p.dtype == torch.uint8]
    assert sum(p.numel() for p in packed) * 8 == report.quantized_weights  # 1 bit per weight in memory
    # the file holds the packed bits (+ embeddings etc.), never the float weights of quantized layers
    assert size_on_disk(str(tmp_path / "q")) < float_bytes + report.quantized_bits // 8 + 64 * 1024


def test_tied_embeddings_are_not_quantized_and_reload(tmp_path, tiny_checkpoint, input_ids):
    src, _ = tiny_checkpoint("llama", tied=True)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path / "q")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(again(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_modules_to_not_convert_adds_to_default_skips(tiny_checkpoint):
    src, _ = tiny_checkpoint("llama")
    model = AutoModelForCausalLM.from_pretrained(
        src, quantization_config=OneBitConfig(modules_to_not_convert=["down_proj"])
    )
    names = set(onebit_layers(model))
    assert names and not any(n.endswith("down_proj") for n in names)
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert not isinstance(model.lm_head, OneBitLinear)


def test_training_flag_loads_latent_form_and_saves_packed(tmp_path, tiny_checkpoint, input_ids):
    src, float_model = tiny_checkpoint("llama")
    latent = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(training=True, act_bits=0))
    layer = latent.model.layers[0].self_attn.q_proj
    assert layer.is_latent and layer.weight.dtype == torch.float32 and layer.scale_in.dtype == torch.float32
    torch.testing.assert_close(layer.weight, float_model.model.layers[0].self_attn.q_proj.weight)
    latent.save_pretrained(tmp_path / "q")
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert not packed.model.layers[0].self_attn.q_proj.is_latent
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids).logits, latent(input_ids).logits, rtol=2e-3, atol=2e-3)


def test_quantize_inplace_on_any_module_matches_quantizer(tiny_checkpoint, input_ids):
    src, float_model = tiny_checkpoint("qwen2")
    via_loader = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    hf_onebit.quantize_(float_model, OneBitConfig(), progress=False)
    assert set(onebit_layers(float_model)) == set(onebit_layers(via_loader))
    with torch.no_grad():
        assert torch.equal(float_model(input_ids).logits, via_loader(input_ids).logits)
    # a plain torch module (no transformers)
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    hf_onebit.quantize_(net, progress=False)
    assert isinstance(net[0], OneBitLinear) and isinstance(net[2], OneBitLinear)
    assert net(torch.randn(3, 10)).shape == (3, 5)


def test_gpt2_conv1d_is_skipped_with_a_message(tmp_path, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    model.save_pretrained(tmp_path / "g")
    with caplog.at_level(logging.WARNING, logger="hf_onebit.integration.convert"):
        q = AutoModelForCausalLM.from_pretrained(tmp_path / "g", quantization_config=OneBitConfig())
    assert "Conv1D" in caplog.text and "full precision" in caplog.text
    assert not onebit_layers(q)


def test_device_map_sizing_counts_one_bit_per_weight(tiny_checkpoint, input_ids):
    from transformers.integrations.accelerate import compute_module_sizes

    from tests.conftest import tiny_config

    # what from_pretrained sizes for device_map="auto": the meta model after the quantizer's module swap
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(tiny_config("llama", hidden=128, intermediate=256))
    quantizer = hf_onebit.OneBitHfQuantizer(OneBitConfig(), pre_quantized=False)
    quantizer.preprocess_model(meta)
    sizes, _ = compute_module_sizes(meta, quantizer)
    # q_proj 128 -> 64: 128*64 bits = 1024 bytes + two fp16 vectors (128 + 64) * 2 bytes
    assert sizes["model.layers.0.self_attn.q_proj"] == 1024 + 384
    assert sizes["model.layers.0.mlp.down_proj"] == 256 * 128 // 8 + (256 + 128) * 2
    # and device_map="auto" loads and runs
    src, _ = tiny_checkpoint("llama", hidden=128, intermediate=256)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(), device_map="auto")
    assert model(input_ids).logits.shape == (2, 11, 128)


def test_save_form_latent_keeps_the_latent_tensors_and_packed_is_the_default(tmp_path):
    from safetensors import safe_open

    from hf_onebit.integration.quantizer import set_save_form
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    src = save_tiny_llama(str(tmp_path / "src"))
    student = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(training=True))
    name = next(n for n, m in student.named_modules() if isinstance(m, OneBitLinear))

    def saved(folder):
        student.save_pretrained(folder)
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as fh:
            return fh.get_tensor(f"{name}.weight").dtype, fh.metadata().get("hf_onebit_form")

    assert saved(str(tmp_path / "default")) == (torch.uint8, None)
    set_save_form(student, "latent")
    assert saved(str(tmp_path / "latent")) == (torch.float32, "latent")
    set_save_form(student, "packed")
    assert saved(str(tmp_path / "packed")) == (torch.uint8, None)
    with pytest.raises(ValueError, match=r"set_save_form: form='bits'; allowed: one of \('packed', 'latent'\)"):
        set_save_form(student, "bits")


def test_a_layer_that_no_float_weight_reached_is_refused_by_name():
    """On-the-fly quantization: each layer's float placeholder must have been replaced by packed bits while loading;
    the quantizer keeps the list of such layers itself (nothing is marked on the modules)."""
    from transformers import LlamaConfig

    from hf_onebit.integration.quantizer import OneBitHfQuantizer

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config)
    quantizer = OneBitHfQuantizer(OneBitConfig(), pre_quantized=False)
    quantizer._process_model_before_weight_loading(model)
    assert "model.layers.0.mlp.down_proj" in quantizer.placeholder_layers
    assert not any(name.startswith("_") for m in model.modules() for name in vars(m) if "placeholder" in name)
    with pytest.raises(ValueError, match=r"model\.layers\.0\..*\.weight: was not quantized while loading"):
        quantizer._process_model_after_weight_loading(model)
