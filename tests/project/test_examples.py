"""The scripts in examples/ run end to end on tiny models (--tiny), in this process to save interpreter start-ups."""

import importlib
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


def run_example(name: str, *args: str) -> int:
    sys.path.insert(0, EXAMPLES)
    try:
        module = importlib.import_module(name)
        return module.main(["--tiny", *args])
    finally:
        sys.path.remove(EXAMPLES)


@pytest.mark.parametrize("name", ["quantize_and_generate", "lora_finetune", "push_to_hub_dry_run"])
def test_example_runs_on_a_tiny_model(name, tmp_path, capsys):
    extra = ["--steps", "8"] if name == "lora_finetune" else []
    assert run_example(name, "--workdir", str(tmp_path), *extra) == 0
    out = capsys.readouterr().out
    expected = {
        "quantize_and_generate": "reloaded logits identical to the quantized model: True",
        "lora_finetune": "reloaded logits identical: True",
        "push_to_hub_dry_run": "import hf_onebit",
    }[name]
    assert expected in out

