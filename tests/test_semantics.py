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


def conv_transpose_nonfinite():
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf  # meets only the real x in the forward pass, dout's zero padding too in the backward
    with np.errstate(invalid="ignore"):
        out, cache = F.conv_transpose2d_forward(x, w, padding=1)
        dx, dw, _ = F.conv_transpose2d_backward(np.ones_like(out), cache)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(np.isinf(out[0, 0]), [[True, True, False], [True, True, False], [False] * 3])
    np.testing.assert_array_equal(np.isnan(dx[0, 0]), [[True] * 3, [True, False, False], [True, False, False]])
    x[0, 0, 1, 1] = np.nan
    with np.errstate(invalid="ignore"):
        out, cache = F.conv_transpose2d_forward(x, np.ones((1, 1, 3, 3)), padding=1)
        dx, dw, _ = F.conv_transpose2d_backward(np.ones_like(out), cache)
    assert np.isnan(out).all() and np.isfinite(dx).all() and np.isnan(dw).all()


def conv_transpose_output_padding():
    x = np.ones((1, 1, 2, 2))
    out, cache = F.conv_transpose2d_forward(x, np.ones((1, 1, 2, 2)), np.array([0.5]), stride=3, output_padding=2)
    assert out.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(out[0, 0, 5:], 0.5)  # rows that no window reaches: the bias alone
    np.testing.assert_array_equal(out[0, 0, :, 5:], 0.5)
    dout = np.zeros_like(out)
    dout[0, 0, 5:] = dout[0, 0, :, 5:] = 7.0
    dx, dw, db = F.conv_transpose2d_backward(dout, cache)
    assert (dx == 0).all() and (dw == 0).all() and db[0] == 7.0 * (7 * 7 - 5 * 5)


ACTIVATIONS = ("relu", "leaky_relu", "elu", "sigmoid", "tanh", "arctan", "gelu", "silu")


def relu_nan():
    x = np.full(64, np.nan)  # as long as PyTorch's vectorised loops need
    for name in ACTIVATIONS:
        forward, backward = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
        out, cache = forward(x)
        assert np.isnan(out).all()
        dx = backward(np.ones(64), cache)
        expected = {"relu": 1.0, "leaky_relu": 0.01, "elu": 1.0}.get(name, np.nan)
        np.testing.assert_array_equal(dx, expected)
    out, cache = F.gelu_forward(x, approximate="tanh")
    assert np.isnan(out).all() and np.isnan(F.gelu_backward(np.ones(64), cache)).all()


def relu_zero():
    out, cache = F.relu_forward(np.array([0.0, -0.0]))
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(F.relu_backward(np.ones(2), cache), 0.0)


def sigmoid_inf():
    x = np.array([np.inf, -np.inf, 800.0, -800.0])
    with warnings.catch_warnings(), np.errstate(all="raise", under="ignore"):
        warnings.simplefilter("error")
        for name, expected in (("sigmoid", [1, 0, 1, 0]), ("tanh", [1, -1, 1, -1]),
                               ("arctan", np.array([1, -1, 1 - 2 / np.pi / 800, -1 + 2 / np.pi / 800]) * np.pi / 2)):
            out, cache = getattr(F, f"{name}_forward")(x)
            np.testing.assert_allclose(out, expected, rtol=1e-6)
            grad = getattr(F, f"{name}_backward")(np.ones(4), cache)
            np.testing.assert_array_equal(grad[:2], 0.0)
            assert (grad[2:] < 2e-6).all()
        out, cache = F.elu_forward(x, alpha=0.5)
        np.testing.assert_array_equal(out, [np.inf, -0.5, 800.0, -0.5])
        np.testing.assert_array_equal(F.elu_backward(np.ones(4), cache), [1.0, 0.0, 1.0, 0.0])
        for (out, cache), backward in ((F.gelu_forward(x), F.gelu_backward), (F.silu_forward(x), F.silu_backward),
                                       (F.gelu_forward(x, approximate="tanh"), F.gelu_backward)):
            np.testing.assert_array_equal(out, [np.inf, np.nan, 800.0, -0.0])
            np.testing.assert_array_equal(backward(np.ones(4), cache), [np.nan, np.nan, 1.0, 0.0])
        for dtype in (np.float32, np.float16):  # GELU is +inf at +inf in every dtype
            assert F.gelu_forward(np.array([np.inf], dtype))[0] == np.inf


def square_overflow():
    with warnings.catch_warnings(), np.errstate(all="raise", under="ignore"):
        warnings.simplefilter("error")
        for dtype, limit in ((np.float32, 2.0**64), (np.float64, 2.0**512)):
            below = np.nextafter(dtype(limit), dtype(0))
            x = np.array([below, -below, limit, -limit, np.finfo(dtype).max], dtype)
            _, cache = F.arctan_forward(x)
            dx = F.arctan_backward(np.ones_like(x), cache)
            assert (dx[:2] > 0).all() and (dx[2:] == 0).all()
            out, cache = F.gelu_forward(x, approximate="tanh")
            np.testing.assert_array_equal(out, [below, -0.0, limit, -0.0, np.finfo(dtype).max])
            dx = F.gelu_backward(np.ones_like(x), cache)
            np.testing.assert_array_equal(dx, [1.0, 0.0, np.nan, np.nan, np.nan])


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
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = run(op, arrays, lambda out: np.ones(out.shape))
        assert op.scalar_dloss or results[0].shape[0] == 0, op.name
        if op.scalar_dloss and op.options.get("reduction", "mean") == "mean":
            assert np.isnan(results[0])
        if op.name in ("conv2d", "conv_transpose2d", "linear", "batch_norm2d", "layer_norm", "group_norm"):
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
    # Computed in float32, rounded once: no 16-bit intermediate overflows where the result fits.
    out, _ = F.avg_pool2d_forward(np.full((1, 1, 2, 2), 2e4, np.float16), 2)
    assert out.dtype == np.float16 and out[0, 0, 0, 0] == 2e4
    x = np.stack([np.full((1, 4, 4), 300.0), np.full((1, 4, 4), -300.0)]).astype(np.float16)
    out, cache = F.conv2d_forward(x, np.ones((1, 1, 1, 1), np.float16))
    _, dweight, _ = F.conv2d_backward(np.full(out.shape, 300.0, np.float16), cache)
    assert dweight.dtype == np.float16 and dweight[0, 0, 0, 0] == 0.0  # per sample +-1.44e6, summed in float32


def conv_nonfinite_weight():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for bad in (np.nan, np.inf):
        for options in (dict(padding=1), dict(padding=2, dilation=2), dict(stride=2, padding=1)):
            x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 3, 3))
            w[1, 2, 0, 1] = bad
            out, cache = F.conv2d_forward(x, w, **options)
            dout = rng.standard_normal(out.shape)
            dx, dw, _ = F.conv2d_backward(dout, cache)
            xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
            torch.nn.functional.conv2d(xt, wt, **options).backward(torch.tensor(dout))
            for mine, theirs in ((dx, xt.grad), (dw, wt.grad)):
                theirs = theirs.numpy()
                np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
                np.testing.assert_array_equal(np.isinf(mine), np.isinf(theirs))


def ce_small_int_targets():
    logits = np.zeros((1, 300), np.float32)
    expected, _ = F.softmax_cross_entropy_forward(logits, np.array([5]))
    for dtype in (np.uint8, np.int8, np.int16, np.uint16):
        loss, cache = F.softmax_cross_entropy_forward(logits, np.array([5], dtype))
        assert loss == expected == np.float32(np.log(300))
        grad = F.softmax_cross_entropy_backward(1.0, cache)
        assert (grad < 0).sum() == 1 and grad[0, 5] < 0


def mse_large():
    pred, target = np.array([2e38, 0.0], np.float32), np.zeros(2, np.float32)
    _, cache = F.mse_loss_forward(pred, target)
    with np.errstate(over="raise"):
        grad = F.mse_loss_backward(1.0, cache)
    np.testing.assert_array_equal(grad, np.array([2e38, 0.0], np.float32))


def evaluate_reduction():
    import xpcnn
    from xpcnn import nn

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 4)).astype(np.float32), rng.integers(0, 3, 10)
    model = nn.Sequential(nn.Linear(4, 3, seed=0))
    for reduction, expected in (("sum", None), ("mean", None)):
        whole, _ = F.softmax_cross_entropy_forward(model(x), y, reduction=reduction)
        for batch_size in (1, 3, 10):
            loss, _ = xpcnn.evaluate(model, nn.CrossEntropyLoss(reduction), x, y, batch_size=batch_size)
            np.testing.assert_allclose(loss, whole, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction='none'"):
        xpcnn.evaluate(model, nn.CrossEntropyLoss("none"), x, y)


def optimizer_follows_model():
    from xpcnn import nn, optim

    model = nn.Sequential(nn.Linear(3, 2, seed=0))
    for opt in (optim.Adam(model.parameters()), optim.SGD(model.parameters(), lr=0.1, momentum=0.9)):
        model.to(np, dtype=np.float32)
        for p in model.parameters():
            p.grad = np.ones_like(p.data)
        opt.step()
        model.to(np, dtype=np.float16)
        for p in model.parameters():
            p.grad = np.ones_like(p.data)
        opt.step()
        assert all(p.data.dtype == np.float16 for p in model.parameters())
        assert all(v.dtype == np.float16 for s in opt.state for v in s.values() if hasattr(v, "dtype"))


def failed_backward():
    from xpcnn import nn

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"layer 2, Linear\(3, 2, bias=True\): dout must have shape \(2, 2\)"):
        model.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="used by a backward pass that failed"):
        model.backward(np.zeros((2, 2), np.float32))
    model(np.zeros((2, 4), np.float32))
    assert model.backward(np.zeros((2, 2), np.float32)).shape == (2, 4)


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


def norm_nan():
    x = np.arange(24.0).reshape(2, 4, 3)
    x[1, 2, 0] = np.nan
    ones = np.ones(4)
    cases = {  # what shares the NaN's statistics
        "batch": (lambda: F.batch_norm_forward(x, ones, running_mean=np.zeros(4), running_var=ones),
                  F.batch_norm_backward, np.s_[:, 2]),
        "eval": (lambda: F.batch_norm_forward(x, ones, running_mean=np.zeros(4), running_var=ones, training=False),
                 F.batch_norm_backward, np.s_[1, 2, 0]),
        "layer": (lambda: F.layer_norm_forward(x, (4, 3), np.ones((4, 3))), F.layer_norm_backward, np.s_[1]),
        "group": (lambda: F.group_norm_forward(x, 2, ones), F.group_norm_backward, np.s_[1, 2:]),
    }
    for name, (forward, backward, where) in cases.items():
        expected = np.zeros(x.shape, dtype=bool)
        expected[where] = True
        out, cache = forward()
        np.testing.assert_array_equal(np.isnan(out), expected, err_msg=name)
        dx, dweight, _ = backward(np.ones_like(x), cache)
        np.testing.assert_array_equal(np.isnan(dx), expected if name != "eval" else False, err_msg=name)
        assert np.isnan(dweight).any(), name
        if name == "batch":
            assert np.isnan(cache.running_mean).tolist() == [False, False, True, False]


def norm_constant():
    x = np.full((3, 2, 4), 7.0)
    bias = np.array([0.5, -1.0])
    for out, cache, backward in ((*F.batch_norm_forward(x, np.ones(2), bias), F.batch_norm_backward),
                                 (*F.group_norm_forward(x, 2, np.ones(2), bias), F.group_norm_backward)):
        np.testing.assert_array_equal(out, np.broadcast_to(bias[:, None], x.shape))
        dout = np.arange(24.0).reshape(x.shape)
        dx = backward(dout, cache)[0]
        assert np.isfinite(dx).all() and np.abs(dx).max() > 0


def norm_channels_last():
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((2, 4, 3, 5))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    last = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    for forward, backward, args in ((F.batch_norm_forward, F.batch_norm_backward, ()),
                                    (F.group_norm_forward, F.group_norm_backward, (2,))):
        out, cache = forward(x, *args, w, b)
        out_last, cache_last = forward(last(x), *args, w, b, data_format="NHWC")
        np.testing.assert_allclose(out_last, last(out), rtol=1e-12, atol=1e-12)
        (dx, dw, db), (dx_last, dw_last, db_last) = backward(dout, cache), backward(last(dout), cache_last)
        np.testing.assert_allclose(dx_last, last(dx), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dw_last, dw, rtol=1e-12)
        np.testing.assert_allclose(db_last, db, rtol=1e-12)
    with pytest.raises(ValueError, match="data_format='NHWC'"):
        F.batch_norm_forward(last(x), w, b)


def batchnorm_empty():
    from xpcnn import nn

    out, cache = F.batch_norm_forward(np.zeros((0, 2, 3)), np.ones(2), np.ones(2), running_mean=np.full(2, 3.0),
                                      running_var=np.full(2, 4.0))
    assert out.shape == (0, 2, 3) and cache.running_mean.tolist() == [3.0, 3.0] and cache.running_var.tolist() == [4.0] * 2
    dx, dweight, dbias = F.batch_norm_backward(out, cache)
    assert dx.shape == (0, 2, 3) and (dweight == 0).all() and (dbias == 0).all()
    layer = nn.BatchNorm2d(2)
    layer(np.zeros((0, 2, 3, 3), np.float32))
    assert layer.num_batches_tracked == 1 and (layer.running_mean == 0).all() and (layer.running_var == 1).all()


def batchnorm_momentum_none():
    from xpcnn import nn

    layer = nn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    batches = [np.random.default_rng(i).standard_normal((5, 2)) + i for i in range(4)]
    for x in batches:
        layer(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-12)
    assert layer.num_batches_tracked == 4


def batchnorm_float16():
    x = (np.array([1.0, -1.0] * 4)[:, None] * np.array([346.0, 350.0, 360.0])).astype(np.float16)
    assert (x.astype(np.float32).var(axis=0, ddof=1) > np.finfo(np.float16).max).all()  # the batch variance
    _, cache = F.batch_norm_forward(x, running_mean=np.zeros(3, np.float16), running_var=np.ones(3, np.float16))
    assert cache.running_var.dtype == np.float16 and np.isfinite(cache.running_var).all()
    expected = 0.9 + 0.1 * x.astype(np.float32).var(axis=0, ddof=1)
    np.testing.assert_allclose(cache.running_var, expected, rtol=1e-3)


def batchnorm_old_state():
    from xpcnn import nn

    layer = nn.BatchNorm2d(2)
    layer(np.random.default_rng(0).standard_normal((2, 2, 2, 2)).astype(np.float32))
    old = {k: v for k, v in layer.state_dict().items() if k != "num_batches_tracked"}
    fresh = nn.BatchNorm2d(2)
    fresh.load_state_dict(old)
    np.testing.assert_array_equal(fresh.running_mean, layer.running_mean)
    assert fresh.num_batches_tracked == 0


def groupnorm_one_value():
    bias = np.array([1.0, 2.0, 3.0])
    for n in (1, 2):
        x = np.random.default_rng(n).standard_normal((n, 3))
        out, cache = F.group_norm_forward(x, 3, None, bias)
        np.testing.assert_array_equal(out, np.broadcast_to(bias, (n, 3)))
        np.testing.assert_array_equal(F.group_norm_backward(np.ones((n, 3)), cache)[0], 0.0)
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


def pool_nhwc_indices():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out, cache = F.max_pool2d_forward(x, 3, stride=2, padding=1)
    out_last, cache_last = F.max_pool2d_forward(x_last, 3, stride=2, padding=1, data_format="NHWC")
    assert cache_last.indices.shape == (2, 3, 2, 3)  # (N, out_h, out_w, C)
    np.testing.assert_array_equal(cache_last.indices.transpose(0, 3, 1, 2), cache.indices)  # h * W + w, as NCHW
    np.testing.assert_array_equal(out_last.transpose(0, 3, 1, 2), out)


def pool_unbatched():
    image = np.random.default_rng(0).standard_normal((3, 6, 5))
    for forward, backward, options in ((F.max_pool2d_forward, F.max_pool2d_backward, dict(kernel_size=(2,))),
                                       (F.avg_pool2d_forward, F.avg_pool2d_backward, dict(kernel_size=2)),
                                       (F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward,
                                        dict(output_size=(2, 3)))):
        out, cache = forward(image, **options)
        batched, _ = forward(image[None], **options)
        assert out.ndim == 3
        np.testing.assert_array_equal(out, batched[0])
        assert backward(np.ones_like(out), cache).shape == image.shape


def interpolate_3d():
    x = np.arange(6.0).reshape(1, 2, 3)  # (N, C, L): resized along L, as PyTorch
    out, cache = F.interpolate_forward(x, scale_factor=2)
    np.testing.assert_array_equal(out, np.repeat(x, 2, axis=-1))
    np.testing.assert_array_equal(F.interpolate_backward(np.ones_like(out), cache), np.full(x.shape, 2.0))
    out, cache = F.interpolate_forward(np.arange(3.0)[None, None], scale_factor=2.2)  # 6 outputs, no i // 2
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(F.interpolate_backward(np.ones_like(out), cache)[0, 0], [3, 2, 1])


ROWS = {name.replace("_", "-"): fn for name, fn in list(globals().items())
        if callable(fn) and fn.__module__ == __name__ and not name.startswith(("test", "_"))}


def test_every_documented_row_has_a_test():
    text = (Path(__file__).parents[1] / "docs" / "semantics.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M)
    assert sorted(documented) == sorted(ROWS)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_semantics_row(row):
    ROWS[row]()
