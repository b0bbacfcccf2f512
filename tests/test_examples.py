"""The examples train for real under `fusecomm run -np 4`, and a timeline written during the
PyTorch run parses as a Chrome trace with the engine's activities."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLEAN_ENV

ROOT = Path(__file__).resolve().parent.parent


def run_example(script, *args, timeout=400):
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", "4", *args, "--",
           sys.executable, str(ROOT / "examples" / script)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def test_pytorch_example_learns_and_writes_a_timeline(tmp_path):
    pytest.importorskip("torch")
    timeline = tmp_path / "train_timeline.json"
    out = run_example("pytorch_train.py", "--timeline", str(timeline))
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.85, out[-3000:]
    events = json.loads(timeline.read_text())
    rows = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert any(name.startswith("allreduce.") for name in rows), rows
    phases = {e.get("name") for e in events if e.get("ph") == "B"}
    assert {"NEGOTIATE_allreduce", "QUEUE", "ALLREDUCE", "MEMCPY_IN_FUSION_BUFFER"} <= phases, phases
    fused = [e for e in events if e.get("name") == "ALLREDUCE" and e["args"]["tensors"] > 1]
    assert fused, "gradients were never fused"


def test_keras_example_learns():
    pytest.importorskip("tensorflow")
    out = run_example("keras_train.py")
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    assert accuracy > 0.85, out[-3000:]
