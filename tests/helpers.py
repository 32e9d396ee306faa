"""Shared test helpers: tolerances, finite differences, the PyTorch oracle and random legal configurations."""

from __future__ import annotations

import random

import array_api_compat
import numpy as np

# The backend matrix, assert_close's checks and the finite differences are the public toolkit's (xpcnn.testing);
# these names stay importable from here, with the signatures the tests use.
from xpcnn.testing import Backend, numerical_gradient, numpy_backend, strict_backend  # noqa: E402,F401
from xpcnn.testing import assertions as _assertions  # noqa: E402
from xpcnn.testing.gradients import torch_autograd as _torch_autograd  # noqa: E402

RTOL, ATOL = _assertions.RTOL, _assertions.ATOL


def assert_close(xp, actual, expected, np_dtype, *, dtype=None):
    """``actual`` (a backend array) lives on xp's device with ``dtype`` (``np_dtype``'s by default) and equals
    ``expected`` (NumPy) within the tolerances for ``np_dtype``."""
    rtol, atol = _assertions.default_tolerances(np_dtype, np.asarray(expected))
    _assertions.assert_close(actual, expected, backend=xp, dtype=np_dtype if dtype is None else dtype, rtol=rtol,
                             atol=atol)


def torch_reference(torch, fn, inputs: dict, rng):
    """Run ``fn(**inputs)`` in float64 PyTorch, then autograd with a random upstream gradient ``dout``.

    Floating NumPy inputs require grad, others (integer targets) don't; None stays None.
    Returns (out, {name: grad}, dout) as NumPy arrays.
    """
    names = list(inputs)
    out, grads, dout = _torch_autograd(lambda *args: fn(**dict(zip(names, args))), list(inputs.values()), {}, rng)
    return out, {names[i]: grad for i, grad in grads.items()}, dout


def max_pool_input(kind, shape, rng):
    """Max-pool test input: "normal" values, or small integers (ties everywhere) alone ("ties"), with NaN ("nan")
    or with -inf ("-inf": the first plane entirely)."""
    if kind == "normal":
        return rng.standard_normal(shape)
    x = rng.integers(0, 3, shape).astype(np.float64)
    if kind == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    elif kind == "-inf":
        x[rng.random(shape) < 0.4] = -np.inf
        if x.size:
            x[0, 0] = -np.inf
    return x


def out_size(n, k, s, p, d=1, ceil_mode=False, pad_after=None):
    """PyTorch's output size (pooling's ceil rule included); < 1 means illegal."""
    pad_after = p if pad_after is None else pad_after
    span = d * (k - 1) + 1
    if n + p + pad_after < span:
        return 0
    out = (n + p + pad_after - span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def conv_configs(count, seed=0):
    """Random legal conv2d configurations: non-square sizes, strides and kernels, padding int/pair/same/valid,
    dilation, groups (depthwise too), with and without bias, (H + 2p - k) % s != 0 included."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        groups = rng.choice([1, 1, 2, 3])
        depthwise = groups > 1 and rng.random() < 0.3
        cg = 1 if depthwise else rng.randint(1, 3)
        og = rng.randint(1, 2)
        kernel = (rng.randint(1, 4), rng.randint(1, 4))
        size = (rng.randint(1, 9), rng.randint(1, 9))
        dilation = rng.choice([1, 1, 2, (1, 2), (2, 1)])
        padding = rng.choice([0, 1, 2, (1, 0), (0, 2), "same", "valid"])
        stride = 1 if padding == "same" else rng.choice([1, 2, 3, (2, 1), (1, 3)])
        if padding != "same":
            pads = (0, 0) if padding == "valid" else _pair(padding)
            if min(out_size(n, k, s, p, d) for n, k, s, p, d in zip(size, kernel, _pair(stride), pads, _pair(dilation))) < 1:
                continue
        configs.append(
            dict(
                x_shape=(rng.randint(1, 3), groups * cg, *size),
                w_shape=(groups * og, cg, *kernel),
                bias=rng.random() < 0.7,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
            )
        )
    return configs


def conv_transpose_out_size(n, k, s, p, d, op):
    """PyTorch's transposed-convolution output size; < 1 means illegal."""
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


def conv_transpose_configs(count, seed=0):
    """Random legal conv_transpose2d configurations: non-square sizes, strides, kernels, padding and dilation,
    output_padding up to its bound (below the stride or the dilation: rows no window reaches included), groups
    (depthwise too), with and without bias; int and pair arguments."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        groups = rng.choice([1, 1, 2, 3])
        depthwise = groups > 1 and rng.random() < 0.3
        cg = 1 if depthwise else rng.randint(1, 3)
        og = rng.randint(1, 2)
        kernel = (rng.randint(1, 4), rng.randint(1, 4))
        size = (rng.randint(1, 7), rng.randint(1, 7))
        stride = rng.choice([1, 2, 3, (2, 1), (1, 3)])
        dilation = rng.choice([1, 1, 2, (1, 2), (2, 1), 3])
        padding = rng.choice([0, 0, 1, 2, (1, 0), (0, 2)])
        bounds = [max(s, d) for s, d in zip(_pair(stride), _pair(dilation))]
        output_padding = tuple(rng.randint(0, b - 1) for b in bounds)
        if output_padding[0] == output_padding[1] and rng.random() < 0.5:
            output_padding = output_padding[0]
        sizes = [conv_transpose_out_size(*args) for args in
                 zip(size, kernel, _pair(stride), _pair(padding), _pair(dilation), _pair(output_padding))]
        if min(sizes) < 1:
            continue
        configs.append(
            dict(
                x_shape=(rng.randint(1, 3), groups * cg, *size),
                w_shape=(groups * cg, og, *kernel),
                bias=rng.random() < 0.7,
                stride=stride,
                padding=padding,
                output_padding=output_padding,
                dilation=dilation,
                groups=groups,
            )
        )
    return configs

def pool_configs(count, seed=0, *, with_dilation=True):
    """Random legal pooling configurations: kernel, stride (None too), padding up to kernel // 2, dilation,
    ceil_mode; non-square, overlapping and stride > kernel included."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kernel = rng.choice([1, 2, 3, 4, (2, 3), (3, 1), (1, 2)])
        stride = rng.choice([None, 1, 2, 3, (1, 2), (3, 1), 5])
        padding = tuple(rng.randint(0, k // 2) for k in _pair(kernel))
        padding = padding[0] if padding[0] == padding[1] and rng.random() < 0.5 else padding
        dilation = rng.choice([1, 1, 1, 2, (1, 2)]) if with_dilation else 1
        ceil_mode = rng.random() < 0.4
        size = (rng.randint(1, 9), rng.randint(1, 9))
        strides = _pair(kernel) if stride is None else _pair(stride)
        sizes = [
            out_size(n, k, s, p, d, ceil_mode)
            for n, k, s, p, d in zip(size, _pair(kernel), strides, _pair(padding), _pair(dilation))
        ]
        if min(sizes) < 1:
            continue
        config = dict(x_shape=(rng.randint(1, 3), rng.randint(1, 3), *size), kernel_size=kernel, stride=stride,
                      padding=padding, ceil_mode=ceil_mode)
        if with_dilation:
            config["dilation"] = dilation
        configs.append(config)
    return configs


def config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items()).replace(" ", "")
