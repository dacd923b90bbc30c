"""examples/distill_smollm2.py runs end to end in its tiny mode (random 2-layer model, SmolLM2 tokenizer)."""

import os
import re
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "distill_smollm2.py")


@pytest.mark.real_model  # needs the cached SmolLM2 tokenizer
def test_distill_example_tiny(tmp_path):
    scratch = tmp_path / "tmp"  # the run's TMPDIR: the tiny teacher it saves there must not outlive the run
    scratch.mkdir()
    result = subprocess.run([sys.executable, EXAMPLE, "--max-steps", "2", "--tiny", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-3000:]
    # torch's own compile cache (torchinductor_<user>) is meant to stay; nothing else may
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    line = [l for l in result.stdout.splitlines() if l.startswith("held-out test perplexity")][-1]
    trained, reloaded = (float(v) for v in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", line))
    assert reloaded == pytest.approx(trained, rel=1e-2)
