"""Multi-rank tests of the core (NumPy API) under mpirun: 1, 2, 3 and 4 ranks."""
import pytest

from conftest import run_ranks, test_seed


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_collectives_against_numpy(ranks):
    seed = test_seed()
    out = run_ranks("core_collectives.py", ranks, seed)
    assert out.count("OK") == ranks, f"seed {seed}\n{out}"


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_mismatches_are_errors_on_every_rank(ranks):
    out = run_ranks("core_errors.py", ranks)
    assert out.count("OK") == ranks, out


@pytest.mark.parametrize("ranks", [2, 4])
def test_small_fusion_threshold_and_no_cache(ranks):
    """The same checks with a tiny fusion buffer (many groups) and the response cache off
    (every cycle through the coordinator)."""
    seed = test_seed()
    out = run_ranks("core_collectives.py", ranks, seed,
                    env={"FUSECOMM_FUSION_THRESHOLD": "4096", "FUSECOMM_CACHE_CAPACITY": "0"})
    assert out.count("OK") == ranks, f"seed {seed}\n{out}"


def test_small_cache_evicts_consistently():
    """A cache smaller than the number of live names forces evictions every cycle."""
    out = run_ranks("core_collectives.py", 3, 11, env={"FUSECOMM_CACHE_CAPACITY": "5"})
    assert out.count("OK") == 3, out


@pytest.mark.parametrize("ranks", [2, 3])
def test_stalled_rank_gives_error_on_every_rank(ranks):
    out = run_ranks("core_stall.py", ranks, timeout=90,
                    env={"FUSECOMM_STALL_WARNING_SECONDS": "1",
                         "FUSECOMM_STALL_SHUTDOWN_SECONDS": "2"})
    assert out.count(": OK:") == ranks, out
    assert "missing on rank 1" in out


# (ranks, virtual node size): uneven nodes and partial torus grids included. The algorithms
# themselves are also checked bit-exactly at 7 and 8 ranks by tests/test_cpp.py; through the
# engine (fusion, scaling, every dtype and op) 2-6 ranks cover odd, even and uneven nodes;
# 7 and 8 ranks on two cores took 52 of this test's 120 s.
ALGORITHM_CONFIGS = [(2, 1), (3, 2), (4, 2), (5, 2), (6, 4)]


@pytest.mark.parametrize("ranks, local_size", ALGORITHM_CONFIGS)
def test_every_algorithm_through_the_engine(ranks, local_size):
    seed = test_seed()
    env = {"FUSECOMM_LOCAL_SIZE": str(local_size)}
    if ranks == 5:  # a user's own choice of libnbc's all-reduce is kept (and still correct)
        env["OMPI_MCA_coll_libnbc_iallreduce_algorithm"] = "3"
    if ranks == 3:  # no shared-memory windows: no segment, and "shm" runs as the ring
        env["OMPI_MCA_osc"] = "^sm"
    # The shared-memory all-reduce reads its peers' buffers from 1 MiB up (only the 5 MiB case
    # below): at 2 ranks at every size (blocks of 0 and 1 element included), at 4 never.
    if ranks == 2:
        env["FUSECOMM_SHM_SINGLE_COPY_MIN_BYTES"] = "0"
    if ranks == 4:
        env["FUSECOMM_SHM_SINGLE_COPY_MIN_BYTES"] = "-1"
    out = run_ranks("core_algorithms.py", ranks, seed, env=env)
    assert out.count(": OK") == ranks, f"seed {seed}\n{out}"
    assert f"local_size {min(local_size, ranks)}" in out


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_join_lets_ranks_finish_early(ranks):
    out = run_ranks("core_join.py", ranks, timeout=120)
    assert out.count(": OK") == ranks, out


def test_timeline_of_a_four_rank_run_parses(tmp_path):
    path = tmp_path / "timeline.json"
    out = run_ranks("core_timeline.py", 4, path)
    assert out.count(": OK") == 4, out
    env_path = tmp_path / "env_timeline.json"
    # FUSECOMM_TIMELINE starts it at init; shutdown finishes the file.
    out = run_ranks("core_collectives.py", 2, 1, env={"FUSECOMM_TIMELINE": str(env_path)})
    import json

    events = json.loads(env_path.read_text())
    assert any(e.get("name") == "ALLREDUCE" for e in events)


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_randomized_stress_with_threads(ranks):
    """3 threads per rank, 600 random collectives each (1,800 per rank), every result checked."""
    seed = test_seed()
    out = run_ranks("stress.py", ranks, seed, 600, timeout=300)
    assert out.count(": OK (1800 collectives)") == ranks, f"seed {seed}\n{out}"


@pytest.mark.parametrize("mode", ["slow_inter", "uniform"])
def test_cost_model_two_link_classes(mode, tmp_path):
    """Predictions follow the α-β-γ formulas per link class, and a slow inter-node link moves
    auto's choice for large buffers to a two-level algorithm."""
    # A slow network: the cross-node rings (2 local ranks' flows at once) see twice the per-byte
    # time of the ring over all ranks (one flow per node), both far above shared memory.
    beta_inter, beta_ring = (2e-9, 1e-9) if mode == "slow_inter" else (1e-10, 1e-10)
    calibration = tmp_path / "model.txt"
    calibration.write_text(
        f"alpha_intra 1e-05\nbeta_intra 1e-10\nalpha_inter 1e-05\nbeta_inter {beta_inter}\n"
        f"alpha_ring 1e-05\nbeta_ring {beta_ring}\n"
        "gamma 5e-11\nnative_small 1e-06\nnative_mid 0.001\nnative_large 0.01\n")
    out = run_ranks("core_cost_model.py", 4, calibration, mode,
                    env={"FUSECOMM_LOCAL_SIZE": "2", "FUSECOMM_CALIBRATION_FILE": str(calibration)})
    assert out.count(": OK") == 4, out


@pytest.mark.parametrize("ranks,local_size,mode", [(2, 0, "on"), (3, 0, "on"), (4, 2, "on"),
                                                   (3, 0, "off")])
def test_auto_measures_each_size_class_once(ranks, local_size, mode):
    """auto races the model's short list per (dtype, size class) on first use, every rank
    choosing the fastest by the slowest rank's times; FUSECOMM_AUTOTUNE=0 leaves the model."""
    env = {"FUSECOMM_AUTOTUNE": "1" if mode == "on" else "0"}
    if local_size:
        env["FUSECOMM_LOCAL_SIZE"] = str(local_size)
    seed = test_seed()
    out = run_ranks("core_auto_tuner.py", ranks, seed, mode, env=env)
    assert out.count(": OK") == ranks, f"seed {seed}\n{out}"


@pytest.mark.parametrize("ranks", [2, 3])
def test_grouped_allreduce_fuses_as_one(ranks, tmp_path):
    seed = test_seed()
    out = run_ranks("core_grouped_fusion.py", ranks, tmp_path / "timeline.json", seed)
    assert out.count(": OK") == ranks, f"seed {seed}\n{out}"


@pytest.mark.parametrize("ranks, victim", [(2, 1), (3, 1), (3, 0), (4, 2)])
def test_rank_failing_inside_a_collective_stops_every_rank(ranks, victim):
    """A rank whose part of a collective fails (its fusion buffer cannot be allocated) while
    its peers are in it: its later calls fail at once, and every peer gets an error naming it
    within the liveness timeout; no rank goes on to a collective whose messages could meet the
    abandoned receives."""
    code, out = run_ranks("core_failed_collective.py", ranks, victim, expect_fail=True,
                          timeout=120, env={"FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "3"})
    assert out.count("FAILED AS EXPECTED") == ranks, out
    for line in out.splitlines():
        if "FAILED AS EXPECTED" in line:
            seconds = float(line.split("after ")[1].split("s:")[0])
            assert seconds < 15, line  # 3 s liveness + slack for a loaded machine


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_callers_and_engine_threads_share_the_cycles(ranks):
    """Synchronous, asynchronous and grouped all-reduces from several threads per rank, on the
    global set, one-rank sets and a sub-set: whichever thread runs a cycle, results are exact."""
    seed = test_seed()
    out = run_ranks("core_handoff.py", ranks, seed, timeout=300)
    assert out.count("OK") == ranks, f"seed {seed}\n{out}"
