"""Layer objects: thin wrappers over :mod:`xpcnn.functional`, with constructor arguments as in ``torch.nn``.

Layers with parameters take ``xp`` (an array library: ``numpy`` by default, ``cupy``, ``torch``...), ``device``,
``dtype`` (float32 by default) and ``seed`` (the global seed by default, see :func:`xpcnn.nn.manual_seed`).
"""

from __future__ import annotations

import math

from .. import functional as F
from .._validation import as_int, int_pair
from ..functional.interpolate import interpolate_options
from ..functional.pooling import adaptive_output_size
from .init import next_seed, resolve, uniform_parameter
from .module import Module, Parameter

__all__ = [
    "Conv2d",
    "Linear",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Upsample",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Arctan",
    "Flatten",
    "Dropout",
    "BatchNorm2d",
]


def _positive(value, name: str) -> int:
    value = as_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class _Affine(Module):
    """A layer with a weight and an optional bias drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch."""

    def _init_parameters(self, weight_shape, fan_in, bias, xp, device, dtype, seed):
        xp, device, dtype = resolve(xp, device, dtype)
        seed = next_seed() if seed is None else seed
        bound = 1.0 / math.sqrt(fan_in)
        common = dict(xp=xp, device=device, dtype=dtype, seed=seed)
        self.weight = Parameter(uniform_parameter(weight_shape, bound, stream=0, **common))
        self.bias = Parameter(uniform_parameter((weight_shape[0],), bound, stream=1, **common)) if bias else None

    def _bias_data(self):
        return None if self.bias is None else self.bias.data

    def _accumulate(self, dweight, dbias) -> None:
        self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)


class Conv2d(_Affine):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 *, xp=None, device=None, dtype=None, seed=None, workspace_limit=None):
        super().__init__()
        in_channels, out_channels = _positive(in_channels, "in_channels"), _positive(out_channels, "out_channels")
        groups = _positive(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = int_pair(kernel_size, "kernel_size", minimum=1)
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.workspace_limit = workspace_limit
        shape = (out_channels, in_channels // groups, kh, kw)
        self._init_parameters(shape, in_channels // groups * kh * kw, bias, xp, device, dtype, seed)

    def forward(self, x):
        out, self._cache = F.conv2d_forward(x, self.weight.data, self._bias_data(), **self.options,
                                            workspace_limit=self.workspace_limit)
        return out

    def backward(self, dout, *, input_grad=True):
        dx, dweight, dbias = F.conv2d_backward(dout, self._take_cache(), input_grad=input_grad)
        self._accumulate(dweight, dbias)
        return dx

    def __repr__(self):
        o, i, kh, kw = self.weight.data.shape
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"Conv2d({i * self.options['groups']}, {o}, kernel_size={(kh, kw)}, {options}, bias={self.bias is not None})"


class Linear(_Affine):
    def __init__(self, in_features, out_features, bias=True, *, xp=None, device=None, dtype=None, seed=None):
        super().__init__()
        in_features, out_features = _positive(in_features, "in_features"), _positive(out_features, "out_features")
        self._init_parameters((out_features, in_features), in_features, bias, xp, device, dtype, seed)

    def forward(self, x):
        out, self._cache = F.linear_forward(x, self.weight.data, self._bias_data())
        return out

    def backward(self, dout, *, input_grad=True):
        dx, dweight, dbias = F.linear_backward(dout, self._take_cache(), input_grad=input_grad)
        self._accumulate(dweight, dbias)
        return dx

    def __repr__(self):
        out_features, in_features = self.weight.data.shape
        return f"Linear({in_features}, {out_features}, bias={self.bias is not None})"


class _Stateless(Module):
    """A layer without parameters: ``forward_fn(x, **options) -> (out, cache)``, ``backward_fn(dout, cache)``."""

    forward_fn = backward_fn = None

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, x):
        out, self._cache = type(self).forward_fn(x, **self.options)
        return out

    def backward(self, dout, *, input_grad=True):
        cache = self._take_cache()
        return type(self).backward_fn(dout, cache) if input_grad else None

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


class MaxPool2d(_Stateless):
    forward_fn, backward_fn = F.max_pool2d_forward, F.max_pool2d_backward

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, workspace_limit=None):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                         ceil_mode=ceil_mode, workspace_limit=workspace_limit)


class AvgPool2d(_Stateless):
    forward_fn, backward_fn = F.avg_pool2d_forward, F.avg_pool2d_backward

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, workspace_limit=None):
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, divisor_override=divisor_override,
                         workspace_limit=workspace_limit)


class AdaptiveAvgPool2d(_Stateless):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d`` (``None`` keeps an axis's size)."""

    forward_fn, backward_fn = F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward

    def __init__(self, output_size):
        adaptive_output_size(output_size)
        super().__init__(output_size=output_size)


class AdaptiveMaxPool2d(_Stateless):
    """Max pooling to a fixed output size, as ``torch.nn.AdaptiveMaxPool2d`` (the argmax positions are in the
    forward pass's cache: ``F.adaptive_max_pool2d_forward(x, output_size)[1].indices``)."""

    forward_fn, backward_fn = F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward

    def __init__(self, output_size):
        adaptive_output_size(output_size)
        super().__init__(output_size=output_size)


class Upsample(_Stateless):
    """Resizing by ``F.interpolate_forward``, as ``torch.nn.Upsample``: a ``size`` or a ``scale_factor``, mode
    ``nearest``, ``nearest-exact`` or ``bilinear`` (``align_corners`` for bilinear only). The options are checked
    here; the sizes when x arrives."""

    forward_fn, backward_fn = F.interpolate_forward, F.interpolate_backward

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        _, scales, _, _ = interpolate_options(size, scale_factor, mode, align_corners)
        if scales is not None:  # kept as floats, as PyTorch
            scale_factor = scales if isinstance(scale_factor, (tuple, list)) else scales[0]
        super().__init__(size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)

    def __repr__(self):
        o = self.options
        shape = f"scale_factor={o['scale_factor']!r}" if o["scale_factor"] is not None else f"size={o['size']!r}"
        corners = "" if o["align_corners"] is None else f", align_corners={o['align_corners']!r}"
        return f"Upsample({shape}, mode={o['mode']!r}{corners})"


class ReLU(_Stateless):
    forward_fn, backward_fn = F.relu_forward, F.relu_backward


class LeakyReLU(_Stateless):
    forward_fn, backward_fn = F.leaky_relu_forward, F.leaky_relu_backward

    def __init__(self, negative_slope=0.01):
        super().__init__(negative_slope=negative_slope)


class Sigmoid(_Stateless):
    forward_fn, backward_fn = F.sigmoid_forward, F.sigmoid_backward


class Tanh(_Stateless):
    forward_fn, backward_fn = F.tanh_forward, F.tanh_backward


class Arctan(_Stateless):
    forward_fn, backward_fn = F.arctan_forward, F.arctan_backward


class Flatten(_Stateless):
    forward_fn, backward_fn = F.flatten_forward, F.flatten_backward

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__(start_dim=start_dim, end_dim=end_dim)


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode (scaling the rest by 1/(1-p)); identity in eval.

    Masks are reproducible: the n-th training forward pass of a Dropout built with ``seed`` always uses the same
    mask, on every backend.
    """

    def __init__(self, p=0.5, *, seed=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p, self.seed, self.calls = p, next_seed() if seed is None else seed, 0

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._cache = "identity"
            return x
        out, self._cache = F.dropout_forward(x, self.p, seed=self.seed, stream=self.calls)
        self.calls += 1
        return out

    def backward(self, dout, *, input_grad=True):
        cache = self._take_cache()
        if not input_grad:
            return None
        return dout if cache == "identity" else F.dropout_backward(dout, cache)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``: batch statistics in training
    (running statistics updated with ``momentum``, the variance unbiased), running statistics in eval."""

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, xp=None, device=None, dtype=None):
        super().__init__()
        num_features = _positive(num_features, "num_features")
        xp, device, dtype = resolve(xp, device, dtype)
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(xp.ones(num_features, dtype=dtype, device=device)) if affine else None
        self.bias = Parameter(xp.zeros(num_features, dtype=dtype, device=device)) if affine else None
        self.running_mean = xp.zeros(num_features, dtype=dtype, device=device)
        self.running_var = xp.ones(num_features, dtype=dtype, device=device)

    def forward(self, x):
        out, self._cache = F.batch_norm2d_forward(
            x,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            running_mean=self.running_mean,
            running_var=self.running_var,
            training=self.training,
            eps=self.eps,
        )
        if self.training:
            m = self.momentum
            self.running_mean = (1.0 - m) * self.running_mean + m * self._cache.batch_mean
            self.running_var = (1.0 - m) * self.running_var + m * self._cache.batch_var
        return out

    def backward(self, dout, *, input_grad=True):
        dx, dweight, dbias = F.batch_norm2d_backward(dout, self._take_cache())
        if self.weight is not None:
            self.weight.accumulate(dweight)
            self.bias.accumulate(dbias)
        return dx if input_grad else None

    def __repr__(self):
        return f"BatchNorm2d({self.running_mean.shape[0]}, eps={self.eps}, momentum={self.momentum})"
