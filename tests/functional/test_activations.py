"""Activations: PyTorch autograd over random configurations on every backend (float64, float32, and float16/bfloat16
where the backend has them), NaN, infinities and huge values, finite differences, named caches, bad input."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xpcnn import functional as F
from xpcnn._precision import LowPrecisionCache
from tests.helpers import assert_close, numerical_gradient, torch_reference


@dataclass(frozen=True)
class Activation:
    forward: object
    backward: object
    reference: object  # (torch, x, **options) -> out, the torch.nn.functional call
    options: dict = field(default_factory=dict)
    cache: type = None
    random_option: object = None  # rng -> options for a random configuration


def _slope(rng):
    return dict(negative_slope=float(rng.choice([-0.5, 0.0, 0.01, 0.3, 1.0, 2.5])))


def _alpha(rng):
    return dict(alpha=float(rng.choice([-0.5, 0.0, 0.3, 1.0, 2.5])))


ACTIVATIONS = {
    "relu": Activation(F.relu_forward, F.relu_backward, lambda torch, x: torch.relu(x), cache=F.ReluCache),
    "leaky_relu": Activation(F.leaky_relu_forward, F.leaky_relu_backward,
                             lambda torch, x, **o: torch.nn.functional.leaky_relu(x, **o), dict(negative_slope=0.2),
                             F.LeakyReluCache, _slope),
    "leaky_relu_default": Activation(F.leaky_relu_forward, F.leaky_relu_backward,
                                     lambda torch, x: torch.nn.functional.leaky_relu(x), cache=F.LeakyReluCache),
    "sigmoid": Activation(F.sigmoid_forward, F.sigmoid_backward, lambda torch, x: torch.sigmoid(x),
                          cache=F.SigmoidCache),
    "tanh": Activation(F.tanh_forward, F.tanh_backward, lambda torch, x: torch.tanh(x), cache=F.TanhCache),
    "arctan": Activation(F.arctan_forward, F.arctan_backward, lambda torch, x: torch.atan(x), cache=F.ArctanCache),
    "gelu": Activation(F.gelu_forward, F.gelu_backward, lambda torch, x: torch.nn.functional.gelu(x),
                       cache=F.GeluCache),
    "gelu_tanh": Activation(F.gelu_forward, F.gelu_backward,
                            lambda torch, x, **o: torch.nn.functional.gelu(x, **o), dict(approximate="tanh"),
                            F.GeluCache),
    "silu": Activation(F.silu_forward, F.silu_backward, lambda torch, x: torch.nn.functional.silu(x),
                       cache=F.SiluCache),
    "elu": Activation(F.elu_forward, F.elu_backward, lambda torch, x, **o: torch.nn.functional.elu(x, **o),
                      cache=F.EluCache, random_option=_alpha),
    "elu_alpha": Activation(F.elu_forward, F.elu_backward, lambda torch, x, **o: torch.nn.functional.elu(x, **o),
                            dict(alpha=0.3), F.EluCache),
}
NAMES = list(ACTIVATIONS)
EDGE_VALUES = np.array([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, 800.0, -800.0, np.inf, -np.inf, np.nan])
# Beyond the float32 range too: 1.3e154 <= |x| is where float64's x * x overflows (PyTorch's arctan and tanh-GELU
# gradients change there), 1e154 just below it.
HUGE_VALUES = np.array([1e-10, -1e-10, 1e20, -1e20, 1e154, -1e154, 1.4e154, -1.4e154, 1e200, -1e200, 1.7e308])
FLOAT32_HUGE_VALUES = np.array([1e18, -1e18, 1.8e19, 1.9e19, -1.9e19, 3e38, -3e38], dtype=np.float32)
CONFIGS = 5
FUZZ_EXAMPLES = int(os.environ.get("XPCNN_HYPOTHESIS_EXAMPLES", 60))  # as tests/test_properties.py


def torch_elementwise(torch, activation, x, dout, dtype=None, **options):
    """PyTorch's values and gradients, one element at a time: its scalar kernels, which follow the formulas in its
    source and on CUDA (its vectorised CPU loop gives ELU a NaN gradient at NaN instead)."""
    dtype = torch.float64 if dtype is None else dtype
    outs, grads = [], []
    for v, d in zip(x.ravel().tolist(), dout.ravel().tolist()):
        t = torch.tensor([v], dtype=dtype, requires_grad=True)
        out = activation.reference(torch, t, **options)
        out.backward(torch.tensor([d], dtype=dtype))
        outs.append(out.item())
        grads.append(t.grad.item())
    return np.reshape(outs, x.shape), np.reshape(grads, x.shape)


@contextlib.contextmanager
def no_floating_point_warnings():
    """NumPy's floating-point errors raise (underflow aside), and so does any RuntimeWarning (Dask's threads)."""
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        warnings.simplefilter("error", RuntimeWarning)
        yield


def low_precision_dtypes(xp):
    """The 16-bit floating dtypes of xp's namespace, as names (float16: NumPy, torch, JAX; bfloat16: torch, JAX)."""
    return [name for name in ("float16", "bfloat16") if getattr(xp.namespace, name, None) is not None]


# -- PyTorch autograd -----------------------------------------------------------------------------------------------

@pytest.mark.torch_reference
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("config", range(CONFIGS))
def test_matches_torch(xp, torch, name, config):
    """Random shapes (0-d included), scales and options (slopes and alphas negative, 0, > 1): values and input
    gradients equal PyTorch's autograd in float64, on every backend and in float32 and float64."""
    activation = ACTIVATIONS[name]
    rng = np.random.default_rng(config)
    shape = [(2, 3, 4, 5), (7,), (), (3, 1, 6), (1, 2, 3, 2, 2)][config]
    x = rng.standard_normal(shape) * rng.choice([0.3, 1.0, 3.0, 8.0])
    if x.ndim:
        x.flat[0] = 0.0  # the kinks are at exactly 0
    options = activation.random_option(rng) if activation.random_option and config else activation.options
    out_ref, grads, dout = torch_reference(torch, lambda x: activation.reference(torch, x, **options), dict(x=x), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = activation.forward(xp.asarray(x, dtype), **options)
        assert_close(xp, out, out_ref, np_dtype)
        assert_close(xp, activation.backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_matches_torch(xp, torch, name):
    """float16 and bfloat16 (where the backend has them) give PyTorch's 16-bit results: both compute in float32 and
    round once (the slope of leaky ReLU is not rounded to 16 bits: ReLU and leaky ReLU agree to the bit)."""
    dtypes = low_precision_dtypes(xp)
    if not dtypes:
        pytest.skip(f"{xp.name} has no 16-bit floating dtype")
    activation = ACTIVATIONS[name]
    rng = np.random.default_rng(7)
    x32 = (rng.standard_normal((4, 257)) * 3).astype(np.float32)
    dout32 = rng.standard_normal(x32.shape).astype(np.float32)
    for dtype_name in dtypes:
        dtype, torch_dtype = getattr(xp.namespace, dtype_name), getattr(torch, dtype_name)
        xt = torch.tensor(x32).to(torch_dtype).requires_grad_(True)
        out_ref = activation.reference(torch, xt, **activation.options)
        out_ref.backward(torch.tensor(dout32).to(torch_dtype))
        x = xp.astype(xp.asarray(xt.detach().float().numpy()), dtype)
        dout = xp.astype(xp.asarray(torch.tensor(dout32).to(torch_dtype).float().numpy()), dtype)
        out, cache = activation.forward(x, **activation.options)
        dx = activation.backward(dout, cache)
        for got, want in ((out, out_ref.detach()), (dx, xt.grad)):
            xp.assert_on_backend(got, dtype)
            got, want = xp.to_numpy(xp.astype(got, xp.float32)), want.float().numpy()
            if name.startswith(("relu", "leaky_relu")):
                np.testing.assert_array_equal(got, want, err_msg=dtype_name)
            else:  # PyTorch's float32 erf and exp differ in the last bits (a 16-bit result then by one unit)
                eps = float(torch.finfo(torch_dtype).eps)
                scale = np.abs(want).max()
                np.testing.assert_allclose(got, want, rtol=2 * eps, atol=2 * eps * scale, err_msg=dtype_name)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", NAMES)
def test_edge_values_match_torch(xp, torch, name):
    """0, tiny, large and huge values, +-inf and NaN give PyTorch's values and gradients (its scalar kernels), on
    every backend, without overflow, division or invalid-value warnings."""
    activation = ACTIVATIONS[name]
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = np.concatenate([EDGE_VALUES, HUGE_VALUES]) if np_dtype == np.float64 else EDGE_VALUES.astype(np.float32)
    torch_dtype = getattr(torch, np.dtype(np_dtype).name)
    out_ref, dx_ref = torch_elementwise(torch, activation, x, np.ones_like(x), torch_dtype, **activation.options)
    if name == "gelu" and np_dtype == np.float32:
        out_ref[x == np.inf] = np.inf  # PyTorch's float32 CPU GELU (oneDNN's) gives NaN; its float64 one +inf
    with no_floating_point_warnings():
        out, cache = activation.forward(xp.asarray(x, dtype), **activation.options)
        dx = activation.backward(xp.asarray(np.ones_like(x), dtype), cache)
        out, dx = xp.to_numpy(out), xp.to_numpy(dx)
    rtol, tiny = 1e-12 if np_dtype == np.float64 else 1e-6, np.finfo(np_dtype).smallest_normal  # XLA flushes subnormals
    np.testing.assert_allclose(out, out_ref, rtol=rtol, atol=tiny)
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=tiny)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", NAMES)
def test_float32_huge_values_match_torch(xp, torch, name):
    """Around 2**64, where float32's x * x overflows: PyTorch's arctan gradient becomes 0 and its tanh-GELU gradient
    NaN; the same values here, without overflow warnings."""
    activation = ACTIVATIONS[name]
    x = FLOAT32_HUGE_VALUES
    out_ref, dx_ref = torch_elementwise(torch, activation, x, np.ones_like(x), torch.float32, **activation.options)
    with no_floating_point_warnings():
        out, cache = activation.forward(xp.asarray(x, xp.float32), **activation.options)
        dx = xp.to_numpy(activation.backward(xp.asarray(np.ones_like(x), xp.float32), cache))
        out = xp.to_numpy(out)
    tiny = np.finfo(np.float32).smallest_normal
    np.testing.assert_allclose(out, out_ref, rtol=1e-6, atol=tiny)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=tiny)


@pytest.mark.torch_reference
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_upstream_matches_torch(xp, torch, name):
    """An inf or NaN upstream gradient gives PyTorch's result (NaN where the derivative is 0 for the formulas that
    multiply, never for ReLU's select), and the edge inputs (0, -0, +-inf, NaN) route as PyTorch's formulas."""
    activation = ACTIVATIONS[name]
    x = np.concatenate([EDGE_VALUES, [-1.0, 2.0, -3.0, 0.0, -2.0]])
    dout = np.resize([np.inf, -np.inf, np.nan, 1.0, -2.0], x.shape)
    out_ref, dx_ref = torch_elementwise(torch, activation, x, dout, **activation.options)
    for dtype, np_dtype in xp.float_dtypes():
        with np.errstate(invalid="ignore"):  # inf * 0 in the upstream gradient: NaN, as PyTorch
            out, cache = activation.forward(xp.asarray(x, dtype), **activation.options)
            dx = activation.backward(xp.asarray(dout, dtype), cache)
            assert_close(xp, out, out_ref, np_dtype)
            assert_close(xp, dx, dx_ref, np_dtype)


@st.composite
def fuzz_cases(draw, np_dtype):
    """Any floats (NaN, infinities, subnormals and the extremes included) and finite options and upstream values."""
    width = np.finfo(np_dtype).bits
    x = draw(hnp.arrays(np_dtype, st.integers(1, 24), elements=st.floats(width=width)))
    dout = draw(hnp.arrays(np_dtype, x.shape, elements=st.floats(-4, 4, width=width)))
    option = draw(st.floats(-10, 10, width=width))
    return x, dout, option


@pytest.mark.torch_reference
@pytest.mark.parametrize("np_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_fuzzed_values_match_torch(torch, name, np_dtype):
    """Hypothesis draws any values of the dtype: every result is PyTorch's (in the same dtype; for the erf GELU in
    float32 PyTorch's float64 result, rounded: its float32 kernel is oneDNN's, accurate to about 1e-7 absolute),
    without a floating-point warning. PyTorch's ELU gradient at NaN comes from its vectorised loop here (NaN):
    xpcnn's is the upstream gradient, as its formula and scalar loop give."""
    activation = ACTIVATIONS[name]
    eps = float(np.finfo(np_dtype).eps)

    @given(fuzz_cases(np_dtype))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize="XPCNN_HYPOTHESIS_EXAMPLES" not in os.environ,
              database=None)
    def check(case):
        x, dout, option = case
        options = {k: float(option) for k in activation.options if k in ("negative_slope", "alpha")}
        options = {**activation.options, **options}
        torch_dtype = torch.float64 if name == "gelu" else getattr(torch, np.dtype(np_dtype).name)
        xt = torch.tensor(x, dtype=torch_dtype, requires_grad=True)
        out_ref = activation.reference(torch, xt, **options)
        out_ref.backward(torch.tensor(dout, dtype=torch_dtype))
        out_ref, dx_ref = out_ref.detach().numpy().astype(np_dtype), xt.grad.numpy().astype(np_dtype)
        if name.startswith("elu"):
            dx_ref = np.where(np.isnan(x), dout, dx_ref)
        overflows = (np.isinf(out_ref) & np.isfinite(x)).any()  # a slope > 1 times a huge x: a true overflow
        with no_floating_point_warnings(), np.errstate(over="ignore" if overflows else "raise"):
            out, cache = activation.forward(x, **options)
            dx = activation.backward(dout, cache)
        # Cancellation (1 + erf, 1 + tanh, 1 - tanh**2 near -+1) leaves absolute errors of a few eps times |x|**3
        # where the functions have not yet saturated (|x| < 10).
        slack = 16 * eps * np.minimum(1 + np.abs(x.astype(np.float64)), 10.0) ** 3
        for got, want in ((out, out_ref), (dx, dx_ref)):
            assert got.dtype == np_dtype
            same = (np.isnan(got) & np.isnan(want)) | (got == want)
            with np.errstate(invalid="ignore"):  # inf - inf
                close = np.abs(got.astype(np.float64) - want) <= 4 * eps * np.abs(want.astype(np.float64)) + slack
            assert (same | close).all(), (x[~(same | close)], got[~(same | close)], want[~(same | close)])

    check()


@pytest.mark.parametrize("slope", [-0.5, 0.0, 1.0, 2.5, float("inf"), float("-inf")])
def test_leaky_relu_every_slope_matches_the_select(slope):
    """Each slope takes its own path (maximum for 0 < slope <= 1, else where; the backward's factor product
    unless the slope is not finite) and all give ``where(x > 0, x, slope * x)`` and its gradient."""
    x = np.concatenate([EDGE_VALUES, np.linspace(-3, 3, 13)])
    dout = np.resize([np.inf, -np.inf, np.nan, 1.0, -2.0, 0.5], x.shape)
    with np.errstate(invalid="ignore"):
        out, cache = F.leaky_relu_forward(x, slope)
        np.testing.assert_array_equal(out, np.where(x > 0, x, x * slope))
        np.testing.assert_array_equal(F.leaky_relu_backward(dout, cache), np.where(x > 0, dout, dout * slope))


@pytest.mark.parametrize("alpha", [-0.5, 0.0, 1.0, 2.5, float("inf")])
def test_elu_every_alpha_matches_the_formula(alpha):
    """ELU is ``alpha * expm1(x)`` where ``x <= 0`` (NaN is not), else x; its gradient ``dout * alpha * exp(x)``
    there, else dout — for any alpha, infinite ones included (PyTorch accepts them)."""
    x = np.concatenate([EDGE_VALUES, np.linspace(-3, 3, 13)])
    dout = np.resize([np.inf, -np.inf, np.nan, 1.0, -2.0, 0.5], x.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        out, cache = F.elu_forward(x, alpha)
        np.testing.assert_array_equal(out, np.where(x <= 0, np.expm1(x) * alpha, x))
        np.testing.assert_array_equal(F.elu_backward(dout, cache), np.where(x <= 0, dout * alpha * np.exp(x), dout))


# -- the maths ------------------------------------------------------------------------------------------------------

@pytest.mark.eager_only
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name):
    activation = ACTIVATIONS[name]
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 4.0, (3, 5)) * rng.choice([-1.0, 1.0], (3, 5))  # away from the kinks at 0
    dout = rng.standard_normal(x.shape)
    dx = activation.backward(dout, activation.forward(x, **activation.options)[1])
    numeric = numerical_gradient(lambda v: activation.forward(v, **activation.options)[0], x, dout)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)


def test_gelu_is_x_times_the_normal_distribution_function():
    """GELU(x) = x * Phi(x) to float64 rounding, with Phi from mpmath (the erf of xpcnn._special underneath), and
    the tanh form within its approximation error (4.7e-4 at most)."""
    mp = pytest.importorskip("mpmath")
    x = np.linspace(-6, 6, 241)
    out, _ = F.gelu_forward(x)
    exact = np.array([float(v * mp.ncdf(v)) for v in x])
    np.testing.assert_allclose(out, exact, rtol=1e-14, atol=5e-16)
    approx, _ = F.gelu_forward(x, approximate="tanh")
    np.testing.assert_allclose(approx, exact, rtol=0, atol=5e-4)


def test_silu_is_x_times_sigmoid():
    x = np.linspace(-40, 40, 161)
    out, cache = F.silu_forward(x)
    np.testing.assert_allclose(out, x / (1 + np.exp(-x)), rtol=1e-15, atol=0)
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(F.silu_backward(np.ones_like(x), cache), s + x * s * (1 - s), rtol=1e-12, atol=1e-300)


# -- caches and bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_named_cache(name):
    """Each forward pass returns its own NamedTuple (wrapped with the input dtype for 16-bit input), and each
    backward pass refuses another op's cache or a bare array with a TypeError naming the op."""
    activation = ACTIVATIONS[name]
    x = np.linspace(-2, 2, 6)
    _, cache = activation.forward(x, **activation.options)
    assert type(cache) is activation.cache
    _, half = activation.forward(x.astype(np.float16), **activation.options)
    assert isinstance(half, LowPrecisionCache) and type(half.cache) is activation.cache
    op = activation.forward.__name__.removesuffix("_forward")
    other = F.arctan_forward(x)[1] if activation.cache is not F.ArctanCache else F.relu_forward(x)[1]
    for wrong in (other, x, (x,), None):
        with pytest.raises(TypeError, match=f"cache must be the cache that {op}_forward returned"):
            activation.backward(np.ones_like(x), wrong)
    other16 = F.arctan_forward(x.astype(np.float16))[1] if op != "arctan" else F.relu_forward(x.astype(np.float16))[1]
    with pytest.raises(TypeError, match=re.escape(f"({activation.cache.__name__}), got")):
        activation.backward(np.ones(6, np.float16), other16)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name):
    activation = ACTIVATIONS[name]
    forward, backward, options = activation.forward, activation.backward, activation.options
    with pytest.raises(TypeError, match="floating"):
        forward(np.arange(3), **options)
    with pytest.raises(TypeError, match="x must be an array"):
        forward([1.0, 2.0], **options)
    with pytest.raises(TypeError, match="x must be an array, got NoneType"):
        forward(None, **options)
    _, cache = forward(np.zeros((2, 3)), **options)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(np.zeros((3, 2)), cache)
    with pytest.raises(TypeError, match="dtype"):
        backward(np.zeros((2, 3), dtype=np.float32), cache)


@pytest.mark.parametrize("forward, name", [(F.leaky_relu_forward, "negative_slope"), (F.elu_forward, "alpha")])
def test_scalar_parameters_are_checked(forward, name):
    """A slope or alpha must be a real number: strings, bools, None and arrays of another kind are refused, and NaN;
    +-inf is allowed (as PyTorch)."""
    x = np.zeros(3)
    for bad in ("0.1", True, None, [0.1], 1j):
        with pytest.raises(TypeError, match=f"{name} must be a real number, got {type(bad).__name__}"):
            forward(x, bad)
    with pytest.raises(ValueError, match=f"{name} must be a number, got nan"):
        forward(x, float("nan"))
    with np.errstate(invalid="ignore"):  # 0 * inf
        for good in (np.float32(0.1), np.int64(2), 3, float("inf")):
            out, _ = forward(x, good)
            assert out.dtype == np.float64


def test_gelu_approximate_is_checked():
    for bad, error in (("exact", ValueError), ("Tanh", ValueError), (None, TypeError), (True, TypeError)):
        with pytest.raises(error, match="approximate must be 'none' or 'tanh', got"):
            F.gelu_forward(np.zeros(3), approximate=bad)


def test_a_low_precision_cache_survives_pickling():
    """A float16 forward's cache (a LowPrecisionCache) pickles and unpickles (a model with caches can be shipped
    to another process), and its backward pass gives the same gradient."""
    import pickle

    x = np.array([[-1.0, 0.5], [2.0, -0.25]], dtype=np.float16)
    out, cache = F.relu_forward(x)
    again = pickle.loads(pickle.dumps(cache))
    assert type(again) is type(cache) and again.dtype == cache.dtype
    np.testing.assert_array_equal(F.relu_backward(np.ones_like(out), again), F.relu_backward(np.ones_like(out), cache))
