"""conv2d's Winograd algorithm (xpcnn._winograd) as one of its plans: forced on every backend against im2col and
PyTorch, chosen by the cost model only for data known finite, switched off globally and per call."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import nn
from xpcnn.functional import conv, conv2d_backward, conv2d_forward, conv_transpose2d_backward, conv_transpose2d_forward
from tests.helpers import assert_close, torch_reference

NCHW_TO_NHWC, NHWC_TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
WINOGRAD = dict(forward="winograd", dx="winograd", dweight="winograd")
IM2COL = dict(forward="im2col", dx="col2im", dweight="per_sample")

CONFIGS = [
    dict(x=(2, 4, 7, 9), w=(6, 4, 3, 3), padding=1),
    dict(x=(3, 4, 8, 6), w=(6, 2, 3, 3), padding=0, groups=2),
    dict(x=(2, 6, 5, 7), w=(6, 3, 3, 3), padding=2, groups=2, bias=False),
    dict(x=(2, 3, 9, 8), w=(5, 3, 3, 3), padding=(2, 0)),
    dict(x=(1, 4, 6, 6), w=(4, 4, 3, 3), padding="same", tile=2),
    dict(x=(2, 6, 10, 11), w=(6, 1, 3, 3), padding=1, groups=6),  # depthwise
]


def _case(config, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(config["x"]), rng.standard_normal(config["w"])
    b = rng.standard_normal(config["w"][0]) if config.get("bias", True) else None
    options = {k: config[k] for k in ("padding", "groups") if k in config}
    return rng, x, w, b, options


@pytest.mark.torch_reference
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_forced_winograd_matches_torch_and_im2col(xp, torch, config, data_format):
    rng, x, w, b, options = _case(config, CONFIGS.index(config))
    out_ref, grads, dout = torch_reference(
        torch, lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **options), dict(x=x, w=w, b=b), rng
    )
    if data_format == "NHWC":
        x, dout, out_ref, grads["x"] = (np.ascontiguousarray(np.transpose(a, NCHW_TO_NHWC))
                                        for a in (x, dout, out_ref, grads["x"]))
    plan = dict(WINOGRAD, tile=config.get("tile", 4))
    for dtype, np_dtype in xp.float_dtypes():
        arrays = [None if a is None else xp.asarray(a, dtype) for a in (x, w, b)]
        out, cache = conv2d_forward(*arrays, **options, data_format=data_format, _plan=plan)
        assert (cache.plan.forward, cache.plan.dx, cache.plan.dweight) == ("winograd",) * 3
        assert_close(xp, out, out_ref, np_dtype)
        dx, dw, db = conv2d_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"], np_dtype)
        assert_close(xp, dw, grads["w"], np_dtype)
        assert (db is None) == (b is None)
        if b is not None:
            assert_close(xp, db, grads["b"], np_dtype)
        # the im2col family on the same arrays agrees as closely
        out_i, cache_i = conv2d_forward(*arrays, **options, data_format=data_format, _plan=IM2COL)
        dx_i, dw_i, _ = conv2d_backward(xp.asarray(dout, dtype), cache_i)
        for a, b_ in ((out, out_i), (dx, dx_i), (dw, dw_i)):
            assert_close(xp, a, xp.to_numpy(b_), np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_conv_transpose2d_forward_by_winograd_matches_torch(xp, torch, data_format):
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(6)
    options = dict(padding=1, groups=1)
    w = rng.standard_normal((4, 6, 3, 3))
    out_ref, grads, dout = torch_reference(
        torch, lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **options), dict(x=x, w=w, b=b), rng
    )
    if data_format == "NHWC":
        x, dout, out_ref, grads["x"] = (np.ascontiguousarray(np.transpose(a, NCHW_TO_NHWC))
                                        for a in (x, dout, out_ref, grads["x"]))
    for dtype, np_dtype in xp.float_dtypes():
        out, cache = conv_transpose2d_forward(xp.asarray(x, dtype), xp.asarray(w, dtype), xp.asarray(b, dtype),
                                              **options, data_format=data_format, _plan=dict(dx="winograd"))
        assert cache.plan.dx == "winograd"
        assert_close(xp, out, out_ref, np_dtype)
        dx, dw, db = conv_transpose2d_backward(xp.asarray(dout, dtype), cache)
        assert_close(xp, dx, grads["x"], np_dtype)
        assert_close(xp, dw, grads["w"], np_dtype)
        assert_close(xp, db, grads["b"], np_dtype)


def _resnet_like(rng, dtype=np.float32, data_format="NCHW"):
    x = rng.standard_normal((2, 16, 8, 8)).astype(dtype)
    if data_format == "NHWC":
        x = np.ascontiguousarray(np.transpose(x, NCHW_TO_NHWC))
    return x, (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(dtype)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_cost_model_takes_winograd_for_finite_numpy_data(data_format):
    rng = np.random.default_rng(0)
    x, w = _resnet_like(rng, data_format=data_format)
    out, cache = conv2d_forward(x, w, padding=1, data_format=data_format)
    assert cache.plan.forward == conv.ForwardAlgorithm.WINOGRAD
    assert cache.plan.dx == conv.DxAlgorithm.WINOGRAD and cache.plan.dweight == conv.WeightGradientAlgorithm.WINOGRAD
    assert cache.plan.tile == 4 and cache.columns is None
    assert conv_transpose2d_forward(x, w, padding=1, data_format=data_format)[1].plan.dx == "winograd"
    ref, ref_cache = conv2d_forward(x, w, padding=1, data_format=data_format, algorithm="im2col")
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for a, b in zip(conv2d_backward(dout, cache)[:2], conv2d_backward(dout, ref_cache)[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cost_model_rule_reads_the_profile():
    rng = np.random.default_rng(1)
    few = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)  # 8 channels: below winograd_min_channels
    assert conv2d_forward(few, np.ones((16, 8, 3, 3), np.float32), padding=1)[1].plan.forward == "im2col"
    x, w = _resnet_like(rng)
    assert conv2d_forward(x[..., :3, :3], w, padding=0)[1].plan.forward == "im2col"  # a 1 x 1 output
    assert conv2d_forward(x, w, padding=1, stride=2)[1].plan.forward == "im2col"
    wide = rng.standard_normal((1, 264, 6, 6)).astype(np.float32)
    _, cache = conv2d_forward(wide, np.ones((16, 264, 3, 3), np.float32), padding=1)
    assert cache.plan.forward == "winograd" and cache.plan.tile == 2  # beyond winograd_f4_max_channels
    assert xpcnn._tuning.HOST.winograd_min_channels == 16
    assert xpcnn._tuning.ACCELERATOR.winograd_workspace_limit > xpcnn._tuning.HOST.winograd_workspace_limit


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("bad", ["x", "weight"])
def test_forward_not_taken_with_non_finite_data(bad):
    """Winograd would spread the NaN over whole tiles: the cost model keeps im2col, whose NaNs match PyTorch's."""
    rng = np.random.default_rng(2)
    x, w = _resnet_like(rng)
    if bad == "x":
        x[0, 3, 4, 4] = np.nan
    else:
        w[2, 1, 0, 0] = np.inf
    out, cache = conv2d_forward(x, w, padding=1)
    assert cache.plan.forward == "im2col"
    ref, _ = conv2d_forward(x, w, padding=1, algorithm="im2col")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    if bad == "weight":
        assert cache.plan.dx != "winograd"
    assert conv_transpose2d_forward(x, w, padding=1)[1].plan.dx != "winograd"  # its x is in dout's place


def test_backward_falls_back_for_a_non_finite_dout():
    rng = np.random.default_rng(3)
    x, w = _resnet_like(rng)
    out, cache = conv2d_forward(x, w, padding=1)
    assert cache.plan.dx == "winograd" and cache.plan.if_dout_not_finite is not None
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dout[1, 5, 2, 6] = np.nan
    _, ref_cache = conv2d_forward(x, w, padding=1, algorithm="im2col")
    dx, dw, _ = conv2d_backward(dout, cache)
    dx_ref, dw_ref, _ = conv2d_backward(dout, ref_cache)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx_ref))  # NaN only where the windows reach
    assert not np.isnan(dx).all()
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
    assert conv.plan_for_dout(np, cache.plan, dout).dx == cache.plan.if_dout_not_finite[0]
    # a backward _plan forces what it names; the rest still follows dout
    named = conv2d_backward(dout, cache, _plan=dict(dweight="winograd"))
    np.testing.assert_array_equal(np.isnan(named[0]), np.isnan(dx_ref))
    np.testing.assert_allclose(named[1], dw_ref, rtol=1e-4, atol=1e-4)
    # forced, Winograd stays whatever dout holds (and spreads the NaN over the tiles)
    _, forced = conv2d_forward(x, w, padding=1, algorithm="winograd")
    assert forced.plan.if_dout_not_finite is None
    assert np.isnan(conv2d_backward(dout, forced)[0]).sum() > np.isnan(dx_ref).sum()


def test_other_backends_keep_im2col_unless_forced(xp):
    """Only NumPy's data is known finite for free: elsewhere the cost model keeps im2col (forcing is tested
    above on every backend)."""
    x, w = _resnet_like(np.random.default_rng(4))
    dtype = xp.float_dtypes()[0][0]
    _, cache = conv2d_forward(xp.asarray(x, dtype), xp.asarray(w, dtype), padding=1)
    assert (cache.plan.forward == "winograd") == (xp.name == "numpy")


def test_global_switch_and_per_call_algorithm():
    x, w = _resnet_like(np.random.default_rng(5))
    assert xpcnn.config.get_winograd()
    with xpcnn.config.winograd(False):
        assert not xpcnn.config.get_winograd()
        _, cache = conv2d_forward(x, w, padding=1)
        assert "winograd" not in (cache.plan.forward, cache.plan.dx, cache.plan.dweight)
        _, forced = conv2d_forward(x, w, padding=1, algorithm="winograd")  # explicit wins over the switch
        assert forced.plan.forward == "winograd"
        conv_t = conv_transpose2d_forward(x, w, padding=1)[1]
        assert conv_t.plan.dx != "winograd"
    assert xpcnn.config.get_winograd()
    xpcnn.config.set_winograd(False)
    try:
        assert conv2d_forward(x, w, padding=1)[1].plan.forward == "im2col"
    finally:
        xpcnn.config.set_winograd(True)
    assert conv2d_forward(x, w, padding=1)[1].plan.forward == "winograd"
    _, cache = conv2d_forward(x, w, padding=1, algorithm="im2col")
    assert "winograd" not in (cache.plan.forward, cache.plan.dx, cache.plan.dweight)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        xpcnn.config.set_winograd("no")


def test_algorithm_errors_name_the_argument():
    x, w = _resnet_like(np.random.default_rng(6))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        conv2d_forward(x, w, algorithm="fft")
    with pytest.raises(ValueError, match="winograd algorithm needs a 3 x 3 kernel, stride 1 and dilation 1"):
        conv2d_forward(x, w, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="winograd algorithm needs"):
        conv2d_forward(x, np.ones((4, 16, 5, 5), np.float32), _plan=dict(forward="winograd"))
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        conv2d_forward(x, w, _plan=dict(forward="winograd", tile=3))
    with pytest.raises(ValueError, match="conv_transpose2d's backward pass is im2col's"):
        conv_transpose2d_forward(x, w, _plan=dict(forward="winograd"))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        nn.Conv2d(16, 16, 3, algorithm="fast")


def test_layer_passes_the_algorithm():
    x, _ = _resnet_like(np.random.default_rng(7))
    layer = nn.Conv2d(16, 16, 3, padding=1, algorithm="im2col", seed=0)
    assert "algorithm='im2col'" in repr(layer)
    layer(x)
    assert layer._cache.plan.forward == "im2col"
    auto = nn.Conv2d(16, 16, 3, padding=1, seed=0)
    out = auto(x)
    assert auto._cache.plan.forward == "winograd" and "algorithm" not in repr(auto)
    np.testing.assert_allclose(out, layer(x), rtol=1e-4, atol=1e-5)
