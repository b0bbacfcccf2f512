"""Fusion plans under mpirun (tests/mp/core_fusion_plan.py): threshold, layer-wise and MG-WFBP
give correct results on a simulated training step; MG-WFBP's learned plan is the same on every
rank, re-planned when the step's timings move, and agreed when ranks submit in different
orders."""
import pytest

from conftest import run_ranks, test_seed

# The cost model's defaults, not a calibration on a loaded machine: the plan the script checks
# then follows from the step's timings alone.
MODEL_DEFAULTS = {"FUSECOMM_CALIBRATE": "0"}


def check_plan_run(plan, mode, ranks):
    seed = test_seed()
    out = run_ranks("core_fusion_plan.py", ranks, plan, mode, seed, timeout=180,
                    env=MODEL_DEFAULTS)
    assert out.count("OK") == ranks, f"seed {seed}\n{out}"


# Threshold fusion is every other multi-rank test's default; 4 ranks are for the learned plan.
@pytest.mark.parametrize("plan, ranks", [("threshold", 2), ("threshold", 3), ("layerwise", 2),
                                         ("layerwise", 3), ("mgwfbp", 2), ("mgwfbp", 3),
                                         ("mgwfbp", 4)])
def test_fusion_plans_correct_and_agreed(plan, ranks):
    check_plan_run(plan, "plain", ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_mgwfbp_replans_when_timings_drift(ranks):
    check_plan_run("mgwfbp", "drift", ranks)


@pytest.mark.parametrize("ranks", [2, 4])
def test_mgwfbp_ranks_submitting_in_different_orders(ranks):
    check_plan_run("mgwfbp", "reversed", ranks)


def test_unknown_fusion_plan_is_rejected():
    out = run_ranks("core_fusion_plan.py", 1, "bogus", "plain", 1, timeout=60, expect_fail=True)
    assert out[0] != 0 and "FUSECOMM_FUSION_PLAN must be threshold, layerwise or mgwfbp" in out[1], out
