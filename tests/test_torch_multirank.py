"""fusecomm.torch on 2, 3 and 4 ranks: each script checks every result on every rank against
plain-torch references (see the scripts' docstrings) and prints one OK line per rank."""
import pytest

pytest.importorskip("torch")


@pytest.mark.parametrize("np_", [2, 3, 4])
@pytest.mark.parametrize("script", ["torch_ops.py", "torch_optimizer.py"])
def test_torch_multirank(ranks_runner, script, np_):
    out = ranks_runner(script, np_)
    assert out.count(f"OK on {np_} ranks") == np_, out[-4000:]
