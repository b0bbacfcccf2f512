"""Single-process tests of the core: bad input gives clear exceptions, never a crash."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusecomm as hvd
from conftest import CLEAN_ENV, MP_DIR, mpi_env


def run_python(code, timeout=60):
    # -P: the installed package, not the source tree in the working directory.
    return subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(code)], env=mpi_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def test_use_before_init_and_after_shutdown():
    proc = run_python("""
        import numpy as np, fusecomm as hvd
        for fn in (hvd.rank, hvd.size, lambda: hvd.allreduce(np.ones(2))):
            try:
                fn()
                raise SystemExit("no error before init")
            except ValueError as e:
                assert "not been initialized" in str(e), e
        hvd.init()
        assert hvd.is_initialized() and hvd.size() == 1
        hvd.shutdown()
        assert not hvd.is_initialized()
        try:
            hvd.allreduce(np.ones(2))
            raise SystemExit("no error after shutdown")
        except hvd.NotInitializedError as e:
            assert "init()" in str(e), e
        hvd.init()  # init again after shutdown works
        assert hvd.allreduce(np.ones(2), op=hvd.Sum).tolist() == [1.0, 1.0]
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def engine():
    hvd.init()
    yield hvd
    hvd.shutdown()


def test_single_rank_results(engine):
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(hvd.allreduce(x, op=hvd.Sum), x)
    assert np.array_equal(hvd.allreduce(x), x)
    assert np.array_equal(hvd.allgather(x.reshape(5, 2)), x.reshape(5, 2))
    assert np.array_equal(hvd.broadcast(x, 0), x)
    out, splits = hvd.alltoall(x)
    assert np.array_equal(out, x) and splits.tolist() == [10]
    assert np.array_equal(hvd.reducescatter(x, op=hvd.Sum), x)
    hvd.barrier()
    assert hvd.rank() == 0 and hvd.local_rank() == 0 and hvd.cross_size() == 1


def test_async_handles(engine):
    h = hvd.allreduce_async(np.ones(3), name="async")
    out = hvd.synchronize(h)
    assert out.tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="unknown handle"):
        hvd.synchronize(h)
    with pytest.raises(ValueError, match="unknown handle"):
        hvd.poll(123456)


@pytest.mark.parametrize("bad, exc, match", [
    (np.ones(5, np.uint32), TypeError, "does not support dtype uint32"),
    (np.ones(5, np.complex64), TypeError, "does not support dtype complex64"),
    (np.array(["a", "b"]), TypeError, "does not support dtype"),
    (np.array([object()]), TypeError, "does not support dtype"),
    (np.ones((4, 4))[:, 1], ValueError, "C-contiguous"),
    ("text", TypeError, "does not support dtype"),
])
def test_bad_tensors(engine, bad, exc, match):
    with pytest.raises(exc, match=match):
        hvd.allreduce(bad)


def test_bad_arguments(engine):
    x = np.ones(4)
    with pytest.raises(ValueError, match="unknown reduce op"):
        hvd.allreduce(x, op=17)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.allreduce(x, op=hvd.Adasum)
    with pytest.raises(ValueError, match="either op= or"):
        hvd.allreduce(x, op=hvd.Sum, average=True)
    with pytest.raises(ValueError, match="unknown all-reduce algorithm 'fastest'"):
        hvd.allreduce(x, algorithm="fastest")
    with pytest.raises(ValueError, match="root rank 3 is out of range"):
        hvd.broadcast(x, 3)
    with pytest.raises(ValueError, match="root rank -1 is out of range"):
        hvd.broadcast(x, -1)
    with pytest.raises(ValueError, match="splits sum to 3"):
        hvd.alltoall(x, splits=[3])
    with pytest.raises(ValueError, match="one per rank"):
        hvd.alltoall(x, splits=[2, 2])
    with pytest.raises(ValueError, match="at least one dimension"):
        hvd.allgather(np.float64(3.0))
    with pytest.raises(ValueError, match="Average is not defined for bool"):
        hvd.allreduce(np.ones(3, bool), op=hvd.Average)
    with pytest.raises(TypeError, match="prescale_factor must be a finite number"):
        hvd.allreduce(x, prescale_factor="two")
    with pytest.raises(TypeError, match="name must be a string"):
        hvd.allreduce(x, name=5)
    readonly = np.ones(3)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        hvd.allreduce_(readonly)
    assert hvd.allreduce(readonly, op=hvd.Sum).tolist() == [1.0] * 3  # reading is fine
    with pytest.raises(TypeError, match="unknown setting"):
        hvd.init(fusion_treshold=5)


def test_buffer_protocol_and_dlpack(engine):
    assert hvd.allreduce(memoryview(np.arange(3.0)), op=hvd.Sum).tolist() == [0.0, 1.0, 2.0]
    assert hvd.allreduce([1, 2, 3], op=hvd.Sum).tolist() == [1, 2, 3]

    class OnlyDlpack:
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kwargs):
            return self._a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    assert hvd.allreduce(OnlyDlpack(np.arange(4.0)), op=hvd.Sum).tolist() == [0, 1, 2, 3]


def test_check_build_reports_mpi():
    proc = subprocess.run([sys.executable, "-P", "-m", "fusecomm.runner.cli", "check-build"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "[X] MPI: Open MPI" in proc.stdout or "[X] MPI:" in proc.stdout, proc.stdout
    assert "NCCL" in proc.stdout and "PyTorch" in proc.stdout


def test_run_passes_settings_and_exit_status():
    script = str(MP_DIR / "core_launcher_check.py")
    cmd = [sys.executable, "-P", "-m", "fusecomm.runner.cli", "run", "-np", "3",
           "--cycle-time-ms", "2", "--local-size", "2", "--", sys.executable, script]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, env=CLEAN_ENV)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count("cycle=2") == 3, proc.stdout
    assert "rank 2 size 3 local_size 1" in proc.stdout, proc.stdout  # nodes {0,1}, {2}
    assert "rank 0 size 3 local_size 2" in proc.stdout, proc.stdout
    failing = subprocess.run(cmd + ["7"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=120, env=CLEAN_ENV)
    assert failing.returncode == 7, failing.stdout
