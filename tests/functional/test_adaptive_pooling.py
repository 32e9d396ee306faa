"""adaptive_avg_pool2d and adaptive_max_pool2d: PyTorch autograd on random configurations (output sizes smaller,
larger, equal, dividing or not, None; ties, NaN, -inf), every path (global mean, tiling windows, gathered windows),
float16/bfloat16, finite differences, backends, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xpcnn.functional import (
    AdaptiveAvgPool2dCache,
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    max_pool2d_forward,
)
from tests.helpers import assert_close, config_id, max_pool_input, numerical_gradient, torch_reference


def adaptive_configs(count, seed):
    """Random (x_shape, output_size): sizes 1-10, outputs 1-13 as an int, a pair, or a pair with None."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        size = (rng.randint(1, 10), rng.randint(1, 10))
        kind = rng.choice(["int", "pair", "pair", "none", "divides", "one"])
        if kind == "int":
            output_size = rng.randint(1, 13)
        elif kind == "pair":
            output_size = (rng.randint(1, 13), rng.randint(1, 13))
        elif kind == "none":
            output_size = rng.choice([(None, rng.randint(1, 13)), (rng.randint(1, 13), None)])
        elif kind == "divides":
            output_size = tuple(rng.choice([d for d in range(1, n + 1) if n % d == 0]) for n in size)
        else:
            output_size = 1
        configs.append(dict(x_shape=(rng.randint(1, 3), rng.randint(1, 3), *size), output_size=output_size))
    return configs


CONFIGS = adaptive_configs(48, seed=5)
OPS = {
    "avg": (adaptive_avg_pool2d_forward, adaptive_avg_pool2d_backward),
    "max": (adaptive_max_pool2d_forward, adaptive_max_pool2d_backward),
}


def _torch_op(torch, op):
    return torch.nn.functional.adaptive_avg_pool2d if op == "avg" else torch.nn.functional.adaptive_max_pool2d


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_adaptive_avg_pool_matches_torch(xp, torch, config):
    rng = np.random.default_rng(CONFIGS.index(config))
    x = rng.standard_normal(config["x_shape"])
    size = config["output_size"]
    out_ref, grads, dout = torch_reference(torch, lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size),
                                           dict(x=x), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = adaptive_avg_pool2d_forward(xp.asarray(x, dtype), size)
        assert_close(xp, out, out_ref, np_dtype)
        assert_close(xp, adaptive_avg_pool2d_backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "-inf"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_adaptive_max_pool_matches_torch(xp, torch, config, kind):
    rng = np.random.default_rng(CONFIGS.index(config))
    x = max_pool_input(kind, config["x_shape"], rng)
    size = config["output_size"]
    out_ref, grads, dout = torch_reference(torch, lambda x: torch.nn.functional.adaptive_max_pool2d(x, size),
                                           dict(x=x), rng)
    _, indices_ref = torch.nn.functional.adaptive_max_pool2d(torch.tensor(x), size, return_indices=True)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = adaptive_max_pool2d_forward(xp.asarray(x, dtype), size)
        assert_close(xp, out, out_ref, np_dtype)
        np.testing.assert_array_equal(xp.to_numpy(cache.indices), indices_ref.numpy())
        assert_close(xp, adaptive_max_pool2d_backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


def _path(cache) -> str:
    if cache.pooled is not None:
        return "tiling"
    return "global" if isinstance(cache, AdaptiveAvgPool2dCache) and cache.rows is None else "gathered"


def test_configurations_cover_every_path():
    """The PyTorch comparisons above run the global mean, the tiling windows (avg/max pooling) and the gathered
    windows, with output sizes below, equal to and above the input's."""
    paths = {op: {_path(OPS[op][0](np.zeros(c["x_shape"]), c["output_size"])[1]) for c in CONFIGS} for op in OPS}
    assert paths == {"avg": {"global", "tiling", "gathered"}, "max": {"tiling", "gathered"}}
    ratios = set()
    for c in CONFIGS:
        size = c["output_size"] if isinstance(c["output_size"], tuple) else (c["output_size"],) * 2
        ratios |= {np.sign((o or n) - n) for o, n in zip(size, c["x_shape"][2:])}
    assert ratios == {-1, 0, 1}


LOW_PRECISION_ULPS = 2  # the result rounded to 16 bits once, as PyTorch's; the float32 sums in another order


@pytest.mark.torch_reference
@pytest.mark.parametrize("lib, dtype", [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")])
@pytest.mark.parametrize("op", OPS)
def test_low_precision_matches_torch(torch, lib, dtype, op):
    """16-bit inputs are computed in float32 and rounded once, as PyTorch's CPU kernels: values and gradients
    within a few units in the last place of PyTorch's own 16-bit results; max pooling's indices equal."""
    forward, backward = OPS[op]
    module = np if lib == "numpy" else torch
    eps = float(torch.finfo(getattr(torch, dtype)).eps)
    for i, config in enumerate(CONFIGS[:16]):
        rng = np.random.default_rng(i)
        x = rng.standard_normal(config["x_shape"]).astype(np.float32)
        x_ref = torch.tensor(x).to(getattr(torch, dtype)).requires_grad_(True)
        out_ref = _torch_op(torch, op)(x_ref, config["output_size"])
        dout = torch.tensor(rng.standard_normal(tuple(out_ref.shape)).astype(np.float32)).to(out_ref.dtype)
        out_ref.backward(dout)
        def as_input(t):
            return t.detach().float().numpy().astype(np.float16) if lib == "numpy" else t.detach()

        out, cache = forward(as_input(x_ref), config["output_size"])
        dx = backward(as_input(dout), cache)
        assert str(out.dtype).endswith(dtype) and str(dx.dtype).endswith(dtype)
        for got, want in ((out, out_ref), (dx, x_ref.grad)):
            got = np.asarray(got, dtype=np.float32) if lib == "numpy" else got.float().numpy()
            want = want.detach().float().numpy()
            np.testing.assert_allclose(got, want, rtol=LOW_PRECISION_ULPS * eps, atol=LOW_PRECISION_ULPS * eps)
        if op == "max":
            _, indices_ref = torch.nn.functional.adaptive_max_pool2d(x_ref.detach(), config["output_size"],
                                                                     return_indices=True)
            np.testing.assert_array_equal(np.asarray(cache.indices), indices_ref.numpy())


@pytest.mark.eager_only
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("output_size", [(2, 3), (7, 4), 4, (None, 2)], ids=str)
def test_gradients_match_finite_differences(xp, op, output_size):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    forward, backward = OPS[op]
    x = np.random.default_rng(0).permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 7.0  # tie-free

    def run(v):
        return xp.to_numpy(forward(xp.asarray(v), output_size)[0])

    dout = np.random.default_rng(1).standard_normal(run(x).shape)
    dx = xp.to_numpy(backward(xp.asarray(dout), forward(xp.asarray(x), output_size)[1]))
    np.testing.assert_allclose(dx, numerical_gradient(run, x, dout), rtol=1e-6, atol=1e-8)


def test_global_average_pooling_is_the_mean(xp):
    for dtype, np_dtype in xp.float_dtypes():
        x = np.random.default_rng(0).standard_normal((3, 4, 7, 6)).astype(np_dtype)
        out, cache = adaptive_avg_pool2d_forward(xp.asarray(x, dtype), 1)
        assert cache.rows is None and cache.pooled is None
        expected = xp.mean(xp.asarray(x, dtype), axis=(2, 3), keepdims=True)
        np.testing.assert_array_equal(xp.to_numpy(out), xp.to_numpy(expected))
        dx = adaptive_avg_pool2d_backward(xp.asarray(np.ones((3, 4, 1, 1)), dtype), cache)
        assert_close(xp, dx, np.full(x.shape, 1 / 42), np_dtype)


@pytest.mark.parametrize("op", OPS)
def test_tiling_windows_equal_pooling(op):
    """Windows that tile x are avg/max pooling's with kernel = stride = H / out_h: the same values and indices."""
    forward, _ = OPS[op]
    x = max_pool_input("ties", (2, 3, 8, 6), np.random.default_rng(0))
    out, cache = forward(x, (4, 2))
    assert cache.pooled is not None
    pooled, pooled_cache = (max_pool2d_forward if op == "max" else _avg_pool)(x, (2, 3))
    np.testing.assert_array_equal(out, pooled)
    if op == "max":
        np.testing.assert_array_equal(cache.indices, pooled_cache.indices)


def _avg_pool(x, kernel):
    from xpcnn.functional import avg_pool2d_forward

    return avg_pool2d_forward(x, kernel)


@pytest.mark.parametrize("op", OPS)
def test_large_tiling_windows_take_the_gathered_path(op):
    """A 200 x 200 window (over max_pool2d's 32767-element kernel limit) still pools, by the gathered path."""
    forward, backward = OPS[op]
    x = np.random.default_rng(0).standard_normal((1, 2, 200, 400))
    out, cache = forward(x, (1, 2))
    reference = x.reshape(1, 2, 200, 2, 200)
    expected = reference.max(axis=(2, 4)) if op == "max" else reference.mean(axis=(2, 4))
    np.testing.assert_allclose(out[:, :, 0], expected, rtol=1e-12)
    dx = backward(np.ones_like(out), cache)
    np.testing.assert_allclose(dx.sum(), 4.0, rtol=1e-12)  # each of the 4 outputs passes its 1 on


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("output_size", [1, (3, 2), (4, 9), (0, 2)], ids=str)
def test_keeps_backend_device_and_dtype(xp, op, output_size):
    forward, backward = OPS[op]
    for batch, channels in ((0, 2), (2, 0), (2, 3)):
        for dtype, _ in xp.float_dtypes():
            x = xp.asarray(np.random.default_rng(0).standard_normal((batch, channels, 6, 4)), dtype)
            out, cache = forward(x, output_size)
            xp.assert_on_backend(out, dtype)
            xp.assert_on_backend(backward(out, cache), dtype)
            if op == "max":
                xp.assert_on_backend(cache.indices, xp.int64)


X = np.zeros((1, 2, 5, 5))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "args, error, word",
    [
        ((np.zeros((5, 5)), 2), ValueError, "4-D"),
        ((np.zeros((1, 2, 0, 5)), 2), ValueError, "non-empty height and width"),
        ((X, -1), ValueError, "output_size must be >= 0"),
        ((X, (2, -3)), ValueError, "output_size must be >= 0"),
        ((X, (2, 2, 2)), ValueError, "pair"),
        ((X, None), TypeError, "output_size"),
        ((X, 2.5), TypeError, "output_size must be an int"),
        ((X, (2, "3")), TypeError, "output_size must be an int"),
        ((X, True), TypeError, "output_size must be an int, got bool"),
        ((X.astype(np.int32), 2), TypeError, "floating"),
        ((X.tolist(), 2), TypeError, "x must be an array"),
    ],
)
def test_bad_input(op, args, error, word):
    forward, _ = OPS[op]
    with pytest.raises(error, match=word):
        forward(*args)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("output_size", [1, 5, 3], ids=str)  # global (avg), tiling, gathered
def test_bad_dout_and_cache(op, output_size):
    forward, backward = OPS[op]
    out, cache = forward(X, output_size)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(np.zeros((1, 2, 2, 7)), cache)
    with pytest.raises(TypeError, match="dtype"):
        backward(out.astype(np.float32), cache)
    with pytest.raises(TypeError, match="dout must be an array"):
        backward(out.tolist(), cache)
    other = OPS["max" if op == "avg" else "avg"][0](X, output_size)[1]
    with pytest.raises(TypeError, match="cache must be the cache"):
        backward(out, other)


def test_nonfinite_dout_reaches_only_the_chosen_element():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9))
    for output_size in ((3, 4), (9, 12)):  # overlapping windows; an output larger than x
        out, cache = adaptive_max_pool2d_forward(x, output_size)
        dout = rng.integers(-3, 4, out.shape).astype(np.float64)
        dout.flat[rng.choice(dout.size, 12, replace=False)] = [np.inf, -np.inf, np.nan] * 4
        expected = np.zeros((6, 63))
        np.add.at(expected, (np.arange(6)[:, None], cache.indices.reshape(6, -1)), dout.reshape(6, -1))
        dx = adaptive_max_pool2d_backward(dout, cache)
        np.testing.assert_array_equal(dx, expected.reshape(x.shape))
