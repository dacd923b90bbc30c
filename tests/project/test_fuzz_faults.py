"""Fuzz-and-fault suite: random checkpoint headers and configs, a writer killed mid-write, concurrent writers and
kernel builds, a damaged kernel cache. What must hold: no hang, no crash without a message, no silent load."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_onebit import OneBitConfig
from hf_onebit.integration.checkpoint import CheckpointError, read_safetensors_header, validate_checkpoint

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
ENTRY = st.fixed_dictionaries({"dtype": st.sampled_from(["U8", "F16", "F32", "I64", "X"]) | JSON,
                               "shape": st.lists(st.integers(-2, 70), max_size=3) | JSON,
                               "data_offsets": st.lists(st.integers(-5, 5000), min_size=2, max_size=2) | JSON})


def _write(path, header: bytes, data: bytes = b"", claimed=None):
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header) if claimed is None else claimed) + header + data)


@FAST
@given(header=st.dictionaries(st.text(max_size=12), ENTRY | JSON, max_size=4) | JSON,
       data=st.binary(max_size=64), claimed=st.none() | st.integers(0, 2**64 - 1))
def test_any_header_reads_or_raises_a_checkpoint_error(tmp_path_factory, header, data, claimed):
    path = tmp_path_factory.mktemp("h") / "x.safetensors"
    _write(path, json.dumps(header).encode(), data, claimed)
    try:
        tensors, metadata = read_safetensors_header(str(path))
    except CheckpointError:
        return
    size = os.path.getsize(path)
    for info in tensors.values():  # what is accepted is well formed and inside the file
        assert all(isinstance(d, int) and d >= 0 for d in info["shape"])
        begin, end = info["data_offsets"]
        assert 0 <= begin <= end <= size
    assert all(isinstance(v, str) for v in metadata.values())


@pytest.fixture(scope="module")
def packed_checkpoint(tmp_path_factory):
    """``(folder, state_dict)`` of a saved packed tiny model."""
    from transformers import AutoModelForCausalLM

    import hf_onebit  # noqa: F401
    from hf_onebit.fixtures.tiny_model import tiny_llama

    src = tmp_path_factory.mktemp("float") / "m"
    tiny_llama().save_pretrained(src)
    folder = tmp_path_factory.mktemp("ckpt") / "q"
    AutoModelForCausalLM.from_pretrained(src, quantization_config=OneBitConfig()).save_pretrained(folder)
    return folder, AutoModelForCausalLM.from_pretrained(folder).state_dict()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 400), junk=st.binary(min_size=1, max_size=24))
def test_corrupted_header_bytes_never_load_silently(packed_checkpoint, tmp_path_factory, offset, junk):
    """Bytes of the header overwritten at random: the load either refuses with a CheckpointError or (when the
    junk left the header's meaning intact) validates exactly the tensors the model expects."""
    from transformers import AutoModelForCausalLM

    import hf_onebit  # noqa: F401

    folder, original = packed_checkpoint
    target = tmp_path_factory.mktemp("c")
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as src, open(target / name, "wb") as dst:
            dst.write(src.read())
    path = target / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    start = min(offset, header_len + 8 - 1)
    raw[start:start + len(junk)] = junk[: max(0, header_len + 8 - start)]
    path.write_bytes(bytes(raw))
    try:
        model = AutoModelForCausalLM.from_pretrained(target)
    except CheckpointError:
        return  # refused with a named error
    # it loaded: then the header still described every tensor correctly and the weights are the original ones
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


CONFIG_VALUES = {
    "modules_to_not_convert": st.none() | st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3) | JSON,
    "init": st.sampled_from(["svid", "nmf", "x"]) | JSON,
    "init_iters": st.integers(-3, 20_000) | JSON,
    "post_layernorm": st.booleans() | JSON,
    "scale_dtype": st.sampled_from(["float16", "bfloat16", "float32", "int8"]) | JSON,
    "backend": st.sampled_from(["auto", "reference", "cpu", "triton", "gpu"]) | JSON,
    "act_bits": st.sampled_from([0, 8, 4, 8.0, "8"]) | JSON,
    "weight_format": st.sampled_from(["binary", "ternary", "quaternary"]) | JSON,
    "format_version": st.sampled_from([1, 2, 1.9, "1", True]) | JSON,
    "training": st.booleans() | JSON,
}


@FAST
@given(st.fixed_dictionaries({}, optional=CONFIG_VALUES))
def test_any_config_is_valid_or_names_its_field(fields):
    try:
        config = OneBitConfig(**fields)
    except ValueError as err:
        assert str(err).startswith("OneBitConfig."), err
        assert str(err).split(":")[0].removeprefix("OneBitConfig.") in CONFIG_VALUES
        return
    again = OneBitConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    json.dumps(config.to_dict())  # it can be written into config.json


# ---------------------------------------------------------------------------------------------- processes
def _env(cache=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    if cache is not None:
        env["HF_ONEBIT_CACHE"] = str(cache)
    return env


def _quantize(src, out, env=None):
    return subprocess.Popen([sys.executable, "-m", "hf_onebit.cli", "quantize", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _env())


@pytest.fixture(scope="module")
def float_src(tmp_path_factory):
    from hf_onebit.fixtures.tiny_model import save_tiny_llama

    return save_tiny_llama(str(tmp_path_factory.mktemp("src") / "tiny"))


def _complete_or_absent(out):
    """OUT is absent, or a complete checkpoint that loads (never a half-written folder)."""
    from transformers import AutoModelForCausalLM

    import hf_onebit  # noqa: F401

    if not os.path.exists(out):
        return "absent"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out)), os.listdir(out)
    AutoModelForCausalLM.from_pretrained(out)
    return "complete"


@pytest.mark.slow
def test_quantize_killed_at_any_moment_leaves_nothing_or_everything(float_src, tmp_path):
    seen = set()
    for i, delay in enumerate((1.0, 2.5, 4.0, 6.0, None)):
        out = tmp_path / f"out{i}"
        proc = _quantize(float_src, out)
        if delay is not None:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=300)
        seen.add(_complete_or_absent(out))
        # the next writer of the same OUT succeeds and clears what a killed writer left behind
        if not os.path.exists(out):
            assert _quantize(float_src, out).wait(timeout=300) == 0
            assert _complete_or_absent(out) == "complete"
        assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]
    assert "complete" in seen


@pytest.mark.slow
def test_concurrent_writers_of_one_output_never_both_succeed(float_src, tmp_path):
    out = tmp_path / "out"
    procs = [_quantize(float_src, out) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "another process is writing" in loser or "non-empty folder" in loser
    assert _complete_or_absent(out) == "complete"


KERNEL_CALL = """
import torch, hf_onebit
from hf_onebit.ops.cpu.binding import library
assert library() is not None, "no kernel library"
torch.manual_seed(0)
w = torch.randint(0, 256, (64, 16), dtype=torch.uint8)
x, g, h = torch.randn(3, 128), torch.rand(128) + 0.5, torch.rand(64) + 0.5
y = hf_onebit.ops.packed_linear(x, w, g, h, None, 128, 0, "cpu", "binary")
ref = hf_onebit.ops.packed_linear(x, w, g, h, None, 128, 0, "reference", "binary")
assert torch.allclose(y, ref, atol=1e-4), (y - ref).abs().max()
print("ok")
"""


def _kernel_process(cache):
    return subprocess.Popen([sys.executable, "-c", KERNEL_CALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(cache))


@pytest.mark.slow
def test_concurrent_kernel_builds_and_a_damaged_kernel_cache(tmp_path):
    from hf_onebit.ops.cpu import build

    procs = [_kernel_process(tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("compiling the CPU kernels" in err for _, err in outs) == 1  # one built, the other waited
    (library,) = tmp_path.glob("cpu-*/libhf_onebit_cpu.so")
    assert build.is_intact(library)
    for damage in ("truncate", "flip"):
        data = library.read_bytes()
        library.write_bytes(data[: len(data) // 3] if damage == "truncate" else data[:-100] + bytes(100))
        proc = _kernel_process(tmp_path)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (damage, proc.returncode, err)  # rc 135 (SIGBUS) before the fix
        assert "damaged" in err and out.strip() == "ok"
        assert build.is_intact(library)
