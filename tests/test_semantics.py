"""One test per row of docs/semantics.md (the row's id is the function's name, dashes as underscores)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import xpcnn.functional as F
from tests.ops import OPS, run


def maxpool_ties():
    x = np.array([[[[2.0, 2.0], [2.0, 1.0]]]])
    out, cache = F.max_pool2d_forward(x, 2)
    assert out[0, 0, 0, 0] == 2.0 and cache.indices[0, 0, 0, 0] == 0
    np.testing.assert_array_equal(F.max_pool2d_backward(np.ones((1, 1, 1, 1)), cache)[0, 0], [[1, 0], [0, 0]])


def maxpool_nan():
    x = np.array([[[[np.nan, 5.0], [np.nan, 1.0]]]])
    out, cache = F.max_pool2d_forward(x, 2)
    assert np.isnan(out).all() and cache.indices[0, 0, 0, 0] == 2
    np.testing.assert_array_equal(F.max_pool2d_backward(np.ones((1, 1, 1, 1)), cache)[0, 0], [[0, 0], [1, 0]])


def maxpool_posinf():
    x = np.array([[[[1.0, np.inf], [np.inf, 1.0]]]])
    out, cache = F.max_pool2d_forward(x, 2)
    assert out[0, 0, 0, 0] == np.inf and cache.indices[0, 0, 0, 0] == 1


def maxpool_neginf():
    x = np.full((1, 1, 3, 3), -np.inf)
    out, cache = F.max_pool2d_forward(x, 2, stride=2, padding=1)
    assert (out == -np.inf).all()
    np.testing.assert_array_equal(cache.indices[0, 0], [[0, 1], [3, 4]])  # first element inside x
    dx = F.max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def maxpool_all_padding():
    x = np.array([[[[3.0]], [[4.0]]]])  # two channels: the gradient must not leak into the next one
    out, cache = F.max_pool2d_forward(x, (2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    assert (out == -np.inf).all() and (cache.indices == 1).all()
    np.testing.assert_array_equal(F.max_pool2d_backward(np.ones_like(out), cache), np.zeros_like(x))


def maxpool_overlap():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0
    out, cache = F.max_pool2d_forward(x, 2, stride=1)
    assert F.max_pool2d_backward(np.ones_like(out), cache)[0, 0, 1, 1] == 4.0


def maxpool_nonfinite_dout():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 7))
    for options in (dict(stride=1, padding=1), dict(stride=2, padding=1)):  # separable passes; direct slices
        out, cache = F.max_pool2d_forward(x, 3, **options)
        dout = rng.integers(-3, 4, out.shape).astype(np.float64)
        dout.flat[rng.choice(dout.size, 12, replace=False)] = [np.inf, -np.inf, np.nan] * 4
        expected = np.zeros((2 * 3, 7 * 7))
        planes = np.arange(6)[:, None]
        np.add.at(expected, (planes, cache.indices.reshape(6, -1)), dout.reshape(6, -1))  # one window at a time
        dx = F.max_pool2d_backward(dout, cache)
        np.testing.assert_array_equal(dx, expected.reshape(x.shape))
        assert np.isfinite(dx).sum() == np.isfinite(expected).sum() > 0


def avgpool_ceil():
    x = np.ones((1, 1, 5, 5))
    for count_include_pad in (True, False):
        out, cache = F.avg_pool2d_forward(x, 2, stride=2, ceil_mode=True, count_include_pad=count_include_pad)
        np.testing.assert_array_equal(out, np.ones((1, 1, 3, 3)))  # the last windows hold 2 or 1 elements
        dx = F.avg_pool2d_backward(np.ones_like(out), cache)
        assert dx[0, 0, 4, 4] == 1.0 and dx[0, 0, 0, 0] == 0.25


def conv_nan():
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 0, 0] = np.nan
    out, cache = F.conv2d_forward(x, np.ones((1, 1, 2, 2)))
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True  # the only window that holds x[0, 0]
    np.testing.assert_array_equal(np.isnan(out[0, 0]), expected)
    dx, dw, _ = F.conv2d_backward(np.ones_like(out), cache)
    assert np.isfinite(dx).all()
    np.testing.assert_array_equal(np.isnan(dw[0, 0]), [[True, False], [False, False]])


def relu_nan():
    x = np.array([np.nan])
    for name in ("relu", "leaky_relu", "sigmoid", "tanh", "arctan"):
        forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
        out, cache = forward(x)
        assert np.isnan(out).all()
        dx = backward(np.ones(1), cache)
        expected = {"relu": 1.0, "leaky_relu": 0.01}.get(name, np.nan)
        np.testing.assert_array_equal(dx, expected)


def relu_zero():
    out, cache = F.relu_forward(np.array([0.0, -0.0]))
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(F.relu_backward(np.ones(2), cache), 0.0)


def sigmoid_inf():
    x = np.array([np.inf, -np.inf, 800.0, -800.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, expected in (("sigmoid", [1, 0, 1, 0]), ("tanh", [1, -1, 1, -1]),
                               ("arctan", np.array([1, -1, 1 - 2 / np.pi / 800, -1 + 2 / np.pi / 800]) * np.pi / 2)):
            out, cache = getattr(F, f"{name}_forward")(x)
            np.testing.assert_allclose(out, expected, rtol=1e-6)
            grad = getattr(F, f"{name}_backward")(np.ones(4), cache)
            np.testing.assert_array_equal(grad[:2], 0.0)
            assert (grad[2:] < 2e-6).all()


def ce_large_logits():
    logits = np.array([[1e4, -1e4, 0.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, cache = F.softmax_cross_entropy_forward(logits, np.array([1]))
        grad = F.softmax_cross_entropy_backward(1.0, cache)
    assert loss.dtype == np.float32 and loss == 2e4 and np.isfinite(grad).all()


def ce_inf_logit():
    with np.errstate(invalid="ignore"):
        loss, cache = F.softmax_cross_entropy_forward(np.array([[np.inf, 0.0]]), np.array([0]))
        assert np.isnan(loss) and np.isnan(F.softmax_cross_entropy_backward(1.0, cache)).any()


def lazy_targets():
    loss, cache = F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([1, 5]), reduction="none",
                                                  check_targets=False)
    assert np.isnan(loss).tolist() == [False, True]
    assert np.isnan(F.softmax_cross_entropy_backward(np.ones(2), cache)).all(axis=1).tolist() == [False, True]
    da = pytest.importorskip("dask.array")
    loss, cache = F.softmax_cross_entropy_forward(da.zeros((2, 3)), da.asarray(np.array([1, 5])), reduction="none")
    assert np.isnan(loss.compute()).tolist() == [False, True]
    grad = F.softmax_cross_entropy_backward(da.ones(2), cache).compute()
    assert np.isnan(grad).all(axis=1).tolist() == [False, True]


def empty_batch():
    rng = np.random.default_rng(0)
    for op in OPS:
        arrays = {k: v[:0] if k in ("x", "logits", "pred", "target") else v for k, v in op.inputs(rng).items()}
        if op.name == "batch_norm2d":
            continue  # training batch norm needs more than one value per channel (a documented error)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = run(op, arrays, lambda out: np.ones(out.shape))
        assert op.scalar_dloss or results[0].shape[0] == 0, op.name
        if op.scalar_dloss and op.options.get("reduction", "mean") == "mean":
            assert np.isnan(results[0])
        if op.name in ("conv2d", "linear"):
            assert all((g == 0).all() for g in results[2:]), op.name


def one_by_one():
    x = np.array([[[[2.0]]]])
    out, cache = F.conv2d_forward(x, np.array([[[[3.0]]]]))
    assert out.shape == (1, 1, 1, 1) and out[0, 0, 0, 0] == 6.0
    out, cache = F.max_pool2d_forward(x, 2, stride=1, padding=1)
    assert out.shape == (1, 1, 2, 2) and (out == 2.0).all()
    assert F.max_pool2d_backward(np.ones_like(out), cache)[0, 0, 0, 0] == 4.0
    out, cache = F.avg_pool2d_forward(x, 2, stride=1, padding=1)
    np.testing.assert_array_equal(out, 0.5)
    np.testing.assert_array_equal(F.avg_pool2d_backward(np.ones_like(out), cache), 1.0)


def float16():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow anywhere (dropout's mask included)
        backends = [np]
        try:
            import torch

            backends.append(torch)
        except ImportError:
            pass
        rng = np.random.default_rng(0)
        for lib in backends:
            for op in OPS:
                arrays = {k: lib.asarray(v.astype(np.float16) if v.dtype.kind == "f" else v)
                          for k, v in op.inputs(rng).items()}
                results = run(op, arrays, lambda out: lib.ones(tuple(out.shape), dtype=out.dtype))
                floats = results[:-1] if op.indices else results
                assert all(str(r.dtype).endswith("float16") for r in floats), (lib.__name__, op.name)


def float32_only_device():
    strict = pytest.importorskip("array_api_strict")
    device = strict.Device("no_float64")
    rng = np.random.default_rng(0)
    for op in OPS:
        arrays = {k: strict.asarray(v.astype(np.float32) if v.dtype.kind == "f" else v, device=device)
                  for k, v in op.inputs(rng).items()}
        results = run(op, arrays, lambda out: strict.ones(out.shape, dtype=out.dtype, device=device))
        floats = results[:-1] if op.indices else results
        assert all(r.dtype == strict.float32 and r.device == device for r in floats), op.name


def adaptive_windows():
    x = np.arange(5.0)[None, None, None, :]  # width 5 into 3: windows [0, 2), [1, 4), [3, 5)
    out, cache = F.adaptive_avg_pool2d_forward(x, (1, 3))
    np.testing.assert_allclose(out[0, 0, 0], [0.5, 2.0, 3.5])
    np.testing.assert_allclose(F.adaptive_avg_pool2d_backward(np.ones((1, 1, 1, 3)), cache)[0, 0, 0],
                               [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2])
    out, cache = F.adaptive_max_pool2d_forward(x, (1, 3))
    np.testing.assert_array_equal(out[0, 0, 0], [1.0, 3.0, 4.0])
    np.testing.assert_array_equal(F.adaptive_max_pool2d_backward(np.ones((1, 1, 1, 3)), cache)[0, 0, 0],
                                  [0, 1, 0, 1, 1])
    out, cache = F.adaptive_avg_pool2d_forward(np.array([[[[1.0, 2.0]]]]), (1, 5))  # larger: repeats
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 1.0, 1.5, 2.0, 2.0])


def adaptive_max_rules():
    x = np.array([[[[2.0, 5.0, 5.0], [5.0, 1.0, 0.0], [np.nan, 4.0, np.nan]]]])
    for output_size in ((2, 2), (1, 1), (3, 1)):  # gathered windows, one window (max_pool2d's), overlapping rows
        _, cache = F.adaptive_max_pool2d_forward(x[..., :2, :], output_size)
        assert cache.indices[0, 0, 0, 0] == 1, output_size  # the first 5 in row-major order
    out, cache = F.adaptive_max_pool2d_forward(x, (2, 2))  # rows [0, 2), [1, 3); columns [0, 2), [1, 3)
    np.testing.assert_array_equal(cache.indices[0, 0], [[1, 1], [6, 8]])
    assert np.isnan(out[0, 0, 1]).all()
    dx = F.adaptive_max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 2, 0], [0, 0, 0], [1, 0, 1]])
    for output_size in ((2, 1), (1, 1)):  # two NaNs in the last window: the last one
        assert F.adaptive_max_pool2d_forward(x, output_size)[1].indices[0, 0, -1, 0] == 8
    out, cache = F.adaptive_max_pool2d_forward(np.full((1, 1, 3, 3), -np.inf), (2, 2))
    assert (out == -np.inf).all()
    np.testing.assert_array_equal(cache.indices[0, 0], [[0, 1], [3, 4]])  # each window's first element


def adaptive_global():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5)).astype(np.float32)
    out, cache = F.adaptive_avg_pool2d_forward(x, 1)
    np.testing.assert_array_equal(out, np.mean(x, axis=(2, 3), keepdims=True))
    np.testing.assert_array_equal(F.adaptive_avg_pool2d_backward(np.ones_like(out), cache), np.float32(1 / 35))


def adaptive_empty_output():
    x = np.ones((2, 3, 4, 4))
    for forward, backward in ((F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward),
                              (F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward)):
        out, cache = forward(x, (0, 3))
        assert out.shape == (2, 3, 0, 3)
        np.testing.assert_array_equal(backward(out, cache), np.zeros_like(x))


def adaptive_nonfinite_dout():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    dout = np.zeros((1, 1, 3, 3))
    dout[0, 0, 0, 0] = np.inf  # window rows [0, 2), columns [0, 2)
    out, cache = F.adaptive_max_pool2d_forward(x, 3)
    dx = F.adaptive_max_pool2d_backward(dout, cache)
    assert dx[0, 0, 1, 1] == np.inf and np.isfinite(np.delete(dx.ravel(), 6)).all() and not np.isnan(dx).any()
    out, cache = F.adaptive_avg_pool2d_forward(x, 3)
    dx = F.adaptive_avg_pool2d_backward(dout, cache)
    np.testing.assert_array_equal(np.isinf(dx[0, 0]), np.pad(np.ones((2, 2), bool), ((0, 3), (0, 3))))
    assert not np.isnan(dx).any()


def interpolate_scale_rule():
    x = np.arange(5.0)[None, None, None, :]
    out, _ = F.interpolate_forward(x, scale_factor=(1, 1.7))  # width 8; source floor(i / 1.7), not floor(i * 5 / 8)
    np.testing.assert_array_equal(out[0, 0, 0], [0, 0, 1, 1, 2, 2, 3, 4])
    out, _ = F.interpolate_forward(x, size=(1, 8))
    np.testing.assert_array_equal(out[0, 0, 0], [0, 0, 1, 1, 2, 3, 3, 4])
    out, _ = F.interpolate_forward(x, scale_factor=(1, 1.1), mode="bilinear")  # floor(5.5) = 5: unchanged, a copy
    np.testing.assert_array_equal(out, x)


def interpolate_inf():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = np.inf
    with np.errstate(invalid="ignore"):
        out, cache = F.interpolate_forward(x, size=(3, 3), mode="bilinear")
        assert np.isnan(out[0, 0, 1, 1]) and np.isfinite(np.delete(out.ravel(), 4)).all()
        out, cache = F.interpolate_forward(np.zeros((1, 1, 3, 3)), size=(5, 5), mode="bilinear", align_corners=True)
        dout = np.zeros((1, 1, 5, 5))
        dout[0, 0, 2, 2] = np.inf  # exactly on input (1, 1): weight 1 there, 0 on its right and lower neighbours
        dx = F.interpolate_backward(dout, cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0], [0, np.inf, np.nan], [0, np.nan, np.nan]])


def interpolate_identity():
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    for mode in ("nearest", "nearest-exact", "bilinear"):
        out, cache = F.interpolate_forward(x, size=(3, 4), mode=mode)
        assert out is not x and not np.shares_memory(out, x)
        np.testing.assert_array_equal(out, x)
        dx = F.interpolate_backward(out, cache)
        assert dx is not out and not np.shares_memory(dx, out)
        np.testing.assert_array_equal(dx, x)


ROWS = {name.replace("_", "-"): fn for name, fn in list(globals().items())
        if callable(fn) and fn.__module__ == __name__ and not name.startswith(("test", "_"))}


def test_every_documented_row_has_a_test():
    text = (Path(__file__).parents[1] / "docs" / "semantics.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M)
    assert sorted(documented) == sorted(ROWS)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_semantics_row(row):
    ROWS[row]()
