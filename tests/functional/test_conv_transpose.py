"""conv_transpose2d forward/backward: PyTorch autograd on random configurations, finite differences, every input
gradient algorithm, float16/bfloat16, non-finite values, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.functional import conv, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from tests.helpers import assert_close, config_id, conv_transpose_configs, numerical_gradient, torch_reference

CONFIGS = conv_transpose_configs(60, seed=2)
OPTIONS = ("stride", "padding", "output_padding", "dilation", "groups")


def _inputs(config, rng):
    x = rng.standard_normal(config["x_shape"])
    w = rng.standard_normal(config["w_shape"])
    b = rng.standard_normal(config["w_shape"][1] * config["groups"]) if config["bias"] else None
    return x, w, b


def _options(config):
    return {k: config[k] for k in OPTIONS}


def _torch_conv_transpose(torch, options):
    options = {k: v for k, v in options.items() if k in OPTIONS}
    return lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **options)


def _check_against_torch(xp, torch, x, w, b, options, rng):
    out_ref, grads, dout = torch_reference(torch, _torch_conv_transpose(torch, options), dict(x=x, w=w, b=b), rng)
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = conv_transpose2d_forward(
            xp.asarray(x, dtype), xp.asarray(w, dtype), None if b is None else xp.asarray(b, dtype), **options
        )
        assert_close(xp, out, out_ref, np_dtype)
        dx, dw, db = conv_transpose2d_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"], np_dtype)
        assert_close(xp, dw, grads["w"], np_dtype)
        if b is None:
            assert db is None
        else:
            assert_close(xp, db, grads["b"], np_dtype)
        no_dx, dw_only, db_only = conv_transpose2d_backward(xp.asarray(dout, dtype), cache, input_grad=False)
        assert no_dx is None and (db_only is None) == (b is None)
        np.testing.assert_array_equal(xp.to_numpy(dw_only), xp.to_numpy(dw))


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_matches_torch(xp, torch, config):
    rng = np.random.default_rng(CONFIGS.index(config))
    _check_against_torch(xp, torch, *_inputs(config, rng), _options(config), rng)


LARGER = [
    # the benchmark's shape, scaled down: 4x4 kernel, stride 2, padding 1 (an exact doubling)
    dict(x_shape=(3, 8, 6, 5), w_shape=(8, 6, 4, 4), bias=True, stride=2, padding=1, output_padding=0, dilation=1,
         groups=1),
    # stride 1, more output than input channels: the forward pass as a correlation (NumPy)
    dict(x_shape=(2, 4, 6, 7), w_shape=(4, 6, 3, 3), bias=True, stride=1, padding=1, output_padding=0, dilation=1,
         groups=2),
    # stride 1, fewer output channels: col2im in wide rows (NumPy)
    dict(x_shape=(2, 6, 5, 6), w_shape=(6, 1, 3, 2), bias=False, stride=1, padding=(1, 0), output_padding=0,
         dilation=(1, 2), groups=3),
    # output_padding at stride 1 (below the dilation): rows and columns that no window reaches
    dict(x_shape=(2, 2, 5, 4), w_shape=(2, 5, 3, 2), bias=True, stride=1, padding=(2, 1), output_padding=(1, 2),
         dilation=(2, 3), groups=1),
    # output_padding beyond the stride, a large padding and a 1x1 kernel
    dict(x_shape=(2, 3, 7, 5), w_shape=(3, 2, 1, 1), bias=True, stride=(2, 1), padding=(3, 1), output_padding=(2, 0),
         dilation=(3, 1), groups=1),
    # depthwise
    dict(x_shape=(2, 5, 6, 6), w_shape=(5, 1, 3, 3), bias=True, stride=(2, 3), padding=1, output_padding=(1, 2),
         dilation=1, groups=5),
]


@pytest.mark.torch_reference
@pytest.mark.parametrize("config", LARGER, ids=config_id)
def test_matches_torch_on_every_algorithm(xp, torch, config):
    """The forward pass (col2im, its wide rows, or a correlation) and the backward pass on larger shapes, with
    the batch in one piece and sample by sample."""
    rng = np.random.default_rng(LARGER.index(config) + 100)
    x, w, b = _inputs(config, rng)
    _check_against_torch(xp, torch, x, w, b, _options(config), rng)
    _check_against_torch(xp, torch, x, w, b, {**_options(config), "workspace_limit": 1}, rng)


@pytest.mark.parametrize("options", [dict(), dict(stride=2, padding=1, output_padding=1),
                                     dict(stride=(1, 2), padding=(2, 0), dilation=2, output_padding=(1, 0), groups=2)],
                         ids=str)
@pytest.mark.eager_only
def test_gradients_match_finite_differences(xp, options):
    if not xp.float64:
        pytest.skip("float64 finite differences")
    rng = np.random.default_rng(0)
    groups = options.get("groups", 1)
    x, w, b = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 4 // groups, 3, 2)), rng.standard_normal(4)

    def run(x, w, b):
        out, _ = conv_transpose2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), **options)
        return xp.to_numpy(out)

    out = run(x, w, b)
    dout = rng.standard_normal(out.shape)
    _, cache = conv_transpose2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), **options)
    dx, dw, db = (xp.to_numpy(g) for g in conv_transpose2d_backward(xp.asarray(dout), cache))
    np.testing.assert_allclose(dx, numerical_gradient(lambda v: run(v, w, b), x, dout), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numerical_gradient(lambda v: run(x, v, b), w, dout), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numerical_gradient(lambda v: run(x, w, v), b, dout), rtol=1e-6, atol=1e-8)


def test_is_the_input_gradient_of_conv2d():
    """conv_transpose2d(y, w) is conv2d's input gradient for dout = y:
    <conv2d(x, w), y> = <x, conv_transpose2d(y, w)>."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 2))
    options = dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2), groups=2)
    out, _ = conv2d_forward(x, w, **options)
    y = rng.standard_normal(out.shape)
    output_padding = tuple(n + 2 * p - d * (k - 1) - 1 - (o - 1) * s for n, p, d, k, o, s in
                           zip((9, 8), (1, 0), (1, 2), (3, 2), out.shape[2:], (2, 3)))
    back, _ = conv_transpose2d_forward(y, w, **options, output_padding=output_padding)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(out * y), np.sum(x * back), rtol=1e-12)


@pytest.mark.parametrize("options", [dict(padding=1), dict(padding=(2, 1), dilation=2, groups=2, output_padding=1),
                                     dict(padding=(0, 2))], ids=str)
def test_every_forward_algorithm_agrees(xp, options):
    """Stride 1 takes the forward pass as a correlation of x where that is cheaper, else col2im in wide rows where
    the windows reach the padded output's far edge, else per-slice col2im: the same values and gradients."""
    rng = np.random.default_rng(5)
    dtype, np_dtype = xp.float_dtypes()[-1]
    groups = options.get("groups", 1)
    x = xp.asarray(rng.standard_normal((2, 4, 6, 7)), dtype)
    w = xp.asarray(rng.standard_normal((4, 8 // groups, 3, 3)), dtype)
    results = []
    algorithms = [None, "transposed_correlation", "col2im"]
    if _reaches_the_far_edge(options):
        algorithms.append("col2im_wide_rows")
    for algorithm in algorithms:
        out, cache = conv_transpose2d_forward(x, w, **options, _plan=None if algorithm is None else dict(dx=algorithm))
        results.append(xp.to_numpy(out))
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-10 if np_dtype == np.float64 else 1e-4,
                                   atol=1e-10 if np_dtype == np.float64 else 1e-4)


def _reaches_the_far_edge(options):
    """Whether the windows of the transposed convolution reach its padded output's far edge (no output_padding)."""
    return not options.get("output_padding")


def test_forward_dispatch_on_numpy():
    """Which algorithm NumPy's forward pass takes: a correlation for stride 1 when it gathers less, wide rows when
    the windows reach the far edge (not past an output_padding), per-slice col2im for strides > 1."""
    x = np.ones((1, 4, 5, 5))
    cases = [
        (np.ones((4, 8, 3, 3)), dict(padding=1), "transposed_correlation"),  # 4 -> 8 channels
        (np.ones((4, 8, 3, 3)), dict(padding=1, dilation=2, output_padding=1), "transposed_correlation"),
        (np.ones((4, 1, 3, 3)), dict(padding=1), "col2im_wide_rows"),  # 4 -> 1 channel
        (np.ones((4, 1, 3, 3)), dict(padding=1, dilation=2, output_padding=1), "col2im"),
        (np.ones((4, 8, 3, 3)), dict(stride=2, padding=1), "col2im"),
    ]
    for w, options, expected in cases:
        _, cache = conv_transpose2d_forward(x, w, **options)
        assert cache.plan.dx == expected, (options, cache.plan)


@pytest.mark.torch_reference
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("config", CONFIGS[:12] + LARGER, ids=config_id)
def test_low_precision_matches_torch(xp, torch, dtype_name, config):
    """float16 (NumPy, PyTorch) and bfloat16 (PyTorch) against PyTorch's CPU kernels in the same dtype: both
    compute in float32 and round once, so they agree to within an ulp or two of the 16-bit result."""
    if xp.name not in ("numpy", "torch") or (dtype_name == "bfloat16" and xp.name != "torch"):
        pytest.skip(f"{xp.name} has no {dtype_name} here")
    rng = np.random.default_rng(7)
    x, w, b = _inputs(config, rng)
    options = _options(config)
    torch_dtype = getattr(torch, dtype_name)
    tensors = {k: None if v is None else torch.tensor(v, dtype=torch_dtype, requires_grad=True)
               for k, v in dict(x=x, w=w, b=b).items()}
    out_ref = _torch_conv_transpose(torch, options)(**tensors)
    dout = torch.tensor(rng.standard_normal(tuple(out_ref.shape)), dtype=torch_dtype)
    out_ref.backward(dout)

    def ours(t):
        if t is None or xp.name == "torch":
            return None if t is None else t.detach()
        return t.detach().float().numpy().astype(np.float16)

    out, cache = conv_transpose2d_forward(ours(tensors["x"]), ours(tensors["w"]), ours(tensors["b"]), **options)
    grads = conv_transpose2d_backward(ours(dout), cache)
    eps = float(torch.finfo(torch_dtype).eps)
    wanted = [None if tensors[k] is None else tensors[k].grad for k in "xwb"]
    for got, want in zip((out, *grads), (out_ref, *wanted), strict=True):
        if want is None:
            assert got is None
            continue
        assert str(got.dtype).endswith(dtype_name)
        want = want.detach().double().numpy()
        got = got.double().numpy() if xp.name == "torch" else got.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=2 * eps, atol=2 * eps * np.max(np.abs(want), initial=1.0))


NON_FINITE = [  # (options, out_channels) for x of 4 channels
    (dict(stride=1, padding=1), 8),  # NumPy with finite weights: the forward pass as a correlation
    (dict(stride=1, padding=1), 1),  # NumPy with finite weights: col2im in wide rows
    (dict(stride=1, padding=(2, 1), dilation=2, output_padding=1), 8),
    (dict(stride=2, padding=1, output_padding=1), 6),
    (dict(stride=(1, 2), padding=(0, 1), groups=2), 4),
]
SPOILERS = [np.nan, np.inf, -np.inf]


@pytest.mark.torch_reference
@pytest.mark.parametrize("where", ["x", "weight", "both", "dout"])
@pytest.mark.parametrize("options, out_channels", NON_FINITE, ids=str)
def test_non_finite_values_match_torch(xp, torch, options, out_channels, where):
    """NaN and +-inf in x, the weights or dout: the outputs and gradients are NaN and inf exactly where
    PyTorch's are, on every algorithm (zeros among the small integer values make 0 * inf, and inf - inf)."""
    rng = np.random.default_rng(11)
    groups = options.get("groups", 1)
    x = rng.integers(-2, 3, (2, 4, 5, 6)).astype(np.float64)
    w = rng.integers(-2, 3, (4, out_channels // groups, 3, 3)).astype(np.float64)
    b = rng.standard_normal(out_channels)

    def spoil(a):
        a = a.copy()
        a.flat[rng.choice(a.size, len(SPOILERS), replace=False)] = SPOILERS
        return a

    if where in ("x", "both"):
        x = spoil(x)
    if where in ("weight", "both"):
        w = spoil(w)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in dict(x=x, w=w, b=b).items()}
    out_ref = _torch_conv_transpose(torch, options)(**tensors)
    dout = rng.integers(-2, 3, tuple(out_ref.shape)).astype(np.float64)
    if where == "dout":
        dout = spoil(dout)
    out_ref.backward(torch.tensor(dout))
    expected = [out_ref.detach().numpy()] + [tensors[k].grad.numpy() for k in "xwb"]
    assert any(not np.isfinite(e).all() for e in expected)
    for dtype, _ in xp.float_dtypes():
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf and 0 * inf (Dask: when computed)
            out, cache = conv_transpose2d_forward(xp.asarray(x, dtype), xp.asarray(w, dtype), xp.asarray(b, dtype),
                                                  **options)
            got = [xp.to_numpy(g) for g in (out, *conv_transpose2d_backward(xp.asarray(dout, dtype), cache))]
        for name, g, e in zip(("out", "dx", "dweight", "dbias"), got, expected, strict=True):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"NaN in {name}")
            np.testing.assert_array_equal(np.isposinf(g), np.isposinf(e), err_msg=f"+inf in {name}")
            np.testing.assert_array_equal(np.isneginf(g), np.isneginf(e), err_msg=f"-inf in {name}")
            finite = np.isfinite(e)
            np.testing.assert_allclose(g[finite], e[finite], rtol=1e-5, atol=1e-5, err_msg=name)


def test_empty_batch(xp):
    x = xp.asarray(np.zeros((0, 2, 5, 5)), xp.float32)
    w = xp.asarray(np.ones((2, 3, 3, 3)), xp.float32)
    b = xp.asarray(np.ones(3), xp.float32)
    out, cache = conv_transpose2d_forward(x, w, b, stride=2, padding=1)
    assert tuple(out.shape) == (0, 3, 9, 9)
    dx, dw, db = conv_transpose2d_backward(out, cache)
    assert tuple(dx.shape) == (0, 2, 5, 5)
    np.testing.assert_array_equal(xp.to_numpy(dw), np.zeros((2, 3, 3, 3)))
    np.testing.assert_array_equal(xp.to_numpy(db), np.zeros(3))


X = np.zeros((1, 4, 6, 6))
W = np.zeros((4, 2, 3, 3))


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        (dict(x=np.zeros((6, 6)), weight=W), ValueError, "x must be 4-D"),
        (dict(x=X, weight=np.zeros((4, 2, 3))), ValueError, "weight must be 4-D"),
        (dict(x=X, weight=np.zeros((4, 0, 3, 3))), ValueError, "no empty axis"),
        (dict(x=np.zeros((1, 4, 0, 6)), weight=W), ValueError, "non-empty height and width"),
        (dict(x=X, weight=W, bias=np.zeros((2, 1))), ValueError, "bias must be 1-D"),
        (dict(x=X, weight=W, bias=np.zeros(4)), ValueError, r"bias must have shape \(2,\)"),
        (dict(x=X, weight=W, bias=np.zeros(2), groups=2), ValueError, r"bias must have shape \(4,\)"),
        (dict(x=X, weight=np.zeros((3, 2, 3, 3))), ValueError, r"x has 4 channels but weight expects .*\[0\] = 3"),
        (dict(x=X, weight=W, groups=3), ValueError, "groups=3 must divide in_channels"),
        (dict(x=X, weight=W, groups=0), ValueError, "groups must be >= 1"),
        (dict(x=X, weight=W, groups=True), TypeError, "groups must be an int"),
        (dict(x=X, weight=W, stride=0), ValueError, "stride must be >= 1"),
        (dict(x=X, weight=W, stride=(1, 2, 3)), ValueError, "stride must be an int or a pair"),
        (dict(x=X, weight=W, stride=1.5), TypeError, "stride must be an int"),
        (dict(x=X, weight=W, dilation=(1, 0)), ValueError, "dilation must be >= 1"),
        (dict(x=X, weight=W, padding=-1), ValueError, "padding must be >= 0"),
        (dict(x=X, weight=W, padding="same"), TypeError, "padding must be an int"),
        (dict(x=X, weight=W, output_padding=-1), ValueError, "output_padding must be >= 0"),
        (dict(x=X, weight=W, output_padding="1"), TypeError, "output_padding must be an int"),
        (dict(x=X, weight=W, stride=2, output_padding=2), ValueError, "smaller than the stride or the dilation"),
        (dict(x=X, weight=W, stride=(2, 1), output_padding=(1, 1)), ValueError, "smaller than the stride or the"),
        (dict(x=X, weight=W, padding=4), ValueError, "the output would be 0 x 0"),
        (dict(x=X, weight=W, padding=(0, 5)), ValueError, "the output would be 8 x -2"),
        (dict(x=X.astype(np.int64), weight=W), TypeError, "floating"),
        (dict(x=X.astype(bool), weight=W), TypeError, "floating"),
        (dict(x=X, weight=W.astype(np.float32)), TypeError, "weight has dtype float32 but x has dtype float64"),
        (dict(x=X, weight=W, bias=np.zeros(2, np.float32)), TypeError, "bias has dtype float32"),
        (dict(x=X.tolist(), weight=W), TypeError, "x must be an array"),
        (dict(x=X, weight=None), TypeError, "weight must be an array, got NoneType"),
        (dict(x=None, weight=W), TypeError, "x must be an array, got NoneType"),
        (dict(x=X, weight=W, workspace_limit=0), ValueError, "workspace_limit must be >= 1 byte"),
    ],
)
def test_bad_input(kwargs, error, word):
    with pytest.raises(error, match=word):
        conv_transpose2d_forward(**kwargs)


def test_bad_backward_arguments():
    out, cache = conv_transpose2d_forward(X, W)
    assert out.shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 2, 8, 8\)"):
        conv_transpose2d_backward(np.zeros((1, 2, 6, 6)), cache)
    with pytest.raises(TypeError, match="dout has dtype float32 but the forward input had dtype float64"):
        conv_transpose2d_backward(out.astype(np.float32), cache)
    with pytest.raises(TypeError, match="dout must be an array, got NoneType"):
        conv_transpose2d_backward(None, cache)
    with pytest.raises(TypeError, match="input_grad must be True or False"):
        conv_transpose2d_backward(out, cache, input_grad="no")
    conv_cache = conv2d_forward(X, np.zeros((2, 4, 3, 3)))[1]
    with pytest.raises(TypeError, match=r"cache must be the cache that conv_transpose2d_forward returned"):
        conv_transpose2d_backward(np.zeros((1, 2, 4, 4)), conv_cache)
    half = conv2d_forward(X.astype(np.float16), np.zeros((2, 4, 3, 3), np.float16))[1]
    with pytest.raises(TypeError, match=r"\(ConvTranspose2dCache\), got Conv2dCache"):
        conv_transpose2d_backward(np.zeros((1, 2, 4, 4), np.float16), half)
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="but dout is a array_api_strict array"):
        conv_transpose2d_backward(strict.asarray(out), cache)


@pytest.mark.eager_only
@pytest.mark.parametrize("limit", [1, 30_000, 2**30])
def test_workspace_limit_processes_pieces_with_the_same_results(xp, limit):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((5, 4, 6, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(6)
    dtype, np_dtype = xp.float_dtypes()[-1]
    args = [xp.asarray(a, dtype) for a in (x, w, b)]
    options = dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2)
    out, cache = conv_transpose2d_forward(*args, **options, workspace_limit=2**40)
    grads = conv_transpose2d_backward(out, cache)
    out_pieces, cache_pieces = conv_transpose2d_forward(*args, **options, workspace_limit=limit)
    assert cache_pieces.workspace_limit == limit
    assert_close(xp, out_pieces, xp.to_numpy(out), np_dtype)
    for got, want in zip(conv_transpose2d_backward(out_pieces, cache_pieces), grads):
        assert_close(xp, got, xp.to_numpy(want), np_dtype)


def test_peak_memory_follows_the_workspace_limit():
    """tracemalloc: forward+backward stays within 4x input + output + weights under a small limit, and a small
    limit needs less memory than an unlimited one."""
    import tracemalloc

    from xpcnn.config import workspace_limit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16, 4, 4)).astype(np.float32)
    io_bytes = x.nbytes + 4 * x.nbytes + w.nbytes  # the output is four times x here

    def peak(limit):
        with workspace_limit(limit):
            tracemalloc.start()
            try:
                out, cache = conv_transpose2d_forward(x, w, stride=2, padding=1)
                conv_transpose2d_backward(out, cache)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

    small, unlimited = peak(2**20), peak(2**31)
    assert small <= 4 * io_bytes < unlimited
