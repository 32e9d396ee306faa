"""conv2d and conv_transpose2d channels-last (NHWC), unbatched input, one-element tuples and the explicit plan.

NHWC must equal NCHW on the transposed input, values and every gradient, on every backend and every algorithm;
unbatched (C, H, W) input is a batch of one, as PyTorch takes it.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import nn
from xpcnn.functional import conv, conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from tests.helpers import assert_close

NCHW_TO_NHWC, NHWC_TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)

CONV_CONFIGS = [
    dict(x=(2, 4, 7, 6), w=(6, 4, 3, 3), padding=1),
    dict(x=(3, 4, 8, 9), w=(6, 2, 3, 2), stride=(2, 1), padding=(1, 0), groups=2),
    dict(x=(2, 6, 9, 8), w=(6, 1, 3, 3), padding="same", dilation=2, groups=6),  # depthwise
    dict(x=(2, 3, 6, 6), w=(8, 3, 1, 1), stride=2),
    dict(x=(1, 2, 5, 7), w=(4, 2, 2, 3), padding=(2, 1), bias=False),
]
TRANSPOSE_CONFIGS = [
    dict(x=(2, 4, 5, 4), w=(4, 3, 3, 3), padding=1),
    dict(x=(2, 4, 4, 5), w=(4, 2, 4, 4), stride=2, padding=1, groups=2),
    dict(x=(1, 6, 3, 4), w=(6, 1, 3, 2), stride=(1, 2), dilation=2, output_padding=(1, 1), groups=3, bias=False),
]
_ARRAYS = ("x", "w", "bias")


def _arrays(config, rng, transpose=False):
    x = rng.standard_normal(config["x"])
    w = rng.standard_normal(config["w"])
    out_channels = config["w"][1] * config.get("groups", 1) if transpose else config["w"][0]
    b = rng.standard_normal(out_channels) if config.get("bias", True) else None
    return x, w, b, {k: v for k, v in config.items() if k not in (*_ARRAYS, "bias")}


def _to(xp, a, dtype):
    return None if a is None else xp.asarray(a, dtype)


def _check_layouts_agree(xp, forward, backward, x, w, b, options, plans):
    """forward/backward in NHWC on x transposed equal NCHW, transposed back, for each plan override."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(1)
    out, cache = forward(_to(xp, x, dtype), _to(xp, w, dtype), _to(xp, b, dtype), **options)
    dout = rng.standard_normal(tuple(out.shape))
    grads = [None if g is None else xp.to_numpy(g) for g in backward(_to(xp, dout, dtype), cache)]
    x_nhwc = np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC))
    dout_nhwc = np.ascontiguousarray(np.transpose(dout, NCHW_TO_NHWC))
    for plan in plans:
        out_l, cache_l = forward(_to(xp, x_nhwc, dtype), _to(xp, w, dtype), _to(xp, b, dtype), **options,
                                 data_format="NHWC", _plan=plan)
        assert_close(xp, out_l, np.transpose(xp.to_numpy(out), NCHW_TO_NHWC), np_dtype)
        dx, dw, db = backward(_to(xp, dout_nhwc, dtype), cache_l)
        assert_close(xp, dx, np.transpose(grads[0], NCHW_TO_NHWC), np_dtype)
        assert_close(xp, dw, grads[1], np_dtype)
        if b is None:
            assert db is None
        else:
            assert_close(xp, db, grads[2], np_dtype)
        no_dx, dw_only, _ = backward(_to(xp, dout_nhwc, dtype), cache_l, input_grad=False)
        assert no_dx is None
        assert_close(xp, dw_only, grads[1], np_dtype)


def _dx_plans(options):
    """Every input-gradient algorithm that applies to a channels-last convolution with these options."""
    plans = [None, dict(dx="col2im")]
    stride = options.get("stride", 1)
    if stride in (1, (1, 1)) and options.get("padding") != (2, 1):
        plans.append(dict(dx="transposed_correlation"))
    return plans


@pytest.mark.parametrize("config", CONV_CONFIGS, ids=str)
def test_conv2d_nhwc_equals_nchw(xp, config):
    x, w, b, options = _arrays(config, np.random.default_rng(0))
    plans = _dx_plans(options)

    def backward(dout, cache, **kw):
        return conv2d_backward(dout, cache, **kw)

    _check_layouts_agree(xp, conv2d_forward, backward, x, w, b, options, plans)


@pytest.mark.parametrize("config", TRANSPOSE_CONFIGS, ids=str)
def test_conv_transpose2d_nhwc_equals_nchw(xp, config):
    x, w, b, options = _arrays(config, np.random.default_rng(0), transpose=True)
    _check_layouts_agree(xp, conv_transpose2d_forward, conv_transpose2d_backward, x, w, b, options,
                         _dx_plans(options))


def test_nhwc_workspace_pieces_give_the_same_result():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 6, 7, 4)), rng.standard_normal((6, 2, 3, 3))
    whole, cache = conv2d_forward(x, w, padding=1, groups=2, data_format="NHWC", workspace_limit=2**30)
    pieces, cache_p = conv2d_forward(x, w, padding=1, groups=2, data_format="NHWC", workspace_limit=1)
    assert cache.columns is not None and cache_p.columns is None
    np.testing.assert_allclose(pieces, whole, rtol=1e-12)
    for got, want in zip(conv2d_backward(whole, cache_p)[:2], conv2d_backward(whole, cache)[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_channel_mismatch_names_the_layout():
    """An NHWC array passed as NCHW (and the other way round) gets an error that names data_format."""
    x_nhwc, w = np.zeros((2, 28, 28, 3)), np.zeros((8, 3, 3, 3))
    with pytest.raises(ValueError, match=r"x has 28 channels .*data_format='NHWC'"):
        conv2d_forward(x_nhwc, w)
    with pytest.raises(ValueError, match=r"x has 28 channels .*data_format='NCHW'"):
        conv2d_forward(np.zeros((2, 3, 28, 28)), w, data_format="NHWC")
    with pytest.raises(ValueError, match=r"x has 28 channels .*data_format='NHWC'"):
        conv_transpose2d_forward(x_nhwc, np.zeros((3, 8, 3, 3)))
    with pytest.raises(ValueError, match="x has 5 channels but weight expects") as info:
        conv2d_forward(np.zeros((2, 5, 6, 6)), w)  # neither layout fits: no hint
    assert "data_format" not in str(info.value)
    with pytest.raises(ValueError, match="data_format must be 'NCHW' or 'NHWC'"):
        conv2d_forward(np.zeros((2, 3, 6, 6)), w, data_format="nhwc")


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_unbatched_input_is_a_batch_of_one(xp, data_format):
    """(C, H, W) input, as PyTorch accepts it: the output and dx are unbatched too."""
    dtype, np_dtype = xp.float_dtypes()[-1]
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((1, 4, 6, 5)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    if data_format == "NHWC":
        x = np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC))
    options = dict(padding=1, groups=2, data_format=data_format)
    for forward, backward, weight in ((conv2d_forward, conv2d_backward, w),
                                      (conv_transpose2d_forward, conv_transpose2d_backward,
                                       rng.standard_normal((4, 3, 3, 3)))):
        out, cache = forward(_to(xp, x, dtype), _to(xp, weight, dtype), _to(xp, b, dtype), **options)
        out1, cache1 = forward(_to(xp, x[0], dtype), _to(xp, weight, dtype), _to(xp, b, dtype), **options)
        assert tuple(out1.shape) == tuple(out.shape[1:])
        assert_close(xp, out1, xp.to_numpy(out)[0], np_dtype)
        dout = rng.standard_normal(tuple(out.shape))
        grads = backward(_to(xp, dout, dtype), cache)
        grads1 = backward(_to(xp, dout[0], dtype), cache1)
        assert tuple(grads1[0].shape) == tuple(x.shape[1:])
        assert_close(xp, grads1[0], xp.to_numpy(grads[0])[0], np_dtype)
        for got, want in zip(grads1[1:], grads[1:]):
            assert_close(xp, got, xp.to_numpy(want), np_dtype)
        with pytest.raises(ValueError, match="dout must have shape"):
            backward(_to(xp, dout, dtype), cache1)


@pytest.mark.torch_reference
def test_unbatched_and_one_element_tuples_match_torch(torch):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((3, 7, 7)), rng.standard_normal((4, 3, 3, 3))
    options = dict(stride=(2,), padding=(1,), dilation=[1])
    out, _ = conv2d_forward(x, w, **options)
    np.testing.assert_allclose(out, torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), **options).numpy(),
                               rtol=1e-10, atol=1e-10)
    wt = rng.standard_normal((3, 2, 3, 3))
    options = dict(stride=(2,), padding=(1,), output_padding=(1,), dilation=(1,))
    out, _ = conv_transpose2d_forward(x, wt, **options)
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(wt), **options).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        conv2d_forward(x, w, padding=(1, 1, 1))
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        conv2d_forward(x, w, stride=())


def test_plan_is_chosen_in_one_place_and_can_be_forced():
    x, w = np.ones((2, 4, 6, 6)), np.ones((4, 4, 3, 3))
    _, cache = conv2d_forward(x, w, padding=1)
    assert cache.plan.dx == conv.DxAlgorithm.TRANSPOSED_CORRELATION  # stride 1, C == O: the cheaper path
    _, strided = conv2d_forward(x, w, padding=1, stride=2)
    assert strided.plan.dx == conv.DxAlgorithm.COL2IM
    with pytest.raises(ValueError, match="transposed correlation needs stride 1"):
        conv2d_backward(np.ones((2, 4, 3, 3)), strided, _plan=dict(dx="transposed_correlation"))
    with pytest.raises(ValueError, match="_plan names no field"):
        conv2d_forward(x, w, _plan=dict(algorithm="fft"))
    with pytest.raises(ValueError, match="is not a valid DxAlgorithm"):
        conv2d_forward(x, w, _plan=dict(dx="fft"))
    forced = cache.plan._replace(dweight=conv.WeightGradientAlgorithm.BATCH_FOLDED)
    out, cache_f = conv2d_forward(x, w, padding=1, _plan=forced)
    assert cache_f.plan == forced
    for a, b in zip(conv2d_backward(out, cache)[:2], conv2d_backward(out, cache_f)[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("layer", ["Conv2d", "ConvTranspose2d"])
def test_layers_take_data_format(layer):
    rng = np.random.default_rng(6)
    cls = getattr(nn, layer)
    nchw = cls(4, 6, 3, stride=2, padding=1, seed=0)
    nhwc = cls(4, 6, 3, stride=2, padding=1, seed=0, data_format="NHWC")
    assert "data_format='NHWC'" in repr(nhwc) and "data_format" not in repr(nchw)
    assert nhwc.weight.data.shape == nchw.weight.data.shape  # PyTorch's weight layout in both
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = nchw(x)
    out_l = nhwc(np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC)))
    np.testing.assert_allclose(out_l, np.transpose(out, NCHW_TO_NHWC), rtol=1e-5, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = nchw.backward(dout)
    dx_l = nhwc.backward(np.ascontiguousarray(np.transpose(dout, NCHW_TO_NHWC)))
    np.testing.assert_allclose(dx_l, np.transpose(dx, NCHW_TO_NHWC), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nhwc.weight.grad, nchw.weight.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="data_format must be"):
        cls(4, 6, 3, data_format="channels_last")


@pytest.mark.parametrize("workspace_limit", [None, 1])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("transposed", [False, True])
def test_empty_nhwc_batch_on_dask(groups, transposed, workspace_limit):
    """An empty channels-last batch on Dask: its reshape of an empty array with chunked axes raised a bare
    TypeError ("reduce() of empty iterable") inside im2col and the products (found by the fuzzer); the passes now
    skip the algorithms for an empty batch: empty outputs, zero weight gradients, as NumPy and PyTorch."""
    da = pytest.importorskip("dask.array")
    x = np.zeros((0, 3, 6, 2), np.float32)
    w = np.random.default_rng(0).standard_normal((2, 2 // groups, 1, 2)).astype(np.float32)
    forward, backward = ((conv_transpose2d_forward, conv_transpose2d_backward) if transposed
                         else (conv2d_forward, conv2d_backward))
    options = dict(stride=2, padding=(0, 1), groups=groups, data_format="NHWC", workspace_limit=workspace_limit)
    ref, _ = forward(x, w, **options)
    out, cache = forward(da.from_array(x).rechunk({0: 1}), da.from_array(w), **options)
    assert out.shape == ref.shape
    dx, dw, _ = backward(da.zeros(out.shape, dtype=np.float32), cache)
    assert np.asarray(dx).shape == x.shape
    np.testing.assert_array_equal(np.asarray(dw), np.zeros_like(w))
