"""conv2d forward/backward: PyTorch autograd on random configurations, finite differences, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import conv2d_backward, conv2d_forward
from tests.helpers import assert_close, config_id, conv_configs, numerical_gradient, torch_reference

CONFIGS = conv_configs(60, seed=1)


def _inputs(config, rng):
    x = rng.standard_normal(config["x_shape"])
    w = rng.standard_normal(config["w_shape"])
    b = rng.standard_normal(config["w_shape"][0]) if config["bias"] else None
    return x, w, b


def _options(config):
    return {k: config[k] for k in ("stride", "padding", "dilation", "groups")}


@pytest.mark.torch_reference
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_matches_torch(xp, torch, config):
    rng = np.random.default_rng(CONFIGS.index(config))
    x, w, b = _inputs(config, rng)
    options = _options(config)
    out_ref, grads, dout = torch_reference(
        torch, lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **options), dict(x=x, w=w, b=b), rng
    )
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = conv2d_forward(
            xp.asarray(x, dtype), xp.asarray(w, dtype), None if b is None else xp.asarray(b, dtype), **options
        )
        assert_close(xp, out, out_ref, np_dtype)
        dx, dw, db = conv2d_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"], np_dtype)
        assert_close(xp, dw, grads["w"], np_dtype)
        if b is None:
            assert db is None
        else:
            assert_close(xp, db, grads["b"], np_dtype)
        no_dx, dw_only, db_only = conv2d_backward(xp.asarray(dout, dtype), cache, input_grad=False)
        assert no_dx is None and (db_only is None) == (b is None)
        np.testing.assert_array_equal(xp.to_numpy(dw_only), xp.to_numpy(dw))


@pytest.mark.parametrize(
    "options",
    [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2), dict(groups=2, stride=(1, 2), padding=(2, 0))],
    ids=str,
)
@pytest.mark.eager_only
def test_gradients_match_finite_differences(xp, options):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((2, 2 // options.get("groups", 1), 3, 2)), rng.standard_normal(2)

    def run(x, w, b):
        out, _ = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), **options)
        return xp.to_numpy(out)

    out = run(x, w, b)
    dout = rng.standard_normal(out.shape)
    _, cache = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), **options)
    dx, dw, db = (xp.to_numpy(g) for g in conv2d_backward(xp.asarray(dout), cache))
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: run(v, w, b), x, dout), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_gradient(lambda v: run(x, v, b), w, dout), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_gradient(lambda v: run(x, w, v), b, dout), rtol=1e-6, atol=1e-8)


def test_same_padding_puts_the_extra_row_bottom_right():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0  # picks the window's top-left element: no shift when the extra pad is bottom/right
    out, _ = conv2d_forward(x, w, padding="same")
    np.testing.assert_array_equal(out, x)


def test_empty_batch(xp):
    x = xp.asarray(np.zeros((0, 2, 5, 5)), xp.float32)
    w = xp.asarray(np.ones((3, 2, 3, 3)), xp.float32)
    out, cache = conv2d_forward(x, w)
    assert tuple(out.shape) == (0, 3, 3, 3)
    dx, dw, _ = conv2d_backward(out, cache)
    assert tuple(dx.shape) == (0, 2, 5, 5)
    np.testing.assert_array_equal(xp.to_numpy(dw), np.zeros((3, 2, 3, 3)))


X = np.zeros((1, 4, 6, 6))
W = np.zeros((2, 4, 3, 3))


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        (dict(x=np.zeros((6, 6)), weight=W), ValueError, "4-D"),
        (dict(x=X, weight=np.zeros((2, 4, 3))), ValueError, "weight must be 4-D"),
        (dict(x=X, weight=W, bias=np.zeros((2, 1))), ValueError, "bias"),
        (dict(x=X, weight=W, bias=np.zeros(3)), ValueError, "bias"),
        (dict(x=X, weight=np.zeros((2, 3, 3, 3))), ValueError, "channels"),
        (dict(x=X, weight=np.zeros((2, 1, 3, 3)), groups=3), ValueError, "groups"),
        (dict(x=X, weight=np.zeros((3, 2, 3, 3)), groups=2), ValueError, "out_channels"),
        (dict(x=X, weight=W, groups=0), ValueError, "groups"),
        (dict(x=X, weight=np.zeros((2, 4, 8, 3))), ValueError, "larger than the padded input"),
        (dict(x=X, weight=np.zeros((2, 4, 3, 3)), dilation=3), ValueError, "larger than the padded input"),
        (dict(x=X, weight=W, stride=0), ValueError, "stride"),
        (dict(x=X, weight=W, stride=(1, -1)), ValueError, "stride"),
        (dict(x=X, weight=W, dilation=0), ValueError, "dilation"),
        (dict(x=X, weight=W, padding=-1), ValueError, "padding"),
        (dict(x=X, weight=W, padding=(1, 2, 3)), ValueError, "padding"),
        (dict(x=X, weight=W, padding="same", stride=2), ValueError, "stride 1"),
        (dict(x=X, weight=W, padding="full"), ValueError, "'valid' or 'same'"),
        (dict(x=X, weight=W, stride=1.5), TypeError, "stride"),
        (dict(x=X.astype(np.int64), weight=W), TypeError, "floating"),
        (dict(x=X.astype(bool), weight=W), TypeError, "floating"),
        (dict(x=X, weight=W.astype(np.float32)), TypeError, "dtype"),
        (dict(x=[[1.0]], weight=W), TypeError, "x must be an array"),
    ],
)
def test_bad_input(kwargs, error, word):
    with pytest.raises(error, match=word):
        conv2d_forward(**kwargs)


def test_bad_dout():
    out, cache = conv2d_forward(X, W)
    with pytest.raises(ValueError, match="dout must have shape"):
        conv2d_backward(np.zeros((1, 2, 3, 3)), cache)
    with pytest.raises(TypeError, match="dtype"):
        conv2d_backward(out.astype(np.float32), cache)


@pytest.mark.eager_only
@pytest.mark.parametrize("limit", [1, 20_000, 2**30])
def test_workspace_limit_processes_pieces_with_the_same_results(xp, limit):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((5, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    dtype, np_dtype = xp.float_dtypes()[-1]
    args = [xp.asarray(a, dtype) for a in (x, w, b)]
    options = dict(stride=(2, 1), padding=1, groups=2)
    out, cache = conv2d_forward(*args, **options, workspace_limit=2**40)
    grads = conv2d_backward(out, cache)
    out_pieces, cache_pieces = conv2d_forward(*args, **options, workspace_limit=limit)
    assert cache_pieces.workspace_limit == limit
    assert_close(xp, out_pieces, xp.to_numpy(out), np_dtype)
    for got, want in zip(conv2d_backward(out_pieces, cache_pieces), grads):
        assert_close(xp, got, xp.to_numpy(want), np_dtype)


def test_peak_memory_follows_the_workspace_limit():
    """tracemalloc (NumPy reports its allocations there): forward+backward stays within 4x input + output +
    weights under a small limit, and a small limit needs less memory than an unlimited one."""
    import tracemalloc

    from xpcnn.config import workspace_limit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    io_bytes = 2 * x.nbytes + w.nbytes  # the output is the size of x here

    def peak(limit):
        with workspace_limit(limit):
            tracemalloc.start()
            try:
                out, cache = conv2d_forward(x, w, padding=1)
                conv2d_backward(out, cache)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    small, unlimited = peak(2**20), peak(2**31)
    assert small <= 4 * io_bytes < unlimited


def test_bad_workspace_limit():
    from xpcnn.config import set_workspace_limit

    with pytest.raises(ValueError, match="workspace_limit must be >= 1 byte"):
        conv2d_forward(X, W, workspace_limit=0)
    with pytest.raises(ValueError, match="workspace_limit must be >= 1 byte"):
        set_workspace_limit(-5)


@pytest.mark.parametrize("options", [dict(padding=1), dict(padding="same", dilation=2, groups=2), dict(padding=(0, 2))],
                         ids=str)
def test_both_input_gradient_algorithms_agree(xp, options):
    """Stride 1 takes dx as a convolution of dout where that is cheaper; col2im gives the same gradients."""
    from xpcnn.functional import conv

    rng = np.random.default_rng(5)
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = xp.asarray(rng.standard_normal((2, 4, 6, 7)), dtype)
    w = xp.asarray(rng.standard_normal((4, 4 // options.get("groups", 1), 3, 3)), dtype)
    out, cache = conv2d_forward(x, w, **options)
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    geometry = cache.geometry
    assert conv._transposed_geometry(geometry, 4, 4, 2.0) is not None
    by_convolution = conv2d_backward(dout, cache, _plan=dict(dx="transposed_correlation"))
    by_col2im = conv2d_backward(dout, cache, _plan=dict(dx="col2im"))
    assert by_convolution[2] is None and by_col2im[2] is None
    for a, b in zip(by_convolution[:2], by_col2im[:2]):
        assert_close(xp, a, xp.to_numpy(b), np_dtype)


def test_kept_columns_give_the_gradients_of_gathered_ones(xp):
    """A batch that fits the workspace limit keeps its columns in the cache (no second gather); a larger one
    does not. Both give the same gradients bitwise."""
    rng = np.random.default_rng(6)
    dtype, _ = xp.float_dtypes()[-1]
    x = xp.asarray(rng.standard_normal((3, 4, 5, 6)), dtype)
    w = xp.asarray(rng.standard_normal((6, 4, 3, 3)), dtype)
    out, cache = conv2d_forward(x, w, padding=1)
    assert cache.columns is not None
    assert conv2d_forward(x, w, padding=1, workspace_limit=1)[1].columns is None
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    kept = conv2d_backward(dout, cache)
    gathered = conv2d_backward(dout, cache._replace(columns=None))
    for a, b in zip(kept[:2], gathered[:2]):
        np.testing.assert_array_equal(xp.to_numpy(a), xp.to_numpy(b))


@pytest.mark.parametrize("options", [dict(), dict(padding=2, dilation=(1, 2), groups=2), dict(padding=(1, 0))],
                         ids=str)
def test_wide_row_col2im_equals_the_standard_one(xp, options):
    """Stride 1 with weights known finite (NumPy) adds dcols back in contiguous wide rows; the per-slice col2im
    (every other backend, and non-finite weights) gives the same gradient."""
    from xpcnn.functional import conv

    rng = np.random.default_rng(8)
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = xp.asarray(rng.standard_normal((3, 2, 7, 6)), dtype)
    w = xp.asarray(rng.standard_normal((8, 2 // options.get("groups", 1), 3, 3)), dtype)
    out, cache = conv2d_forward(x, w, **options)
    assert conv._transposed_geometry(cache.geometry, 2, 8, 2.0) is None  # 2 -> 8 channels: col2im
    dout = xp.asarray(rng.standard_normal(tuple(out.shape)), dtype)
    wide_rows = conv.DxAlgorithm.COL2IM_WIDE_ROWS
    assert (cache.plan.dx == wide_rows) == (xp.name == "numpy")  # the weights are known finite on NumPy only
    dispatched = conv2d_backward(dout, cache, _plan=dict(dx=wide_rows))[0]
    standard = conv2d_backward(dout, cache, _plan=dict(dx="col2im"))[0]
    xp.assert_on_backend(dispatched, dtype)
    assert_close(xp, dispatched, xp.to_numpy(standard), np_dtype)


def test_non_finite_weights_keep_the_standard_col2im():
    """An inf weight must not meet the wide rows' zeros (inf * 0 = NaN): dx equals the per-slice col2im's."""
    w = np.ones((4, 1, 3, 3))
    w[0, 0, 1, 1] = np.inf
    x = np.ones((2, 1, 5, 5))
    with np.errstate(invalid="ignore"):  # OpenBLAS may multiply its own zero padding by inf
        out, cache = conv2d_forward(x, w)
        dx = conv2d_backward(np.ones(out.shape), cache)[0]
    assert np.isinf(dx).sum() == 2 * 9 and not np.isnan(dx).any()
