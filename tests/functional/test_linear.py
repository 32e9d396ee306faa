"""linear and flatten: PyTorch autograd, finite differences, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import flatten_backward, flatten_forward, linear_backward, linear_forward
from tests.helpers import assert_close, numerical_gradient, torch_reference


@pytest.mark.torch_reference
@pytest.mark.parametrize("x_shape", [(5, 4), (4,), (2, 3, 4), (0, 4)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(xp, torch, x_shape, bias):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if bias else None
    out_ref, grads, dout = torch_reference(torch, torch.nn.functional.linear, dict(input=x, weight=w, bias=b), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = linear_forward(xp.asarray(x, dtype), xp.asarray(w, dtype), None if b is None else xp.asarray(b, dtype))
        assert_close(xp, out, out_ref, np_dtype)
        dx, dw, db = linear_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["input"], np_dtype)
        assert_close(xp, dw, grads["weight"], np_dtype)
        if bias:
            assert_close(xp, db, grads["bias"], np_dtype)
        else:
            assert db is None


def test_linear_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = linear_backward(dout, cache)
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: linear_forward(v, w, b)[0], x, dout), rtol=1e-6)
    np.testing.assert_allclose(dw, numerical_gradient(lambda v: linear_forward(x, v, b)[0], w, dout), rtol=1e-6)
    np.testing.assert_allclose(db, numerical_gradient(lambda v: linear_forward(x, w, v)[0], b, dout), rtol=1e-6)


@pytest.mark.parametrize(
    "x, w, b, error, word",
    [
        (np.zeros((2, 3)), np.zeros((5, 4)), None, ValueError, "in_features"),
        (np.zeros(()), np.zeros((5, 4)), None, ValueError, "in_features"),
        (np.zeros((2, 4)), np.zeros(4), None, ValueError, "weight must be 2-D"),
        (np.zeros((2, 4)), np.zeros((5, 4)), np.zeros(4), ValueError, "bias"),
        (np.zeros((2, 4)), np.zeros((5, 4)), np.zeros((1, 5)), ValueError, "bias"),
        (np.zeros((2, 4), dtype=np.int64), np.zeros((5, 4)), None, TypeError, "floating"),
        (np.zeros((2, 4), dtype=np.float32), np.zeros((5, 4)), None, TypeError, "dtype"),
    ],
)
def test_linear_bad_input(x, w, b, error, word):
    with pytest.raises(error, match=word):
        linear_forward(x, w, b)


@pytest.mark.parametrize(
    "shape, start_dim, end_dim, out_shape",
    [((2, 3, 4, 5), 1, -1, (2, 60)), ((2, 3, 4, 5), 0, -1, (120,)), ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
     ((0, 3, 4), 1, -1, (0, 12)), ((2, 3), -1, -1, (2, 3))],
    ids=str,
)
def test_flatten(xp, shape, start_dim, end_dim, out_shape):
    x = np.arange(float(np.prod(shape)), dtype=np.float32).reshape(shape)
    out, cache = flatten_forward(xp.asarray(x), start_dim, end_dim)
    xp.assert_on_backend(out, xp.float32)
    np.testing.assert_array_equal(xp.to_numpy(out), x.reshape(out_shape))
    dx = flatten_backward(out, cache)
    np.testing.assert_array_equal(xp.to_numpy(dx), x)


def test_flatten_bad_input():
    with pytest.raises(ValueError, match="start_dim"):
        flatten_forward(np.zeros((2, 3)), start_dim=2)
    with pytest.raises(ValueError, match="start_dim must not come after end_dim"):
        flatten_forward(np.zeros((2, 3, 4)), start_dim=2, end_dim=1)
    with pytest.raises(TypeError, match="floating"):
        flatten_forward(np.zeros((2, 3), dtype=np.int8))
    _, cache = flatten_forward(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="dout must have shape"):
        flatten_backward(np.zeros((2, 3, 4)), cache)
