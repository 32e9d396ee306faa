"""Winograd F(2x2,3x3) and F(4x4,3x3): forward, input and weight gradients against PyTorch and xpcnn's im2col
conv2d, both data formats, every backend; the transforms themselves; pieces; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import Backend, assert_close
from xpcnn._winograd import (
    TRANSFORMS,
    winograd_applies,
    winograd_forward,
    winograd_input_grad,
    winograd_pays_off,
    winograd_weight_grad,
)

# (x shape NCHW, out_channels, ((top, bottom), (left, right)), groups)
CONFIGS = [
    ((2, 3, 7, 9), 4, ((1, 1), (1, 1)), 1),
    ((1, 4, 5, 6), 6, ((0, 2), (1, 0)), 2),  # asymmetric padding, groups
    ((3, 4, 2, 3), 4, ((2, 1), (0, 2)), 4),  # depthwise, H and W smaller than a tile
    ((2, 6, 11, 5), 3, ((0, 0), (2, 2)), 3),
    ((1, 1, 3, 3), 1, ((0, 0), (0, 0)), 1),  # a 1 x 1 output
    ((1, 2, 1, 1), 3, ((1, 1), (1, 1)), 1),  # a 1 x 1 input
    ((2, 5, 13, 8), 7, ((1, 0), (0, 1)), 1),  # odd sizes, 'same' for an even total pad
    ((1, 2, 4, 9), 2, ((3, 2), (0, 3)), 1),  # padding beyond k - 1: dx crops dout
    ((2, 8, 9, 10), 8, ((1, 1), (1, 1)), 8),  # depthwise
    ((1, 6, 6, 7), 4, ((2, 0), (1, 2)), 2),
    ((4, 16, 8, 8), 16, ((1, 1), (1, 1)), 1),  # channels enough for the float32 error to show
    ((1, 3, 17, 4), 5, ((0, 1), (2, 0)), 1),
]
TILES = sorted(TRANSFORMS)
FORMATS = ("NCHW", "NHWC")


def _config_id(config):
    shape, out_channels, pads, groups = config
    return f"x{'x'.join(map(str, shape))}-o{out_channels}-pad{pads}-g{groups}".replace(" ", "")


def _torch_reference(torch, x, w, pads, groups, rng):
    """PyTorch float64: out, and dx, dw for a random dout."""
    (top, bottom), (left, right) = pads
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (left, right, top, bottom)), wt, groups=groups)
    dout = rng.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), dout


def _to_layout(a, data_format):
    return a if data_format == "NCHW" else np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def _from_layout(a, data_format):
    return a if data_format == "NCHW" else np.transpose(a, (0, 3, 1, 2))


@pytest.mark.parametrize("tile", TILES)
def test_one_dimensional_transform_is_exact(tile):
    """A^T [(G g) * (B^T d)] is the correlation of d (alpha values) with g (3): the matrices are right."""
    tf = TRANSFORMS[tile]
    bt, g, at = (np.array(m, dtype=np.float64) for m in (tf.BT, tf.G, tf.AT))
    rng = np.random.default_rng(tile)
    d, k = rng.standard_normal(tf.alpha), rng.standard_normal(3)
    expected = np.array([d[i : i + 3] @ k for i in range(tf.m)])
    np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.torch_reference
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_matches_torch(xp, torch, config, tile, data_format):
    shape, out_channels, pads, groups = config
    rng = np.random.default_rng(CONFIGS.index(config))
    x = rng.standard_normal(shape)
    w = rng.standard_normal((out_channels, shape[1] // groups, 3, 3))
    out_ref, dx_ref, dw_ref, dout = _torch_reference(torch, x, w, pads, groups, rng)
    options = dict(tile=tile, data_format=data_format)
    for dtype, np_dtype in xp.float_dtypes():
        xa = xp.asarray(_to_layout(x, data_format), dtype)
        wa = xp.asarray(w, dtype)
        da = xp.asarray(_to_layout(dout, data_format), dtype)
        out = winograd_forward(xp.namespace, xa, wa, pads, groups, **options)
        dx = winograd_input_grad(xp.namespace, da, wa, pads, groups, shape[2:], **options)
        dw = winograd_weight_grad(xp.namespace, xa, da, pads, groups, **options)
        assert_close(xp, out, _to_layout(out_ref, data_format), np_dtype)
        assert_close(xp, dx, _to_layout(dx_ref, data_format), np_dtype)
        assert_close(xp, dw, dw_ref, np_dtype)


LAZY_CASES = [CONFIGS[1], CONFIGS[2], CONFIGS[7]]  # groups, depthwise, padding beyond k - 1


@pytest.mark.torch_reference
@pytest.mark.parametrize("case", LAZY_CASES, ids=_config_id)
def test_a_few_cases_on_every_backend(xp, torch, case):
    """A few cases under another parameter name than ``config``, which the conftest thins out on JAX and Dask
    (there it currently keeps none: pytest's callspec.indices count every parameter combination). On those two,
    one tile and layout per case, in float64 only (JAX compiles every op per shape: minutes otherwise)."""
    index = LAZY_CASES.index(case)
    if xp.name in ("jax", "dask"):
        combos = [(TILES[index % len(TILES)], FORMATS[index % len(FORMATS)])]
        xp = Backend(xp.name, xp.namespace, xp.device, float64=True)
        xp.float_dtypes = lambda: [(xp.namespace.float64, np.float64)]
    else:
        combos = [(tile, data_format) for tile in TILES for data_format in FORMATS]
    for tile, data_format in combos:
        test_matches_torch(xp, torch, case, tile, data_format)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("config", [c for c in CONFIGS if c[2][0][0] == c[2][0][1] and c[2][1][0] == c[2][1][1]],
                         ids=_config_id)
def test_matches_im2col_conv2d(xp, config, tile):
    """The same values and gradients as xpcnn.functional.conv2d (symmetric padding, which it takes)."""
    from xpcnn.functional import conv2d_backward, conv2d_forward

    shape, out_channels, pads, groups = config
    rng = np.random.default_rng(10 + CONFIGS.index(config))
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = xp.asarray(rng.standard_normal(shape), dtype)
    w = xp.asarray(rng.standard_normal((out_channels, shape[1] // groups, 3, 3)), dtype)
    padding = (pads[0][0], pads[1][0])
    out_ref, cache = conv2d_forward(x, w, padding=padding, groups=groups)
    dout = xp.asarray(rng.standard_normal(tuple(out_ref.shape)), dtype)
    dx_ref, dw_ref, _ = conv2d_backward(dout, cache)
    assert_close(xp, winograd_forward(xp.namespace, x, w, padding, groups, tile=tile), xp.to_numpy(out_ref), np_dtype)
    dx = winograd_input_grad(xp.namespace, dout, w, padding, groups, shape[2:], tile=tile)
    assert_close(xp, dx, xp.to_numpy(dx_ref), np_dtype)
    assert_close(xp, winograd_weight_grad(xp.namespace, x, dout, padding, groups, tile=tile), xp.to_numpy(dw_ref),
                 np_dtype)


@pytest.mark.torch_reference
@pytest.mark.parametrize("tile", TILES)
def test_float32_error_within_the_torch_tolerance_at_resnet_scale(torch, tile):
    """64 channels, 16 x 16, batch 8 (the weight gradient sums 2,048 positions): float32 stays inside the
    tolerance of the PyTorch comparison tests (tests/helpers.py); benchmarks/winograd_error.py has the figures."""
    from tests.helpers import numpy_backend

    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((8, 64, 16, 16)), rng.standard_normal((64, 64, 3, 3)) / 24
    pads = ((1, 1), (1, 1))
    out_ref, dx_ref, dw_ref, dout = _torch_reference(torch, x, w, pads, 1, rng)
    xp, f32 = numpy_backend(), np.float32
    out = winograd_forward(None, x.astype(f32), w.astype(f32), pads, 1, tile=tile)
    dx = winograd_input_grad(None, dout.astype(f32), w.astype(f32), pads, 1, (16, 16), tile=tile)
    dw = winograd_weight_grad(None, x.astype(f32), dout.astype(f32), pads, 1, tile=tile)
    for got, want in ((out, out_ref), (dx, dx_ref), (dw, dw_ref)):
        assert_close(xp, got, want, f32)


@pytest.mark.eager_only
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("limit", [1, 50_000, 2**40])
def test_workspace_limit_processes_pieces_with_the_same_results(xp, limit, data_format):
    rng = np.random.default_rng(3)
    dtype, np_dtype = xp.float_dtypes()[-1]
    x = rng.standard_normal((5, 4, 9, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    dout = rng.standard_normal((5, 6, 9, 6))
    pads = ((1, 1), (1, 0))
    xa, wa, da = (xp.asarray(a, dtype) for a in (_to_layout(x, data_format), w, _to_layout(dout, data_format)))
    options = dict(tile=4, data_format=data_format)
    whole = [
        winograd_forward(xp.namespace, xa, wa, pads, 2, workspace_limit=2**40, **options),
        winograd_input_grad(xp.namespace, da, wa, pads, 2, (9, 7), workspace_limit=2**40, **options),
        winograd_weight_grad(xp.namespace, xa, da, pads, 2, workspace_limit=2**40, **options),
    ]
    pieces = [
        winograd_forward(xp.namespace, xa, wa, pads, 2, workspace_limit=limit, **options),
        winograd_input_grad(xp.namespace, da, wa, pads, 2, (9, 7), workspace_limit=limit, **options),
        winograd_weight_grad(xp.namespace, xa, da, pads, 2, workspace_limit=limit, **options),
    ]
    for got, want in zip(pieces, whole):
        assert_close(xp, got, xp.to_numpy(want), np_dtype)


def test_empty_batch(xp):
    x = xp.asarray(np.zeros((0, 2, 5, 5)), xp.float32)
    w = xp.asarray(np.ones((3, 2, 3, 3)), xp.float32)
    out = winograd_forward(xp.namespace, x, w, 1, 1)
    assert tuple(out.shape) == (0, 3, 5, 5)
    assert tuple(winograd_input_grad(xp.namespace, out, w, 1, 1, (5, 5)).shape) == (0, 2, 5, 5)
    dw = winograd_weight_grad(xp.namespace, x, out, 1, 1)
    np.testing.assert_array_equal(xp.to_numpy(dw), np.zeros((3, 2, 3, 3)))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(0)
    x, w, d = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 6, 6))
    copies = [a.copy() for a in (x, w, d)]
    winograd_forward(None, x, w, 1)
    winograd_input_grad(None, d, w, 1, 1, (6, 6))
    winograd_weight_grad(None, x, d, 1, 1)
    for a, b in zip((x, w, d), copies):
        np.testing.assert_array_equal(a, b)


X = np.zeros((1, 4, 6, 6))
W = np.zeros((2, 4, 3, 3))


@pytest.mark.parametrize(
    "call, error, word",
    [
        (lambda: winograd_forward(None, X, np.zeros((2, 4, 5, 5))), ValueError, "3, 3"),
        (lambda: winograd_forward(None, X[0], W), ValueError, "4-D"),
        (lambda: winograd_forward(None, X, np.zeros((2, 3, 3, 3))), ValueError, "channels"),
        (lambda: winograd_forward(None, X, W, 0, 3), ValueError, "groups"),
        (lambda: winograd_forward(None, X, W, 0, 0), ValueError, "groups"),
        (lambda: winograd_forward(None, X, W, -1), ValueError, "padding"),
        (lambda: winograd_forward(None, X, W, (1, 2, 3)), ValueError, "padding"),
        (lambda: winograd_forward(None, X[..., :1], W), ValueError, "larger than the padded input"),
        (lambda: winograd_forward(None, X, W, tile=3), ValueError, "tile"),
        (lambda: winograd_forward(None, X, W, data_format="CHWN"), ValueError, "data_format"),
        (lambda: winograd_forward(None, X, W, workspace_limit=0), ValueError, "workspace_limit"),
        (lambda: winograd_forward(None, X.astype(np.int64), W.astype(np.int64)), TypeError, "floating"),
        (lambda: winograd_forward(None, X, W.astype(np.float32)), TypeError, "dtype"),
        (lambda: winograd_forward(None, [[1.0]], W), TypeError, "array"),
        (lambda: winograd_input_grad(None, np.zeros((1, 2, 5, 5)), W, 1, 1, (6, 6)), ValueError, "height x width"),
        (lambda: winograd_input_grad(None, np.zeros((1, 3, 6, 6)), W, 1, 1, (6, 6)), ValueError, "channels"),
        (lambda: winograd_input_grad(None, np.zeros((1, 2, 6, 6)), W, 1, 1, (6,)), ValueError, "in_size"),
        (lambda: winograd_weight_grad(None, X, np.zeros((1, 2, 5, 6)), 1, 1), ValueError, "dout must hold"),
        (lambda: winograd_weight_grad(None, X, np.zeros((2, 2, 6, 6)), 1, 1), ValueError, "dout must hold"),
    ],
)
def test_bad_input(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_applies_and_pays_off():
    assert winograd_applies((3, 3), (1, 1), (1, 1))
    assert not winograd_applies((3, 3), (2, 2), (1, 1))
    assert not winograd_applies((3, 3), (1, 1), (2, 2))
    assert not winograd_applies((5, 5), (1, 1), (1, 1))
    assert winograd_pays_off(1, 32, (28, 28)) is None
    assert winograd_pays_off(1, 1, (28, 28)) is None  # depthwise
    assert winograd_pays_off(64, 64, (2, 2)) is None
    assert winograd_pays_off(64, 64, (32, 32)) == 4
    assert winograd_pays_off(512, 512, (7, 7)) == 2


def test_default_tile_follows_the_channels():
    """tile=None: F(4x4) up to F4_MAX_CHANNELS channels per group, F(2x2) beyond (the same values either way)."""
    from xpcnn._winograd import F4_MAX_CHANNELS, _transform

    assert _transform(None, 64, 64).m == 4
    assert _transform(None, F4_MAX_CHANNELS + 1, 16).m == 2
    assert _transform(None, 16, F4_MAX_CHANNELS + 1).m == 2
    assert _transform(2, 16, 16).m == 2
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 3, 6, 5)), rng.standard_normal((2, 3, 3, 3))
    np.testing.assert_allclose(winograd_forward(None, x, w, 1), winograd_forward(None, x, w, 1, tile=4), rtol=0,
                               atol=0)


def test_transform_matrices_are_made_once_per_device_and_dtype(xp):
    """Eager libraries keep each transform matrix on its device (no host copy per call); lazy ones (JAX, Dask)
    build it per call, and it is equal either way."""
    from xpcnn import _device_cache, _winograd
    from xpcnn._winograd import F4X4_3X3

    namespace, like = xp.namespace, dict(dtype=xp.float32, device=xp.device)
    first = _winograd._matrix(namespace, F4X4_3X3.BT, like)
    again = _winograd._matrix(namespace, F4X4_3X3.BT, like)
    assert_close(xp, again, np.asarray(F4X4_3X3.BT, dtype=np.float64), np.float32)
    assert (first is again) == _device_cache.keeps_arrays(namespace)


def test_closed_over_weights_under_jax_jit():
    """Under ``jax.jit`` the traced input's device is not known yet: weights closed over (concrete) go with it."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from xpcnn.functional import conv2d_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((16, 16, 3, 3)).astype(np.float32))
    traced = jax.jit(lambda a: conv2d_forward(a, w, padding=1, algorithm="winograd")[0])(jnp.asarray(x))
    eager, _ = conv2d_forward(jnp.asarray(x), w, padding=1, algorithm="winograd")
    scale = float(np.abs(np.asarray(eager)).max())  # jit reorders float32 sums: compare to the output scale
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=0, atol=2e-5 * scale)
