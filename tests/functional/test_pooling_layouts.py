"""Channels-last, unbatched input and PyTorch's argument forms for pooling, adaptive pooling and interpolation.

Every NHWC op equals the NCHW op on the transposed input: values, gradients and max pooling's indices, bit for bit
(the same slices are added and compared in the same order), on every backend. An unbatched image equals a batch of
one. One-element tuples are taken as PyTorch takes them.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F
from xpcnn import nn
from tests.helpers import config_id, max_pool_input, pool_configs

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)

MAX_CONFIGS = pool_configs(12, seed=21)
AVG_CONFIGS = [
    dict(config, count_include_pad=bool(i % 2), divisor_override=[None, None, 3][i % 3])
    for i, config in enumerate(pool_configs(10, seed=22, with_dilation=False))
]
# the benchmark's shapes, scaled down: tiling 2x2, overlapping 3x3 with stride 1 (separable max) and 2
SPEED_CONFIGS = [
    dict(x_shape=(2, 5, 8, 8), kernel_size=2),
    dict(x_shape=(2, 5, 8, 8), kernel_size=3, stride=1, padding=1),
    dict(x_shape=(2, 5, 9, 9), kernel_size=3, stride=2, padding=1),
]
ADAPTIVE_CASES = [((2, 3, 7, 6), (3, 4)), ((2, 3, 8, 8), 4), ((1, 2, 5, 5), 1), ((2, 2, 4, 6), (6, None)),
                  ((1, 2, 3, 3), (0, 2))]
INTERPOLATE_CASES = [
    dict(scale_factor=2), dict(size=(5, 7), mode="nearest-exact"), dict(scale_factor=(1.5, 0.75), mode="bilinear"),
    dict(size=(3, 9), mode="bilinear", align_corners=True),
]


def _both_layouts(xp, forward, backward, x, dout_of, **options):
    """(out, dx, indices) of the NCHW op and of the NHWC op (transposed back to NCHW)."""
    dtype = xp.float_dtypes()[-1][0]  # float64 where the device has it
    results = []
    for data_format, to, back in (("NCHW", None, None), ("NHWC", TO_NHWC, TO_NCHW)):
        x_in = x if to is None else np.ascontiguousarray(x.transpose(to))
        out, cache = forward(xp.asarray(x_in, dtype), **options, data_format=data_format)
        dout = dout_of(tuple(xp.to_numpy(out).shape) if to is None else None)
        dout_in = dout if to is None else np.ascontiguousarray(dout.transpose(to))
        dx = backward(xp.asarray(dout_in, dtype), cache)
        indices = getattr(cache, "indices", None)
        arrays = [xp.to_numpy(a) for a in (out, dx, *([] if indices is None else [indices]))]
        if back is not None:
            arrays = [a.transpose(back) for a in arrays]
        results.append(arrays)
    return results


def _dout_maker(rng):
    state = {}

    def dout_of(shape):
        if shape is not None:
            state["dout"] = rng.standard_normal(shape)
        return state["dout"]

    return dout_of


def _assert_same(nchw, nhwc, exact=True):
    """Equal arrays: bit for bit (maxima, indices and the sums that add in the same order), or up to rounding (a
    mean that the library reduces over other axes in another order)."""
    for a, b in zip(nchw, nhwc, strict=True):
        assert a.shape == b.shape
        if exact or not np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_equal(a, b)
        else:
            tol = 1e-12 if a.dtype == np.float64 else 1e-6
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "-inf"])
@pytest.mark.parametrize("config", MAX_CONFIGS + SPEED_CONFIGS, ids=config_id)
def test_max_pool_nhwc_equals_nchw(xp, config, kind):
    rng = np.random.default_rng(3)
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = max_pool_input(kind, config["x_shape"], rng)
    nchw, nhwc = _both_layouts(xp, F.max_pool2d_forward, F.max_pool2d_backward, x, _dout_maker(rng), **options)
    _assert_same(nchw, nhwc)


@pytest.mark.parametrize("config", AVG_CONFIGS + SPEED_CONFIGS, ids=config_id)
def test_avg_pool_nhwc_equals_nchw(xp, config):
    rng = np.random.default_rng(4)
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = rng.standard_normal(config["x_shape"])
    nchw, nhwc = _both_layouts(xp, F.avg_pool2d_forward, F.avg_pool2d_backward, x, _dout_maker(rng), **options)
    _assert_same(nchw, nhwc)


@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=str)
@pytest.mark.parametrize("op", ["avg", "max"])
def test_adaptive_pool_nhwc_equals_nchw(xp, op, case):
    shape, output_size = case
    rng = np.random.default_rng(5)
    x = max_pool_input("ties", shape, rng) if op == "max" else rng.standard_normal(shape)
    forward, backward = {
        "avg": (F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward),
        "max": (F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward),
    }[op]
    nchw, nhwc = _both_layouts(xp, forward, backward, x, _dout_maker(rng), output_size=output_size)
    _assert_same(nchw, nhwc, exact=op == "max")


@pytest.mark.parametrize("options", INTERPOLATE_CASES, ids=str)
def test_interpolate_nhwc_equals_nchw(xp, options):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5, 4))
    nchw, nhwc = _both_layouts(xp, F.interpolate_forward, F.interpolate_backward, x, _dout_maker(rng), **options)
    _assert_same(nchw, nhwc)


UNBATCHED_OPS = {
    "max": (F.max_pool2d_forward, F.max_pool2d_backward, dict(kernel_size=3, stride=2, padding=1)),
    "avg": (F.avg_pool2d_forward, F.avg_pool2d_backward, dict(kernel_size=(2,), padding=(1,))),
    "adaptive_avg": (F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward, dict(output_size=(3, 2))),
    "adaptive_max": (F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward, dict(output_size=(3, 2))),
}


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", UNBATCHED_OPS)
def test_unbatched_equals_a_batch_of_one(xp, op, data_format):
    forward, backward, options = UNBATCHED_OPS[op]
    rng = np.random.default_rng(7)
    dtype = xp.float_dtypes()[-1][0]
    image = rng.standard_normal((3, 7, 6) if data_format == "NCHW" else (7, 6, 3))
    out, cache = forward(xp.asarray(image, dtype), **options, data_format=data_format)
    out1, cache1 = forward(xp.asarray(image[None], dtype), **options, data_format=data_format)
    assert tuple(out.shape) == tuple(out1.shape)[1:]
    np.testing.assert_array_equal(xp.to_numpy(out), xp.to_numpy(out1)[0])
    dout = rng.standard_normal(tuple(out.shape))
    dx = backward(xp.asarray(dout, dtype), cache)
    dx1 = backward(xp.asarray(dout[None], dtype), cache1)
    assert tuple(dx.shape) == image.shape
    np.testing.assert_array_equal(xp.to_numpy(dx), xp.to_numpy(dx1)[0])
    if op.endswith("max"):
        np.testing.assert_array_equal(xp.to_numpy(cache.indices), xp.to_numpy(cache1.indices)[0])
    with pytest.raises(ValueError, match="3-D"):
        backward(xp.asarray(dout[None], dtype), cache)


@pytest.mark.torch_reference
@pytest.mark.parametrize(
    "op, options",
    [
        ("max", dict(kernel_size=(2,), stride=(1,), padding=(1,), dilation=(2,))),
        ("max", dict(kernel_size=3, stride=())),
        ("max", dict(kernel_size=(3,), stride=2, padding=1)),
        ("avg", dict(kernel_size=(2,), stride=(1,), padding=(1,))),
        ("avg", dict(kernel_size=2, stride=[])),
    ],
    ids=str,
)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_torch_argument_forms(torch, op, options, batched):
    """One-element tuples, an empty stride and unbatched input, as PyTorch takes them (values, indices, gradient)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 7, 6) if batched else (3, 7, 6))
    forward, backward, _ = UNBATCHED_OPS[op]
    x_t = torch.tensor(x, requires_grad=True)
    torch_op = torch.nn.functional.max_pool2d if op == "max" else torch.nn.functional.avg_pool2d
    ref = torch_op(x_t, **options)
    dout = rng.standard_normal(tuple(ref.shape))
    ref.backward(torch.tensor(dout))
    out, cache = forward(x, **options)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backward(dout, cache), x_t.grad.numpy(), rtol=1e-12, atol=1e-12)
    if op == "max":
        np.testing.assert_array_equal(cache.indices, torch_op(torch.tensor(x), **options, return_indices=True)[1])


@pytest.mark.torch_reference
def test_unbatched_adaptive_and_interpolate_as_torch(torch):
    """Adaptive pooling takes an unbatched image; interpolate reads a 3-D x as PyTorch does: (N, C, L) signals."""
    rng = np.random.default_rng(9)
    image = rng.standard_normal((3, 7, 6))
    for name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        out, _ = getattr(F, f"{name}_forward")(image, (3, 4))
        np.testing.assert_allclose(out, getattr(torch.nn.functional, name)(torch.tensor(image), (3, 4)).numpy())
    for options in (dict(size=4), dict(size=(11,)), dict(scale_factor=1.7, mode="nearest-exact"),
                    dict(scale_factor=[2.0])):
        x_t = torch.tensor(image, requires_grad=True)
        ref = torch.nn.functional.interpolate(x_t, **options)
        dout = rng.standard_normal(tuple(ref.shape))
        ref.backward(torch.tensor(dout))
        out, cache = F.interpolate_forward(image, **options)
        np.testing.assert_array_equal(out, ref.detach().numpy())
        np.testing.assert_allclose(F.interpolate_backward(dout, cache), x_t.grad.numpy(), rtol=1e-12)
        # channels last: (N, L, C)
        out, cache = F.interpolate_forward(np.ascontiguousarray(image.transpose(0, 2, 1)), **options,
                                           data_format="NHWC")
        np.testing.assert_array_equal(out.transpose(0, 2, 1), ref.detach().numpy())


@pytest.mark.parametrize(
    "call, error, word",
    [
        (lambda x: F.interpolate_forward(x[0], size=4, mode="bilinear"), ValueError, "1-D signals"),
        (lambda x: F.interpolate_forward(x, size=(4,)), ValueError, "one value per resized axis"),
        (lambda x: F.interpolate_forward(x[0], scale_factor=(2, 2)), ValueError, "one value per resized axis"),
        (lambda x: F.interpolate_forward(x, size=4, data_format="nhwc"), ValueError, "data_format"),
        (lambda x: F.max_pool2d_forward(x, (2, 2, 2)), ValueError, "kernel_size"),
        (lambda x: F.avg_pool2d_forward(x, 2, padding=()), ValueError, "padding"),
        (lambda x: F.adaptive_avg_pool2d_forward(x, (3,)), ValueError, "pair"),
        (lambda x: F.adaptive_max_pool2d_forward(x, 2, data_format="HWC"), ValueError, "data_format"),
        (lambda x: nn.MaxPool2d(2, data_format="channels_last"), ValueError, "data_format"),
        (lambda x: nn.Flatten(data_format="NWHC"), ValueError, "data_format"),
    ],
)
def test_bad_layout_arguments(call, error, word):
    with pytest.raises(error, match=word):
        call(np.zeros((1, 2, 6, 6)))


@pytest.mark.parametrize(
    "layer, nchw",
    [
        (lambda f: nn.MaxPool2d(3, 2, 1, data_format=f), True),
        (lambda f: nn.AvgPool2d(2, data_format=f), True),
        (lambda f: nn.AdaptiveAvgPool2d((2, 3), data_format=f), True),
        (lambda f: nn.AdaptiveMaxPool2d(1, data_format=f), True),
        (lambda f: nn.Upsample(scale_factor=2, mode="bilinear", data_format=f), True),
    ],
)
def test_layers_in_both_layouts(layer, nchw):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    first, last = layer("NCHW"), layer("NHWC")
    out = first(x)
    out_last = last(np.ascontiguousarray(x.transpose(TO_NHWC)))
    np.testing.assert_array_equal(out_last.transpose(TO_NCHW), out)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(last.backward(np.ascontiguousarray(dout.transpose(TO_NHWC))).transpose(TO_NCHW),
                                  first.backward(dout))
    assert "NHWC" in repr(last)


def test_flatten_follows_the_layout():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    x_last = np.ascontiguousarray(x.transpose(TO_NHWC))
    np.testing.assert_array_equal(nn.Flatten()(x), x.reshape(2, -1))  # (C, H, W)
    layer = nn.Flatten(data_format="NHWC")
    out = layer(x_last)
    np.testing.assert_array_equal(out, x_last.reshape(2, -1))  # (H, W, C): no transpose
    np.testing.assert_array_equal(layer.backward(out), x_last)


@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kind", ["normal", "nan"])
@pytest.mark.parametrize("config", SPEED_CONFIGS + MAX_CONFIGS[:4], ids=config_id)
def test_max_pool_same_under_both_profiles(config, kind, data_format):
    """The accelerator's choices (separable passes for 3x3 at stride 2 too, no window copies) and the host's give
    the same bits; NaN-free input takes the comparison without the NaN test on NumPy."""
    from xpcnn.config import device_profile

    rng = np.random.default_rng(11)
    options = {k: v for k, v in config.items() if k != "x_shape"}
    x = max_pool_input(kind, config["x_shape"], rng)
    x = np.ascontiguousarray(x.transpose(TO_NHWC)) if data_format == "NHWC" else x
    results = []
    for profile in ("host", "accelerator"):
        with device_profile(profile):
            out, cache = F.max_pool2d_forward(x, **options, data_format=data_format)
            dx = F.max_pool2d_backward(np.ones_like(out), cache)
        results.append((out, cache.indices, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
