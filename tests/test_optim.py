"""SGD, Adam and AdamW trajectories equal torch.optim's on the same gradients, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import optim
from xpcnn.nn import Parameter
from tests.helpers import assert_close

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, maximize=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.02, maximize=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True, maximize=True)),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("name, kwargs", CASES + [(name, dict(kwargs, _multi_tensor=True)) for name, kwargs in CASES
                                                  if name != "SGD"], ids=lambda v: str(v))
def test_trajectory_matches_torch(xp, torch, name, kwargs):
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(0)
    starts = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(s.shape) for s in starts] for _ in range(6)]
    ref_params = [torch.tensor(s, requires_grad=True) for s in starts]
    ref = getattr(torch.optim, name)(ref_params, **{k: v for k, v in kwargs.items() if k != "_multi_tensor"})
    params = [Parameter(xp.asarray(s, dtype)) for s in starts]
    opt = getattr(optim, name)(params, **kwargs)
    for step, step_grads in enumerate(grads):
        for p, rp, g in zip(params, ref_params, step_grads):
            rp.grad = torch.tensor(g)
            p.grad = None if step == 3 and p is params[1] else xp.asarray(g, dtype)
        if step == 3:
            ref_params[1].grad = None  # a parameter without a gradient is skipped by both
        ref.step()
        opt.step()
        for p, rp in zip(params, ref_params):
            assert_close(xp, p.data, rp.detach().numpy(), np_dtype)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda p: optim.SGD(p, lr=-1), "lr"),
        (lambda p: optim.SGD(p, momentum=-0.1), "momentum"),
        (lambda p: optim.SGD(p, nesterov=True), "nesterov"),
        (lambda p: optim.Adam(p, betas=(1.0, 0.9)), "betas"),
        (lambda p: optim.AdamW(p, eps=-1), "eps"),
        (lambda p: optim.Adam([]), "empty"),
    ],
)
def test_bad_arguments(make, word):
    with pytest.raises(ValueError, match=word):
        make([Parameter(np.zeros(2))])


STATE_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
]


@pytest.mark.parametrize("name, kwargs", STATE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("through_host", [False, True], ids=["arrays", "host"])
def test_state_dict_resumes_bitwise(xp, name, kwargs, through_host):
    """On every backend: save the optimizer (and a scheduler) halfway, rebuild both, load, continue: bitwise equal to an
    uninterrupted run. ``host``: the state's arrays went through NumPy (as a file would) and come back on the
    parameters' device."""
    from xpcnn._host import to_numpy

    dtype = xp.float_dtypes()[-1][0]
    rng = np.random.default_rng(0)
    starts = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[xp.asarray(rng.standard_normal(s.shape), dtype) for s in starts] for _ in range(8)]

    def build(values):
        params = [Parameter(xp.asarray(v, dtype)) for v in values]
        opt = getattr(optim, name)(params, **kwargs)
        return params, opt, optim.StepLR(opt, step_size=2, gamma=0.5)

    def run(params, opt, sched, steps):
        for step_grads in steps:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
            sched.step()

    params, opt, sched = build(starts)
    run(params, opt, sched, grads)
    expected = [xp.to_numpy(p.data) for p in params]

    params, opt, sched = build(starts)
    run(params, opt, sched, grads[:4])
    saved, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved["param_groups"][0]["params"] == [0, 1] and set(saved["state"]) == {0, 1}
    if through_host:
        saved = {"state": {i: {k: to_numpy(v) if not isinstance(v, int) else v for k, v in s.items()}
                           for i, s in saved["state"].items()},
                 "param_groups": [dict(g) for g in saved["param_groups"]]}
    params2, opt2, sched2 = build([xp.to_numpy(p.data) for p in params])
    opt2.load_state_dict(saved)
    sched2.load_state_dict(saved_sched)
    for state in opt2.state:
        for v in state.values():
            if not isinstance(v, int):
                xp.assert_on_backend(v, dtype)
    run(params2, opt2, sched2, grads[4:])
    for p, e in zip(params2, expected):
        np.testing.assert_array_equal(xp.to_numpy(p.data), e)


def test_load_state_dict_sets_hyperparameters():
    opt = optim.Adam([Parameter(np.zeros(2))], lr=0.1, betas=(0.5, 0.6), eps=1e-3)
    other = optim.Adam([Parameter(np.zeros(2))])
    other.load_state_dict(opt.state_dict())
    assert (other.lr, other.betas, other.eps, other.weight_decay) == (0.1, (0.5, 0.6), 1e-3, 0.0)


@pytest.mark.parametrize(
    "mutate, error, word",
    [
        (lambda s: s["param_groups"][0].update(params=[0]), ValueError, "has 1 parameters but the optimizer has 2"),
        (lambda s: s["state"][1].update(momentum_buffer=np.zeros(3)), ValueError, r"shape \(3,\) but parameter 1"),
        (lambda s: s["state"].update({5: {}}), ValueError, "not a parameter index"),
        (lambda s: s["param_groups"][0].update(lr="0.1"), TypeError, "lr"),
        (lambda s: s["param_groups"][0].update(betas=(0.9, 0.99)), ValueError, "betas"),
        (lambda s: s.pop("state"), TypeError, "'state' and 'param_groups'"),
    ],
)
def test_load_state_dict_refuses_a_mismatch(mutate, error, word):
    params = [Parameter(np.zeros((2, 2))), Parameter(np.zeros(2))]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = np.ones(p.data.shape)
    opt.step()
    state = opt.state_dict()
    state["param_groups"] = [dict(state["param_groups"][0])]
    state["state"] = {i: dict(s) for i, s in state["state"].items()}
    mutate(state)
    with pytest.raises(error, match=word):
        optim.SGD([Parameter(np.zeros((2, 2))), Parameter(np.zeros(2))], lr=0.1).load_state_dict(state)


MULTI_TENSOR_CASES = [
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, maximize=True)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("name, kwargs", MULTI_TENSOR_CASES, ids=lambda v: str(v))
def test_multi_tensor_step_is_bitwise_the_per_parameter_step(xp, name, kwargs):
    """The accelerator profile's multi-tensor step (the parameters updated as one flat array) gives every
    parameter and every state array the per-parameter step's bits, on every backend, through a parameter without
    a gradient (its step count falls behind: two groups), a state dict saved and loaded halfway and a parameter
    set anew; the caller's arrays are never written."""
    dtype = xp.float_dtypes()[-1][0]
    rng = np.random.default_rng(0)
    starts = [rng.standard_normal((3, 4)), rng.standard_normal(5), rng.standard_normal((2, 1, 3))]
    grads = [[rng.standard_normal(s.shape) for s in starts] for _ in range(7)]
    results = []
    for multi_tensor in (False, True):
        given = [xp.asarray(s, dtype) for s in starts]
        params = [Parameter(a) for a in given]
        opt = getattr(optim, name)(params, **kwargs, _multi_tensor=multi_tensor)
        trajectory = []
        for step, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = None if step == 2 and p is params[1] else xp.asarray(g, dtype)
            if step == 4:
                opt.load_state_dict(opt.state_dict())
            if step == 5:
                params[2].data = xp.asarray(xp.to_numpy(params[2].data), dtype)
            opt.step()
            trajectory.append([xp.to_numpy(p.data) for p in params])
        for a, s in zip(given, starts):
            np.testing.assert_array_equal(xp.to_numpy(a), np.asarray(xp.to_numpy(xp.asarray(s, dtype))))
        state = [{k: v if isinstance(v, int) else xp.to_numpy(v) for k, v in s.items()} for s in opt.state]
        results.append((trajectory, state))
    (trajectory, state), (trajectory_mt, state_mt) = results
    for step, step_mt in zip(trajectory, trajectory_mt):
        for a, b in zip(step, step_mt):
            np.testing.assert_array_equal(a, b)
    assert [s["step"] for s in state] == [s["step"] for s in state_mt] == [7, 6, 7]
    for s, s_mt in zip(state, state_mt):
        for key, value in s.items():
            np.testing.assert_array_equal(s_mt[key], value)


def test_multi_tensor_step_follows_the_profile():
    from xpcnn import _tuning, config

    assert _tuning.ACCELERATOR.multi_tensor_optimizer and not _tuning.HOST.multi_tensor_optimizer
    params = [Parameter(np.zeros((2, 3))), Parameter(np.zeros(4))]
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.data.shape)
    with config.device_profile("accelerator"):
        opt.step()
    assert len(opt._joined) == 1  # one flat update for both
    opt.step()
    assert not opt._joined


def test_bad_multi_tensor_argument():
    with pytest.raises(TypeError, match="_multi_tensor"):
        optim.Adam([Parameter(np.zeros(2))], _multi_tensor=1)
