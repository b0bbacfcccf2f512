"""fusecomm.optim (schedules, batch-size plans) against closed forms, and fusecomm.torch.optim's
optimizers step by step against NumPy transcriptions of their papers (tests/optim_reference.py).
The 2-rank runs under DistributedOptimizer and the batch-size control runs are in
test_optim_multirank.py."""
import math

import numpy as np
import pytest

import optim_reference as ref
from fusecomm import optim
from fusecomm.optim import schedules

SHAPES = [(5, 4), (5,), (3, 5), (3,), (2, 3)]  # the last layer starts at zero: trust ratio 1


def initial_weights(seed):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(s) for s in SHAPES]
    ws[-1][:] = 0.0
    return ws


def gradients(seed, step):
    rng = np.random.default_rng([seed, step])
    gs = [rng.standard_normal(s) * 10.0 ** rng.integers(-2, 2) for s in SHAPES]
    if step == 1:
        gs[2][:] = 0.0  # a layer without gradient this step: ratio 1
    return gs


# ---- schedules ---------------------------------------------------------------------------------

def test_linear_scaling_and_warmup():
    assert optim.linear_scaling(0.1, 8192) == pytest.approx(3.2)
    assert optim.linear_scaling(0.1, 512, base_batch_size=128) == pytest.approx(0.4)
    # Goyal: from 0.1 to 3.2 over 5 epochs, linearly.
    for e in [0, 0.5, 1, 2.5, 4.99]:
        assert optim.goyal_warmup(e, 5, 3.2, 0.1) == pytest.approx(0.1 + 3.1 * e / 5)
    assert optim.goyal_warmup(5, 5, 3.2, 0.1) == 3.2
    assert optim.goyal_warmup(70, 5, 3.2, 0.1) == 3.2
    assert optim.goyal_warmup(3, 0, 3.2, 0.1) == 3.2
    with pytest.raises(ValueError, match="batch_size"):
        optim.linear_scaling(0.1, 0)


def test_decays():
    for s in [0, 1, 37, 99, 100, 150]:
        t = min(s, 100) / 100
        assert optim.cosine_decay(s, 100, 2.0, 0.1) == pytest.approx(
            0.1 + 1.9 * (1 + math.cos(math.pi * t)) / 2)
        assert optim.polynomial_decay(s, 100, 2.0, 0.1, power=2) == pytest.approx(
            1.9 * (1 - t) ** 2 + 0.1)
    # Warm-up then decay: continuous at the hand-over, end value at the end.
    f = lambda s, d: optim.warmup_then_decay(s, 10, 110, 1.0, 0.25, 0.0, decay=d)  # noqa: E731
    for d in ["cosine", "polynomial"]:
        assert f(0, d) == 0.25 and f(5, d) == pytest.approx(0.625) and f(10, d) == 1.0
        assert f(110, d) == pytest.approx(0.0) and f(500, d) == pytest.approx(0.0)
    assert f(60, "cosine") == pytest.approx(0.5)
    assert f(60, "polynomial") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="decay"):
        optim.warmup_then_decay(0, 1, 10, 1.0, decay="step")
    with pytest.raises(ValueError, match="must exceed"):
        optim.warmup_then_decay(0, 10, 10, 1.0)


def test_slow_start_and_akiba_weight():
    # Akiba et al.: 40 epochs at 0.5, 30 at 0.075, 15 at 0.01, 5 at 0.001 of eta_base.
    expect = {0: 0.5, 39.9: 0.5, 40: 0.075, 69: 0.075, 70: 0.01, 84.5: 0.01, 85: 0.001, 95: 0.001}
    for e, f in expect.items():
        assert optim.slow_start(e, 3.2) == pytest.approx(3.2 * f), e
    # Rescaled to 9 epochs: boundaries at 4, 7, 8.5.
    assert optim.slow_start(3.9, 1.0, total_epochs=9) == 0.5
    assert optim.slow_start(4.0, 1.0, total_epochs=9) == 0.075
    assert optim.slow_start(8.5, 1.0, total_epochs=9) == 0.001
    for e in [0, 5, 9.9, 10, 10.5, 11.25, 12, 30]:
        assert optim.akiba_sgd_weight(e) == pytest.approx(ref.akiba_weight(e, 10, 5))
    assert optim.akiba_sgd_weight(10) == 0.5 and optim.akiba_sgd_weight(11.25) == 1.0


def test_label_smoothing():
    y = optim.smooth_labels([2, 0], 4, 0.1)
    np.testing.assert_allclose(y, [[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]])
    with pytest.raises(ValueError):
        optim.smooth_labels([0], 3, 1.0)


def test_batch_size_plan():
    plan = optim.BatchSizePlan([(0, 64), (3, 256), (6, 1024)], ranks=4, base_lr=0.1,
                               base_batch=64, max_rank_batch=96)
    s0, s1, s2 = plan.at_epoch(0), plan.at_epoch(4), plan.at_epoch(6)
    assert (s0.global_batch, s0.rank_batch, s0.micro_batch, s0.backward_passes) == (64, 16, 16, 1)
    assert (s1.global_batch, s1.rank_batch, s1.micro_batch, s1.backward_passes) == (256, 64, 64, 1)
    # 256 per rank > 96: the fewest equal micro-batches that fit are 4 of 64 (3 do not divide).
    assert (s2.global_batch, s2.rank_batch, s2.micro_batch, s2.backward_passes) == \
        (1024, 256, 64, 4)
    assert [plan.at_epoch(e).lr for e in (0, 3, 100)] == pytest.approx([0.1, 0.4, 1.6])
    assert plan.steps_in_epoch(0, 1100) == 17 and plan.steps_in_epoch(7, 1100) == 1
    warm = optim.BatchSizePlan([(0, 256)], ranks=2, base_lr=0.1, base_batch=64, warmup_epochs=2)
    assert warm.lr_at(0, 0, 10) == pytest.approx(0.1)
    assert warm.lr_at(1, 5, 10) == pytest.approx(0.1 + 0.3 * 1.5 / 2)
    assert warm.lr_at(2, 0, 10) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="multiple of the 3 ranks"):
        optim.BatchSizePlan([(0, 64)], ranks=3, base_lr=0.1, base_batch=64)
    with pytest.raises(ValueError, match="epoch 0"):
        optim.BatchSizePlan([(1, 64)], ranks=1, base_lr=0.1, base_batch=64)
    with pytest.raises(ValueError, match="do not fill"):
        plan.steps_in_epoch(6, 1000)
    # Rank 2's share of step 1 at epoch 4 (global batch 256, 64 per rank): entries 384..447.
    order = list(range(1000, 2100))
    assert plan.rank_share(4, 1, 2, order) == order[256 + 128:256 + 192]
    with pytest.raises(ValueError, match="rank 4"):
        plan.rank_share(0, 0, 4, order)


# ---- torch optimizers against the papers' formulas -----------------------------------------------

torch = pytest.importorskip("torch")
from fusecomm.torch import optim as topt  # noqa: E402


def run_torch(make_opt, reference_step, seed, steps=4):
    ws = initial_weights(seed)
    params = [torch.nn.Parameter(torch.tensor(w)) for w in ws]
    opt = make_opt(params)
    state = {}
    for step in range(steps):
        gs = gradients(seed, step)
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        opt.step()
        ws = reference_step(ws, gs, state, step)
        for i, (p, w) in enumerate(zip(params, ws)):
            np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-10, atol=1e-12,
                                       err_msg=f"seed {seed} step {step} param {i}")
    return ws


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_lars_matches_paper(seed):
    kw = dict(lr=0.5, momentum=0.9, weight_decay=5e-4, eta=0.02, eps=1e-9)
    run_torch(lambda ps: topt.LARS(ps, **kw),
              lambda ws, gs, st, t: ref.lars_step(ws, gs, st, **kw), seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_lamb_matches_paper(seed):
    run_torch(lambda ps: topt.LAMB(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01),
              lambda ws, gs, st, t: ref.lamb_step(ws, gs, st, t + 1, 0.01, 0.9, 0.99, 1e-6, 0.01),
              seed)


def test_torch_rmsprop_warmup_matches_paper():
    # 2 steps per epoch, center 1 epoch, period 2: RMSprop weight before, SGD from epoch 1.5.
    run_torch(lambda ps: topt.RMSpropWarmup(ps, lr=0.05, steps_per_epoch=2, momentum=0.9,
                                            alpha=0.9, eps=1e-8, center=1.0, period=2.0),
              lambda ws, gs, st, t: ref.rmsprop_warmup_step(ws, gs, st, t / 2, 0.05, 0.9, 0.9,
                                                            1e-8, 1.0, 2.0), seed=3, steps=6)


def test_torch_param_groups_and_exclusion_flag():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
                                torch.nn.Linear(3, 2))
    decay, no_decay = topt.param_groups_no_decay(model, 1e-4)
    assert [tuple(p.shape) for p in decay["params"]] == [(3, 4), (2, 3)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(3,), (3,), (3,), (2,)]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    # A 2-D parameter in an excluded group gets plain momentum SGD, no decay, no trust ratio.
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = topt.LARS([{"params": [w], "exclude_from_adaptation": True}], lr=0.1,
                    weight_decay=0.5, eta=0.001)
    w.grad = torch.full((2, 2), 2.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 0.8))
    with pytest.raises(ValueError, match="lr"):
        topt.LARS([w], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        topt.LAMB([w], betas=(0.9, 1.0))


def test_torch_schedulers_follow_closed_forms():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [], "lr": 2.0}], lr=1.0)
    sched = topt.WarmupDecayLR(opt, warmup_steps=5, total_steps=25, start_factor=0.2,
                               decay="polynomial", power=2.0)
    for step in range(30):
        for g, base in zip(opt.param_groups, [1.0, 2.0]):
            assert g["lr"] == pytest.approx(optim.warmup_then_decay(
                step, 5, 25, base, 0.2 * base, 0.0, "polynomial", 2.0)), step
        opt.step()
        sched.step()
    opt = torch.optim.SGD([p], lr=3.2)
    sched = topt.SlowStartLR(opt, total_epochs=9)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.6] * 4 + [0.24] * 3 + [0.032] * 2 + [0.0032])
    opt = torch.optim.SGD([p], lr=1.0)
    sched = topt.WarmupDecayLR(opt, warmup_steps=4, decay=None, start_factor=0.25)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    assert topt.label_smoothing_loss().label_smoothing == 0.1
