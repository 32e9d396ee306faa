"""Differential fuzzing against PyTorch: random valid (and some invalid) configurations of every public op of
:mod:`xpcnn.functional`, their forward values, every gradient (backward with a random dout) and the extras
(max pooling's ``cache.indices``, batch norm's running statistics) compared to ``torch.autograd`` in float64.

Each generator ``g_OP(r)`` draws one configuration from a ``random.Random`` and returns a :class:`Case`: the inputs
(NumPy, float64), the PyTorch reference, and xpcnn's forward and backward in the drawn layout (NCHW or NHWC: the
case transposes x, out, dout and dx itself), workspace limit, algorithm or private conv plan. :func:`run_case` runs
one in float32 or float64 with xpcnn's inputs in a random memory form (read-only, strided views, Fortran order,
negative strides), checks that PyTorch and xpcnn accept or refuse it alike (xpcnn with a ValueError or TypeError),
that NaN and infinities land at the same places, finite values agree to the dtype's precision, and that no input
was written. tests/test_fuzz.py runs a seeded sample; a deep campaign::

    PYTHONPATH=. python -m tests.differential 2000 SEED [op,op,...] [-v]

Deliberate differences (docs/semantics.md) are followed in the references: max-pool windows lying entirely in the
padding (PyTorch's backward writes out of bounds: not compared), group norm with one value per group and batch 1
(PyTorch refuses), PyTorch's 1-D nearest backward (not its forward's adjoint: the reference is a gather).
"""
from __future__ import annotations

import collections
import random
import sys
import traceback
import warnings

import numpy as np
import torch

import xpcnn.functional as F

TF = torch.nn.functional

REJECTS = []
TOL = {np.float64: 1e-9, np.float32: 3e-4}


class Case:
    def __init__(self, meta, inputs, grads, ref, fwd, bwd, extra=None, nonfinite=False, xfail=None, ref32=False):
        self.ref32 = ref32  # the float32 reference is torch's float32 kernel (interpolate: weights in x's precision)
        self.meta, self.inputs, self.grads, self.ref, self.fwd, self.bwd = meta, inputs, grads, ref, fwd, bwd
        self.extra = extra  # (ref_out_tuple, mine_out, cache) -> list of (name, mine, theirs)
        self.nonfinite = nonfinite


# ---------------------------------------------------------------------------------------------------- helpers
def pair(r, choices):
    if r.random() < 0.5:
        return r.choice(choices)
    return (r.choice(choices), r.choice(choices))


def as2(v):
    return v if isinstance(v, tuple) else (v, v)


def sprinkle(r, a, rate=0.05, kinds=(np.nan, np.inf, -np.inf)):
    if a.size == 0:
        return a
    a = a.copy()
    for _ in range(max(1, int(a.size * rate * r.random()))):
        a.flat[r.randrange(a.size)] = r.choice(kinds)
    return a


def ties(r, a):
    nr = np.random.default_rng(r.randrange(2**32))
    return np.where(nr.random(a.shape) < 0.4, np.round(a), a)


def randn(r, shape, scale=1.0):
    return np.random.default_rng(r.randrange(2**32)).standard_normal(shape) * scale


def variant(r, a):
    """The same values in another memory form: read-only, strided view, Fortran order, negative strides."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    k = r.choice(["plain", "plain", "readonly", "strided", "fortran", "reversed", "broadcast_copy_ro"])
    if k == "readonly":
        a = a.copy()
        a.setflags(write=False)
    elif k == "strided":
        big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)
        big[..., ::2] = a
        a = big[..., ::2]
    elif k == "fortran":
        a = np.asfortranarray(a)
    elif k == "reversed":
        a = a[..., ::-1].copy()[..., ::-1]
    elif k == "broadcast_copy_ro":
        a = np.ascontiguousarray(a)
        a.setflags(write=False)
    return a


def _ns(a):
    import array_api_compat
    return array_api_compat.array_namespace(a)


def to_last(a, cax):
    return _ns(a).moveaxis(a, cax, -1)


def from_last(a, cax):
    return _ns(a).moveaxis(a, -1, cax)


# ---------------------------------------------------------------------------------------------------- cases
def g_conv2d(r):
    dw = r.random() < 0.15
    if dw:
        groups = cin = r.randint(1, 4)
        cout = groups * r.choice([1, 2])
    else:
        groups = r.choice([1, 1, 1, 2, 3])
        cin, cout = groups * r.randint(1, 3), groups * r.randint(1, 3)
    N = r.choice([1, 1, 2, 3, 0])
    H, W = r.randint(1, 9), r.randint(1, 9)
    k = (r.randint(1, 5), r.randint(1, 5))
    stride, dilation = pair(r, [1, 1, 2, 3]), pair(r, [1, 1, 2])
    big = r.random() < 0.1  # where the cost model takes Winograd (>= 16 channels per group, 3 x 3, stride 1)
    if big:
        groups = r.choice([1, 1, 2])
        cin, cout = groups * r.randint(16, 20), groups * r.randint(16, 20)
        N, H, W, k, stride, dilation = r.choice([1, 2]), r.randint(4, 14), r.randint(4, 14), (3, 3), 1, 1
    pk = r.random()
    if pk < 0.1:
        padding = "valid"
    elif pk < 0.25:
        padding = "same"
        if r.random() < 0.85:
            stride = 1
    else:
        padding = pair(r, [0, 0, 1, 2, 3])
    if r.random() < 0.3:  # kernel as large as the padded input
        p = (0, 0) if isinstance(padding, str) else as2(padding)
        d = as2(dilation)
        k = (max(1, (H + 2 * p[0] - 1) // d[0] + 1), max(1, (W + 2 * p[1] - 1) // d[1] + 1))
        k = (min(k[0], 7), min(k[1], 7))
    bias = r.random() < 0.6
    fmt = r.choice(["NCHW", "NHWC"])
    unbatched = r.random() < 0.12
    ws = r.choice([None, None, None, 1, 200, 4096, 2**16])
    wino_ok = k == (3, 3) and as2(stride) == (1, 1) and as2(dilation) == (1, 1)
    algorithm = r.choice(["auto", "im2col"] + (["winograd"] * 2 if wino_ok else []))
    plan = None
    if r.random() < 0.3:
        dx_choices = ["col2im", "col2im_wide_rows"] + (["transposed_correlation"] if as2(stride) == (1, 1) else [])
        plan = {"dx": r.choice(dx_choices),
                "dweight": r.choice(["per_sample", "batch_folded"]), "keep_columns": r.random() < 0.5}
        algorithm = "auto"
    elif algorithm == "winograd" and r.random() < 0.5:
        plan = {"tile": r.choice([2, 4])}
    nonfinite = r.random() < 0.15 and algorithm != "winograd" and plan is None
    x = randn(r, (N, cin, H, W))
    w = randn(r, (cout, cin // groups, *k))
    if nonfinite:
        x = sprinkle(r, x) if r.random() < 0.7 else x
        w = sprinkle(r, w) if r.random() < 0.3 else w
    b = randn(r, (cout,)) if bias else None
    if unbatched and x.shape[0]:
        x = x[0]
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    meta = dict(x=x.shape, w=w.shape, bias=bias, fmt=fmt, ws=ws, algorithm=algorithm, plan=plan, nonfinite=nonfinite,
                **opts)
    cax = x.ndim - 3
    inputs = dict(x=x, weight=w) | (dict(bias=b) if bias else {})

    def ref(x, weight, bias=None):
        return TF.conv2d(x, weight, bias, **opts)

    def fwd(x, weight, bias=None):
        xx = to_last(x, cax) if fmt == "NHWC" else x
        out, cache = F.conv2d_forward(xx, weight, bias, data_format=fmt, workspace_limit=ws, algorithm=algorithm,
                                      _plan=plan, **opts)
        return (from_last(out, cax) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, cax) if fmt == "NHWC" else dout
        dx, dw_, db = F.conv2d_backward(d, cache)
        return dict(x=from_last(dx, cax) if fmt == "NHWC" else dx, weight=dw_, bias=db)

    return Case(meta, inputs, list(inputs), ref, fwd, bwd, nonfinite=nonfinite)


def g_conv_transpose2d(r):
    groups = r.choice([1, 1, 1, 2, 3])
    cin, cout = groups * r.randint(1, 3), groups * r.randint(1, 3)
    N = r.choice([1, 1, 2, 3, 0])
    H, W = r.randint(1, 7), r.randint(1, 7)
    k = (r.randint(1, 5), r.randint(1, 5))
    stride, dilation = pair(r, [1, 1, 2, 3]), pair(r, [1, 1, 2])
    padding = pair(r, [0, 0, 1, 2, 3])
    s, d = as2(stride), as2(dilation)
    op = tuple(r.randint(0, max(s[i], d[i]) - 1) for i in range(2))
    if r.random() < 0.05:
        op = (op[0] + 1, op[1])
    output_padding = op if r.random() < 0.5 or op[0] != op[1] else op[0]
    bias = r.random() < 0.6
    fmt = r.choice(["NCHW", "NHWC"])
    unbatched = r.random() < 0.12
    ws = r.choice([None, None, None, 1, 200, 4096, 2**16])
    plan = None
    if r.random() < 0.3:
        plan = {"dx": r.choice(["col2im", "col2im_wide_rows"] + (["transposed_correlation"] if s == (1, 1) else [])),
                "dweight": r.choice(["per_sample", "batch_folded"]), "keep_columns": r.random() < 0.5}
    nonfinite = r.random() < 0.15 and plan is None
    x = randn(r, (N, cin, H, W))
    w = randn(r, (cin, cout // groups, *k))
    if nonfinite:
        x = sprinkle(r, x) if r.random() < 0.7 else x
        w = sprinkle(r, w) if r.random() < 0.3 else w
    b = randn(r, (cout,)) if bias else None
    if unbatched and x.shape[0]:
        x = x[0]
    opts = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    meta = dict(x=x.shape, w=w.shape, bias=bias, fmt=fmt, ws=ws, plan=plan, nonfinite=nonfinite, **opts)
    cax = x.ndim - 3
    inputs = dict(x=x, weight=w) | (dict(bias=b) if bias else {})

    def ref(x, weight, bias=None):
        return TF.conv_transpose2d(x, weight, bias, **opts)

    def fwd(x, weight, bias=None):
        xx = to_last(x, cax) if fmt == "NHWC" else x
        out, cache = F.conv_transpose2d_forward(xx, weight, bias, data_format=fmt, workspace_limit=ws, _plan=plan,
                                                **opts)
        return (from_last(out, cax) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, cax) if fmt == "NHWC" else dout
        dx, dw_, db = F.conv_transpose2d_backward(d, cache)
        return dict(x=from_last(dx, cax) if fmt == "NHWC" else dx, weight=dw_, bias=db)

    return Case(meta, inputs, list(inputs), ref, fwd, bwd, nonfinite=nonfinite)


def _pool_common(r):
    N, C = r.choice([1, 1, 2, 3, 0]), r.randint(1, 3)
    H, W = r.randint(1, 9), r.randint(1, 9)
    k = pair(r, [1, 2, 3, 4])
    stride = r.choice([None, None, 1, 2, 3, (1, 2), (2, 3)])
    kk = as2(k)
    padding = (r.randint(0, kk[0] // 2), r.randint(0, kk[1] // 2))
    if r.random() < 0.5 and padding[0] == padding[1]:
        padding = padding[0]
    if r.random() < 0.05:
        padding = kk[0] // 2 + 1
    ceil_mode = r.random() < 0.5
    fmt = r.choice(["NCHW", "NHWC"])
    unbatched = r.random() < 0.12
    ws = r.choice([None, None, None, 1, 200, 4096])
    return N, C, H, W, k, stride, padding, ceil_mode, fmt, unbatched, ws


def all_padding_window(in_size, out_size, k, s, p, d):
    for n, o_n, k_, s_, p_, d_ in zip(in_size, out_size, k, s, p, d):
        for o in range(o_n):
            if not any(0 <= o * s_ - p_ + j * d_ < n for j in range(k_)):
                return True
    return False


def g_max_pool2d(r):
    N, C, H, W, k, stride, padding, ceil_mode, fmt, unbatched, ws = _pool_common(r)
    dilation = pair(r, [1, 1, 2, 3])
    x = ties(r, randn(r, (N, C, H, W)) * 2)
    nonfinite = r.random() < 0.25
    if nonfinite:
        x = sprinkle(r, x, 0.1)
    if r.random() < 0.05:
        x = np.full_like(x, -np.inf)
    if unbatched and x.shape[0]:
        x = x[0]
    cax = x.ndim - 3
    opts = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    meta = dict(x=x.shape, k=k, fmt=fmt, ws=ws, **opts)

    def ref(x):
        with torch.no_grad():
            _, idx = TF.max_pool2d(x, k, stride, padding, dilation, ceil_mode, return_indices=True)
        if idx.numel() and all_padding_window(x.shape[-2:], idx.shape[-2:], as2(k), as2(stride or k), as2(padding),
                                              as2(dilation)):  # semantics.md maxpool-all-padding:
            o, i = TF.max_pool2d(x.detach(), k, stride, padding, dilation, ceil_mode, return_indices=True)
            return o, i  # torch's backward would write out of bounds (segfault): no gradient compared
        return TF.max_pool2d(x, k, stride, padding, dilation, ceil_mode, return_indices=True)

    def fwd(x):
        xx = to_last(x, cax) if fmt == "NHWC" else x
        out, cache = F.max_pool2d_forward(xx, k, data_format=fmt, workspace_limit=ws, **opts)
        return (from_last(out, cax) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, cax) if fmt == "NHWC" else dout
        dx = F.max_pool2d_backward(d, cache)
        return dict(x=from_last(dx, cax) if fmt == "NHWC" else dx)

    def extra(ref_rest, out, cache):
        idx = cache.indices
        if fmt == "NHWC":
            idx = from_last(idx, cax)
        return [("indices", idx, ref_rest[0].numpy() if ref_rest else None)]

    return Case(meta, dict(x=x), ["x"], ref, fwd, bwd, extra=extra, nonfinite=True)


def g_avg_pool2d(r):
    N, C, H, W, k, stride, padding, ceil_mode, fmt, unbatched, ws = _pool_common(r)
    cip = r.random() < 0.5
    div = r.choice([None, None, None, 1, 2, 3, 7, -2])
    x = randn(r, (N, C, H, W))
    nonfinite = r.random() < 0.15
    if nonfinite:
        x = sprinkle(r, x, 0.05)
    if unbatched and x.shape[0]:
        x = x[0]
    cax = x.ndim - 3
    opts = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=cip, divisor_override=div)
    meta = dict(x=x.shape, k=k, fmt=fmt, ws=ws, **opts)

    def ref(x):
        return TF.avg_pool2d(x, k, **opts)

    def fwd(x):
        xx = to_last(x, cax) if fmt == "NHWC" else x
        out, cache = F.avg_pool2d_forward(xx, k, data_format=fmt, workspace_limit=ws, **opts)
        return (from_last(out, cax) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, cax) if fmt == "NHWC" else dout
        dx = F.avg_pool2d_backward(d, cache)
        return dict(x=from_last(dx, cax) if fmt == "NHWC" else dx)

    return Case(meta, dict(x=x), ["x"], ref, fwd, bwd, nonfinite=nonfinite)


def g_adaptive(kind):
    def g(r):
        N, C = r.choice([1, 1, 2, 0]), r.randint(1, 3)
        H, W = r.randint(1, 10), r.randint(1, 10)
        c = r.random()
        if c < 0.3:
            size = r.randint(1, 12)
        elif c < 0.4:
            size = None if r.random() < 0.5 else (None, None)
        else:
            size = (r.choice([None, r.randint(1, 12)]), r.choice([None, r.randint(1, 12)]))
        fmt = r.choice(["NCHW", "NHWC"])
        unbatched = r.random() < 0.12
        x = randn(r, (N, C, H, W))
        if kind == "max":
            x = ties(r, x * 2)
        nonfinite = r.random() < 0.2
        if nonfinite:
            x = sprinkle(r, x, 0.1)
        if unbatched and x.shape[0]:
            x = x[0]
        cax = x.ndim - 3
        meta = dict(x=x.shape, size=size, fmt=fmt)
        fwd_fn = getattr(F, f"adaptive_{kind}_pool2d_forward")
        bwd_fn = getattr(F, f"adaptive_{kind}_pool2d_backward")

        def ref(x):
            ts = size
            if kind == "max":
                return TF.adaptive_max_pool2d(x, ts, return_indices=True)
            return TF.adaptive_avg_pool2d(x, ts)

        def fwd(x):
            xx = to_last(x, cax) if fmt == "NHWC" else x
            out, cache = fwd_fn(xx, size, data_format=fmt)
            return (from_last(out, cax) if fmt == "NHWC" else out), cache

        def bwd(dout, cache):
            d = to_last(dout, cax) if fmt == "NHWC" else dout
            dx = bwd_fn(d, cache)
            return dict(x=from_last(dx, cax) if fmt == "NHWC" else dx)

        def extra(ref_rest, out, cache):
            idx = cache.indices
            if fmt == "NHWC":
                idx = from_last(idx, cax)
            return [("indices", idx, ref_rest[0].numpy() if ref_rest else None)]

        return Case(meta, dict(x=x), ["x"], ref, fwd, bwd, extra=extra if kind == "max" else None,
                    nonfinite=nonfinite)

    return g


def g_interpolate(r):
    mode = r.choice(["nearest", "nearest-exact", "bilinear", "bilinear"])
    three_d = mode != "bilinear" and r.random() < 0.2
    N, C = r.choice([1, 2]), r.randint(1, 3)
    shape = (N, C, r.randint(1, 8)) if three_d else (N, C, r.randint(1, 8), r.randint(1, 8))
    dims = len(shape) - 2
    align = r.choice([None, True, False]) if mode == "bilinear" else (
        r.choice([True, False]) if r.random() < 0.05 else None)
    opts = dict(mode=mode)
    if align is not None:
        opts["align_corners"] = align
    if r.random() < 0.45:
        opts["size"] = r.randint(1, 13) if r.random() < 0.3 else tuple(r.randint(1, 13) for _ in range(dims))
    else:
        sf = [0.3, 0.5, 0.7, 1.0, 1.3, 1.5, 1.7, 2, 2.5, 3, 1 / 3, 2.2]
        opts["scale_factor"] = r.choice(sf) if r.random() < 0.5 else tuple(r.choice(sf) for _ in range(dims))
    fmt = "NHWC" if not three_d and r.random() < 0.4 else "NCHW"
    x = randn(r, shape)
    nonfinite = r.random() < 0.1
    if nonfinite:
        x = sprinkle(r, x, 0.05)
    meta = dict(x=x.shape, fmt=fmt, **opts)

    def ref(x):
        if three_d and "scale_factor" in opts:  # torch's 1-D backward is not its forward's adjoint: gather
            with torch.no_grad():
                idx = TF.interpolate(torch.arange(x.shape[-1], dtype=torch.float32)[None, None], **opts)
            return x[..., idx[0, 0].long()]
        return TF.interpolate(x, **opts)

    def fwd(x):
        xx = to_last(x, 1) if fmt == "NHWC" else x
        out, cache = F.interpolate_forward(xx, data_format=fmt, **opts)
        return (from_last(out, 1) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, 1) if fmt == "NHWC" else dout
        dx = F.interpolate_backward(d, cache)
        return dict(x=from_last(dx, 1) if fmt == "NHWC" else dx)

    return Case(meta, dict(x=x), ["x"], ref, fwd, bwd, nonfinite=nonfinite, ref32=True)


def g_batch_norm(r, two_d=None):
    two_d = r.random() < 0.6 if two_d is None else two_d
    N, C = r.choice([1, 2, 3, 5]), r.randint(1, 4)
    if two_d:
        shape = (N, C, r.randint(1, 4), r.randint(1, 4))
    else:
        shape = r.choice([(N, C), (N, C, r.randint(1, 5))])
    training = r.random() < 0.6
    affine = r.random() < 0.6
    weight_only = affine and r.random() < 0.2
    running = (not training) or r.random() < 0.7
    momentum = r.choice([0.1, 0.5, 1.0, 0.0, None]) if running else r.choice([0.1, None])
    nbt = r.randint(1, 5)
    eps = r.choice([1e-5, 1e-3, 0.1])
    fmt = r.choice(["NCHW", "NHWC"])
    x = randn(r, shape) * r.choice([1, 1, 100])
    if r.random() < 0.1:
        x[:, 0] = 3.0  # constant channel
    w, b = randn(r, (C,)), randn(r, (C,))
    rm, rv = randn(r, (C,)), np.abs(randn(r, (C,))) + 0.1
    inputs = dict(x=x)
    if affine:
        inputs["weight"] = w
        if not weight_only:
            inputs["bias"] = b
    grads = list(inputs)
    if running:
        inputs["running_mean"], inputs["running_var"] = rm, rv
    if momentum is None and training:
        inputs["nbt"] = np.asarray(nbt, np.int64)
    meta = dict(x=shape, training=training, affine=affine, weight_only=weight_only, running=running,
                momentum=momentum, eps=eps, fmt=fmt)
    fwd_fn = F.batch_norm2d_forward if two_d else F.batch_norm_forward
    bwd_fn = F.batch_norm2d_backward if two_d else F.batch_norm_backward
    holder = {}

    def ref(x, weight=None, bias=None, running_mean=None, running_var=None, nbt=None):
        trm = running_mean.clone() if running else None
        trv = running_var.clone() if running else None
        mom = momentum if momentum is not None else (1.0 / int(nbt) if nbt is not None else 0.1)
        out = TF.batch_norm(x, trm, trv, weight, bias, training=training, momentum=mom, eps=eps)
        holder["rm"], holder["rv"] = trm, trv
        return out

    def fwd(x, weight=None, bias=None, running_mean=None, running_var=None, nbt=None):
        xx = to_last(x, 1) if fmt == "NHWC" else x
        kw = dict(running_mean=running_mean, running_var=running_var) if running else {}
        if momentum is None and training:
            kw["num_batches_tracked"] = nbt
        out, cache = fwd_fn(xx, weight, bias, training=training, momentum=momentum, eps=eps, data_format=fmt, **kw)
        return (from_last(out, 1) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, 1) if fmt == "NHWC" else dout
        dx, dw_, db = bwd_fn(d, cache)
        return dict(x=from_last(dx, 1) if fmt == "NHWC" else dx, weight=dw_, bias=db)

    def extra(ref_rest, out, cache):
        if not running:
            return []
        if ref_rest is None:
            return [("running_mean", cache.running_mean, None), ("running_var", cache.running_var, None)]
        return [("running_mean", cache.running_mean, holder["rm"].numpy()),
                ("running_var", cache.running_var, holder["rv"].numpy())]

    return Case(meta, inputs, grads, ref, fwd, bwd, extra=extra)


def g_layer_norm(r):
    nd = r.randint(1, 4)
    shape = tuple(r.randint(1, 5) for _ in range(nd))
    k = r.randint(1, nd)
    ns = shape[nd - k:]
    normalized_shape = ns[0] if k == 1 and r.random() < 0.5 else ns
    weight, bias = r.random() < 0.6, r.random() < 0.5
    eps = r.choice([1e-5, 1e-2])
    x = randn(r, shape) * r.choice([1, 300])
    x = sprinkle(r, x, 0.05) if r.random() < 0.1 else x
    inputs = dict(x=x)
    if weight:
        inputs["weight"] = randn(r, ns)
    if bias:
        inputs["bias"] = randn(r, ns)
    meta = dict(x=shape, normalized_shape=normalized_shape, weight=weight, bias=bias, eps=eps)

    def ref(x, weight=None, bias=None):
        return TF.layer_norm(x, normalized_shape if isinstance(normalized_shape, tuple) else (normalized_shape,),
                             weight, bias, eps)

    def fwd(x, weight=None, bias=None):
        return F.layer_norm_forward(x, normalized_shape, weight, bias, eps)

    def bwd(dout, cache):
        dx, dw_, db = F.layer_norm_backward(dout, cache)
        return dict(x=dx, weight=dw_, bias=db)

    return Case(meta, inputs, list(inputs), ref, fwd, bwd)


def g_group_norm(r):
    G = r.randint(1, 4)
    C = G * r.randint(1, 3)
    N = r.choice([1, 2, 3])
    shape = (N, C) + tuple(r.randint(1, 4) for _ in range(r.choice([0, 1, 2, 2])))
    affine = r.random() < 0.6
    eps = r.choice([1e-5, 1e-2])
    fmt = r.choice(["NCHW", "NHWC"])
    x = randn(r, shape) * r.choice([1, 100])
    x = sprinkle(r, x, 0.05) if r.random() < 0.1 else x
    inputs = dict(x=x)
    if affine:
        inputs["weight"] = randn(r, (C,))
        if r.random() < 0.8:
            inputs["bias"] = randn(r, (C,))
    meta = dict(x=shape, G=G, affine=affine, eps=eps, fmt=fmt, bias="bias" in inputs)

    def ref(x, weight=None, bias=None):
        if x.shape[0] == 1 and x[0].numel() == G:  # semantics.md groupnorm-one-value: xpcnn gives the bias
            return TF.group_norm(torch.cat([x, x]), G, weight, bias, eps)[:1]
        return TF.group_norm(x, G, weight, bias, eps)

    def fwd(x, weight=None, bias=None):
        xx = to_last(x, 1) if fmt == "NHWC" else x
        out, cache = F.group_norm_forward(xx, G, weight, bias, eps, data_format=fmt)
        return (from_last(out, 1) if fmt == "NHWC" else out), cache

    def bwd(dout, cache):
        d = to_last(dout, 1) if fmt == "NHWC" else dout
        dx, dw_, db = F.group_norm_backward(d, cache)
        return dict(x=from_last(dx, 1) if fmt == "NHWC" else dx, weight=dw_, bias=db)

    return Case(meta, inputs, list(inputs), ref, fwd, bwd)


def _elu_ref(x, alpha):
    return torch.stack([TF.elu(e, alpha) for e in x.reshape(-1)]).reshape(x.shape) if x.numel() else TF.elu(x, alpha)


ACTS = {
    "relu": (lambda o: TF.relu, lambda r: {}),
    "leaky_relu": (lambda o: (lambda x: TF.leaky_relu(x, o["negative_slope"])),
                   lambda r: dict(negative_slope=r.choice([0.01, 0.2, -0.5, 1.5, 0.0]))),
    "sigmoid": (lambda o: torch.sigmoid, lambda r: {}),
    "tanh": (lambda o: torch.tanh, lambda r: {}),
    "arctan": (lambda o: torch.atan, lambda r: {}),
    "gelu": (lambda o: (lambda x: TF.gelu(x, approximate=o["approximate"])),
             lambda r: dict(approximate=r.choice(["none", "tanh"]))),
    "silu": (lambda o: TF.silu, lambda r: {}),
    "elu": (lambda o: (lambda x: _elu_ref(x, o["alpha"])), lambda r: dict(alpha=r.choice([1.0, 0.5, 2.0, 0.0]))),
}


def g_act(name):
    def g(r):
        tfn, opt = ACTS[name]
        o = opt(r)
        shape = tuple(r.randint(1, 5) for _ in range(r.randint(0, 4)))
        x = randn(r, shape) * r.choice([1, 5, 50])
        if r.random() < 0.15:
            x = np.round(x)  # exact zeros
        nonfinite = r.random() < 0.3
        if nonfinite and x.ndim:
            x = sprinkle(r, x, 0.2)
        fn = tfn(o)
        meta = dict(x=shape, **o)

        def ref(x):
            return fn(x)

        def fwd(x):
            return getattr(F, f"{name}_forward")(x, **o)

        def bwd(dout, cache):
            return dict(x=getattr(F, f"{name}_backward")(dout, cache))

        return Case(meta, dict(x=x), ["x"], ref, fwd, bwd, nonfinite=nonfinite)

    return g


def g_linear(r):
    fin, fout = r.randint(1, 6), r.randint(1, 6)
    lead = r.choice([(), (1,), (r.randint(1, 4),), (2, 3), (0,)])
    bias = r.random() < 0.6
    x, w, b = randn(r, lead + (fin,)), randn(r, (fout, fin)), randn(r, (fout,))
    nonfinite = r.random() < 0.1
    if nonfinite:
        x = sprinkle(r, x)
    inputs = dict(x=x, weight=w) | (dict(bias=b) if bias else {})
    meta = dict(x=x.shape, w=w.shape, bias=bias)

    def bwd(dout, cache):
        dx, dw_, db = F.linear_backward(dout, cache)
        return dict(x=dx, weight=dw_, bias=db)

    return Case(meta, inputs, list(inputs), lambda x, weight, bias=None: TF.linear(x, weight, bias),
                lambda x, weight, bias=None: F.linear_forward(x, weight, bias), bwd, nonfinite=nonfinite)


def g_flatten(r):
    nd = r.randint(1, 5)
    shape = tuple(r.randint(1, 4) for _ in range(nd))
    s = r.randint(-nd, nd - 1)
    e = r.randint(-nd, nd - 1)
    fmt = r.choice(["NCHW", "NHWC"])
    x = randn(r, shape)
    meta = dict(x=shape, start=s, end=e, fmt=fmt)
    return Case(meta, dict(x=x), ["x"], lambda x: torch.flatten(x, s, e),
                lambda x: F.flatten_forward(x, s, e, data_format=fmt),
                lambda dout, cache: dict(x=F.flatten_backward(dout, cache)))


def g_dropout(r):
    p = r.choice([0.0, 0.0, 1.0])
    shape = tuple(r.randint(1, 4) for _ in range(r.randint(1, 4)))
    x = randn(r, shape)
    meta = dict(x=shape, p=p)
    return Case(meta, dict(x=x), ["x"], lambda x: TF.dropout(x, p, training=True),
                lambda x: F.dropout_forward(x, p, seed=r.randrange(100)),
                lambda dout, cache: dict(x=F.dropout_backward(dout, cache)))


def g_cross_entropy(r):
    C = r.randint(1, 6)
    form = r.choice(["2d", "2d", "1d", "spatial"])
    N = r.choice([1, 2, 4])
    if form == "2d":
        shape, tshape = (N, C), (N,)
    elif form == "1d":
        shape, tshape = (C,), ()
    else:
        shape, tshape = (N, C, r.randint(1, 3), r.randint(1, 3)), None
        tshape = (N,) + shape[2:]
    logits = randn(r, shape) * r.choice([1, 5])
    nonfinite = r.random() < 0.05
    if nonfinite:
        logits = sprinkle(r, logits, 0.05)
    prob = r.random() < 0.25
    ignore_index = r.choice([-100, -100, 0, 1, -1, 3])
    ls = r.choice([0.0, 0.0, 0.1, 0.5, 1.0])
    reduction = r.choice(["none", "sum", "mean"])
    weighted = r.random() < 0.4
    nr = np.random.default_rng(r.randrange(2**32))
    inputs = dict(logits=logits)
    if prob:
        t = nr.random(shape)
        t = t / t.sum(axis=0 if form == "1d" else 1, keepdims=True)
        inputs["target"] = t
        grads = ["logits", "target"]
    else:
        t = nr.integers(0, C, tshape)
        if r.random() < 0.4 and t.size:
            t = np.where(nr.random(tshape) < 0.4, ignore_index, t)
        inputs["target"] = t.astype(r.choice([np.int64, np.int64, np.int32, np.uint8]) if (t >= 0).all()
                                    else np.int64)
        grads = ["logits"]
    w = np.abs(randn(r, (C,))) + 0.1 if weighted else None
    if weighted:
        inputs["weight"] = w
    opts = dict(ignore_index=ignore_index, label_smoothing=ls, reduction=reduction)
    meta = dict(logits=shape, prob=prob, weighted=weighted, target=(inputs["target"].tolist() if not prob else "p"),
                **opts)

    def ref(logits, target, weight=None):
        return TF.cross_entropy(logits, target if prob else target.long(), weight=weight, **opts)

    def fwd(logits, target, weight=None):
        return F.softmax_cross_entropy_forward(logits, target, weight=weight, **opts)

    def bwd(dout, cache):
        g = F.softmax_cross_entropy_backward(dout, cache, target_grad=prob)
        if prob:
            return dict(logits=g[0], target=g[1])
        return dict(logits=g[0] if isinstance(g, tuple) else g)

    return Case(meta, inputs, grads, ref, fwd, bwd, nonfinite=nonfinite)


def g_mse(r):
    shape = tuple(r.randint(1, 4) for _ in range(r.randint(0, 4)))
    reduction = r.choice(["none", "sum", "mean"])
    p, t = randn(r, shape), randn(r, shape)
    meta = dict(shape=shape, reduction=reduction)

    def bwd(dout, cache):
        g = F.mse_loss_backward(dout, cache, target_grad=True)
        return dict(pred=g[0], target=g[1])

    return Case(meta, dict(pred=p, target=t), ["pred", "target"],
                lambda pred, target: TF.mse_loss(pred, target, reduction=reduction),
                lambda pred, target: F.mse_loss_forward(pred, target, reduction=reduction), bwd)


GENS = {
    "conv2d": g_conv2d, "conv_transpose2d": g_conv_transpose2d, "max_pool2d": g_max_pool2d,
    "avg_pool2d": g_avg_pool2d, "adaptive_avg_pool2d": g_adaptive("avg"), "adaptive_max_pool2d": g_adaptive("max"),
    "interpolate": g_interpolate, "batch_norm": g_batch_norm, "layer_norm": g_layer_norm, "group_norm": g_group_norm,
    **{n: g_act(n) for n in ACTS}, "linear": g_linear, "flatten": g_flatten, "dropout": g_dropout,
    "cross_entropy": g_cross_entropy, "mse_loss": g_mse,
}


# ---------------------------------------------------------------------------------------------------- runner
class Mismatch(Exception):
    pass


def compare(name, mine, theirs, tol):
    if mine is None:
        raise Mismatch(f"{name}: xpcnn gave None")
    from xpcnn._host import to_numpy
    mine = to_numpy(mine) if not isinstance(mine, (np.ndarray, np.generic, float, int)) else np.asarray(mine)
    theirs = to_numpy(theirs) if not isinstance(theirs, (np.ndarray, np.generic, float, int)) else np.asarray(theirs)
    if mine.shape != theirs.shape:
        raise Mismatch(f"{name}: shape {mine.shape} vs torch {theirs.shape}")
    if theirs.dtype.kind in "iu":
        if not np.array_equal(mine, theirs):
            bad = np.argwhere(mine != theirs)[:3].tolist()
            where = tuple(np.array(bad).T)
            raise Mismatch(f"{name}: differs at {bad}: {mine[where]} vs {theirs[where]}")
        return
    if mine.dtype.kind in "iub":
        raise Mismatch(f"{name}: dtype {mine.dtype}")
    m, t = mine.astype(np.float64), theirs.astype(np.float64)
    for what, f in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(f(m), f(t)):
            where = np.argwhere(f(m) != f(t))[:3].tolist()
            raise Mismatch(f"{name}: {what} at other places, e.g. {where}")
    fin = np.isfinite(t)
    scale = np.max(np.abs(t[fin]), initial=1.0)
    err = np.abs(m[fin] - t[fin])
    if err.size and np.any(err > tol * scale + tol * np.abs(t[fin])):
        i = int(np.argmax(err))
        raise Mismatch(f"{name}: max err {err.max():.3g} (scale {scale:.3g}); mine {m[fin][i]!r} torch {t[fin][i]!r}")


def run_case(case, dtype, r):
    """Run ``case`` in ``dtype`` (np.float32 or np.float64) with randomness from ``r``: "ok", "both_reject" or
    "plan_na" (a forced private conv plan that does not apply); a :class:`Mismatch` says what differs."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return _run_case(case, dtype, r)


def _run_case(case, dtype, r):
    tol = TOL[dtype]
    tin = {}
    for k, v in case.inputs.items():
        if v.dtype.kind == "f":
            tt = torch.tensor(v.astype(dtype).astype(np.float32 if case.ref32 and dtype == np.float32 else np.float64))
            if k in case.grads:
                tt.requires_grad_(True)
        else:
            tt = torch.tensor(v)
        tin[k] = tt
    try:
        res = case.ref(**tin)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        torch_error = str(e).splitlines()[0][:120]
        res = None
    if res is None:
        try:
            arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in case.inputs.items()}
            case.fwd(**arrays)
        except (ValueError, TypeError) as e:
            REJECTS.append((torch_error, str(e)[:150]))
            return "both_reject"
        except Exception as e:
            raise Mismatch(f"torch rejects ({torch_error}); xpcnn raises {type(e).__name__}: {e}")
        raise Mismatch(f"torch rejects ({torch_error}); xpcnn accepts")
    rest = ()
    if isinstance(res, tuple):
        res, *rest = res
    nr = np.random.default_rng(r.randrange(2**32))
    dout = nr.standard_normal(tuple(res.shape))
    if case.nonfinite and res.ndim and r.random() < 0.1 and dtype == np.float64:
        dout = sprinkle(r, dout, 0.05)
    dout_rounded = dout.astype(dtype).astype(np.float64)
    needs = [tin[k] for k in case.grads]
    if res.requires_grad:
        gr = torch.autograd.grad(res, needs, torch.tensor(dout_rounded).to(res.dtype), allow_unused=True)
    else:
        gr = [None] * len(needs)
    ref_grads = dict(zip(case.grads, gr))
    arrays = {k: variant(r, v.astype(dtype)) if v.dtype.kind == "f" else variant(r, v)
              for k, v in case.inputs.items()}
    snap = {k: np.array(v, copy=True) for k, v in arrays.items()}
    try:
        out, cache = case.fwd(**arrays)
    except ValueError as e:
        if " needs " in str(e) or "_plan" in str(e):  # a forced private plan that does not apply
            return "plan_na"
        if any(v.size == 0 for v in case.inputs.values()):  # PyTorch skips its checks on an empty batch
            return "empty_lax"
        raise Mismatch(f"torch accepts; xpcnn raises {type(e).__name__}: {e}")
    except Exception as e:
        raise Mismatch(f"torch accepts; xpcnn raises {type(e).__name__}: {e}")
    if getattr(out, "dtype", None) != np.dtype(dtype):
        raise Mismatch(f"out dtype {getattr(out, 'dtype', type(out))} for {np.dtype(dtype)} input")
    compare("out", out, res.detach().numpy(), tol)
    if case.extra:
        for n, mine, theirs in case.extra(rest, out, cache):
            compare(n, mine, theirs, tol)
    reduced = case.meta.get("reduction") in ("sum", "mean")
    if res.ndim:
        d = variant(r, dout.astype(dtype))
    else:
        d = float(dout) if reduced and r.random() < 0.5 else dout.astype(dtype)
    try:
        grads = case.bwd(d, cache)
    except ValueError as e:
        if " needs " in str(e) and "plan" in str(e) or "col2im" in str(e) or "correlation" in str(e):
            return "plan_na"
        raise Mismatch(f"backward raises {type(e).__name__}: {e}")
    except Exception as e:
        raise Mismatch(f"backward raises {type(e).__name__}: {e}")
    for k in case.grads:
        if ref_grads[k] is None:
            continue
        compare("d" + k, grads.get(k), ref_grads[k].numpy(), tol)
        if np.asarray(grads[k]).dtype != np.dtype(dtype):
            raise Mismatch(f"d{k} dtype {np.asarray(grads[k]).dtype}")
    for k, v in arrays.items():
        if not np.array_equal(np.asarray(v), snap[k], equal_nan=True):
            raise Mismatch(f"input {k} was mutated")
    return "ok"


def main():
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ops = sys.argv[3].split(",") if len(sys.argv) > 3 else list(GENS)
    stats = collections.Counter()
    fails = collections.defaultdict(list)
    for op in ops:
        for i in range(n):
            r = random.Random(f"{seed}-{op}-{i}")
            dtype = r.choice([np.float64, np.float64, np.float32])
            try:
                case = GENS[op](r)
            except Exception:
                traceback.print_exc()
                stats[op, "genfail"] += 1
                continue
            try:
                status = run_case(case, dtype, r)
                stats[op, status] += 1
            except Mismatch as e:
                stats[op, "FAIL"] += 1
                fails[op].append((i, np.dtype(dtype).name, str(e), case.meta))
            except Exception as e:
                stats[op, "CRASH"] += 1
                fails[op].append((i, np.dtype(dtype).name, "harness crash " + repr(e)[:300], case.meta))
    for op in ops:
        print(f"{op:22s} ok={stats[op, 'ok']:4d} both_reject={stats[op, 'both_reject']:4d} "
              f"plan_na={stats[op, 'plan_na']:3d} empty_lax={stats[op, 'empty_lax']:3d} FAIL={stats[op, 'FAIL']:3d} "
              f"CRASH={stats[op, 'CRASH']}")
    if "-v" in sys.argv[4:]:
        for (t, m), c in collections.Counter((t[:60], m[:110]) for t, m in REJECTS).most_common(40):
            print(f"  {c:4d}  torch: {t} | xpcnn: {m}")
    for op, fl in fails.items():
        print(f"==== {op}: {len(fl)} failures")
        seen = collections.Counter()
        for i, dt, msg, meta in fl:
            key = msg.split(":")[0][:60] + msg[msg.find("xpcnn"):][:50]
            seen[key] += 1
            if seen[key] <= 3:
                print(f"  [{i} {dt}] {msg[:400]}\n      {meta}")
        print("  signatures:", dict(seen))


if __name__ == "__main__":
    main()
