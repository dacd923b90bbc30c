import json
import warnings

import pytest

from hf_onebit import OneBitConfig


@pytest.mark.parametrize(
    "field,value",
    [
        ("init", "qr"),
        ("init_iters", 0),
        ("init_iters", True),
        ("post_layernorm", "yes"),
        ("scale_dtype", "int8"),
        ("backend", "cuda"),
        ("act_bits", 4),
        ("act_bits", "fast"),
        ("act_bits", True),
        ("head_bits", 4),
        ("head_bits", True),
        ("head_bits", "auto"),
        ("weight_format", "int4"),
        ("format_version", 99),
        ("training", 1),
        ("modules_to_not_convert", [""]),
    ],
)
def test_invalid_values_name_field_value_and_allowed(field, value):
    with pytest.raises(ValueError) as err:
        OneBitConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg or str(value) in msg
    assert "allowed" in msg or "supported" in msg


def test_json_roundtrip_and_defaults():
    cfg = OneBitConfig(init="nmf", scale_dtype="bfloat16", modules_to_not_convert=["mlp.down_proj"], act_bits=8)
    data = json.loads(cfg.to_json_string())
    assert data["quant_method"] == "onebit" and data["init"] == "nmf" and data["act_bits"] == 8
    again = OneBitConfig.from_dict(data)
    assert again.to_dict() == cfg.to_dict()


def test_act_bits_defaults_to_auto_and_round_trips():
    assert OneBitConfig().act_bits == "auto" and OneBitConfig().to_dict()["act_bits"] == "auto"
    for value in (0, 8, "auto"):
        assert OneBitConfig.from_dict(json.loads(OneBitConfig(act_bits=value).to_json_string())).act_bits == value


def test_head_bits_defaults_to_8_and_round_trips():
    assert OneBitConfig().head_bits == 8 and OneBitConfig().to_dict()["head_bits"] == 8
    for value in (16, 8):
        assert OneBitConfig.from_dict(json.loads(OneBitConfig(head_bits=value).to_json_string())).head_bits == value
    saved_before = {k: v for k, v in OneBitConfig().to_dict().items() if k != "head_bits"}
    assert OneBitConfig.from_dict(saved_before).head_bits == 8  # a checkpoint saved without the field


def test_training_is_not_saved():
    assert OneBitConfig(training=True).to_dict()["training"] is False


def test_unknown_keys_from_newer_versions_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = OneBitConfig.from_dict({"quant_method": "onebit", "future_knob": 3})
    assert any("future_knob" in str(w.message) for w in caught)
    assert "future_knob" not in cfg.to_dict()


def test_registered_with_transformers():
    import importlib

    import hf_onebit
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    importlib.reload(hf_onebit.integration.registration)
    hf_onebit.integration.registration.register()  # idempotent
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["onebit"].__name__ == "OneBitConfig"
    assert AUTO_QUANTIZER_MAPPING["onebit"].__name__ == "OneBitHfQuantizer"
