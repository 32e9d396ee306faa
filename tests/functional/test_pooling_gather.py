"""Max pooling's and adaptive max pooling's gather paths (the accelerator profile's ``gather_max_pool``) against
the host paths, chosen explicitly with the ops' private ``_gather`` argument: the same values, winners, indices and gradients, bit for bit,
on every backend and in both layouts, for ties, NaN, -inf, padding, dilation (windows entirely in the padding too)
and ceil_mode. The comparison with PyTorch is tests/functional/test_pooling.py's (the host path), so these
equalities carry it over."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import _tuning
from xpcnn.functional import (
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from tests.helpers import config_id, max_pool_input, pool_configs

TO_NHWC = (0, 2, 3, 1)

CONFIGS = [
    # the benchmark's shapes, scaled down: tiling 2x2 (with a row and column left over), 3x3 with stride 1 (the
    # host's separable order of additions) and 2 (offset by offset)
    dict(x_shape=(2, 5, 9, 9), kernel_size=2),
    dict(x_shape=(2, 5, 8, 8), kernel_size=3, stride=1, padding=1),
    dict(x_shape=(2, 5, 9, 9), kernel_size=3, stride=2, padding=1),
    # windows lying entirely in the padding (dilation): their gradient goes nowhere
    dict(x_shape=(2, 2, 1, 5), kernel_size=(2, 1), padding=(1, 0), dilation=(2, 1)),
    dict(x_shape=(1, 3, 7, 6), kernel_size=3, stride=1, padding=1, ceil_mode=True),
    *pool_configs(16, seed=31),
]
KINDS = ["normal", "ties", "nan", "-inf"]


def _both_paths(xp, config, kind, data_format, seed=0):
    """(out, winners, indices, dx) of the host path and of the gather path, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = max_pool_input(kind, config["x_shape"], rng)
    if data_format == "NHWC":
        x = np.ascontiguousarray(x.transpose(TO_NHWC))
    dtype = xp.float_dtypes()[-1][0]
    results, dout = [], None
    for gather in (False, True):
        out, cache = max_pool2d_forward(xp.asarray(x, dtype), **options, data_format=data_format, _gather=gather)
        if dout is None:
            dout = rng.standard_normal(tuple(xp.to_numpy(out).shape))
            dout.reshape(-1)[:: 7] = np.inf  # a non-finite gradient must reach the chosen element only
        dx = max_pool2d_backward(xp.asarray(dout, dtype), cache, _gather=gather)
        xp.assert_on_backend(dx, dtype)
        results.append([xp.to_numpy(a) for a in (out, cache.winners, cache.indices, dx)])
    return results


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_gather_path_equals_the_host_path_bit_for_bit(xp, config, kind, data_format):
    host, gathered = _both_paths(xp, config, kind, data_format)
    for name, a, b in zip(("out", "winners", "indices", "dx"), host, gathered):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_gather_path_on_an_empty_batch(xp, data_format):
    """Every backend, the lazy ones included (Dask's reductions mis-shape an empty batch: nothing is reduced)."""
    config = dict(x_shape=(0, 2, 6, 6), kernel_size=3, stride=1, padding=1)
    for a, b in zip(*_both_paths(xp, config, "normal", data_format)):
        assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("config", CONFIGS[:3], ids=config_id)
def test_backward_paths_take_either_forward(config):
    """The gathered backward pass routes the winners of either forward path (the separable one's included) to the
    host pair's bits; the host's backward pass routes the gathered winners (offset by offset: equal up to the
    order of additions)."""
    rng = np.random.default_rng(1)
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = max_pool_input("ties", config["x_shape"], rng)
    _, host_cache = max_pool2d_forward(x, **options, _gather=False)
    out, gather_cache = max_pool2d_forward(x, **options, _gather=True)
    dout = rng.standard_normal(out.shape)
    expected = max_pool2d_backward(dout, host_cache, _gather=False)
    for cache in (host_cache, gather_cache):
        np.testing.assert_array_equal(max_pool2d_backward(dout, cache, _gather=True), expected)
    np.testing.assert_allclose(max_pool2d_backward(dout, gather_cache, _gather=False), expected, rtol=1e-13,
                               atol=1e-13)


def test_the_accelerator_profile_gathers_and_the_host_does_not():
    assert _tuning.ACCELERATOR.gather_max_pool and not _tuning.HOST.gather_max_pool
    x = max_pool_input("nan", (2, 3, 8, 8), np.random.default_rng(2))
    results = []
    for profile in ("host", "accelerator"):
        with xpcnn.config.device_profile(profile):
            out, cache = max_pool2d_forward(x, 3, stride=1, padding=1)
            results.append((out, cache.indices, max_pool2d_backward(np.ones_like(out), cache)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_gather_pieces_follow_the_workspace_limit():
    rng = np.random.default_rng(3)
    x = max_pool_input("ties", (5, 2, 9, 7), rng)
    out, cache = max_pool2d_forward(x, 3, stride=2, padding=1, _gather=True, workspace_limit=2**30)
    dx = max_pool2d_backward(np.ones_like(out), cache, _gather=True)
    out_pieces, cache_pieces = max_pool2d_forward(x, 3, stride=2, padding=1, _gather=True, workspace_limit=1)
    np.testing.assert_array_equal(out_pieces, out)
    np.testing.assert_array_equal(max_pool2d_backward(np.ones_like(out), cache_pieces, _gather=True), dx)


ADAPTIVE_CONFIGS = [  # overlapping windows of two sizes, an output larger than x, None (keep), an empty output
    dict(x_shape=(2, 3, 7, 6), output_size=(4, 5)),
    dict(x_shape=(2, 2, 5, 9), output_size=(7, 2)),
    dict(x_shape=(1, 3, 4, 6), output_size=(None, 4)),
    dict(x_shape=(2, 2, 3, 3), output_size=(0, 2)),
    dict(x_shape=(2, 3, 8, 6), output_size=(4, 3)),  # tiles: max_pool2d's
    dict(x_shape=(1, 2, 11, 13), output_size=(3, 5)),
]


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", ADAPTIVE_CONFIGS, ids=config_id)
def test_adaptive_gather_path_equals_the_host_path_bit_for_bit(xp, config, kind, data_format):
    rng = np.random.default_rng(5)
    x = max_pool_input(kind, config["x_shape"], rng)
    if data_format == "NHWC":
        x = np.ascontiguousarray(x.transpose(TO_NHWC))
    dtype = xp.float_dtypes()[-1][0]
    results, dout = [], None
    for gather in (False, True):
        out, cache = adaptive_max_pool2d_forward(xp.asarray(x, dtype), config["output_size"],
                                                 data_format=data_format, _gather=gather)
        if dout is None:
            dout = rng.standard_normal(tuple(xp.to_numpy(out).shape))
            dout.reshape(-1)[:: 5] = np.inf
        dx = adaptive_max_pool2d_backward(xp.asarray(dout, dtype), cache, _gather=gather)
        xp.assert_on_backend(dx, dtype)
        results.append([xp.to_numpy(a) for a in (out, cache.indices, dx)])
    for name, a, b in zip(("out", "indices", "dx"), *results):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_adaptive_max_pool_tiles_take_the_gather_path_on_the_accelerator():
    """Adaptive windows that tile x are max_pool2d's: under the accelerator profile they gather too."""
    x = max_pool_input("ties", (2, 3, 8, 6), np.random.default_rng(4))
    results = []
    for profile in ("host", "accelerator"):
        with xpcnn.config.device_profile(profile):
            out, cache = adaptive_max_pool2d_forward(x, (4, 3))
            results.append((out, cache.indices, adaptive_max_pool2d_backward(np.ones_like(out), cache)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bad_gather_argument():
    with pytest.raises(TypeError, match="_gather"):
        max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, _gather="yes")
