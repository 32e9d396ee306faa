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
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("name, kwargs", CASES, ids=lambda v: str(v))
def test_trajectory_matches_torch(xp, torch, name, kwargs):
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(0)
    starts = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(s.shape) for s in starts] for _ in range(6)]
    ref_params = [torch.tensor(s, requires_grad=True) for s in starts]
    ref = getattr(torch.optim, name)(ref_params, **kwargs)
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
