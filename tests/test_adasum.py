"""op=Adasum against a NumPy reference of its pairwise formula on 2, 3, 4 and 8 ranks
(tests/mp/core_adasum.py), and through the torch and TensorFlow faces."""
import pytest


@pytest.mark.parametrize("np_", [2, 3, 4, 8])
def test_adasum_numpy(ranks_runner, np_):
    out = ranks_runner("core_adasum.py", np_, 1000 + np_, timeout=400)
    assert out.count(f"core_adasum OK on {np_} ranks") == np_, out[-4000:]


# TensorFlow on 2 ranks only: three TF processes on the shared two cores are slow enough to
# exceed MPI_Finalize's grace period at exit.
@pytest.mark.parametrize("np_,framework", [(2, "torch"), (3, "torch"), (2, "tensorflow")])
def test_adasum_frameworks(ranks_runner, np_, framework):
    pytest.importorskip(framework)
    out = ranks_runner("core_adasum.py", np_, 7, framework, timeout=400)
    assert out.count(f"core_adasum OK on {np_} ranks") == np_, out[-4000:]
