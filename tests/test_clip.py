"""clip_grad_norm_ and clip_grad_value_ equal torch.nn.utils' on every backend, assigning new gradient arrays."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import optim
from xpcnn.nn import Parameter
from tests.helpers import assert_close

NORM_CASES = [
    dict(max_norm=1.0),
    dict(max_norm=100.0),
    dict(max_norm=0.5, norm_type=1.0),
    dict(max_norm=0.5, norm_type=3.0),
    dict(max_norm=0.5, norm_type=float("inf")),
    dict(max_norm=0.0),
]


def _setup(xp, torch, dtype, np_dtype, scale=1.0):
    rng = np.random.default_rng(0)
    grads = [scale * rng.standard_normal((3, 4)), None, scale * rng.standard_normal(5)]
    params, ref = [], []
    for g in grads:
        p = Parameter(xp.asarray(np.zeros(g.shape if g is not None else 2), dtype))
        rp = torch.zeros(g.shape if g is not None else 2, dtype=getattr(torch, np.dtype(np_dtype).name))
        if g is not None:
            p.grad = xp.asarray(g.astype(np_dtype), dtype)
            rp.grad = torch.tensor(g.astype(np_dtype))
        params.append(p)
        ref.append(rp)
    return params, ref


@pytest.mark.torch_reference
@pytest.mark.parametrize("kwargs", NORM_CASES, ids=str)
def test_clip_grad_norm_matches_torch(xp, torch, kwargs):
    for dtype, np_dtype in xp.float_dtypes():
        params, ref = _setup(xp, torch, dtype, np_dtype)
        old = [p.grad for p in params]
        old_host = [None if g is None else xp.to_numpy(g).copy() for g in old]
        total = optim.clip_grad_norm_(params, **kwargs)
        ref_total = torch.nn.utils.clip_grad_norm_(ref, **kwargs)
        xp.assert_on_backend(total, dtype)
        assert total.shape == ()
        assert_close(xp, total, ref_total.numpy(), np_dtype)
        for p, rp, g, h in zip(params, ref, old, old_host):
            if g is None:
                assert p.grad is None
                continue
            assert p.grad is not g  # a new array, the old one untouched
            np.testing.assert_array_equal(xp.to_numpy(g), h)
            xp.assert_on_backend(p.grad, dtype)
            assert_close(xp, p.grad, rp.grad.numpy(), np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("clip_value", [0.1, 0.7, 5.0])
def test_clip_grad_value_matches_torch(xp, torch, clip_value):
    for dtype, np_dtype in xp.float_dtypes():
        params, ref = _setup(xp, torch, dtype, np_dtype)
        old = [p.grad for p in params]
        assert optim.clip_grad_value_(params, clip_value) is None
        torch.nn.utils.clip_grad_value_(ref, clip_value)
        for p, rp, g in zip(params, ref, old):
            if g is None:
                assert p.grad is None
                continue
            assert p.grad is not g
            xp.assert_on_backend(p.grad, dtype)
            np.testing.assert_array_equal(xp.to_numpy(p.grad), rp.grad.numpy())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf * 0 in the scaling, as in PyTorch
def test_nonfinite_norm(xp):
    dtype = xp.float_dtypes()[0][0]
    p = Parameter(xp.asarray(np.zeros(2), dtype))
    p.grad = xp.asarray(np.array([1.0, np.inf]), dtype)
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    total = optim.clip_grad_norm_(p, 1.0)  # a single Parameter is taken too; no error by default
    assert np.isinf(xp.to_numpy(total))


def test_no_gradient_gives_zero():
    p = Parameter(np.ones(2))
    assert float(optim.clip_grad_norm_([p], 1.0)) == 0.0
    optim.clip_grad_value_([p], 1.0)
    assert p.grad is None


@pytest.mark.parametrize(
    "call, error, word",
    [
        (lambda p: optim.clip_grad_norm_(p, -1.0), ValueError, "max_norm"),
        (lambda p: optim.clip_grad_norm_(p, "1"), TypeError, "max_norm"),
        (lambda p: optim.clip_grad_norm_(p, float("nan")), ValueError, "max_norm"),
        (lambda p: optim.clip_grad_norm_(p, 1.0, norm_type=0), ValueError, "norm_type"),
        (lambda p: optim.clip_grad_norm_(p, 1.0, error_if_nonfinite=1), TypeError, "error_if_nonfinite"),
        (lambda p: optim.clip_grad_norm_(p[0].data, 1.0), TypeError, "parameters"),
        (lambda p: optim.clip_grad_value_(p, -0.5), ValueError, "clip_value"),
        (lambda p: optim.clip_grad_value_([p[0], 3], 0.5), TypeError, r"parameters\[1\]"),
    ],
)
def test_bad_arguments(call, error, word):
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises(error, match=word):
        call([p])


def test_inf_norm_of_a_nan_gradient_is_nan(xp):
    """A NaN anywhere makes the inf-norm NaN, as PyTorch's, also where the backend's max reduction drops it (XLA on
    the CPU: JAX 0.10 on 4097 elements)."""
    dtype = xp.float_dtypes()[0][0]
    p = Parameter(xp.asarray(np.zeros(4097), dtype))
    grad = np.zeros(4097)
    grad[2048] = np.nan
    p.grad = xp.asarray(grad, dtype)
    assert np.isnan(xp.to_numpy(optim.clip_grad_norm_([p], 1.0, norm_type=float("inf"))))
