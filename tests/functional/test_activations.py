"""Activations: PyTorch autograd, finite differences, NaN and edge values, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F
from tests.helpers import assert_close, numerical_gradient, torch_reference

ACTIVATIONS = {
    "relu": ((F.relu_forward, F.relu_backward), {}, lambda torch, x: torch.relu(x)),
    "leaky_relu": (
        (F.leaky_relu_forward, F.leaky_relu_backward),
        dict(negative_slope=0.2),
        lambda torch, x: torch.nn.functional.leaky_relu(x, 0.2),
    ),
    "leaky_relu_default": (
        (F.leaky_relu_forward, F.leaky_relu_backward),
        {},
        lambda torch, x: torch.nn.functional.leaky_relu(x),
    ),
    "sigmoid": ((F.sigmoid_forward, F.sigmoid_backward), {}, lambda torch, x: torch.sigmoid(x)),
    "tanh": ((F.tanh_forward, F.tanh_backward), {}, lambda torch, x: torch.tanh(x)),
    "arctan": ((F.arctan_forward, F.arctan_backward), {}, lambda torch, x: torch.atan(x)),
}
EDGE_VALUES = np.array([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, 800.0, -800.0, np.inf, -np.inf, np.nan])


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), ()], ids=str)
def test_matches_torch(xp, torch, name, shape):
    (forward, backward), kwargs, reference = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3
    if x.ndim:
        x.flat[0] = 0.0  # ReLU's gradient at exactly 0 is 0
    out_ref, grads, dout = torch_reference(torch, lambda x: reference(torch, x), dict(x=x), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = forward(xp.asarray(x, dtype), **kwargs)
        assert_close(xp, out, out_ref, np_dtype)
        assert_close(xp, backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_edge_values_match_torch(torch, name):
    """0, tiny, huge, +-inf and NaN give PyTorch's values and gradients, without overflow warnings."""
    (forward, backward), kwargs, reference = ACTIVATIONS[name]
    x = torch.tensor(EDGE_VALUES, requires_grad=True)
    reference(torch, x).backward(torch.ones_like(x))
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        out, cache = forward(EDGE_VALUES, **kwargs)
        dx = backward(np.ones_like(EDGE_VALUES), cache)
    np.testing.assert_allclose(out, reference(torch, torch.tensor(EDGE_VALUES)).numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-12, atol=0)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "leaky_relu_default"])
def test_nonfinite_upstream_matches_torch(xp, torch, name):
    """An inf or NaN upstream gradient reaches only the elements whose derivative is not 0 (NumPy multiplies by
    the 0/1 mask only when dout is finite), and edge inputs (0, -0, +-inf, NaN) route as PyTorch."""
    (forward, backward), kwargs, reference = ACTIVATIONS[name]
    x = np.concatenate([EDGE_VALUES, [-1.0, 2.0, -3.0, 0.0, -2.0]])
    dout = np.resize([np.inf, -np.inf, np.nan, 1.0, -2.0], x.shape)
    xt = torch.tensor(x, requires_grad=True)
    reference(torch, xt).backward(torch.tensor(dout))
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = forward(xp.asarray(x, dtype), **kwargs)
        assert_close(xp, out, reference(torch, torch.tensor(x)).numpy(), np_dtype)
        assert_close(xp, backward(xp.asarray(dout, dtype), cache), xt.grad.numpy(), np_dtype)


@pytest.mark.parametrize("slope", [-0.5, 0.0, 1.0, 2.5, float("inf")])
def test_leaky_relu_every_slope_matches_the_select(slope):
    """Each slope takes its own path (maximum for 0 < slope <= 1, else where; the backward's factor product
    unless the slope is not finite) and all give ``where(x > 0, x, slope * x)`` and its gradient."""
    x = np.concatenate([EDGE_VALUES, np.linspace(-3, 3, 13)])
    dout = np.resize([np.inf, -np.inf, np.nan, 1.0, -2.0, 0.5], x.shape)
    with np.errstate(invalid="ignore"):
        out, cache = F.leaky_relu_forward(x, slope)
        np.testing.assert_array_equal(out, np.where(x > 0, x, x * slope))
        np.testing.assert_array_equal(F.leaky_relu_backward(dout, cache), np.where(x > 0, dout, dout * slope))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gradient_matches_finite_differences(name):
    (forward, backward), kwargs, _ = ACTIVATIONS[name]
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 3.0, (3, 4)) * rng.choice([-1.0, 1.0], (3, 4))  # away from ReLU's kink
    dout = rng.standard_normal(x.shape)
    dx = backward(dout, forward(x, **kwargs)[1])
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: forward(v, **kwargs)[0], x, dout), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_bad_input(name):
    (forward, backward), kwargs, _ = ACTIVATIONS[name]
    with pytest.raises(TypeError, match="floating"):
        forward(np.arange(3), **kwargs)
    with pytest.raises(TypeError, match="x must be an array"):
        forward([1.0, 2.0], **kwargs)
    _, cache = forward(np.zeros((2, 3)), **kwargs)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(np.zeros((3, 2)), cache)
    with pytest.raises(TypeError, match="dtype"):
        backward(np.zeros((2, 3), dtype=np.float32), cache)
