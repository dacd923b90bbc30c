"""hf_onebit.set_runtime: act_bits / backend of a loaded model (a saved config wins over one given to from_pretrained)."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit import OneBitConfig, OneBitLinear
from hf_onebit.integration.checkpoint import ACT_BITS_KEY
from hf_onebit import ops
from hf_onebit.ops import reference


def layers(model):
    return [m for m in model.modules() if isinstance(m, OneBitLinear)]


def test_set_runtime_changes_every_layer_and_what_is_saved(tmp_path, tiny_checkpoint, input_ids):
    src, _ = tiny_checkpoint("llama", hidden=72, tied=False)
    AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(act_bits=0)).save_pretrained(tmp_path / "q")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert {m.act_bits for m in layers(model)} == {0}
    with torch.no_grad():
        exact = model(input_ids).logits
    assert hf_onebit.set_runtime(model, act_bits=8) == len(layers(model))
    assert {m.act_bits for m in layers(model)} == {8} and {m.backend for m in layers(model)} == {"auto"}
    # the layers now compute with int8 activations: the reference of one layer with act_bits=8, and a model output
    # that differs from the exact one (slightly)
    layer = layers(model)[0]
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        expected = reference.binary_linear(x, layer.weight, layer.scale_in, layer.scale_out, None, layer.in_features, 8)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
        int8 = model(input_ids).logits
    assert not torch.equal(int8, exact)
    torch.testing.assert_close(int8, exact, rtol=0.1, atol=0.1)
    assert hf_onebit.set_runtime(model, act_bits=8) == 0  # nothing left to change
    # what is saved records the setting: config.json and the weights' metadata agree, and a reload runs int8
    model.save_pretrained(tmp_path / "q8")
    assert json.loads((tmp_path / "q8" / "config.json").read_text())["quantization_config"]["act_bits"] == 8
    with safe_open(str(tmp_path / "q8" / "model.safetensors"), "pt") as f:
        assert f.metadata()[ACT_BITS_KEY] == "8"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q8")
    assert {m.act_bits for m in layers(reloaded)} == {8}
    hf_onebit.set_runtime(reloaded, backend="reference", act_bits=0)
    assert {(m.act_bits, m.backend) for m in layers(reloaded)} == {(0, "reference")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, exact, rtol=1e-4, atol=1e-4)


def test_auto_act_bits_is_int8_on_the_cpu(tmp_path, tiny_checkpoint, input_ids):
    """The default ``act_bits="auto"`` runs a CPU model with int8 activations (the fast CPU path), is what a saved
    model records, and is exactly ``act_bits=8`` there; ``set_runtime(act_bits=0)`` gives the exact output back."""
    assert ops.resolve_act_bits("auto", "cpu") == 8 and ops.resolve_act_bits("auto", "meta") == 0
    assert ops.resolve_act_bits("auto", torch.device("cuda", 0)) == 0
    assert [ops.resolve_act_bits(bits, "cpu") for bits in (0, 8)] == [0, 8]
    src, _ = tiny_checkpoint("llama", hidden=72, tied=False)
    AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig()).save_pretrained(tmp_path / "q")
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["act_bits"] == "auto"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert {m.act_bits for m in layers(model)} == {"auto"}
    with torch.no_grad():
        auto = model(input_ids).logits
        hf_onebit.set_runtime(model, act_bits=8)
        int8 = model(input_ids).logits
        hf_onebit.set_runtime(model, act_bits=0)
        exact = model(input_ids).logits
        hf_onebit.set_runtime(model, act_bits="auto")
        again = model(input_ids).logits
    assert torch.equal(auto, int8) and torch.equal(again, int8) and not torch.equal(auto, exact)
    layer = layers(model)[0]
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        expected = reference.binary_linear(x, layer.weight, layer.scale_in, layer.scale_out, None, layer.in_features, 8)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
        assert layer.prepare() in (True, False)  # the layer's own setting resolves for prepare() as well


@pytest.mark.parametrize("kwargs,field", [({"act_bits": 4}, "act_bits"), ({"act_bits": True}, "act_bits"),
                                          ({"act_bits": "fast"}, "act_bits"), ({"backend": "cuda"}, "backend")])
def test_set_runtime_refuses_bad_values(tiny_checkpoint, kwargs, field):
    src, _ = tiny_checkpoint("llama", hidden=72, tied=False)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig())
    with pytest.raises(ValueError, match=rf"set_runtime: {field}: got .*; allowed"):
        hf_onebit.set_runtime(model, **kwargs)
    assert {(m.act_bits, m.backend) for m in layers(model)} == {("auto", "auto")}  # nothing changed


def test_set_runtime_needs_onebit_layers(tiny_checkpoint):
    _, float_model = tiny_checkpoint("llama", hidden=72, tied=False)
    with pytest.raises(ValueError, match=r"has no 1-bit layer \(OneBitLinear\)"):
        hf_onebit.set_runtime(float_model, act_bits=8)
