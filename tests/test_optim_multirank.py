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
