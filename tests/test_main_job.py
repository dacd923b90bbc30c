"""README's main job (examples/main_job.py) end to end on a tiny random model: quantize, distill, save, reload, table."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_tiny(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "examples", "main_job.py"), "--tiny", "--max-steps", "3",
           "--workdir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "held-out perplexity" in out and "1-bit, distilled" in out and "SVID init only" in out
    assert os.path.exists(tmp_path / "tiny-1bit" / "model.safetensors")
