"""op=Adasum against a NumPy reference of its pairwise formula on 2, 3, 4 and 8 ranks
(tests/mp/core_adasum.py), and through the torch and TensorFlow faces."""
import pytest

# The machine these run on is shared and loaded: give a slow peer a minute (not the default 15 s)
# to reach MPI_Finalize before the exit watchdog fires.
SLOW_EXIT = {"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "60"}


@pytest.mark.parametrize("np_", [2, 3, 4, 8])
def test_adasum_numpy(ranks_runner, np_):
    out = ranks_runner("core_adasum.py", np_, 1000 + np_, timeout=400, env=SLOW_EXIT)
    assert out.count(f"core_adasum OK on {np_} ranks") == np_, out[-4000:]


# The faces only route op=Adasum to the engine: one rank count each beyond the NumPy runs
# (TensorFlow is the slowest to start on the shared cores).
@pytest.mark.parametrize("np_,framework", [(2, "torch"), (3, "torch"), (2, "tensorflow")])
def test_adasum_frameworks(ranks_runner, np_, framework):
    pytest.importorskip(framework)
    out = ranks_runner("core_adasum.py", np_, 7, framework, timeout=400, env=SLOW_EXIT)
    assert out.count(f"core_adasum OK on {np_} ranks") == np_, out[-4000:]
