"""Learning-rate schedulers equal torch.optim.lr_scheduler's learning rates (and OneCycleLR's momentum/beta1)
step for step; their state round-trips through plain Python values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xpcnn import optim
from xpcnn.nn import Parameter
from xpcnn.optim import lr_scheduler

STEPS = 50
CASES = [
    ("StepLR", dict(step_size=7), "SGD", dict(lr=0.1)),
    ("StepLR", dict(step_size=3, gamma=0.5), "Adam", dict(lr=0.01)),
    ("MultiStepLR", dict(milestones=[5, 20, 20, 33]), "SGD", dict(lr=0.3)),
    ("MultiStepLR", dict(milestones=[40, 2], gamma=0.7), "AdamW", dict(lr=0.002)),
    ("ExponentialLR", dict(gamma=0.9), "SGD", dict(lr=0.5)),
    ("ExponentialLR", dict(gamma=0.99), "Adam", dict(lr=1e-3)),
    ("CosineAnnealingLR", dict(T_max=20), "SGD", dict(lr=0.1)),
    ("CosineAnnealingLR", dict(T_max=13, eta_min=1e-3), "Adam", dict(lr=0.05)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=STEPS), "SGD", dict(lr=0.1, momentum=0.9)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=STEPS, anneal_strategy="linear", pct_start=0.25), "SGD", dict(lr=0.1)),
    ("OneCycleLR", dict(max_lr=0.02, epochs=5, steps_per_epoch=10, three_phase=True), "Adam", dict(lr=1e-3)),
    ("OneCycleLR", dict(max_lr=0.02, total_steps=STEPS + 3, three_phase=True, anneal_strategy="linear",
                        base_momentum=0.8, max_momentum=0.9, div_factor=10.0, final_div_factor=100.0), "AdamW", dict(lr=1e-3)),
    ("OneCycleLR", dict(max_lr=0.3, total_steps=STEPS, cycle_momentum=False), "SGD", dict(lr=0.1, momentum=0.5)),
]


def _momentum(opt):
    if isinstance(opt, optim.Optimizer):
        return opt.betas[0] if isinstance(opt, optim.Adam) else opt.momentum
    group = opt.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


@pytest.mark.torch_reference
@pytest.mark.parametrize("name, kwargs, opt_name, opt_kwargs", CASES, ids=str)
def test_learning_rates_match_torch(torch, name, kwargs, opt_name, opt_kwargs):
    ref_opt = getattr(torch.optim, opt_name)([torch.zeros(2, requires_grad=True)], **opt_kwargs)
    ref = getattr(torch.optim.lr_scheduler, name)(ref_opt, **kwargs)
    opt = getattr(optim, opt_name)([Parameter(np.zeros(2))], **opt_kwargs)
    sched = getattr(lr_scheduler, name)(opt, **kwargs)
    for step in range(STEPS):
        assert sched.last_epoch == ref.last_epoch == step
        assert sched.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-12, abs=1e-15)
        assert opt.lr == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        assert _momentum(opt) == pytest.approx(_momentum(ref_opt), rel=1e-12)
        ref_opt.step()
        opt.step()
        ref.step()
        sched.step()


PLATEAU_CASES = [
    dict(),
    dict(patience=2, factor=0.5),
    dict(mode="max", patience=1, threshold=0.05, cooldown=2),
    dict(patience=0, threshold_mode="abs", threshold=0.1, min_lr=0.01, factor=0.3),
    dict(mode="max", threshold_mode="abs", patience=3, cooldown=1, eps=0.05, factor=0.5),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=str)
def test_reduce_on_plateau_matches_torch(torch, kwargs):
    rng = np.random.default_rng(0)
    metrics = np.concatenate([np.linspace(1.0, 0.5, 10), 0.5 + 0.05 * rng.standard_normal(STEPS - 10)])
    ref_opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, **kwargs)
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    sched = optim.ReduceLROnPlateau(opt, **kwargs)
    for i, m in enumerate(metrics):
        metric = np.asarray(m) if i % 2 else float(m)  # a 0-d array or a Python number
        ref.step(float(m))
        sched.step(metric)
        assert opt.lr == ref_opt.param_groups[0]["lr"]
        assert sched.get_last_lr() == ref.get_last_lr()
        assert (sched.last_epoch, sched.num_bad_epochs, sched.cooldown_counter, sched.best) == (
            ref.last_epoch, ref.num_bad_epochs, ref.cooldown_counter, ref.best)


def test_plateau_reads_a_0d_array_of_any_backend(xp):
    opt = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    sched = optim.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    dtype = xp.float_dtypes()[0][0]
    sched.step(xp.asarray(1.0, dtype))
    sched.step(xp.asarray(2.0, dtype))
    assert opt.lr == 0.5


@pytest.mark.parametrize("name, kwargs, opt_name, opt_kwargs", CASES, ids=str)
def test_state_dict_round_trip(name, kwargs, opt_name, opt_kwargs):
    """Save halfway (through JSON: plain Python values), rebuild, load, continue: the same learning rates."""
    def build():
        opt = getattr(optim, opt_name)([Parameter(np.zeros(2))], **opt_kwargs)
        return opt, getattr(lr_scheduler, name)(opt, **kwargs)

    opt, sched = build()
    lrs = []
    for _ in range(20):
        sched.step()
    saved = json.loads(json.dumps(sched.state_dict()))
    for _ in range(20):
        sched.step()
        lrs.append((opt.lr, _momentum(opt)))
    opt2, sched2 = build()
    sched2.load_state_dict(saved)
    resumed = []
    for _ in range(20):
        sched2.step()
        resumed.append((opt2.lr, _momentum(opt2)))
    assert resumed == lrs


def test_plateau_state_dict_round_trip():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    sched = optim.ReduceLROnPlateau(opt, patience=1, factor=0.5, cooldown=1)
    for m in [3, 2, 2, 2]:
        sched.step(m)
    saved = json.loads(json.dumps(sched.state_dict()))
    opt2 = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    sched2 = optim.ReduceLROnPlateau(opt2, patience=1, factor=0.5, cooldown=1)
    sched2.load_state_dict(saved)
    assert opt2.lr == opt.lr == 0.5
    for m in [2, 2, 2, 2]:
        sched.step(m)
        sched2.step(m)
        assert opt2.lr == opt.lr


def test_one_cycle_refuses_a_step_past_total_steps():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        sched.step()
    lr = opt.lr
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        sched.step()
    assert opt.lr == lr and sched.last_epoch == 3


def test_closed_forms():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=2.0)
    sched = optim.CosineAnnealingLR(opt, T_max=4, eta_min=1.0)
    values = []
    for _ in range(9):
        values.append(opt.lr)
        sched.step()
    assert values == pytest.approx([1 + (1 + math.cos(math.pi * e / 4)) / 2 for e in range(9)], rel=1e-15)


@pytest.mark.parametrize(
    "make, error, word",
    [
        (lambda o: optim.StepLR(o, step_size=0), ValueError, "step_size"),
        (lambda o: optim.StepLR(o, step_size=2.5), TypeError, "step_size"),
        (lambda o: optim.StepLR(o, 2, gamma="0.1"), TypeError, "gamma"),
        (lambda o: optim.MultiStepLR(o, milestones=5), TypeError, "milestones"),
        (lambda o: optim.MultiStepLR(o, milestones=[-1]), ValueError, "milestones"),
        (lambda o: optim.ExponentialLR(o, gamma=float("nan")), ValueError, "gamma"),
        (lambda o: optim.CosineAnnealingLR(o, T_max=True), TypeError, "T_max"),
        (lambda o: optim.OneCycleLR(o, max_lr=1.0), ValueError, "total_steps"),
        (lambda o: optim.OneCycleLR(o, max_lr=1.0, total_steps=5, pct_start=1.5), ValueError, "pct_start"),
        (lambda o: optim.OneCycleLR(o, max_lr=1.0, total_steps=5, anneal_strategy="exp"), ValueError, "anneal_strategy"),
        (lambda o: optim.OneCycleLR(o, max_lr=1.0, total_steps=5, three_phase="yes"), TypeError, "three_phase"),
        (lambda o: optim.ReduceLROnPlateau(o, mode="up"), ValueError, "mode"),
        (lambda o: optim.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
        (lambda o: optim.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode"),
        (lambda o: optim.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
        (lambda o: optim.ReduceLROnPlateau(o).step("0.5"), TypeError, "metrics"),
        (lambda o: optim.ReduceLROnPlateau(o).step(np.zeros(2)), TypeError, "metrics"),
        (lambda o: optim.StepLR(o.state, 2), TypeError, "optimizer"),
        (lambda o: optim.StepLR(o, 2).load_state_dict({"last_epoch": 3}), ValueError, "missing keys"),
    ],
)
def test_bad_arguments(make, error, word):
    with pytest.raises(error, match=word):
        make(optim.SGD([Parameter(np.zeros(2))], lr=0.1))
