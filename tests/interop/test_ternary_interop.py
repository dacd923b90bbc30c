"""transformers' BitNet packed checkpoints -> hf_onebit ternary layers: same function, saved and reloaded by hf_onebit."""

import json
import os

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitNetConfig
from transformers.integrations.bitnet import BitLinear, pack_weights

import hf_onebit
from hf_onebit import OneBitLinear
from hf_onebit.interop import BitNetConversionError, convert_bitnet_model_, load_bitnet, unpack_bitnet_rows


def eager():
    """transformers' BitNet layers wrap their helpers in torch.compile; run them eagerly (same math, no compile)."""
    return torch.compiler.set_stance("force_eager")


def write_bitnet_checkpoint(path, linear_class="bitlinear", mode="offline", use_rms_norm=False, seed=0):
    """A tiny BitNet model whose ternary weights were packed by transformers' own ``pack_weights``."""
    torch.manual_seed(seed)
    config = BitNetConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                          attention_bias=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    model = AutoModelForCausalLM.from_config(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["lm_head.weight"] = 30 * state["lm_head.weight"]  # logits of a few units, not ~0.5
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        w = module.weight.detach() * 5  # BitNet config init is small; larger weights give larger logits
        state[f"{name}.weight"] = w
        if module.bias is not None:
            state[f"{name}.bias"] = 0.1 * torch.randn(module.out_features)
        if mode == "offline":
            gamma = w.abs().mean()
            state[f"{name}.weight"] = pack_weights((w / gamma).round().clamp(-1, 1))
            # BitLinear divides its output by weight_scale, AutoBitLinear multiplies by it
            scale = 1 / gamma if linear_class == "bitlinear" else gamma
            state[f"{name}.weight_scale"] = scale.reshape(1)
    config.quantization_config = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode,
                                  "use_rms_norm": use_rms_norm}
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return str(path)


@pytest.fixture
def ids():
    torch.manual_seed(2)
    return torch.randint(0, 128, (2, 13))


@pytest.mark.parametrize("out_features", [4, 5, 6, 7, 9, 64])
def test_unpack_bitnet_rows_inverts_transformers_pack_weights(out_features):
    torch.manual_seed(out_features)
    values = torch.randint(-1, 2, (out_features, 11)).float()
    packed = pack_weights(values.clone())  # note: pack_weights adds 1 to its argument in place
    assert packed.shape == ((out_features + 3) // 4, 11)
    assert torch.equal(unpack_bitnet_rows(packed, out_features), values.to(torch.int8))
    with pytest.raises(BitNetConversionError, match="rows"):
        unpack_bitnet_rows(packed, out_features + 4)
    with pytest.raises(BitNetConversionError, match="code 3"):
        unpack_bitnet_rows(torch.full_like(packed, 255), out_features)


def bitnet_layer_io(model, ids):
    """``{name: (input, output)}`` of every transformers BitNet layer during one forward of ``model``."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if type(module).__name__ in ("BitLinear", "AutoBitLinear"):
            hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__(name, (args[0].detach(), out.detach()))))
    with eager(), torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("linear_class,mode", [("bitlinear", "offline"), ("autobitlinear", "offline"),
                                               ("autobitlinear", "online")])
def test_converted_model_matches_transformers_and_reloads_bit_identically(tmp_path, ids, linear_class, mode):
    path = write_bitnet_checkpoint(tmp_path / "bitnet", linear_class, mode)
    with eager():
        reference = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            expected = reference(ids).logits
    io = bitnet_layer_io(reference, ids)
    assert len(io) == 14
    model = load_bitnet(path)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, OneBitLinear)}
    assert set(layers) == set(io) and all(m.weight_format == "ternary" and m.act_bits == 8 for m in layers.values())
    assert not any(type(m).__name__ in ("BitLinear", "AutoBitLinear") for m in model.modules())
    # Each layer, fed the very input transformers' layer saw, gives its output up to float rounding order
    # (measured max |diff| <= 1.2e-6 on outputs of size ~2).
    for name, (x, y) in io.items():
        with torch.no_grad():
            torch.testing.assert_close(layers[name](x), y, rtol=1e-5, atol=1e-5 * float(y.abs().max()), msg=name)
    # Whole model: those ulp differences can flip an int8 activation code that sits on a rounding tie in a later
    # layer, so logits agree closely but not bit for bit.
    with torch.no_grad():
        got = model(ids).logits
    assert expected.abs().max() > 5
    assert float((got - expected).norm() / expected.norm()) < 1e-2
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) > 0.95

    model.save_pretrained(tmp_path / "onebit")
    saved = json.load(open(tmp_path / "onebit" / "config.json"))["quantization_config"]
    assert saved["quant_method"] == "onebit" and saved["weight_format"] == "ternary" and saved["act_bits"] == 8
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "onebit")
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, got)


def test_rms_norm_variant_is_refused(tmp_path):
    path = write_bitnet_checkpoint(tmp_path / "rms", use_rms_norm=True)
    with pytest.raises(BitNetConversionError, match="use_rms_norm=True"):
        load_bitnet(path)
    with eager():
        model = AutoModelForCausalLM.from_pretrained(path)
    with pytest.raises(BitNetConversionError, match=r"model\.layers\.0\.self_attn\.q_proj: BitNet layers with use_rms_norm"):
        convert_bitnet_model_(model)
    assert isinstance(model.model.layers[0].self_attn.q_proj, BitLinear)  # nothing was modified


def test_unconvertible_models_are_refused(tmp_path):
    head = nn.Module()
    head.lm_head = BitLinear(8, 4, bias=False, dtype=torch.float32)
    with pytest.raises(BitNetConversionError, match="lm_head: is a BitNet layer"):
        convert_bitnet_model_(head)
    with pytest.raises(BitNetConversionError, match="no transformers BitNet layer"):
        convert_bitnet_model_(nn.Sequential(nn.Linear(4, 4)))
    scaled = nn.Module()
    scaled.proj = BitLinear(8, 4, bias=False, dtype=torch.float32)
    scaled.proj.weight_scale = torch.ones(3)
    with pytest.raises(BitNetConversionError, match=r"proj\.weight_scale: has 3 values"):
        convert_bitnet_model_(scaled)
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    with pytest.raises(BitNetConversionError, match="quant_method is None, expected 'bitnet'"):
        load_bitnet(save_tiny_llama(str(tmp_path / "float")))


def test_plain_module_with_a_bitlinear_is_converted_exactly():
    torch.manual_seed(0)
    layer = BitLinear(10, 8, bias=True, dtype=torch.float32)
    values = torch.randint(-1, 2, (8, 10)).float()
    layer.weight = pack_weights(values.clone())
    layer.weight_scale = torch.tensor([0.25])
    layer.bias = torch.randn(8)
    holder = nn.Module()
    holder.proj = layer
    x = torch.randn(3, 5, 10)
    with eager(), torch.no_grad():
        expected = layer(x)
    convert_bitnet_model_(holder)
    assert isinstance(holder.proj, OneBitLinear)
    torch.testing.assert_close(hf_onebit.formats.packing.unpack_ternary(holder.proj.weight, 10), values)
    assert torch.equal(holder.proj.scale_out, torch.full((8,), 4.0))
    with torch.no_grad():
        torch.testing.assert_close(holder.proj(x), expected, rtol=1e-5, atol=1e-5)
