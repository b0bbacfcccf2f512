"""fusecomm.torch.optim on 2 and 3 ranks (tests/mp/torch_optim.py's docstring says what each
run checks on every rank)."""
import pytest

# The machine these run on is shared and loaded: give a slow peer a minute (not the default 15 s)
# to reach MPI_Finalize before the exit watchdog fires.
SLOW_EXIT = {"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "60"}

pytest.importorskip("torch")


@pytest.mark.parametrize("np_", [2, 3])
def test_torch_optim_multirank(ranks_runner, np_):
    out = ranks_runner("torch_optim.py", np_, env=SLOW_EXIT)
    assert out.count(f"torch_optim OK on {np_} ranks") == np_, out[-4000:]


def test_keras_optim_two_ranks(ranks_runner):
    pytest.importorskip("tensorflow")
    out = ranks_runner("keras_optim.py", 2, env=SLOW_EXIT)
    assert out.count("keras_optim OK on 2 ranks") == 2, out[-4000:]


def test_large_batch_example_runs_every_configuration(tmp_path):
    """examples/large_batch.py, shortened: every configuration trains on 4 ranks, the ranks end
    with the same model (the script asserts it) and the summaries are written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import CLEAN_ENV

    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "runs.jsonl"
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", "4",
           "--liveness-timeout-seconds", "60", "--", sys.executable,
           str(root / "examples" / "large_batch.py"), "--config", "all", "--seeds", "0",
           "--epochs", "4", "--warmup-epochs", "1", "--small-batch", "16", "--scale", "4", "--json", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stdout[-6000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"] for r in runs] == ["small", "sgd", "recipe", "lamb", "control", "adasum"]
    control = next(r for r in runs if r["config"] == "control")
    assert [h["batch"] for h in control["history"]] == [16, 64, 64, 64], control["history"]
    for r in runs:
        assert r["final_test_accuracy"] > 0.5, (r["config"], r["final_test_accuracy"])


@pytest.mark.parametrize("np_", [2, 3])
def test_keras_batch_size_control_multirank(ranks_runner, np_):
    pytest.importorskip("tensorflow")
    out = ranks_runner("keras_batch_control.py", np_, env=SLOW_EXIT)
    assert out.count(f"keras_batch_control OK on {np_} ranks") == np_, out[-4000:]
