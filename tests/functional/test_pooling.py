"""max_pool2d and avg_pool2d: PyTorch autograd on random configurations (ties, NaN, -inf included), finite
differences, the seeds' worked example, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import avg_pool2d_backward, avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward
from tests.helpers import assert_close, config_id, max_pool_input, numerical_gradient, pool_configs, torch_reference

MAX_CONFIGS = pool_configs(50, seed=2)
AVG_CONFIGS = [
    dict(config, count_include_pad=bool(i % 2), divisor_override=[None, None, 3][i % 3])
    for i, config in enumerate(pool_configs(40, seed=3, with_dilation=False))
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "-inf"])
@pytest.mark.parametrize("config", MAX_CONFIGS, ids=config_id)
def test_max_pool_matches_torch(xp, torch, config, kind):
    rng = np.random.default_rng(MAX_CONFIGS.index(config))
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = max_pool_input(kind, config["x_shape"], rng)
    out_ref, grads, dout = torch_reference(
        torch, lambda x: torch.nn.functional.max_pool2d(x, **options), dict(x=x), rng
    )
    _, indices_ref = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **options)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = max_pool2d_forward(xp.asarray(x, dtype), **options)
        assert_close(xp, out, out_ref, np_dtype)
        np.testing.assert_array_equal(xp.to_numpy(cache.indices), indices_ref.numpy())
        dx = max_pool2d_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"], np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", AVG_CONFIGS, ids=config_id)
def test_avg_pool_matches_torch(xp, torch, config):
    rng = np.random.default_rng(AVG_CONFIGS.index(config))
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = rng.standard_normal(config["x_shape"])
    out_ref, grads, dout = torch_reference(
        torch, lambda x: torch.nn.functional.avg_pool2d(x, **options), dict(x=x), rng
    )
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = avg_pool2d_forward(xp.asarray(x, dtype), **options)
        assert_close(xp, out, out_ref, np_dtype)
        assert_close(xp, avg_pool2d_backward(xp.asarray(dout, dtype), cache), grads["x"], np_dtype)


POOL_OPS = {
    "max": (max_pool2d_forward, max_pool2d_backward),
    "avg": (avg_pool2d_forward, avg_pool2d_backward),
}


@pytest.mark.parametrize("op", POOL_OPS)
@pytest.mark.parametrize(
    "options",
    [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True)],
    ids=str,
)
@pytest.mark.eager_only
def test_gradients_match_finite_differences(xp, op, options):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    forward, backward = POOL_OPS[op]
    x = np.random.default_rng(0).permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 7.0  # tie-free

    def run(v):
        return xp.to_numpy(forward(xp.asarray(v), **options)[0])

    dout = np.random.default_rng(1).standard_normal(run(x).shape)
    dx = xp.to_numpy(backward(xp.asarray(dout), forward(xp.asarray(x), **options)[1]))
    np.testing.assert_allclose(dx, numerical_gradient(run, x, dout), rtol=1e-6, atol=1e-8)


def test_seed_example_routes_each_gradient_to_one_argmax():
    """The seed articles' 4x4 map, 2x2 max pool: the 2x2 upstream gradient lands on exactly the four maxima."""
    layer = np.array(
        [
            [1.0, 9.0, 2.0, 2.0],
            [4.0, 3.0, 2.0, 2.0],  # a four-way tie in the top-right window: the first (row-major) wins
            [0.0, 5.0, 8.0, 1.0],
            [6.0, 6.0, 0.0, 7.0],  # a tie between 6 and 6: the first wins
        ]
    )[None, None]
    out, cache = max_pool2d_forward(layer, 2)
    np.testing.assert_array_equal(out[0, 0], [[9.0, 2.0], [6.0, 8.0]])
    np.testing.assert_array_equal(cache.indices[0, 0], [[1, 2], [12, 10]])
    dx = max_pool2d_backward(np.array([[[[0.1, 0.2], [0.3, 0.4]]]]), cache)
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[3, 0], expected[2, 2] = 0.1, 0.2, 0.3, 0.4
    np.testing.assert_array_equal(dx[0, 0], expected)
    assert dx.sum() == pytest.approx(1.0)


def test_nan_propagates_and_takes_the_gradient():
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]])
    out, cache = max_pool2d_forward(x, 2)
    assert np.isnan(out).all()
    np.testing.assert_array_equal(max_pool2d_backward(np.ones((1, 1, 1, 1)), cache), [[[[0.0, 1.0], [0.0, 0.0]]]])


def test_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0  # the maximum of all four 2x2 windows
    out, cache = max_pool2d_forward(x, 2, stride=1)
    assert max_pool2d_backward(np.ones_like(out), cache)[0, 0, 1, 1] == 4.0
    out, cache = avg_pool2d_forward(x, 2, stride=1)
    np.testing.assert_array_equal(
        avg_pool2d_backward(np.ones_like(out), cache)[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]
    )


def test_max_pool_configurations_cover_both_passes():
    """The PyTorch comparisons above run both max-pool algorithms: the kh * kw slices directly, and the
    separable passes (along the rows, then across them)."""
    separable = {
        max_pool2d_forward(np.zeros(c["x_shape"]), **{k: v for k, v in c.items() if k != "x_shape"})[1].column_winners
        is not None
        for c in MAX_CONFIGS
    }
    assert separable == {True, False}


@pytest.mark.eager_only
@pytest.mark.parametrize("op", POOL_OPS)
@pytest.mark.parametrize("options", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)], ids=str)
def test_workspace_limit_processes_pieces_with_the_same_results(xp, op, options):
    forward, backward = POOL_OPS[op]
    x = max_pool_input("ties", (5, 3, 7, 6), np.random.default_rng(0))
    dtype, _ = xp.float_dtypes()[-1]
    out, cache = forward(xp.asarray(x, dtype), **options, workspace_limit=2**40)
    dx = backward(out, cache)
    for limit in (1, 2000):
        out_pieces, cache_pieces = forward(xp.asarray(x, dtype), **options, workspace_limit=limit)
        np.testing.assert_array_equal(xp.to_numpy(out_pieces), xp.to_numpy(out))
        np.testing.assert_array_equal(xp.to_numpy(backward(out, cache_pieces)), xp.to_numpy(dx))


@pytest.mark.parametrize("op", POOL_OPS)
def test_keeps_backend_device_and_dtype(xp, op):
    forward, backward = POOL_OPS[op]
    for dtype, _ in xp.float_dtypes():
        x = xp.asarray(np.random.default_rng(0).standard_normal((0, 2, 6, 6)), dtype)
        out, cache = forward(x, 3, stride=2, padding=1)
        xp.assert_on_backend(out, dtype)
        xp.assert_on_backend(backward(out, cache), dtype)
        x = xp.asarray(np.random.default_rng(0).standard_normal((2, 2, 6, 6)), dtype)
        out, cache = forward(x, 3, stride=2, padding=1)
        xp.assert_on_backend(out, dtype)
        xp.assert_on_backend(backward(out, cache), dtype)


X = np.zeros((1, 2, 5, 5))


@pytest.mark.parametrize("op", POOL_OPS)
@pytest.mark.parametrize(
    "args, kwargs, error, word",
    [
        ((np.zeros((5, 5)), 2), {}, ValueError, "4-D"),
        ((np.zeros((1, 1, 2, 5, 5)), 2), {}, ValueError, "3-D"),
        ((X, 2), dict(data_format="NWHC"), ValueError, "data_format"),
        ((X, 0), {}, ValueError, "kernel_size"),
        ((X, (2, 2, 2)), {}, ValueError, "kernel_size"),
        ((X, 2), dict(stride=0), ValueError, "stride"),
        ((X, 2), dict(padding=-1), ValueError, "padding"),
        ((X, 2), dict(padding=2), ValueError, "half the kernel"),
        ((X, (3, 2)), dict(padding=(1, 2)), ValueError, "half the kernel"),
        ((X, 7), {}, ValueError, "larger than the padded input"),
        ((X.astype(np.int32), 2), {}, TypeError, "floating"),
        ((X.astype(bool), 2), {}, TypeError, "floating"),
        ((X, 2.5), {}, TypeError, "kernel_size"),
        ((5.0, 2), {}, TypeError, "x must be an array"),
    ],
)
def test_bad_input(op, args, kwargs, error, word):
    forward, _ = POOL_OPS[op]
    with pytest.raises(error, match=word):
        forward(*args, **kwargs)


def test_bad_divisor_override():
    with pytest.raises(ValueError, match="divisor_override must be a nonzero int"):
        avg_pool2d_forward(X, 2, divisor_override=0)


def test_negative_divisor_override_divides_as_pytorch():
    out, _ = avg_pool2d_forward(np.ones((1, 1, 4, 4)), 2, divisor_override=-2)
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -2.0))


def test_max_pool_bad_dilation():
    with pytest.raises(ValueError, match="dilation"):
        max_pool2d_forward(X, 2, dilation=0)


@pytest.mark.parametrize("op", POOL_OPS)
def test_bad_dout(op):
    forward, backward = POOL_OPS[op]
    out, cache = forward(X, 2)
    with pytest.raises(ValueError, match="dout must have shape"):
        backward(np.zeros((1, 2, 3, 2)), cache)
    with pytest.raises(TypeError, match="dtype"):
        backward(out.astype(np.float32), cache)
    with pytest.raises(TypeError, match="dout must be an array"):
        backward(out.tolist(), cache)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (2, 3, 7, 9), (0, 2, 4, 4)], ids=str)
@pytest.mark.parametrize("kernel", [2, (3, 2)], ids=str)
def test_avg_pool_tiles_equal_the_general_path(xp, monkeypatch, shape, kernel):
    """Windows that tile x take the broadcast backward; adding back offset by offset gives the same gradients."""
    from xpcnn.functional import pooling

    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(6)
    x = xp.asarray(rng.standard_normal(shape), dtype)
    out, cache = avg_pool2d_forward(x, kernel)
    assert pooling._tiles_input(cache.geometry)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    dx = avg_pool2d_backward(dout, cache)
    monkeypatch.setattr(pooling, "_tiles_input", lambda geometry: False)
    out_general, cache_general = avg_pool2d_forward(x, kernel)
    assert_close(xp, out, xp.to_numpy(out_general), np_dtype)
    assert_close(xp, dx, xp.to_numpy(avg_pool2d_backward(dout, cache_general)), np_dtype)
