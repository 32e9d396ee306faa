"""Softmax cross-entropy and MSE: PyTorch autograd, finite differences, stability, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import (
    mse_loss_backward,
    mse_loss_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from tests.helpers import assert_close, numerical_gradient, torch_reference

REDUCTIONS = ["mean", "sum", "none"]


def _upstream(xp, reduction, shape, dtype, rng):
    """A random dloss of the loss's shape, as the backend array (or a Python float for reduced losses)."""
    if reduction == "none":
        value = rng.standard_normal(shape)
        return value, xp.asarray(value, dtype)
    value = float(rng.standard_normal())
    return value, value


@pytest.mark.torch_reference
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n, classes, scale", [(6, 4, 1.0), (1, 1, 1.0), (5, 10, 1e4)], ids=str)
def test_cross_entropy_matches_torch(xp, torch, reduction, n, classes, scale):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, classes)) * scale
    target = rng.integers(0, classes, n)
    for dtype, np_dtype in xp.float_dtypes():
        dloss, dloss_xp = _upstream(xp, reduction, (n,), dtype, rng)
        ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target), reduction=reduction)
        x = torch.tensor(logits, requires_grad=True)
        torch.nn.functional.cross_entropy(x, torch.tensor(target), reduction=reduction).backward(torch.tensor(dloss, dtype=torch.float64))
        loss, cache = softmax_cross_entropy_forward(
            xp.asarray(logits, dtype), xp.asarray(target, xp.int64), reduction=reduction
        )
        assert_close(xp, loss, ref.numpy(), np_dtype)
        assert_close(xp, softmax_cross_entropy_backward(dloss_xp, cache), x.grad.numpy(), np_dtype)


def test_cross_entropy_is_stable_in_float32():
    logits = np.array([[1e4, 0.0, -1e4], [88.0, 89.0, 90.0]], dtype=np.float32)
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        loss, cache = softmax_cross_entropy_forward(logits, np.array([1, 2]), reduction="none")
        dlogits = softmax_cross_entropy_backward(np.ones(2, dtype=np.float32), cache)
    assert loss.dtype == np.float32 and np.isfinite(loss).all()
    np.testing.assert_allclose(loss, [1e4, 0.40760596], rtol=1e-6)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-6)


@pytest.mark.torch_reference
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 1, 3, 3), ()], ids=str)
def test_mse_matches_torch(xp, torch, reduction, shape):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    for dtype, np_dtype in xp.float_dtypes():
        dloss, dloss_xp = _upstream(xp, reduction, shape, dtype, rng)
        p = torch.tensor(pred, requires_grad=True)
        out = torch.nn.functional.mse_loss(p, torch.tensor(target), reduction=reduction)
        out.backward(torch.tensor(dloss, dtype=torch.float64))
        loss, cache = mse_loss_forward(xp.asarray(pred, dtype), xp.asarray(target, dtype), reduction=reduction)
        assert_close(xp, loss, out.detach().numpy(), np_dtype)
        assert_close(xp, mse_loss_backward(dloss_xp, cache), p.grad.numpy(), np_dtype)


def test_dloss_may_be_a_0d_array(xp):
    for dtype, _ in xp.float_dtypes():
        pred = xp.asarray(np.array([1.0, 3.0]), dtype)
        _, cache = mse_loss_forward(pred, xp.asarray(np.zeros(2), dtype))
        grad = mse_loss_backward(xp.asarray(np.array(2.0), dtype), cache)
        xp.assert_on_backend(grad, dtype)
        np.testing.assert_allclose(xp.to_numpy(grad), [2.0, 6.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_finite_differences(reduction):
    rng = np.random.default_rng(2)
    logits, target = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    dloss = rng.standard_normal(4) if reduction == "none" else 0.7
    ce = lambda v: softmax_cross_entropy_forward(v, target, reduction=reduction)[0]  # noqa: E731
    grad = softmax_cross_entropy_backward(dloss, softmax_cross_entropy_forward(logits, target, reduction=reduction)[1])
    np.testing.assert_allclose(grad, numerical_gradient(ce, logits, dloss), rtol=1e-6, atol=1e-9)
    pred, tgt = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    dloss = rng.standard_normal((4, 3)) if reduction == "none" else 0.7
    mse = lambda v: mse_loss_forward(v, tgt, reduction=reduction)[0]  # noqa: E731
    grad = mse_loss_backward(dloss, mse_loss_forward(pred, tgt, reduction=reduction)[1])
    np.testing.assert_allclose(grad, numerical_gradient(mse, pred, dloss), rtol=1e-6, atol=1e-9)


L = np.zeros((3, 4))


@pytest.mark.parametrize(
    "logits, target, kwargs, error, word",
    [
        (L, np.array([0, 1, 4]), {}, ValueError, r"\[0, 3\]"),
        (L, np.array([0, -1, 2]), {}, ValueError, "class indices"),
        (L, np.array([0.0, 1.0, 2.0]), {}, TypeError, "integer"),
        (L, np.array([True, False, True]), {}, TypeError, "integer"),
        (L, np.array([0, 1]), {}, ValueError, "target must have shape"),
        (L, np.array([[0, 1, 2]]), {}, ValueError, "target must have shape"),
        (np.zeros(4), np.array([0]), {}, ValueError, r"target must have shape \(\)"),
        (np.zeros(()), np.array(0), {}, ValueError, "0-d"),
        (L, np.zeros(3), {}, TypeError, r"integer class indices of shape \(3,\), or class probabilities"),
        (L, np.zeros((3, 4), np.float32), {}, TypeError, "xp.astype"),
        (L, np.zeros((3, 4)), dict(ignore_index=1), ValueError, "ignore_index is only for class-index targets"),
        (L, np.array([0, 1, 2]), dict(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
        (L, np.array([0, 1, 2]), dict(weight=np.ones(3)), ValueError, "weight must have shape"),
        (L, np.array([0, 1, 2]), dict(weight=np.ones(4, np.float32)), TypeError, "weight has dtype float32"),
        (L, np.array([0, -100, 9]), {}, ValueError, r"\[0, 3\] or ignore_index -100"),
        (np.zeros((3, 0)), np.array([0, 0, 0]), {}, ValueError, "at least one class"),
        (L.astype(np.int64), np.array([0, 1, 2]), {}, TypeError, "floating"),
        (L, np.array([0, 1, 2]), dict(reduction="avg"), ValueError, "reduction"),
    ],
)
def test_cross_entropy_bad_input(logits, target, kwargs, error, word):
    with pytest.raises(error, match=word):
        softmax_cross_entropy_forward(logits, target, **kwargs)


def test_mse_bad_input():
    with pytest.raises(ValueError, match="target must have shape"):
        mse_loss_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="dtype"):
        mse_loss_forward(np.zeros(2), np.zeros(2, dtype=np.float32))
    with pytest.raises(TypeError, match="floating"):
        mse_loss_forward(np.zeros(2), np.zeros(2, dtype=np.int64))


def test_bad_dloss():
    _, cache = softmax_cross_entropy_forward(L, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="dloss must have shape"):
        softmax_cross_entropy_backward(np.ones(3), cache)
    with pytest.raises(TypeError, match="dloss"):
        softmax_cross_entropy_backward("1", cache)
    _, cache = mse_loss_forward(L, L, reduction="none")
    with pytest.raises(TypeError, match=r"dloss must be an array of shape \(3, 4\)"):
        mse_loss_backward(1.0, cache)


def _torch_cross_entropy(torch, logits, target, dloss, **options):
    x = torch.tensor(logits, requires_grad=True)
    options = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    out = torch.nn.functional.cross_entropy(x, torch.tensor(target), **options)
    out.backward(torch.tensor(dloss, dtype=torch.float64))
    return out.detach().numpy(), x.grad.numpy()


CE_CASES = {
    "weight": dict(weight=True),
    "smoothing": dict(label_smoothing=0.2),
    "ignored": dict(ignore=True),
    "weight-smoothing-ignored": dict(weight=True, label_smoothing=0.3, ignore=True),
    "ignore-a-class": dict(ignore_index=1, weight=True),
    "probabilities": dict(probabilities=True),
    "probabilities-weight-smoothing": dict(probabilities=True, weight=True, label_smoothing=0.1),
    "spatial": dict(shape=(2, 4, 3, 2), weight=True, label_smoothing=0.1, ignore=True),
    "spatial-probabilities": dict(shape=(2, 4, 3, 2), probabilities=True, weight=True),
    "unbatched": dict(shape=(5,), weight=True, label_smoothing=0.2),
    "unbatched-probabilities": dict(shape=(5,), probabilities=True),
    "all-ignored": dict(all_ignored=True, label_smoothing=0.1),
}


@pytest.mark.torch_reference
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CE_CASES, ids=str)
def test_cross_entropy_options_match_torch(xp, torch, reduction, case):
    """weight, label_smoothing, ignore_index, class-probability targets, (N, C, d1, ...) and (C,) logits: values
    and gradients are torch's, every reduction (the weighted mean divides by the summed target weights)."""
    spec = dict(CE_CASES[case])
    rng = np.random.default_rng(3)
    shape = spec.pop("shape", (6, 4))
    classes = shape[0] if len(shape) == 1 else shape[1]
    index_shape = shape[1:] if len(shape) == 1 else (shape[0], *shape[2:])
    logits = rng.standard_normal(shape) * 2
    options = {}
    if spec.pop("probabilities", False):
        target = rng.random(shape)
        target = target / target.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    else:
        target = rng.integers(0, classes, index_shape)
        if spec.pop("ignore", False):
            target.reshape(-1)[::3] = -100
        if spec.pop("all_ignored", False):
            target[...] = -100
        if "ignore_index" in spec:
            options["ignore_index"] = spec.pop("ignore_index")
    if spec.pop("weight", False):
        options["weight"] = rng.random(classes) + 0.5
    options.update(spec)
    for dtype, np_dtype in xp.float_dtypes():
        dloss, dloss_xp = _upstream(xp, reduction, index_shape, dtype, rng)
        ref_loss, ref_grad = _torch_cross_entropy(torch, logits, target, dloss, reduction=reduction, **options)
        ours = {k: xp.asarray(v, dtype) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        t = xp.asarray(target, dtype) if target.dtype.kind == "f" else xp.asarray(target, xp.int64)
        loss, cache = softmax_cross_entropy_forward(xp.asarray(logits, dtype), t, reduction=reduction, **ours)
        assert_close(xp, loss, ref_loss, np_dtype)
        assert_close(xp, softmax_cross_entropy_backward(dloss_xp, cache), ref_grad, np_dtype)


def test_cross_entropy_options_match_finite_differences():
    rng = np.random.default_rng(4)
    logits, target = rng.standard_normal((2, 3, 2, 2)), rng.integers(0, 3, (2, 2, 2))
    target[0, 0, 0] = -100
    options = dict(weight=rng.random(3) + 0.5, label_smoothing=0.25)
    ce = lambda v: softmax_cross_entropy_forward(v, target, **options)[0]  # noqa: E731
    grad = softmax_cross_entropy_backward(0.7, softmax_cross_entropy_forward(logits, target, **options)[1])
    np.testing.assert_allclose(grad, numerical_gradient(ce, logits, 0.7), rtol=1e-6, atol=1e-9)


@pytest.mark.torch_reference
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_target_gradient_matches_torch(xp, torch, reduction):
    rng = np.random.default_rng(5)
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    for dtype, np_dtype in xp.float_dtypes():
        dloss, dloss_xp = _upstream(xp, reduction, (3, 4), dtype, rng)
        p, t = torch.tensor(pred, requires_grad=True), torch.tensor(target, requires_grad=True)
        torch.nn.functional.mse_loss(p, t, reduction=reduction).backward(torch.tensor(dloss, dtype=torch.float64))
        _, cache = mse_loss_forward(xp.asarray(pred, dtype), xp.asarray(target, dtype), reduction=reduction)
        dpred, dtarget = mse_loss_backward(dloss_xp, cache, target_grad=True)
        assert_close(xp, dpred, p.grad.numpy(), np_dtype)
        assert_close(xp, dtarget, t.grad.numpy(), np_dtype)
    with pytest.raises(TypeError, match="target_grad must be True or False"):
        mse_loss_backward(1.0, mse_loss_forward(np.zeros(2), np.zeros(2))[1], target_grad="yes")


def test_caches_print_as_a_short_summary():
    _, cache = softmax_cross_entropy_forward(np.zeros((64, 10), np.float32), np.zeros(64, np.int64))
    text = repr(cache)
    assert text.startswith("CrossEntropyCache(probs=numpy(64, 10) float32, onehot=numpy(64, 10) bool, weights=None")
    assert len(text) < 300 and "0." not in text
    assert repr(mse_loss_forward(np.zeros((2, 3)), np.zeros((2, 3)))[1]) == (
        "MSECache(diff=numpy(2, 3) float64, reduction='mean')")


@pytest.mark.torch_reference
@pytest.mark.parametrize("options", [dict(), dict(label_smoothing=0.2, reduction="sum"),
                                     dict(weight="w", reduction="mean"), dict(reduction="none")])
def test_cross_entropy_target_gradient_with_class_probabilities(xp, torch, options):
    """``target_grad=True``: the gradient of a class-probability target, as torch.autograd gives it."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 3, 2))
    target = rng.dirichlet(np.ones(3), size=(4, 2)).transpose(0, 2, 1)  # (N, C, d1)
    weight = rng.random(3) + 0.5
    kwargs = {k: (weight if v == "w" else v) for k, v in options.items()}
    dtype = xp.dtype("float64") if xp.float64 else xp.dtype("float32")
    loss, cache = softmax_cross_entropy_forward(
        xp.asarray(logits, dtype=dtype), xp.asarray(target, dtype=dtype),
        **{k: (xp.asarray(v, dtype=dtype) if k == "weight" else v) for k, v in kwargs.items()})
    t_logits = torch.tensor(logits, requires_grad=True)
    t_target = torch.tensor(target, requires_grad=True)
    t_kwargs = {k: (torch.tensor(v) if k == "weight" else v) for k, v in kwargs.items()}
    t_loss = torch.nn.functional.cross_entropy(t_logits, t_target, **t_kwargs)
    dout = rng.standard_normal(tuple(t_loss.shape))
    t_dlogits, t_dtarget = torch.autograd.grad(t_loss, (t_logits, t_target), torch.tensor(dout))
    dlogits, dtarget = softmax_cross_entropy_backward(
        xp.asarray(dout, dtype=dtype) if dout.ndim else float(dout), cache, target_grad=True)
    tol = 1e-12 if xp.float64 else 1e-5
    np.testing.assert_allclose(xp.to_numpy(dlogits), t_dlogits.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(xp.to_numpy(dtarget), t_dtarget.numpy(), rtol=tol, atol=tol)


def test_cross_entropy_target_gradient_needs_class_probabilities():
    _, cache = softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match="target_grad=True needs class-probability targets"):
        softmax_cross_entropy_backward(1.0, cache, target_grad=True)


@pytest.mark.torch_reference
@pytest.mark.parametrize("ignore_index", [-1, -100, -7])
def test_class_probabilities_accept_a_negative_ignore_index_as_torch(torch, ignore_index):
    """PyTorch refuses ``ignore_index >= 0`` with class-probability targets but accepts a negative one and ignores
    it (``nn.CrossEntropyLoss(ignore_index=-1)`` then works with soft targets); xpcnn refused every value but -100
    (found by the fuzzer)."""
    rng = np.random.default_rng(0)
    logits, target = rng.standard_normal((4, 3)), rng.dirichlet(np.ones(3), 4)
    loss, cache = softmax_cross_entropy_forward(logits, target, ignore_index=ignore_index)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(target), ignore_index=ignore_index)
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(softmax_cross_entropy_backward(1.0, cache), t.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="ignore_index is only for class-index targets"):
        softmax_cross_entropy_forward(logits, target, ignore_index=0)


@pytest.mark.torch_reference
@pytest.mark.parametrize("options", [dict(), dict(weight=True), dict(label_smoothing=0.3), dict(probabilities=True)],
                         ids=str)
def test_cross_entropy_infinite_dloss_as_torch(torch, options):
    """An infinite upstream gradient (reduction="none"): NaN where PyTorch's log-softmax backward meets -inf with
    +inf (the target) or 0 with inf (a -inf logit), inf elsewhere; (p - onehot) * dloss gave -inf at the target
    (found by the fuzzer)."""
    logits = np.array([[-3.4, -9.8, 1.6, -11.5, -np.inf, -2.3], [0.1, -8.8, -2.8, 3.7, -0.6, 1.4]])
    target = np.array([2, 3])
    kwargs = {}
    if options.get("weight"):
        kwargs["weight"] = np.linspace(0.5, 2.0, 6)
    if options.get("label_smoothing"):
        kwargs["label_smoothing"] = options["label_smoothing"]
    if options.get("probabilities"):
        target = np.random.default_rng(0).dirichlet(np.ones(6), 2)
    dloss = np.array([np.inf, -np.inf])
    t = torch.tensor(logits, requires_grad=True)
    torch_kwargs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(target), reduction="none", **torch_kwargs)
    ref.backward(torch.tensor(dloss))
    with np.errstate(invalid="ignore"):
        _, cache = softmax_cross_entropy_forward(logits, target, reduction="none", **kwargs)
        dlogits = softmax_cross_entropy_backward(dloss, cache)
    np.testing.assert_array_equal(dlogits, t.grad.numpy())
