"""The engine's own fault handling, each on several rank counts and bounded in time: settings
agreed at init, NaN through every reduction, the deadlock detector, interruptible waits, an
argument error on one rank, and a frozen rank. Each scenario is a script in tests/mp/."""
import pytest

from conftest import run_ranks, test_seed


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_settings_that_must_agree_are_checked_at_init(ranks):
    out = run_ranks("core_settings_agreement.py", ranks, timeout=180)
    assert out.count(": OK") == ranks, out


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_nan_propagates_through_every_reduction_and_algorithm(ranks):
    seed = test_seed()
    out = run_ranks("core_nan.py", ranks, seed, timeout=300, env={"FUSECOMM_LOCAL_SIZE": "2"})
    assert out.count(": OK") == ranks, f"seed {seed}\n{out}"


@pytest.mark.parametrize("mode, ranks", [("cross", 2), ("cross", 3), ("split", 3), ("split", 4)])
def test_deadlock_is_reported_on_every_rank(mode, ranks):
    """The stall settings at their defaults (the suite's stall shutdown is lifted): only the
    detector can end these runs in time."""
    out = run_ranks("core_deadlock.py", ranks, mode, timeout=90,
                    env={"FUSECOMM_STALL_SHUTDOWN_SECONDS": "0"})
    assert out.count(": OK") == ranks, out


@pytest.mark.parametrize("mode, ranks", [("busy", 2), ("busy", 3), ("pending_but_busy", 2),
                                         ("pending_but_busy", 3)])
def test_a_computing_rank_is_not_a_deadlock(mode, ranks):
    """The detector's quiet time is 2 s here, far below the 8 s a rank computes."""
    out = run_ranks("core_deadlock.py", ranks, mode, timeout=90,
                    env={"FUSECOMM_DEADLOCK_SECONDS": "2"})
    assert out.count(": OK") == ranks, out


@pytest.mark.parametrize("ranks", [2, 3])
def test_signals_interrupt_synchronize(ranks):
    out = run_ranks("core_interrupt.py", ranks, timeout=90)
    assert out.count(": OK") == ranks, out


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_argument_error_on_one_rank_fails_the_others(ranks):
    out = run_ranks("core_rejected_on_one_rank.py", ranks, timeout=90)
    assert out.count(": OK") == ranks, out


@pytest.mark.parametrize("ranks", [2, 3])
def test_frozen_rank_is_named_and_knows_it_was_frozen(ranks, tmp_path):
    _, out = run_ranks("core_frozen_rank.py", ranks, tmp_path, timeout=120, expect_fail=True,
                       env={"FUSECOMM_STALL_WARNING_SECONDS": "1",
                            "FUSECOMM_LIVENESS_TIMEOUT_SECONDS": "4"})
    assert out.count(": OK") == ranks, out
    victim = ranks - 1
    # The stall warning, before the liveness timeout, names the rank that stopped.
    assert "stalled negotiation" in out and f"no heartbeat from rank {victim}" in out, out
