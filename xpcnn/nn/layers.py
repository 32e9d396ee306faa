"""Layer objects: thin wrappers over :mod:`xpcnn.functional`, with constructor arguments as in ``torch.nn``.

Layers with parameters take ``xp`` (an array library: ``numpy`` by default, ``cupy``, ``torch``...), ``device``,
``dtype`` (float32 by default) and ``seed`` (the global seed by default, see :func:`xpcnn.nn.manual_seed`).
"""

from __future__ import annotations

import math

from .. import functional as F
from .._validation import as_bool, as_float, as_int, int_pair, namespace_and_device
from .._windows import is_channels_last
from ..config import resolve_workspace_limit
from ..functional.activations import check_approximate
from ..functional.conv import ALGORITHMS as _CONV_ALGORITHMS
from ..functional.conv import conv_options, conv_transpose_options
from ..functional.conv import data_format_checked as _conv_data_format
from ..functional.dropout import check_probability
from ..functional.interpolate import interpolate_options
from ..functional.normalization import NCHW, as_normalized_shape, channel_axis, check_data_format, layout_name
from ..functional.pooling import adaptive_output_size, avg_pool_options, pool_options
from .init import counter_dtype, next_seed, resolve, uniform_parameter
from .module import Module, Parameter

__all__ = [
    "Conv2d",
    "ConvTranspose2d",
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
    "GELU",
    "SiLU",
    "ELU",
    "Identity",
    "Flatten",
    "Dropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "GroupNorm",
]


def _positive(value, name: str) -> int:
    value = as_int(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_workspace_limit(nbytes) -> None:
    if nbytes is not None:
        resolve_workspace_limit(nbytes)


class _Affine(Module):
    """A layer with a weight and an optional bias drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch."""

    def _init_parameters(self, weight_shape, fan_in, bias, xp, device, dtype, seed, *, out_features=None):
        """``out_features``: the bias's length, weight_shape[0] by default."""
        xp, device, dtype = resolve(xp, device, dtype)
        seed = next_seed() if seed is None else as_int(seed, "seed")
        bias = as_bool(bias, "bias")
        bound = 1.0 / math.sqrt(fan_in)
        common = dict(xp=xp, device=device, dtype=dtype, seed=seed)
        bias_shape = (weight_shape[0] if out_features is None else out_features,)
        self.weight = Parameter(uniform_parameter(weight_shape, bound, stream=0, **common))
        self.bias = Parameter(uniform_parameter(bias_shape, bound, stream=1, **common)) if bias else None

    def _bias_data(self):
        return None if self.bias is None else self.bias.data

    def _accumulate(self, dweight, dbias) -> None:
        self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)


class Conv2d(_Affine):
    """2-D convolution (cross-correlation), as ``torch.nn.Conv2d``: a thin layer over
    :func:`xpcnn.functional.conv2d_forward` and :func:`xpcnn.functional.conv2d_backward`.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and the output (>= 1, both divisible by ``groups``). Input ``(N, in_channels, H, W)``
        (or ``(N, H, W, in_channels)`` with ``data_format="NHWC"``), output ``(N, out_channels, out_h, out_w)``
        (likewise channels-last); an unbatched input, (C, H, W) or (H, W, C), gives an unbatched output.
    kernel_size : int or (height, width) pair
        The window, >= 1 on each axis.
    stride, dilation : int or (height, width) pair, >= 1
    padding : int, (height, width) pair, ``"valid"`` or ``"same"``
        Zeros added on both sides of each axis; ``"same"`` needs stride 1 (an odd total pad puts the extra
        row/column at the bottom/right, as PyTorch).
    groups : int
        Splits the channels into ``groups`` independent convolutions (divides in_channels and out_channels).
    bias : bool
        Learn a bias ``(out_channels,)``. The weight is ``(out_channels, in_channels // groups, kh, kw)``
        (PyTorch's layout, whatever the data format). Both are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        ``fan_in = in_channels // groups * kh * kw``, as PyTorch.
    xp, device, dtype, seed : keyword only
        The array library (a module or its name; NumPy by default), device, floating dtype (float32 by default)
        and initialisation seed (the global one, :func:`xpcnn.nn.manual_seed`, by default) of the parameters:
        see "Common arguments" in :class:`xpcnn.nn.Module`.
    workspace_limit : int, optional, keyword only
        Bytes for one batch piece's working arrays, passed to every call (default: the global setting of
        :mod:`xpcnn.config`, else the device profile's).
    data_format : ``"NCHW"`` (default) or ``"NHWC"``, keyword only
        The layout of the input and the output (never guessed from the shapes); the weight keeps PyTorch's layout.
    algorithm : ``"auto"`` (default), ``"im2col"`` or ``"winograd"``, keyword only
        Passed to every call: the cost model's choice, never Winograd, or Winograd's F(m x m, 3 x 3) for the
        forward pass, dx and dweight (3 x 3 kernel, stride 1, dilation 1 only: other layers raise in the forward
        pass). See :func:`xpcnn.functional.conv2d_forward`.

    Raises
    ------
    ValueError
        Here: a size < 1, ``groups`` not dividing the channels, a bad kernel_size, stride, padding, dilation,
        workspace_limit, data_format or algorithm. In the forward pass: an input of another rank or channel count
        (naming ``data_format`` when the other layout would fit), a kernel larger than the padded input,
        ``"winograd"`` for another kernel, stride or dilation.
    TypeError
        A non-int size or workspace_limit, a non-floating ``dtype`` here; an input of another dtype than the
        weight in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> layer = nn.Conv2d(3, 8, kernel_size=3, padding=1, seed=0)
    >>> layer.weight.data.shape, layer.bias.data.shape
    ((8, 3, 3, 3), (8,))
    >>> out = layer(np.ones((2, 3, 5, 5), dtype=np.float32))
    >>> out.shape
    (2, 8, 5, 5)
    >>> layer.backward(np.ones_like(out)).shape, layer.weight.grad.shape
    ((2, 3, 5, 5), (8, 3, 3, 3))

    Channels-last input and output, the same weight layout:

    >>> nhwc = nn.Conv2d(3, 8, kernel_size=3, stride=2, data_format="NHWC", seed=0)
    >>> nhwc(np.ones((2, 9, 9, 3), dtype=np.float32)).shape, nhwc.weight.data.shape
    ((2, 4, 4, 8), (8, 3, 3, 3))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *, xp=None, device=None,
                 dtype=None, seed: int | None = None, workspace_limit: int | None = None, data_format: str = "NCHW",
                 algorithm: str = "auto"):
        super().__init__()
        if algorithm not in _CONV_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_CONV_ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.data_format = _conv_data_format(data_format)
        in_channels, out_channels = _positive(in_channels, "in_channels"), _positive(out_channels, "out_channels")
        groups = _positive(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = int_pair(kernel_size, "kernel_size", minimum=1)
        conv_options((kh, kw), stride, padding, dilation)  # bad settings fail here, with the op's messages
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        _check_workspace_limit(workspace_limit)
        self.workspace_limit = workspace_limit
        shape = (out_channels, in_channels // groups, kh, kw)
        self._init_parameters(shape, in_channels // groups * kh * kw, bias, xp, device, dtype, seed)

    def forward(self, x):
        out, self._cache = F.conv2d_forward(x, self.weight.data, self._bias_data(), **self.options,
                                            data_format=self.data_format, workspace_limit=self.workspace_limit,
                                            algorithm=self.algorithm)
        return out

    def backward(self, dout, *, input_grad=True):
        dx, dweight, dbias = F.conv2d_backward(dout, self._take_cache(), input_grad=input_grad)
        self._accumulate(dweight, dbias)
        return dx

    def __repr__(self):
        o, i, kh, kw = self.weight.data.shape
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        layout = "" if self.data_format == "NCHW" else f", data_format={self.data_format!r}"
        algorithm = "" if self.algorithm == "auto" else f", algorithm={self.algorithm!r}"
        return (f"Conv2d({i * self.options['groups']}, {o}, kernel_size={(kh, kw)}, {options}, "
                f"bias={self.bias is not None}{layout}{algorithm})")


class ConvTranspose2d(_Affine):
    """2-D transposed convolution, as ``torch.nn.ConvTranspose2d``: a thin layer over
    :func:`xpcnn.functional.conv_transpose2d_forward` and :func:`xpcnn.functional.conv_transpose2d_backward`
    (the input gradient of a convolution with the same weights, from the input in the place of dout).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and the output (>= 1, both divisible by ``groups``). Input ``(N, in_channels, H, W)``
        (or ``(N, H, W, in_channels)`` with ``data_format="NHWC"``), output ``(N, out_channels, Hout, Wout)``
        (likewise channels-last), ``Hout = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding_h + 1``; an
        unbatched input, (C, H, W) or (H, W, C), gives an unbatched output.
    kernel_size : int or (height, width) pair
        The window, >= 1 on each axis.
    stride, padding, dilation : int or (height, width) pair
        stride and dilation >= 1; padding >= 0, removed from both sides of the output.
    output_padding : int or (height, width) pair
        Rows and columns added to the bottom and right of the output (bias only), each smaller than the stride or
        the dilation of its axis.
    groups : int
        Splits the channels into ``groups`` independent transposed convolutions (divides both channel counts).
    bias : bool
        Learn a bias ``(out_channels,)``. The weight is ``(in_channels, out_channels // groups, kh, kw)``
        (PyTorch's layout, whatever the data format). Both are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
        PyTorch's fan_in for that layout, ``weight.shape[1] * kh * kw``.
    xp, device, dtype, seed : keyword only
        The array library (a module or its name; NumPy by default), device, floating dtype (float32 by default)
        and initialisation seed (the global one, :func:`xpcnn.nn.manual_seed`, by default) of the parameters:
        see "Common arguments" in :class:`xpcnn.nn.Module`.
    workspace_limit : int, optional, keyword only
        Bytes for one batch piece's column buffer, passed to every call (default: the global setting of
        :mod:`xpcnn.config`, else the device profile's).
    data_format : ``"NCHW"`` (default) or ``"NHWC"``, keyword only
        The layout of the input and the output (never guessed from the shapes); the weight keeps PyTorch's layout.

    Raises
    ------
    ValueError
        Here: a size < 1, ``groups`` not dividing the channels, a bad kernel_size, stride, padding, dilation,
        workspace_limit or data_format, output_padding not below the stride or dilation. In the forward pass: an
        input of another rank or channel count (naming ``data_format`` when the other layout would fit), an
        output smaller than 1 x 1.
    TypeError
        A non-int size or workspace_limit, a non-floating ``dtype`` here; an input of another dtype than the
        weight in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> layer = nn.ConvTranspose2d(8, 3, kernel_size=3, stride=2, padding=1, output_padding=1, seed=0)
    >>> layer.weight.data.shape, layer.bias.data.shape
    ((8, 3, 3, 3), (3,))
    >>> out = layer(np.ones((2, 8, 4, 4), dtype=np.float32))
    >>> out.shape
    (2, 3, 8, 8)
    >>> layer.backward(np.ones_like(out)).shape, layer.weight.grad.shape
    ((2, 8, 4, 4), (8, 3, 3, 3))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 output_padding: int | tuple[int, int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int, int] = 1, *, xp=None, device=None, dtype=None, seed: int | None = None,
                 workspace_limit: int | None = None, data_format: str = "NCHW"):
        super().__init__()
        self.data_format = _conv_data_format(data_format)
        in_channels, out_channels = _positive(in_channels, "in_channels"), _positive(out_channels, "out_channels")
        groups = _positive(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = int_pair(kernel_size, "kernel_size", minimum=1)
        conv_transpose_options(stride, padding, output_padding, dilation)  # bad settings fail here, as in the op
        self.options = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                            dilation=dilation)
        _check_workspace_limit(workspace_limit)
        self.workspace_limit = workspace_limit
        shape, fan_in = (in_channels, out_channels // groups, kh, kw), out_channels // groups * kh * kw
        self._init_parameters(shape, fan_in, bias, xp, device, dtype, seed, out_features=out_channels)

    def forward(self, x):
        out, self._cache = F.conv_transpose2d_forward(x, self.weight.data, self._bias_data(), **self.options,
                                                      data_format=self.data_format,
                                                      workspace_limit=self.workspace_limit)
        return out

    def backward(self, dout, *, input_grad: bool = True):
        dx, dweight, dbias = F.conv_transpose2d_backward(dout, self._take_cache(), input_grad=input_grad)
        self._accumulate(dweight, dbias)
        return dx

    def __repr__(self) -> str:
        i, og, kh, kw = self.weight.data.shape
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        layout = "" if self.data_format == "NCHW" else f", data_format={self.data_format!r}"
        return (f"ConvTranspose2d({i}, {og * self.options['groups']}, kernel_size={(kh, kw)}, {options}, "
                f"bias={self.bias is not None}{layout})")


class Linear(_Affine):
    """Fully connected layer, as ``torch.nn.Linear``: ``out = x @ weight.T + bias``
    (:func:`xpcnn.functional.linear_forward`).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input's and the output's last axis (>= 1). Input ``(..., in_features)``, output
        ``(..., out_features)``; any leading axes (the batch) pass through.
    bias : bool
        Learn a bias ``(out_features,)``; the weight is ``(out_features, in_features)`` (PyTorch's layout). Both
        are drawn from U(-1/sqrt(in_features), 1/sqrt(in_features)), as PyTorch.
    xp, device, dtype, seed : keyword only
        The array library (a module or its name; NumPy by default), device, floating dtype (float32 by default)
        and initialisation seed (the global one, :func:`xpcnn.nn.manual_seed`, by default) of the parameters:
        see "Common arguments" in :class:`xpcnn.nn.Module`.

    Raises
    ------
    ValueError
        A size < 1 here; an input whose last axis is not ``in_features`` in the forward pass.
    TypeError
        A non-floating ``dtype`` here; an input of another dtype than the weight in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> layer = nn.Linear(3, 2, seed=0)
    >>> layer.weight.data.shape, layer.weight.data.dtype
    ((2, 3), dtype('float32'))
    >>> out = layer(np.ones((4, 3), dtype=np.float32))
    >>> out.shape
    (4, 2)
    >>> layer.backward(np.ones_like(out)).shape, layer.weight.grad.shape
    ((4, 3), (2, 3))
    """

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
        shown = {k: v for k, v in self.options.items() if not (k == "data_format" and v == "NCHW")}  # the default
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class MaxPool2d(_Stateless):
    """Max pooling, as ``torch.nn.MaxPool2d`` (forward and backward: :func:`xpcnn.functional.max_pool2d_forward`).

    Parameters
    ----------
    kernel_size, stride, padding, dilation : int or tuple of one or two ints
        (height, width); ``stride`` defaults to ``kernel_size``; ``padding`` (implicit ``-inf``) at most half the
        kernel.
    ceil_mode : bool
        Round the output size up.
    data_format : {"NCHW", "NHWC"}
        The input's layout, (N, C, H, W) or (N, H, W, C) (3-D: one unbatched image); never guessed from shapes.
    workspace_limit : int, optional
        Bytes of temporaries per batch piece (default: :mod:`xpcnn.config`'s).

    The gradient of each window goes to its first maximum (NaN: the last NaN), as PyTorch. Bad settings raise here,
    with the functional op's messages.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.MaxPool2d(2)(np.ones((1, 3, 8, 8), dtype=np.float32)).shape
    (1, 3, 4, 4)
    >>> nn.MaxPool2d(2, data_format="NHWC")(np.ones((1, 8, 8, 3), dtype=np.float32)).shape
    (1, 4, 4, 3)
    """

    forward_fn, backward_fn = F.max_pool2d_forward, F.max_pool2d_backward

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] = 0, dilation: int | tuple[int, ...] = 1, ceil_mode: bool = False, *,
                 data_format: str = "NCHW", workspace_limit: int | None = None) -> None:
        pool_options(kernel_size, stride, padding, dilation, ceil_mode)  # bad settings fail here
        is_channels_last(data_format)
        _check_workspace_limit(workspace_limit)
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                         ceil_mode=ceil_mode, data_format=data_format, workspace_limit=workspace_limit)


class AvgPool2d(_Stateless):
    """Average pooling, as ``torch.nn.AvgPool2d`` (forward and backward: :func:`xpcnn.functional.avg_pool2d_forward`).

    Parameters
    ----------
    kernel_size, stride, padding : int or tuple of one or two ints
        (height, width); ``stride`` defaults to ``kernel_size``; ``padding`` (zeros) at most half the kernel.
    ceil_mode : bool
        Round the output size up.
    count_include_pad : bool
        Count the zero padding in the divisor (PyTorch's default True).
    divisor_override : int, optional
        Divide every window's sum by this instead.
    data_format : {"NCHW", "NHWC"}
        The input's layout, (N, C, H, W) or (N, H, W, C) (3-D: one unbatched image); never guessed from shapes.
    workspace_limit : int, optional
        Bytes of temporaries per batch piece (default: :mod:`xpcnn.config`'s).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.AvgPool2d(3, stride=1, padding=1, data_format="NHWC")(np.ones((2, 5, 5, 4))).shape
    (2, 5, 5, 4)
    """

    forward_fn, backward_fn = F.avg_pool2d_forward, F.avg_pool2d_backward

    def __init__(self, kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None, *, data_format: str = "NCHW",
                 workspace_limit: int | None = None) -> None:
        pool_options(kernel_size, stride, padding, 1, ceil_mode)  # bad settings fail here
        avg_pool_options(count_include_pad, divisor_override)
        is_channels_last(data_format)
        _check_workspace_limit(workspace_limit)
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad, divisor_override=divisor_override,
                         data_format=data_format, workspace_limit=workspace_limit)


class AdaptiveAvgPool2d(_Stateless):
    """Average pooling to a fixed output size, as ``torch.nn.AdaptiveAvgPool2d``
    (:func:`xpcnn.functional.adaptive_avg_pool2d_forward`).

    Parameters
    ----------
    output_size : int, None or tuple of two (int or None)
        The output's (height, width); ``None`` keeps that axis's size. Window i spans
        ``[floor(i * H / out_h), ceil((i + 1) * H / out_h))``, as PyTorch.
    data_format : {"NCHW", "NHWC"}
        The input's layout, (N, C, H, W) or (N, H, W, C) (3-D: one unbatched image); the output has the same.

    Raises
    ------
    ValueError
        A bad ``output_size`` or ``data_format`` here (with the functional op's messages).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.AdaptiveAvgPool2d((1, 1), data_format="NHWC")(np.ones((2, 7, 7, 16))).shape
    (2, 1, 1, 16)
    """

    forward_fn, backward_fn = F.adaptive_avg_pool2d_forward, F.adaptive_avg_pool2d_backward

    def __init__(self, output_size: int | None | tuple[int | None, int | None], *, data_format: str = "NCHW") -> None:
        adaptive_output_size(output_size)
        is_channels_last(data_format)
        super().__init__(output_size=output_size, data_format=data_format)


class AdaptiveMaxPool2d(_Stateless):
    """Max pooling to a fixed output size, as ``torch.nn.AdaptiveMaxPool2d`` (the argmax positions are in the
    forward pass's cache: ``F.adaptive_max_pool2d_forward(x, output_size)[1].indices``).

    Parameters
    ----------
    output_size : int, None or tuple of two (int or None)
        The output's (height, width); ``None`` keeps that axis's size (windows as PyTorch's).
    data_format : {"NCHW", "NHWC"}
        The input's layout, (N, C, H, W) or (N, H, W, C) (3-D: one unbatched image); the output has the same.

    Raises
    ------
    ValueError
        A bad ``output_size`` or ``data_format`` here (with the functional op's messages).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.AdaptiveMaxPool2d(3)(np.ones((2, 4, 7, 7))).shape
    (2, 4, 3, 3)
    """

    forward_fn, backward_fn = F.adaptive_max_pool2d_forward, F.adaptive_max_pool2d_backward

    def __init__(self, output_size: int | None | tuple[int | None, int | None], *, data_format: str = "NCHW") -> None:
        adaptive_output_size(output_size)
        is_channels_last(data_format)
        super().__init__(output_size=output_size, data_format=data_format)


class Upsample(_Stateless):
    """Resizing, as ``torch.nn.Upsample`` (:func:`xpcnn.functional.interpolate_forward`).

    Parameters
    ----------
    size : int or tuple of ints, optional
        The output's spatial size (height, width); give it or ``scale_factor``, not both.
    scale_factor : float or tuple of floats, optional
        The output size is ``floor(input size * scale_factor)``; the scale is used as given (as PyTorch).
    mode : {"nearest", "nearest-exact", "bilinear"}
        Interpolation mode.
    align_corners : bool, optional
        For ``"bilinear"`` only: align the corner pixels' centres (PyTorch's default False).
    data_format : {"NCHW", "NHWC"}
        The input's layout, (N, C, H, W) or (N, H, W, C); a 3-D input is a batch of 1-D signals, as in PyTorch.

    Raises
    ------
    ValueError
        Both or neither of ``size`` and ``scale_factor``, an unknown ``mode``, ``align_corners`` with a nearest
        mode: here. The sizes are checked when x arrives.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.Upsample(scale_factor=2, data_format="NHWC")(np.ones((1, 4, 4, 3))).shape
    (1, 8, 8, 3)
    """

    forward_fn, backward_fn = F.interpolate_forward, F.interpolate_backward

    def __init__(self, size: int | tuple[int, ...] | None = None, scale_factor: float | tuple[float, ...] | None = None,
                 mode: str = "nearest", align_corners: bool | None = None, *, data_format: str = "NCHW") -> None:
        _, scales, _, _ = interpolate_options(size, scale_factor, mode, align_corners)
        is_channels_last(data_format)
        if scales is not None:  # kept as floats, as PyTorch
            scale_factor = scales
        super().__init__(size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                         data_format=data_format)

    def __repr__(self):
        o = self.options
        shape = f"scale_factor={o['scale_factor']!r}" if o["scale_factor"] is not None else f"size={o['size']!r}"
        corners = "" if o["align_corners"] is None else f", align_corners={o['align_corners']!r}"
        layout = "" if o["data_format"] == "NCHW" else f", data_format={o['data_format']!r}"
        return f"Upsample({shape}, mode={o['mode']!r}{corners}{layout})"


class _Activation(_Stateless):
    """An elementwise activation. ``inplace`` (where PyTorch has it) is accepted for compatibility: xpcnn never
    writes into its input, and the output's values are the same either way."""

    def __init__(self, *, inplace=False, **options):
        super().__init__(**options)
        self.inplace = as_bool(inplace, "inplace")

    def __repr__(self):
        options = [f"{k}={v!r}" for k, v in self.options.items()] + (["inplace=True"] if self.inplace else [])
        return f"{type(self).__name__}({', '.join(options)})"


class ReLU(_Activation):
    """max(x, 0), as ``torch.nn.ReLU`` (:func:`xpcnn.functional.relu_forward`).

    Parameters
    ----------
    inplace : bool
        Accepted for compatibility with PyTorch; xpcnn never writes into its input.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.ReLU()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32))
    array([0., 0., 2.], dtype=float32)
    """

    forward_fn, backward_fn = F.relu_forward, F.relu_backward

    def __init__(self, inplace: bool = False):
        super().__init__(inplace=inplace)


class LeakyReLU(_Activation):
    """x where x > 0, else ``negative_slope * x``, as ``torch.nn.LeakyReLU``; the slope is checked here (a real
    number, not NaN), with the functional op's messages (:func:`xpcnn.functional.leaky_relu_forward`).

    Parameters
    ----------
    negative_slope : float
        The slope for x <= 0 (any real number; a non-number raises TypeError, NaN ValueError).
    inplace : bool
        Accepted for compatibility with PyTorch; xpcnn never writes into its input.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.LeakyReLU(0.1)
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32))
    array([-0.1,  0. ,  2. ], dtype=float32)
    """

    forward_fn, backward_fn = F.leaky_relu_forward, F.leaky_relu_backward

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__(negative_slope=as_float(negative_slope, "negative_slope", finite=False), inplace=inplace)


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)), as ``torch.nn.Sigmoid`` (:func:`xpcnn.functional.sigmoid_forward`).

    Parameters
    ----------
    (none)
        The layer takes no arguments.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.Sigmoid()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([0.2689, 0.5   , 0.8808], dtype=float32)
    """

    forward_fn, backward_fn = F.sigmoid_forward, F.sigmoid_backward

    def __init__(self):
        super().__init__()


class Tanh(_Activation):
    """tanh(x), as ``torch.nn.Tanh`` (:func:`xpcnn.functional.tanh_forward`).

    Parameters
    ----------
    (none)
        The layer takes no arguments.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.Tanh()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([-0.7616,  0.    ,  0.964 ], dtype=float32)
    """

    forward_fn, backward_fn = F.tanh_forward, F.tanh_backward

    def __init__(self):
        super().__init__()


class Arctan(_Activation):
    """arctan(x) (not in ``torch.nn``: ``torch.atan`` as a layer) (:func:`xpcnn.functional.arctan_forward`).

    Parameters
    ----------
    (none)
        The layer takes no arguments.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.Arctan()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([-0.7854,  0.    ,  1.1071], dtype=float32)
    """

    forward_fn, backward_fn = F.arctan_forward, F.arctan_backward

    def __init__(self):
        super().__init__()


class GELU(_Activation):
    """x * Phi(x), as ``torch.nn.GELU`` (:func:`xpcnn.functional.gelu_forward`).

    Parameters
    ----------
    approximate : {"none", "tanh"}
        ``"none"``: the exact erf form; ``"tanh"``: PyTorch's tanh approximation. Anything else raises ValueError.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.GELU()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([-0.1587,  0.    ,  1.9545], dtype=float32)
    """

    forward_fn, backward_fn = F.gelu_forward, F.gelu_backward

    def __init__(self, approximate: str = "none"):
        super().__init__(approximate=check_approximate(approximate))


class SiLU(_Activation):
    """x * sigmoid(x), as ``torch.nn.SiLU`` (:func:`xpcnn.functional.silu_forward`).

    Parameters
    ----------
    inplace : bool
        Accepted for compatibility with PyTorch; xpcnn never writes into its input.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.SiLU()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([-0.2689,  0.    ,  1.7616], dtype=float32)
    """

    forward_fn, backward_fn = F.silu_forward, F.silu_backward

    def __init__(self, inplace: bool = False):
        super().__init__(inplace=inplace)


class ELU(_Activation):
    """x where x > 0, else ``alpha * (exp(x) - 1)``, as ``torch.nn.ELU``; alpha is checked here (a real number,
    not NaN) (:func:`xpcnn.functional.elu_forward`).

    Parameters
    ----------
    alpha : float
        The scale of the negative branch (a non-number raises TypeError, NaN ValueError).
    inplace : bool
        Accepted for compatibility with PyTorch; xpcnn never writes into its input.

    Takes any shape and layout (elementwise) of a real floating dtype; the output has x's shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> act = nn.ELU()
    >>> act(np.array([-1.0, 0.0, 2.0], dtype=np.float32)).round(4)
    array([-0.6321,  0.    ,  2.    ], dtype=float32)
    """

    forward_fn, backward_fn = F.elu_forward, F.elu_backward

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__(alpha=as_float(alpha, "alpha", finite=False), inplace=inplace)


class Identity(Module):
    """Returns its input, as ``torch.nn.Identity``; its backward pass returns ``dout``.

    Parameters
    ----------
    *args, **kwargs
        Accepted and ignored, as PyTorch's.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> x = np.ones((2, 3), dtype=np.float32)
    >>> nn.Identity(54, unused=1)(x) is x
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self._cache = True
        return x

    def backward(self, dout, *, input_grad=True):
        self._take_cache()
        return dout if input_grad else None

    def __repr__(self):
        return "Identity()"


class Flatten(_Stateless):
    """Flattens axes ``start_dim..end_dim`` into one, as ``torch.nn.Flatten`` (:func:`xpcnn.functional.flatten_forward`).

    Parameters
    ----------
    start_dim, end_dim : int
        The first and last axes flattened (negative: from the end); default 1 and -1, all but the batch axis.
    data_format : {"NCHW", "NHWC"}
        The input's layout; the order of the flattened features follows it, without a transpose: an (N, C, H, W)
        input flattens (C, H, W), an (N, H, W, C) one (H, W, C) (Keras's order). A ``Linear`` layer after it
        therefore sees its features in another order in each layout.

    Raises
    ------
    ValueError
        A bad ``data_format`` here; axes out of range or ``start_dim`` after ``end_dim`` in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> nn.Flatten(data_format="NHWC")(np.ones((2, 4, 4, 3))).shape
    (2, 48)
    """

    forward_fn, backward_fn = F.flatten_forward, F.flatten_backward

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, data_format: str = "NCHW") -> None:
        is_channels_last(data_format)
        super().__init__(start_dim=as_int(start_dim, "start_dim"), end_dim=as_int(end_dim, "end_dim"),
                         data_format=data_format)


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode (scaling the rest by 1/(1-p)); identity in eval.

    Masks are reproducible: the n-th training forward pass of a Dropout built with ``seed`` always uses the same
    mask, on every backend. The count of training passes is extra state (:meth:`Module.named_extra_state`): a
    checkpoint keeps it, so a resumed run draws the masks it would have drawn.

    Parameters
    ----------
    p : float
        Probability of zeroing an element, in [0, 1] (``p=1`` zeroes everything); other values raise ValueError,
        non-numbers TypeError.
    seed : int, optional, keyword only
        The masks' seed; default: a fresh one from the global seed (:func:`xpcnn.nn.manual_seed`), see "Common
        arguments" in :class:`xpcnn.nn.Module`.

    Any shape and layout (elementwise); the output has x's shape, dtype and device
    (:func:`xpcnn.functional.dropout_forward`).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> drop = nn.Dropout(0.5, seed=0)
    >>> out = drop(np.ones((4, 1000), dtype=np.float32))
    >>> sorted(set(out.ravel().tolist()))    # zeros and 1 / (1 - p)
    [0.0, 2.0]
    >>> _ = drop.eval()
    >>> drop(np.ones((2, 3), dtype=np.float32))     # identity in eval mode
    array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
    """

    extra_state_names = ("calls",)

    def __init__(self, p=0.5, *, seed=None):
        super().__init__()
        self.p = check_probability(p)
        self.seed, self.calls = next_seed() if seed is None else as_int(seed, "seed"), 0

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


class _Normalization(Module):
    """A normalisation layer: affine parameters initialised as PyTorch's (weight ones, bias zeros), optional, and
    a backward pass (``backward_fn``) that accumulates their gradients."""

    backward_fn = None

    def _init_affine(self, shape: tuple, weight: bool, bias: bool, xp, device, dtype) -> None:
        self.weight = Parameter(xp.ones(shape, dtype=dtype, device=device)) if weight else None
        self.bias = Parameter(xp.zeros(shape, dtype=dtype, device=device)) if weight and bias else None

    def _affine_data(self):
        return tuple(None if p is None else p.data for p in (self.weight, self.bias))

    data_format = NCHW  # where x's channels are (batch and group norm): "NCHW" (axis 1) or "NHWC" (the last axis)

    def _check_channels(self, x, channels: int, layouts: tuple[str, ...], ndims: tuple[int, ...] | None = None):
        """A clear error for x whose channel axis (axis 1, the last for ``data_format="NHWC"``) is not ``channels``
        long or whose rank is not one of ``ndims`` (any rank >= 2 when None); ``layouts`` name the NCHW shapes."""
        namespace_and_device(x=x)  # a TypeError for a non-array
        rank_ok = x.ndim >= 2 if ndims is None else x.ndim in ndims
        if rank_ok and x.shape[channel_axis(x.ndim, self.data_format)] == channels:
            return
        if self.data_format != NCHW:
            layouts = tuple(layout_name(self.data_format, n) for n in ndims) if ndims else (layout_name("NHWC"),)
        hint = ""
        other = "NHWC" if self.data_format == NCHW else NCHW
        if rank_ok and x.ndim > 2 and x.shape[channel_axis(x.ndim, other)] == channels:
            hint = f"; x looks {other}: construct the layer with data_format={other!r}"
        raise ValueError(
            f"{type(self).__name__} takes x of shape {' or '.join(layouts)} with C = {channels}, "
            f"got shape {tuple(x.shape)}{hint}"
        )

    def backward(self, dout, *, input_grad=True):
        dx, dweight, dbias = type(self).backward_fn(dout, self._take_cache(), input_grad=input_grad)
        if self.weight is not None:
            self.weight.accumulate(dweight)
        if self.bias is not None:
            self.bias.accumulate(dbias)
        return dx


def _data_format_repr(data_format: str) -> str:
    return "" if data_format == NCHW else f", data_format={data_format!r}"


class _BatchNorm(_Normalization):
    """Batch normalisation per channel, as ``torch.nn.BatchNorm1d``/``BatchNorm2d`` (they differ only in the input
    ranks they take, ``layouts``).

    Training normalises with the batch's statistics and, with ``track_running_stats``, blends them into the running
    statistics (weight ``momentum``, or ``1 / num_batches_tracked`` for ``momentum=None``: their cumulative
    average) and counts the batch in ``num_batches_tracked``; an empty batch is counted but leaves the statistics as
    they were, as PyTorch. Evaluation normalises with the running statistics (with the batch's when they are not
    tracked). State dicts without ``num_batches_tracked`` (saved before it existed) still load.

    ``data_format="NHWC"`` (keyword only, not in PyTorch) takes channels-last input, ``(N, H, W, C)`` (``(N, L,
    C)`` for BatchNorm1d), computed in that layout; the default ``"NCHW"`` is PyTorch's. Parameters and buffers
    are (C,) in both, so state dicts are interchangeable between the layouts.

    Parameters
    ----------
    num_features : int
        C, the number of channels: input (N, C, H, W) for BatchNorm2d, (N, C) or (N, C, L) for BatchNorm1d
        (channels last with ``data_format="NHWC"``).
    eps : float
        Added to the variance (>= 0).
    momentum : float or None
        Weight of the batch's statistics in the running ones (PyTorch's convention: 0.1 by default); None: their
        cumulative average.
    affine : bool
        Learn a per-channel weight (ones) and bias (zeros), each (C,).
    track_running_stats : bool
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked`` buffers; without them
        evaluation also uses the batch's statistics.
    bias : bool, keyword only
        With ``affine``: learn the bias too (False keeps the weight only).
    data_format : {"NCHW", "NHWC"}, keyword only
        The input's layout.
    xp, device, dtype : keyword only
        The array library (a module or its name; NumPy by default), device and floating dtype (float32 by default)
        of the parameters and buffers: see "Common arguments" in :class:`xpcnn.nn.Module`.

    Raises
    ------
    ValueError
        A bad setting here; in the forward pass, an input of another rank or whose channel axis is not
        ``num_features`` long (the message suggests ``data_format`` when the other layout's axis matches).
    TypeError
        A non-floating ``dtype`` here.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> bn = nn.BatchNorm2d(3)
    >>> out = bn(np.arange(48, dtype=np.float32).reshape(2, 3, 2, 4))
    >>> out.shape, bool(abs(out.mean()) < 1e-6)
    ((2, 3, 2, 4), True)
    >>> bn.running_mean.shape, int(bn.num_batches_tracked)
    ((3,), 1)
    >>> nn.BatchNorm1d(4, data_format="NHWC")(np.ones((2, 5, 4), dtype=np.float32)).shape
    (2, 5, 4)
    """

    backward_fn = F.batch_norm_backward
    layouts: dict[int, str] = {}  # input rank -> layout
    buffer_names = ("running_mean", "running_var", "num_batches_tracked")
    optional_buffer_names = ("num_batches_tracked",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, data_format: str = NCHW, xp=None,
                 device=None, dtype=None):
        super().__init__()
        self.num_features = _positive(num_features, "num_features")
        self.data_format = check_data_format(data_format)
        self.eps = as_float(eps, "eps", minimum=0.0)
        self.momentum = None if momentum is None else as_float(momentum, "momentum")
        self.affine = as_bool(affine, "affine")
        self.track_running_stats = as_bool(track_running_stats, "track_running_stats")
        xp, device, dtype = resolve(xp, device, dtype)
        self._init_affine((self.num_features,), self.affine, as_bool(bias, "bias"), xp, device, dtype)
        if self.track_running_stats:
            self.running_mean = xp.zeros(self.num_features, dtype=dtype, device=device)
            self.running_var = xp.ones(self.num_features, dtype=dtype, device=device)
            self.num_batches_tracked = xp.zeros((), dtype=counter_dtype(xp), device=device)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
            self.buffer_names = ()

    def forward(self, x):
        self._check_channels(x, self.num_features, tuple(self.layouts.values()), tuple(self.layouts))
        update = self.training and self.track_running_stats
        count = self.num_batches_tracked + 1 if update else None
        out, self._cache = F.batch_norm_forward(
            x, *self._affine_data(), running_mean=self.running_mean, running_var=self.running_var,
            training=self.training or not self.track_running_stats, momentum=self.momentum, eps=self.eps,
            num_batches_tracked=count, data_format=self.data_format,
        )
        if update:
            self.running_mean, self.running_var = self._cache.running_mean, self._cache.running_var
            self.num_batches_tracked = count
        return out

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
            f"{_data_format_repr(self.data_format)})"
        )


class BatchNorm1d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__
    layouts = {2: "(N, C)", 3: "(N, C, L)"}


class BatchNorm2d(_BatchNorm):
    __doc__ = _BatchNorm.__doc__
    layouts = {4: "(N, C, H, W)"}


class LayerNorm(_Normalization):
    """Layer normalisation over the trailing ``normalized_shape`` axes, as ``torch.nn.LayerNorm``: elementwise
    weight and bias of that shape (``elementwise_affine``; ``bias=False`` keeps the weight only)
    (:func:`xpcnn.functional.layer_norm_forward`).

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        The trailing axes normalised per sample: input ``(*, *normalized_shape)``. Layout-free: for NCHW input,
        ``(C, H, W)`` normalises each sample; for channels-last input ``(N, H, W, C)``, ``C`` normalises each pixel.
    eps : float
        Added to the variance (>= 0).
    elementwise_affine : bool
        Learn a weight (ones) and bias (zeros) of ``normalized_shape``.
    bias : bool
        With ``elementwise_affine``: learn the bias too.
    xp, device, dtype : keyword only
        The array library (a module or its name; NumPy by default), device and floating dtype (float32 by default)
        of the parameters and buffers: see "Common arguments" in :class:`xpcnn.nn.Module`.

    Raises
    ------
    ValueError
        A bad setting here; an input whose trailing shape is not ``normalized_shape`` in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> ln = nn.LayerNorm(4)
    >>> ln(np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)).round(3)
    array([[-1.342, -0.447,  0.447,  1.342]], dtype=float32)
    """

    backward_fn = F.layer_norm_backward

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, *,
                 xp=None, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = as_normalized_shape(normalized_shape)
        self.eps = as_float(eps, "eps", minimum=0.0)
        self.elementwise_affine = as_bool(elementwise_affine, "elementwise_affine")
        xp, device, dtype = resolve(xp, device, dtype)
        self._init_affine(self.normalized_shape, self.elementwise_affine, as_bool(bias, "bias"), xp, device, dtype)

    def forward(self, x):
        out, self._cache = F.layer_norm_forward(x, self.normalized_shape, *self._affine_data(), eps=self.eps)
        return out

    def __repr__(self):
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None})"
        )


class GroupNorm(_Normalization):
    """Group normalisation, as ``torch.nn.GroupNorm``: the channels in ``num_groups`` groups, each normalised per
    sample; per-channel weight and bias (``affine``; ``bias=False`` keeps the weight only). ``data_format="NHWC"``
    (keyword only) takes channels-last input ``(N, *, C)``, computed in that layout
    (:func:`xpcnn.functional.group_norm_forward`).

    Parameters
    ----------
    num_groups : int
        Number of groups; must divide ``num_channels``.
    num_channels : int
        C: input ``(N, C, *)`` (``(N, *, C)`` with ``data_format="NHWC"``).
    eps : float
        Added to the variance (>= 0).
    affine : bool
        Learn a per-channel weight (ones) and bias (zeros), each (C,).
    bias : bool, keyword only
        With ``affine``: learn the bias too.
    data_format : {"NCHW", "NHWC"}, keyword only
        The input's layout.
    xp, device, dtype : keyword only
        The array library (a module or its name; NumPy by default), device and floating dtype (float32 by default)
        of the parameters and buffers: see "Common arguments" in :class:`xpcnn.nn.Module`.

    Raises
    ------
    ValueError
        ``num_groups`` that does not divide ``num_channels``, or another bad setting, here; an input whose channel
        axis is not ``num_channels`` long in the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> gn = nn.GroupNorm(2, 4)
    >>> gn(np.ones((3, 4, 5, 5), dtype=np.float32)).shape
    (3, 4, 5, 5)
    >>> nn.GroupNorm(2, 4, data_format="NHWC")(np.ones((3, 5, 5, 4), dtype=np.float32)).shape
    (3, 5, 5, 4)
    """

    backward_fn = F.group_norm_backward

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 bias: bool = True, data_format: str = NCHW, xp=None, device=None, dtype=None):
        super().__init__()
        self.data_format = check_data_format(data_format)
        self.num_groups = _positive(num_groups, "num_groups")
        self.num_channels = _positive(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={self.num_groups} must divide num_channels={self.num_channels}")
        self.eps = as_float(eps, "eps", minimum=0.0)
        self.affine = as_bool(affine, "affine")
        xp, device, dtype = resolve(xp, device, dtype)
        self._init_affine((self.num_channels,), self.affine, as_bool(bias, "bias"), xp, device, dtype)

    def forward(self, x):
        self._check_channels(x, self.num_channels, ("(N, C, *)",))
        out, self._cache = F.group_norm_forward(x, self.num_groups, *self._affine_data(), eps=self.eps,
                                                data_format=self.data_format)
        return out

    def __repr__(self):
        return (
            f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}{_data_format_repr(self.data_format)})"
        )
