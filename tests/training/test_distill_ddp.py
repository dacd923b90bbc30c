"""The same tiny distillation under `accelerate launch` with 2 CPU processes (DDP, gloo) and in one process.

Note: `accelerate launch --cpu --num_processes 2` starts ONE process (its --cpu path is the MPI launcher); two local
CPU processes need the torchrun-based launcher, i.e. `--multi_gpu --num_processes 2` with `use_cpu=True` in the
TrainingArguments (the script sets it), which is what this test runs.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from distill_utils import tiny_teacher_dir

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "distill_ddp_script.py")


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
                    reason="the accelerate launcher is not installed")
def test_ddp_two_processes_match_single_process(tmp_path):
    teacher = tiny_teacher_dir(str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    subprocess.run([sys.executable, SCRIPT, teacher, str(single), "8"], check=True, env=env, timeout=300,
                   capture_output=True)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29517", SCRIPT, teacher, str(multi), "8"]
    result = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = json.load(open(single)), json.load(open(multi))
    assert b["world"] == 2
    assert len(a["losses"]) == len(b["losses"]) == 6
    assert b["losses"] == pytest.approx(a["losses"], rel=2e-3)
    assert b["logits"] == pytest.approx(a["logits"], rel=2e-3, abs=2e-3)
