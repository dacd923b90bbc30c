"""README's main job (examples/main_job.py) end to end on a tiny random model: quantize, distill, save, reload, table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("weight_format,kind,init,folder", [
    ("binary", "1-bit", "SVID", "tiny-1bit"),
    ("ternary", "ternary", "absmean ternary", "tiny-ternary"),
])
def test_main_job_tiny(tmp_path, weight_format, kind, init, folder):
    cmd = [sys.executable, os.path.join(ROOT, "examples", "main_job.py"), "--tiny", "--max-steps", "3",
           "--workdir", str(tmp_path), "--weight-format", weight_format]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "held-out perplexity" in out and f"{kind}, distilled" in out and f"{init} init only" in out
    assert os.path.exists(tmp_path / folder / "model.safetensors")
