"""Hypothesis property tests: every window op's and normalisation's forward and backward (adaptive pooling's too)
equal the naive loops of tests/reference.py on random legal configurations, on NumPy and on array-api-strict's
``device1``.

The default number of examples per op and backend is modest for CI; ``XPCNN_HYPOTHESIS_EXAMPLES=2000`` runs a
deeper, randomised search (CI's runs are derandomised, so they are reproducible).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpcnn import functional as F
from xpcnn.functional import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
    conv2d_backward,
    conv2d_forward,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from tests import reference
from tests.helpers import max_pool_input, numpy_backend, strict_backend

DEEP = "XPCNN_HYPOTHESIS_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("XPCNN_HYPOTHESIS_EXAMPLES", 150))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    database=None if not DEEP else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
BACKENDS = [pytest.param(numpy_backend, id="numpy"), pytest.param(strict_backend, id="array_api_strict-device1")]
CLOSE = dict(rtol=1e-10, atol=1e-12)

pytest.importorskip("array_api_strict")


def _span_fits(size, kernel, dilation, before, after):
    return size + before + after >= dilation * (kernel - 1) + 1


@st.composite
def conv_cases(draw):
    channels = draw(st.integers(1, 5))
    groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    out_channels = groups * draw(st.integers(1, 2))
    size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if mode == "same":
        stride, padding = (1, 1), "same"
        pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
    else:
        stride = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))  # larger than the kernel too
        if mode == "valid":
            padding, pads = "valid", ((0, 0), (0, 0))
        elif mode == "int":
            p = draw(st.integers(0, 3))
            padding, pads = p, ((p, p), (p, p))
        else:
            ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
            padding, pads = (ph, pw), ((ph, ph), (pw, pw))
    assume(all(_span_fits(n, k, d, *pad) for n, k, d, pad in zip(size, kernel, dilation, pads)))
    return dict(
        x_shape=(draw(st.integers(0, 3)), channels, *size),
        w_shape=(out_channels, channels // groups, *kernel),
        bias=draw(st.booleans()),
        options=dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                     data_format=draw(st.sampled_from(["NCHW", "NHWC"]))),
        pads=pads,
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def conv_transpose_cases(draw):
    channels = draw(st.integers(1, 5))
    groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1
           for n, k, s, d, p, op in zip(size, kernel, stride, dilation, padding, output_padding)]
    assume(min(out) >= 1)
    return dict(
        x_shape=(draw(st.integers(0, 3)), channels, *size),
        w_shape=(channels, draw(st.integers(1, 2)), *kernel),
        bias=draw(st.booleans()),
        options=dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                     groups=groups, workspace_limit=draw(st.sampled_from([None, 1])),  # 1: one sample per piece
                     data_format=draw(st.sampled_from(["NCHW", "NHWC"]))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )

@st.composite
def pool_cases(draw, with_dilation):
    size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)  # up to its upper bound
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if with_dilation else (1, 1)
    ceil_mode = draw(st.booleans())
    assume(all(_span_fits(n, k, d, p, p) for n, k, d, p in zip(size, kernel, dilation, padding)))
    return dict(
        x_shape=(draw(st.integers(0, 3)), draw(st.integers(1, 5)), *size),
        kernel=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
        workspace_limit=draw(st.sampled_from([None, 1])),  # 1: one sample per piece
        data_format=draw(st.sampled_from(["NCHW", "NHWC"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _layout(data_format):
    """NCHW -> the layout, and back (NHWC: channels moved last and back)."""
    if data_format == "NCHW":
        return (lambda a: a), (lambda a: a)
    return (lambda a: np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))), (lambda a: np.transpose(a, (0, 3, 1, 2)))


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=conv_cases())
def test_conv2d_equals_naive_loops(make_backend, case):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x, w = rng.standard_normal(case["x_shape"]), rng.standard_normal(case["w_shape"])
    b = rng.standard_normal(case["w_shape"][0]) if case["bias"] else None
    to_layout, from_layout = _layout(case["options"]["data_format"])
    out, cache = conv2d_forward(xp.asarray(to_layout(x)), xp.asarray(w), None if b is None else xp.asarray(b),
                                **case["options"])
    dout = rng.standard_normal(tuple(from_layout(xp.to_numpy(out)).shape))
    dx, dw, db = conv2d_backward(xp.asarray(to_layout(dout)), cache)
    o = case["options"]
    ref = reference.conv2d(x, w, b, _pair(o["stride"]), case["pads"], _pair(o["dilation"]), o["groups"], dout)
    np.testing.assert_allclose(from_layout(xp.to_numpy(out)), ref[0], **CLOSE)
    np.testing.assert_allclose(from_layout(xp.to_numpy(dx)), ref[1], **CLOSE)
    np.testing.assert_allclose(xp.to_numpy(dw), ref[2], **CLOSE)
    if b is None:
        assert db is None
    else:
        np.testing.assert_allclose(xp.to_numpy(db), ref[3], **CLOSE)


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=conv_transpose_cases())
def test_conv_transpose2d_equals_naive_loops(make_backend, case):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x, w = rng.standard_normal(case["x_shape"]), rng.standard_normal(case["w_shape"])
    b = rng.standard_normal(case["w_shape"][1] * case["options"]["groups"]) if case["bias"] else None
    to_layout, from_layout = _layout(case["options"]["data_format"])
    out, cache = conv_transpose2d_forward(xp.asarray(to_layout(x)), xp.asarray(w),
                                          None if b is None else xp.asarray(b), **case["options"])
    dout = rng.standard_normal(tuple(from_layout(xp.to_numpy(out)).shape))
    dx, dw, db = conv_transpose2d_backward(xp.asarray(to_layout(dout)), cache)
    o = case["options"]
    ref = reference.conv_transpose2d(x, w, b, o["stride"], o["padding"], o["output_padding"], o["dilation"],
                                     o["groups"], dout)
    np.testing.assert_allclose(from_layout(xp.to_numpy(out)), ref[0], **CLOSE)
    np.testing.assert_allclose(from_layout(xp.to_numpy(dx)), ref[1], **CLOSE)
    np.testing.assert_allclose(xp.to_numpy(dw), ref[2], **CLOSE)
    if b is None:
        assert db is None
    else:
        np.testing.assert_allclose(xp.to_numpy(db), ref[3], **CLOSE)

def _in_layout(x, data_format):
    """An NCHW NumPy array in ``data_format`` (channels last: transposed, contiguous)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if data_format == "NHWC" else x


def _as_nchw(xp, a, data_format):
    """A backend array in ``data_format`` as an NCHW NumPy array."""
    a = xp.to_numpy(a)
    return a.transpose(0, 3, 1, 2) if data_format == "NHWC" else a


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=pool_cases(with_dilation=True), kind=st.sampled_from(["normal", "ties", "nan", "-inf"]))
def test_max_pool2d_equals_naive_loops(make_backend, case, kind):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x = max_pool_input(kind, case["x_shape"], rng)
    options = {k: case[k] for k in ("stride", "padding", "dilation", "ceil_mode")}
    layout = case["data_format"]
    out, cache = max_pool2d_forward(xp.asarray(_in_layout(x, layout)), case["kernel"], **options,
                                    data_format=layout, workspace_limit=case["workspace_limit"])
    dout = rng.standard_normal(tuple(_as_nchw(xp, out, layout).shape))
    dx = max_pool2d_backward(xp.asarray(_in_layout(dout, layout)), cache)
    ref_out, ref_indices, ref_dx = reference.max_pool2d(x, case["kernel"], *options.values(), dout)
    np.testing.assert_array_equal(_as_nchw(xp, out, layout), ref_out)
    np.testing.assert_array_equal(_as_nchw(xp, cache.indices, layout), ref_indices)
    np.testing.assert_allclose(_as_nchw(xp, dx, layout), ref_dx, **CLOSE)


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(
    case=pool_cases(with_dilation=False),
    count_include_pad=st.booleans(),
    divisor_override=st.one_of(st.none(), st.integers(1, 10)),
)
def test_avg_pool2d_equals_naive_loops(make_backend, case, count_include_pad, divisor_override):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"])
    options = dict(stride=case["stride"], padding=case["padding"], ceil_mode=case["ceil_mode"],
                   count_include_pad=count_include_pad, divisor_override=divisor_override)
    layout = case["data_format"]
    out, cache = avg_pool2d_forward(xp.asarray(_in_layout(x, layout)), case["kernel"], **options,
                                    data_format=layout, workspace_limit=case["workspace_limit"])
    dout = rng.standard_normal(tuple(_as_nchw(xp, out, layout).shape))
    dx = avg_pool2d_backward(xp.asarray(_in_layout(dout, layout)), cache)
    ref_out, ref_dx = reference.avg_pool2d(x, case["kernel"], *options.values(), dout)
    np.testing.assert_allclose(_as_nchw(xp, out, layout), ref_out, **CLOSE)
    np.testing.assert_allclose(_as_nchw(xp, dx, layout), ref_dx, **CLOSE)


@st.composite
def norm_cases(draw):
    kind = draw(st.sampled_from(["batch", "layer", "group"]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), *draw(st.lists(st.integers(1, 4), max_size=2)))
    channels = shape[1]
    if kind == "batch":
        assume(shape[0] * int(np.prod(shape[2:])) > 1)  # more than one value per channel
    groups = draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    normalized_ndim = draw(st.integers(1, len(shape)))
    param_shape = shape[len(shape) - normalized_ndim:] if kind == "layer" else (channels,)
    return dict(kind=kind, x_shape=shape, num_groups=groups, normalized_ndim=normalized_ndim, param_shape=param_shape,
                weight=draw(st.booleans()), bias=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-2, 1.0])),
                data_format="NCHW" if kind == "layer" else draw(st.sampled_from(["NCHW", "NHWC"])),
                seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def adaptive_cases(draw):
    """Input sizes 1-9, output sizes 1-12 (smaller, equal, larger, dividing or not), None for an axis too."""
    size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    output_size = tuple(draw(st.one_of(st.none(), st.integers(1, 12))) for _ in range(2))
    if draw(st.booleans()):  # the same output on both axes, as one int
        output_size = draw(st.integers(1, 12))
    return dict(
        x_shape=(draw(st.integers(0, 3)), draw(st.integers(1, 4)), *size),
        output_size=output_size,
        data_format=draw(st.sampled_from(["NCHW", "NHWC"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _adaptive_size(output_size, x_shape):
    pair = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    return tuple(n if o is None else o for o, n in zip(pair, x_shape[2:]))


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=norm_cases())
def test_normalization_equals_naive_loops(make_backend, case):
    """Batch (training), layer and group norm: values and gradients equal the row-by-row explicit Jacobians; batch
    and group norm in both layouts (NHWC: x, out, dout, dx moved to channels last)."""
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"]) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
    w = rng.standard_normal(case["param_shape"]) if case["weight"] else None
    b = rng.standard_normal(case["param_shape"]) if case["bias"] else None
    dout = rng.standard_normal(case["x_shape"])
    layout = case["data_format"]
    move = (lambda a: np.moveaxis(a, 1, -1)) if layout == "NHWC" else (lambda a: a)  # noqa: E731
    args = [None if a is None else xp.asarray(a) for a in (move(x), w, b)]
    kind, eps = case["kind"], case["eps"]
    if kind == "batch":
        out, cache = F.batch_norm_forward(*args, eps=eps, data_format=layout)
        grads = F.batch_norm_backward(xp.asarray(move(dout)), cache)
    elif kind == "layer":
        out, cache = F.layer_norm_forward(args[0], case["param_shape"], *args[1:], eps=eps)
        grads = F.layer_norm_backward(xp.asarray(dout), cache)
    else:
        out, cache = F.group_norm_forward(args[0], case["num_groups"], *args[1:], eps=eps, data_format=layout)
        grads = F.group_norm_backward(xp.asarray(move(dout)), cache)
    ref = reference.normalization(kind, x, w, b, eps, dout, num_groups=case["num_groups"],
                                  normalized_ndim=case["normalized_ndim"])
    for i, (got, want) in enumerate(zip((out, *grads), ref, strict=True)):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_allclose(xp.to_numpy(got), move(want) if i < 2 else want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=adaptive_cases())
def test_adaptive_avg_pool2d_equals_naive_loops(make_backend, case):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x_shape"])
    layout = case["data_format"]
    out, cache = adaptive_avg_pool2d_forward(xp.asarray(_in_layout(x, layout)), case["output_size"],
                                             data_format=layout)
    dout = rng.standard_normal(tuple(_as_nchw(xp, out, layout).shape))
    dx = adaptive_avg_pool2d_backward(xp.asarray(_in_layout(dout, layout)), cache)
    ref_out, ref_dx = reference.adaptive_avg_pool2d(x, _adaptive_size(case["output_size"], x.shape), dout)
    np.testing.assert_allclose(_as_nchw(xp, out, layout), ref_out, **CLOSE)
    np.testing.assert_allclose(_as_nchw(xp, dx, layout), ref_dx, **CLOSE)


@pytest.mark.parametrize("make_backend", BACKENDS)
@PROPERTY
@given(case=adaptive_cases(), kind=st.sampled_from(["normal", "ties", "nan", "-inf"]))
def test_adaptive_max_pool2d_equals_naive_loops(make_backend, case, kind):
    xp = make_backend()
    rng = np.random.default_rng(case["seed"])
    x = max_pool_input(kind, case["x_shape"], rng)
    layout = case["data_format"]
    out, cache = adaptive_max_pool2d_forward(xp.asarray(_in_layout(x, layout)), case["output_size"],
                                             data_format=layout)
    dout = rng.standard_normal(tuple(_as_nchw(xp, out, layout).shape))
    dx = adaptive_max_pool2d_backward(xp.asarray(_in_layout(dout, layout)), cache)
    ref_out, ref_indices, ref_dx = reference.adaptive_max_pool2d(
        x, _adaptive_size(case["output_size"], x.shape), dout
    )
    np.testing.assert_array_equal(_as_nchw(xp, out, layout), ref_out)
    np.testing.assert_array_equal(_as_nchw(xp, cache.indices, layout), ref_indices)
    np.testing.assert_allclose(_as_nchw(xp, dx, layout), ref_dx, **CLOSE)


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)
