"""Shared test helpers: tolerances, finite differences, the PyTorch oracle and random legal configurations."""

from __future__ import annotations

import random

import array_api_compat
import numpy as np

class Backend:
    """An array namespace bound to one device. ``xp.asarray`` puts NumPy data there, ``xp.to_numpy`` brings it back;
    every other attribute is the namespace's own."""

    def __init__(self, name, namespace, device, *, float64=True):
        self.name, self.namespace, self.device, self.float64 = name, namespace, device, float64

    def __getattr__(self, attr):
        return getattr(self.namespace, attr)

    def __repr__(self):
        return self.name

    def float_dtypes(self):
        """The floating dtypes this device supports, as (namespace dtype, NumPy dtype) pairs."""
        pairs = [(self.namespace.float32, np.float32)]
        if self.float64:
            pairs.append((self.namespace.float64, np.float64))
        return pairs

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is None:
            dtype = getattr(self.namespace, str(a.dtype))
        if self.name.startswith("array_api_strict"):
            a = self.namespace.asarray(a, dtype=dtype)  # on the default CPU device, then moved
            return a.to_device(self.device)
        if self.name == "dask":
            a = self.namespace.asarray(a, dtype=dtype)
            return a.rechunk({0: 1}) if a.ndim else a  # chunked along the batch axis only
        return self.namespace.asarray(a, dtype=dtype, device=self.device)

    def to_numpy(self, a):
        if self.name.startswith("array_api_strict"):
            import array_api_strict

            a = a.to_device(array_api_strict.Device("CPU_DEVICE"))
        elif self.name == "torch":
            a = a.detach().cpu()
        elif self.name == "cupy":
            a = a.get()
        elif self.name == "dask":
            a = a.compute()
        return np.asarray(a)

    def assert_on_backend(self, a, dtype):
        """``a`` belongs to this backend's namespace, lives on its device and has ``dtype``."""
        assert array_api_compat.array_namespace(a) is self.namespace, f"{type(a)} is not from {self.name}"
        assert array_api_compat.device(a) == self.device, f"{array_api_compat.device(a)} != {self.device}"
        assert a.dtype == dtype, f"{a.dtype} != {dtype}"


def strict_backend(device="device1"):
    """array-api-strict on one of its devices (its API version is pinned by conftest)."""
    import array_api_strict

    return Backend(f"array_api_strict-{device}", array_api_strict, array_api_strict.Device(device))


def numpy_backend():
    return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu")


RTOL = {np.float64: 1e-9, np.float32: 2e-4}
ATOL = {np.float64: 1e-11, np.float32: 2e-5}


def assert_close(xp, actual, expected, np_dtype, *, dtype=None):
    """``actual`` (a backend array) lives on xp's device with ``dtype`` and equals ``expected`` (NumPy)."""
    xp.assert_on_backend(actual, dtype if dtype is not None else getattr(xp.namespace, np.dtype(np_dtype).name))
    scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0)
    np.testing.assert_allclose(xp.to_numpy(actual), expected, rtol=RTOL[np_dtype], atol=ATOL[np_dtype] * scale)


def numerical_gradient(f, x, dout, eps=1e-6):
    """Gradient of ``sum(f(x) * dout)`` with respect to ``x`` by central differences (float64 NumPy)."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        shifted = []
        for sign in (1.0, -1.0):
            xs = x.copy()
            xs.flat[i] += sign * eps
            shifted.append(np.sum(f(xs) * dout))
        grad.flat[i] = (shifted[0] - shifted[1]) / (2 * eps)
    return grad


def torch_reference(torch, fn, inputs: dict, rng):
    """Run ``fn(**inputs)`` in float64 PyTorch, then autograd with a random upstream gradient ``dout``.

    Floating NumPy inputs require grad, others (integer targets) don't; None stays None.
    Returns (out, {name: grad}, dout) as NumPy arrays.
    """
    tensors = {
        name: None if value is None else torch.tensor(value, requires_grad=np.issubdtype(value.dtype, np.floating))
        for name, value in inputs.items()
    }
    out = fn(**tensors)
    dout = rng.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(dout))
    grads = {name: t.grad.numpy() for name, t in tensors.items() if t is not None and t.grad is not None}
    return out.detach().numpy(), grads, dout


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
