"""Bad input and faults around the 1-bit core: every finding of the reliability review, each with the test that
failed before its fix (output folders, every load path, config values, CLI errors, caches, privacy)."""

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import hf_onebit
from hf_onebit import OneBitConfig
from hf_onebit.integration.checkpoint import CheckpointError, read_safetensors_header
from hf_onebit.cli import main
from hf_onebit.files.output import OutputError, OutputFolder

LAYER = "model.layers.1.self_attn.q_proj"


@pytest.fixture
def src(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    return path


@pytest.fixture
def saved(tmp_path, src):
    """A packed onebit checkpoint of the tiny model (safetensors), with exact activations (its dequantized form
    computes the same function)."""
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig(act_bits=0))
    out = tmp_path / "q"
    model.save_pretrained(out)
    return out


def _files(folder):
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}


# ---------------------------------------------------------------------------------------------- output folders
def test_quantize_onto_its_source_is_refused_and_the_source_is_untouched(src, capsys):
    before = _files(src)
    with pytest.raises(OutputError, match="is the source"):
        OutputFolder(src, sources=[src])
    assert main(["quantize", src, src]) == 2
    assert "is the source" in capsys.readouterr().err
    assert _files(src) == before
    AutoModelForCausalLM.from_pretrained(src)  # still the float model


def test_quantize_into_or_around_the_source_is_refused(src, tmp_path):
    assert main(["quantize", src, os.path.join(src, "inner")]) == 2
    assert not os.path.exists(os.path.join(src, "inner"))
    assert main(["quantize", src, os.path.dirname(src), "--overwrite"]) == 2  # replacing it would delete SRC
    assert os.path.exists(os.path.join(src, "config.json"))


def test_output_that_is_a_file_is_refused_before_any_work(src, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert main(["quantize", src, str(target)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "model card" not in err
    assert target.read_text() == "keep me"


def test_save_pretrained_onto_a_file_raises_instead_of_claiming_success(saved, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(saved)
    target = tmp_path / "f"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="nothing was saved"):
        hf_onebit.save_pretrained(model, target)


def test_non_empty_output_needs_overwrite_and_is_then_replaced_whole(src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "stray.safetensors").write_bytes(b"0" * 5_000_000)
    assert main(["quantize", src, str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()) == {"mine": True}
    assert main(["quantize", src, str(out), "--overwrite"]) == 0
    table = capsys.readouterr().out
    assert not (out / "stray.safetensors").exists()
    assert "quantization_config" in json.loads((out / "config.json").read_text())
    onebit_mb = float([line for line in table.splitlines() if line.startswith("| 1-bit")][-1].split("|")[2])
    assert onebit_mb < 1.0  # the 5 MB stray file is not counted
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n or ".old-" in n]


def test_source_size_is_measured_before_anything_is_written(src, tmp_path, capsys):
    assert main(["quantize", src, str(tmp_path / "q")]) == 0
    table = capsys.readouterr().out
    source_mb = float([line for line in table.splitlines() if line.startswith("| source")][0].split("|")[2])
    assert source_mb == pytest.approx(os.path.getsize(os.path.join(src, "model.safetensors")) / 1e6, rel=1e-3)


def test_a_second_writer_of_the_same_output_is_refused(src, tmp_path, capsys):
    out = tmp_path / "out"
    with OutputFolder(out):
        assert main(["quantize", src, str(out)]) == 2
        assert "another process is writing" in capsys.readouterr().err
    assert os.listdir(out) == []  # the holder committed its (empty) folder; the refused writer wrote nothing


def test_a_failed_write_leaves_no_output_folder(src, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main(["quantize", src, str(out)])
    assert not out.exists()
    left = set(os.listdir(tmp_path)) - {os.path.basename(src)}
    assert all(name.endswith("-lock") for name in left), left  # no partial folder either


def test_a_stale_partial_folder_of_a_killed_writer_is_removed(src, tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-999999-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(["quantize", src, str(out)]) == 0
    assert not stale.exists() and (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------- load paths
def _as_bin(folder, mutate=lambda sd: None):
    """Rewrite a saved safetensors checkpoint as pytorch_model.bin (the path validate_checkpoint used to skip)."""
    state = load_file(os.path.join(folder, "model.safetensors"))
    mutate(state)
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(state, os.path.join(folder, "pytorch_model.bin"))


def test_bin_checkpoint_loads_and_is_validated(saved, input_ids):
    ref = AutoModelForCausalLM.from_pretrained(saved)(input_ids).logits
    _as_bin(saved)
    assert torch.equal(AutoModelForCausalLM.from_pretrained(saved)(input_ids).logits, ref)


@pytest.mark.parametrize("tensor", [f"{LAYER}.weight", f"{LAYER}.scale_in", "model.embed_tokens.weight",
                                    "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"])
def test_missing_tensor_in_a_bin_checkpoint_is_named(saved, tensor):
    _as_bin(saved, lambda sd: sd.pop(tensor))
    with pytest.raises(CheckpointError, match=rf"{tensor}: missing"):
        AutoModelForCausalLM.from_pretrained(saved)


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                                    "model.layers.1.post_attention_layernorm.weight"])
def test_missing_float_tensor_in_a_safetensors_checkpoint_is_named(saved, tensor):
    path = os.path.join(saved, "model.safetensors")
    with open(path, "rb") as fh:
        metadata = read_safetensors_header(path)[1]
    state = load_file(path)
    state.pop(tensor)
    save_file(state, path, metadata=metadata)
    with pytest.raises(CheckpointError, match=rf"{tensor}: missing"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_misshaped_float_tensor_is_named(saved):
    path = os.path.join(saved, "model.safetensors")
    metadata = read_safetensors_header(path)[1]
    state = load_file(path)
    state["model.norm.weight"] = torch.ones(71)
    save_file(state, path, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: the checkpoint holds F32 \(71,\)"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_tied_checkpoint_without_lm_head_loads(tmp_path, tiny_checkpoint, input_ids):
    path, _ = tiny_checkpoint("llama", tied=True)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=OneBitConfig())
    model.save_pretrained(tmp_path / "q")
    assert "lm_head.weight" not in load_file(str(tmp_path / "q" / "model.safetensors"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert torch.equal(again(input_ids).logits, model(input_ids).logits)


def test_post_layernorm_edited_into_config_is_refused(saved):
    cfg_path = os.path.join(saved, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["quantization_config"]["post_layernorm"] = True
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(CheckpointError, match="saved with post_layernorm=False"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_act_bits_edited_into_config_warns(saved, caplog):
    cfg_path = os.path.join(saved, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["quantization_config"]["act_bits"] = 8
    json.dump(cfg, open(cfg_path, "w"))
    with caplog.at_level("WARNING", logger="hf_onebit.integration.checkpoint"):
        AutoModelForCausalLM.from_pretrained(saved)
    assert "act_bits=0" in caplog.text and "act_bits=8" in caplog.text


def test_huge_claimed_header_is_refused_without_reading_it(tmp_path, monkeypatch):
    import builtins
    import struct

    path = tmp_path / "big.safetensors"
    size = 300_000_000
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", size - 8))
        fh.truncate(size)  # sparse: nothing is really on disk
    reads = []
    real_open = builtins.open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Spy(real_open(p, *a, **k)) if str(p) == str(path)
                        else real_open(p, *a, **k))
    with pytest.raises(CheckpointError, match="at most 100000000"):
        read_safetensors_header(str(path))
    assert max(reads) <= 8


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"a": 5}', b'{"a": {"dtype": "U8", "shape": [2], '
                                    b'"data_offsets": [4, 2]}}', b'{"a": {"dtype": "U8", "shape": "x", '
                                    b'"data_offsets": [0, 2]}}', b'{"__metadata__": {"k": 1}}'])
def test_malformed_header_gives_a_checkpoint_error(tmp_path, header):
    import struct

    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match="corrupted safetensors header"):
        read_safetensors_header(str(path))


# ---------------------------------------------------------------------------------------------- transformers 5.24
def test_dequantize_after_save_pretrained(saved, tmp_path, input_ids):
    model = AutoModelForCausalLM.from_pretrained(saved)
    ref = model(input_ids).logits
    model.save_pretrained(tmp_path / "again")  # after this, config.dtype is the string "float32"
    model.dequantize()
    assert not any(isinstance(m, hf_onebit.OneBitLinear) for m in model.modules())
    assert torch.allclose(model(input_ids).logits, ref, atol=1e-4)


def test_dequantize_dtype_names_are_checked(saved):
    model = AutoModelForCausalLM.from_pretrained(saved)
    with pytest.raises(ValueError, match="allowed: a floating torch dtype"):
        hf_onebit.dequantize_(model, "int8")
    hf_onebit.dequantize_(model, "torch.bfloat16")
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_self_generation_uses_no_deprecated_transformers_argument():
    from hf_onebit.fixtures.tiny_model import byte_tokenizer, tiny_llama
    from hf_onebit.training.data import generate_prompted_data, generate_self_data

    model, tok = tiny_llama(), byte_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert generate_self_data(model, tok, 2, 6, progress=False).shape == (2, 6)
        assert generate_prompted_data(model, tok, 2, 8, prompts=["Hi", "Yo", "A", "B"], max_new_tokens=4,
                                      progress=False).shape == (2, 8)


def test_checkpointing_argument_is_the_installed_transformers_name():
    import dataclasses

    from transformers import TrainingArguments

    from hf_onebit.integration.compat import checkpointing_kwargs

    (name,) = checkpointing_kwargs(True)
    assert name in {f.name for f in dataclasses.fields(TrainingArguments)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **checkpointing_kwargs(True))


# ---------------------------------------------------------------------------------------------- config values
def test_one_module_name_is_one_name(tiny_checkpoint):
    path, _ = tiny_checkpoint("llama")
    config = OneBitConfig(modules_to_not_convert="mlp")
    assert config.modules_to_not_convert == ["mlp"]
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config)
    assert not isinstance(model.model.layers[0].mlp.up_proj, hf_onebit.OneBitLinear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, hf_onebit.OneBitLinear)


@pytest.mark.parametrize("field, value", [("act_bits", 8.0), ("format_version", 1.9), ("format_version", True),
                                          ("modules_to_not_convert", 5), ("init_iters", 10**9), ("act_bits", True)])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"OneBitConfig\.{field}"):
        OneBitConfig(**{field: value})


# ---------------------------------------------------------------------------------------------- CLI errors
def test_mistyped_local_path_is_reported_as_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match="folder .* does not exist"):
        main(["quantize", str(tmp_path / "no-such-model"), str(tmp_path / "out")])
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="folder .* does not exist"):
        main(["info", os.path.join(str(tmp_path / "runs"), "typo")])


@pytest.mark.parametrize("value", ["0", "-5", "1"])
def test_eval_seq_len_below_two_is_refused(value, saved):
    with pytest.raises(SystemExit, match="--seq-len: got"):
        main(["eval", str(saved), "--text", __file__, "--seq-len", value])


def test_eval_binary_text_is_refused(saved, tmp_path):
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(SystemExit, match="is not UTF-8 text"):
        main(["eval", str(saved), "--text", str(binary)])


def test_info_on_a_corrupt_header_is_one_line(saved, capsys):
    path = os.path.join(saved, "model.safetensors")
    with open(path, "r+b") as fh:
        fh.seek(8)
        fh.write(b'{"x": 1}' + b" " * 20)
    assert main(["info", str(saved)]) == 2
    err = capsys.readouterr().err
    assert "corrupted safetensors header" in err and "Traceback" not in err


def test_distill_help_is_plain_text_and_every_option_is_explained():
    from hf_onebit.cli import build_parser

    parser = build_parser()
    distill = parser._subparsers._group_actions[0].choices["distill"]
    text = distill.format_help()
    assert "``" not in text and ":mod:" not in text
    for action in distill._actions:
        assert action.help, f"{action.option_strings} has no help"


# ---------------------------------------------------------------------------------------------- privacy
def test_config_json_holds_no_local_path(src, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", src, str(out)]) == 0
    text = (out / "config.json").read_text()
    assert str(tmp_path) not in text and os.path.dirname(src) not in text
    assert json.loads(text)["onebit_card"]["teacher"] == f"{os.path.basename(src)} (local checkpoint)"
    assert hf_onebit.interop.hub.CARD_MARKER in (out / "README.md").read_text()  # the command writes the model card


def test_ci_tests_both_ends_of_the_supported_transformers_range():
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pyproject = open(os.path.join(root, "pyproject.toml"), encoding="utf-8").read()
    low, high = re.search(r'"transformers>=([\d.]+),<([\d.]+)"', pyproject).groups()
    ci = open(os.path.join(root, ".ci", "run"), encoding="utf-8").read()
    assert "bash scripts/test.sh\n" in ci  # the newest release the range allows
    oldest = re.search(r'HF_ONEBIT_TRANSFORMERS="transformers==([\d.]+)"', ci).group(1)
    assert tuple(map(int, oldest.split("."))) == tuple(map(int, (low + ".0").split(".")[:3]))
    assert tuple(map(int, high.split("."))) > tuple(map(int, oldest.split(".")))
