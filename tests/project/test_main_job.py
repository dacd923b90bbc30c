"""README's main job (examples/main_job.py) end to end on a tiny random model: quantize, distill, save, reload, table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("weight_format,kind,folder,stages,recipe", [
    ("binary", "1-bit", "tiny-1bit", [], "progressive"),  # the default: the end-to-end stage alone
    ("ternary", "ternary", "tiny-ternary", [], "progressive"),
    ("ternary", "ternary", "tiny-ternary", ["--stages", "blockwise", "e2e", "--blockwise-steps", "2"], "bitnet"),
])
def test_main_job_tiny(tmp_path, weight_format, kind, folder, stages, recipe):
    cmd = [sys.executable, os.path.join(ROOT, "examples", "main_job.py"), "--tiny", "--max-steps", "3",
           "--workdir", str(tmp_path), "--weight-format", weight_format, *stages]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "held-out test perplexity" in out and f"{kind}, distilled" in out
    assert f"end-to-end stage: 3 steps ({recipe} recipe" in out
    assert ("block-wise stage: 2 steps per block" in out) == bool(stages)
    for domain in ("wiki", "news", "fiction", "technical", "geometric mean"):
        assert f"| {domain}" in out
    assert os.path.exists(tmp_path / folder / "model.safetensors")
    card = (tmp_path / folder / "README.md").read_text()  # the model card records the run
    assert f"end-to-end {recipe} |" in card and "3 steps" in card


def test_main_job_fits_distillation_into_the_job_time(tmp_path):
    """Without --time-budget / --max-steps the distillation gets what --job-time leaves after loading and the timed
    evaluation; a job time that leaves too little is refused with the field, the value and what is allowed."""
    script = os.path.join(ROOT, "examples", "main_job.py")
    refused = subprocess.run([sys.executable, script, "--tiny", "--workdir", str(tmp_path), "--job-time", "20s"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert "--job-time: got '20s'" in refused.stderr and "allowed: a job time leaving at least 60 s" in refused.stderr
    assert not (tmp_path / "tiny-1bit").exists()  # refused before training

    result = subprocess.run([sys.executable, script, "--tiny", "--workdir", str(tmp_path), "--job-time", "2m"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("job time 2.0 min:"))
    minutes = float(line.split("-> ")[1].split(" min")[0])  # "... -> 1.1 min of distillation"
    assert 1.0 <= minutes < 2.0
    assert "end-to-end stage:" in result.stdout and (tmp_path / "tiny-1bit" / "model.safetensors").exists()
