"""2-D convolution, transposed convolution and their backward passes: one family on one window primitive.

Cross-correlation over NCHW input with ``(out_channels, in_channels // groups, kh, kw)`` weights, as PyTorch.
With ``G`` groups of ``Cg = C / G`` input and ``Og = O / G`` output channels, ``K = kh * kw`` kernel offsets and
``P = out_h * out_w`` output positions:

The batch is processed in pieces whose column buffer fits the workspace limit (:mod:`xpcnn.config`). When the whole
batch fits in one piece, the cache keeps its columns for the backward pass (at most the limit's bytes);
otherwise the backward pass gathers them again, piece by piece.

Forward (im2col, one matrix product per group, the result already in NCHW order)::

    cols[n, g, (c, i, j), p] = x_pad[n, g*Cg + c, oh*sh + i*dh, ow*sw + j*dw]      (N, G, Cg*K, P)
    out[n, g, o, p]          = sum_q weight[g, o, q] * cols[n, g, q, p]  + bias     (N, G, Og, P)

Backward::

    dweight[g]  = sum_n dout[n, g] @ cols[n, g]^T                                  (G, Og, Cg*K)
    dcols[n, g] = weight[g]^T @ dout[n, g]                                         (N, G, Cg*K, P)
    dx          = col2im(dcols)   (each column added back where it was gathered; on NumPy, for stride 1, in rows
                                   extended to the padded width, one contiguous run per kernel offset)
    dbias       = dout summed over N, out_h and out_w

With stride 1, dx is itself a convolution: of dout, padded by ``d(k-1) - p`` on each side, with the kernel
flipped and its in/out channels swapped (per group). That path gathers and multiplies like the forward pass
instead of adding K strided slices back. It is taken when the padding allows (``p <= d(k-1)``) and when it is the
cheaper one: it gathers ``O * H * W`` values per kernel offset where col2im adds ``C * out_h * out_w`` (an add
costing about two copies), so layers that expand the channels (1 -> 32, say) keep col2im. That path and the wide
rows put zeros in front of the weights, so they are taken only for weights known to be finite (a NaN or inf weight
would spread NaN where PyTorch has none).

The transposed convolution (``torch.nn.functional.conv_transpose2d``, weights ``(C_in, C_out / G, kh, kw)``) is
the same pair read the other way round. Its forward pass is conv2d's input gradient with x in dout's place
(:func:`_correlate_transposed`: col2im, or the correlation above); its backward pass is conv2d's forward pass
applied to dout, and conv2d's weight gradient with x in dout's place, from one set of columns::

    out         = col2im(weight^T @ x) + bias
    cols        = im2col(dout)
    dx          = weight @ cols
    dweight     = sum_n x[n] @ cols[n]^T
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._dispatch import known_finite
from .._tuning import profile_for
from .._precision import half_in_float32, half_in_float32_backward
from .._validation import (
    as_bool,
    as_int,
    check_cache,
    check_floating,
    check_ndim,
    check_same_dtype,
    check_shape,
    check_upstream,
    int_pair,
    namespace_and_device,
)
from .._windows import (
    WindowGeometry,
    batch_pieces,
    concat_pieces,
    samples_per_piece,
    scatter_wide_rows,
    scatter_windows,
    stacked_windows,
    window_geometry,
)
from ..config import resolve_workspace_limit

__all__ = [
    "Conv2dCache",
    "conv2d_forward",
    "conv2d_backward",
    "ConvTranspose2dCache",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
]


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs: the input, and its columns when the whole batch fitted the workspace
    limit in one piece (else None: they are gathered again, piece by piece)."""

    x: Any
    weight: Any
    has_bias: bool
    groups: int
    geometry: WindowGeometry
    workspace_limit: int  # bytes for one piece's column buffer
    columns: Any = None


@half_in_float32
def conv2d_forward(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, workspace_limit=None):
    """2-D convolution (cross-correlation) as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W); weight: (O, C // groups, kh, kw); bias: (O,) or None.
    padding: int, (ph, pw), ``"valid"`` or ``"same"`` (stride 1 only; an odd total pad puts the extra row/column
    at the bottom/right, as PyTorch).
    workspace_limit: bytes for the column buffer (default: the global setting of :mod:`xpcnn.config`).
    Returns ``(out, cache)``, out: (N, O, out_h, out_w) with ``out_h = floor((H + 2ph - dh(kh-1) - 1) / sh) + 1``.
    """
    xp, device = namespace_and_device(x=x, weight=weight, bias=bias, optional=("bias",))
    check_floating(xp, x, "x")
    check_ndim(x, "x", 4, "(N, C, H, W)")
    check_ndim(weight, "weight", 4, "(out_channels, in_channels // groups, kh, kw)")
    check_same_dtype(weight, "weight", x, "x")
    groups = as_int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    n, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    if min(out_channels, group_channels, kh, kw) < 1:
        raise ValueError(f"weight must have no empty axis, got shape {tuple(weight.shape)}")
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels, got x with {channels} channels")
    if out_channels % groups:
        raise ValueError(f"groups={groups} must divide out_channels, got weight with {out_channels} output channels")
    if group_channels * groups != channels:
        raise ValueError(
            f"x has {channels} channels but weight expects weight.shape[1] * groups = "
            f"{group_channels} * {groups} = {group_channels * groups}"
        )
    if bias is not None:
        check_ndim(bias, "bias", 1, "(out_channels,)")
        check_shape(bias, "bias", (out_channels,), "out_channels of weight")
        check_same_dtype(bias, "bias", x, "x")
    stride, padding, dilation = conv_options((kh, kw), stride, padding, dilation)
    geometry = window_geometry((height, width), (kh, kw), stride, dilation, padding, kernel_name="weight kernel size")

    limit = resolve_workspace_limit(workspace_limit, x)
    out, columns = _correlate(xp, x, weight, geometry, groups, limit)
    if bias is not None:
        out = out + xp.reshape(bias, (1, out_channels, 1, 1))
    return out, Conv2dCache(x, weight, bias is not None, groups, geometry, limit, columns)


@half_in_float32_backward
def conv2d_backward(dout, cache: Conv2dCache, *, input_grad=True):
    """Gradients of :func:`conv2d_forward`. dout: (N, O, out_h, out_w).

    Returns ``(dx, dweight, dbias)`` with the shapes of x, weight and bias; ``dbias`` is None when bias was None,
    ``dx`` when not ``input_grad`` (the input needs no gradient: only dweight and dbias are computed).
    """
    check_cache(cache, Conv2dCache, "conv2d")
    input_grad = as_bool(input_grad, "input_grad")
    x, weight, has_bias, groups, geometry, limit, columns = cache
    n, channels = x.shape[:2]
    out_channels = weight.shape[0]
    xp, device = check_upstream(dout, (n, out_channels, *geometry.out_size), weight, weight.dtype)
    out_h, out_w = geometry.out_size
    dout_mat = xp.reshape(dout, (n, groups, out_channels // groups, out_h * out_w))

    dweight = None
    for part in batch_pieces(n, _batch_piece(xp, channels, x.dtype, geometry, limit)):
        cols = columns if columns is not None else _im2col(xp, x[part, ...], geometry, groups)
        dweight_part = _weight_gradient(xp, dout_mat[part, ...], cols)
        dweight = dweight_part if dweight is None else dweight + dweight_part
    cols = None  # the last piece's columns go before dx is computed (a lower peak)

    dx = _correlate_transposed(xp, dout, weight, geometry, groups, channels, limit, device) if input_grad else None
    dweight = xp.reshape(dweight, weight.shape)
    dbias = xp.sum(dout, axis=(0, 2, 3)) if has_bias else None
    return dx, dweight, dbias


class ConvTranspose2dCache(NamedTuple):
    """What :func:`conv_transpose2d_backward` needs: the input and the weights. ``geometry`` is that of the
    convolution the op transposes: from the output (Hout, Wout) to x's (H, W)."""

    x: Any
    weight: Any
    has_bias: bool
    groups: int
    geometry: WindowGeometry
    workspace_limit: int  # bytes for one piece's column buffer


@half_in_float32
def conv_transpose2d_forward(
    x: Any,
    weight: Any,
    bias: Any | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    workspace_limit: int | None = None,
) -> tuple[Any, ConvTranspose2dCache]:
    """2-D transposed convolution as ``torch.nn.functional.conv_transpose2d``: the input gradient of the
    convolution with the same weights, stride, padding, dilation and groups, from x in the place of dout.

    Parameters
    ----------
    x : array (N, C_in, H, W), real floating
    weight : array (C_in, C_out // groups, kh, kw), x's dtype
    bias : array (C_out,) or None
    stride, padding, dilation : int or (height, width) pair
        stride and dilation >= 1, padding >= 0 (removed from both sides of the output).
    output_padding : int or (height, width) pair
        Rows and columns added to the bottom and right of the output (reached by no window: bias only), each
        smaller than the stride or the dilation of its axis.
    groups : int
        Divides C_in; ``C_out = weight.shape[1] * groups``.
    workspace_limit : int, optional
        Bytes for one batch piece's column buffer (default: the global setting of :mod:`xpcnn.config`).

    Returns
    -------
    out : array (N, C_out, Hout, Wout)
        ``Hout = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding_h + 1``, likewise Wout.
    cache : ConvTranspose2dCache
        For :func:`conv_transpose2d_backward`.

    Raises
    ------
    TypeError
        Non-arrays (None for x or weight), non-floating or mismatched dtypes, non-int arguments.
    ValueError
        Wrong ranks, channel, group or bias mismatches, empty kernels or planes, arrays from different libraries or
        devices, bad stride, padding or dilation, output_padding not below the stride or dilation, an output
        smaller than 1 x 1.
    """
    xp, device = namespace_and_device(x=x, weight=weight, bias=bias, optional=("bias",))
    check_floating(xp, x, "x")
    check_ndim(x, "x", 4, "(N, C_in, H, W)")
    check_ndim(weight, "weight", 4, "(in_channels, out_channels // groups, kh, kw)")
    check_same_dtype(weight, "weight", x, "x")
    groups = as_int(groups, "groups", minimum=1)
    n, channels, height, width = x.shape
    in_channels, group_out, kh, kw = weight.shape
    if min(in_channels, group_out, kh, kw) < 1:
        raise ValueError(f"weight must have no empty axis, got shape {tuple(weight.shape)}")
    if min(height, width) < 1:
        raise ValueError(f"x must have a non-empty height and width, got shape {tuple(x.shape)}")
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels, got weight with {in_channels} input channels")
    if channels != in_channels:
        raise ValueError(f"x has {channels} channels but weight expects weight.shape[0] = {in_channels}")
    out_channels = group_out * groups
    if bias is not None:
        check_ndim(bias, "bias", 1, "(out_channels,)")
        check_shape(bias, "bias", (out_channels,), "out_channels = weight.shape[1] * groups")
        check_same_dtype(bias, "bias", x, "x")
    options = conv_transpose_options(stride, padding, output_padding, dilation)
    geometry = _conv_transpose_geometry((height, width), (kh, kw), *options)

    limit = resolve_workspace_limit(workspace_limit, x)
    out = _correlate_transposed(xp, x, weight, geometry, groups, out_channels, limit, device)
    if bias is not None:
        out = out + xp.reshape(bias, (1, out_channels, 1, 1))
    return out, ConvTranspose2dCache(x, weight, bias is not None, groups, geometry, limit)


@half_in_float32_backward
def conv_transpose2d_backward(
    dout: Any, cache: ConvTranspose2dCache, *, input_grad: bool = True
) -> tuple[Any | None, Any, Any | None]:
    """Gradients of :func:`conv_transpose2d_forward`: a convolution of dout, and its weight gradient.

    Parameters
    ----------
    dout : array (N, C_out, Hout, Wout), the forward output's shape and the forward input's dtype
    cache : ConvTranspose2dCache
        What :func:`conv_transpose2d_forward` returned.
    input_grad : bool
        False when x needs no gradient: only dweight and dbias are computed.

    Returns
    -------
    dx : array (N, C_in, H, W), or None when not ``input_grad``
    dweight : array (C_in, C_out // groups, kh, kw)
    dbias : array (C_out,), or None when bias was None

    Raises
    ------
    TypeError
        A cache from another op, dout not an array or not of the forward input's dtype, a non-bool input_grad.
    ValueError
        dout of another shape, library or device than the forward pass's.

    With ``cols`` the windows of dout (the columns conv2d gathers from its input, dout zero padded by p)::

        dx[n, g]    = weight[g] @ cols[n, g]                     (conv2d of dout with the same weights)
        dweight[g]  = sum_n x[n, g] @ cols[n, g]^T               (conv2d's weight gradient, x in dout's place)
        dbias       = dout summed over N, Hout and Wout
    """
    check_cache(cache, ConvTranspose2dCache, "conv_transpose2d")
    input_grad = as_bool(input_grad, "input_grad")
    x, weight, has_bias, groups, geometry, limit = cache
    n, in_channels, height, width = x.shape
    out_channels = weight.shape[1] * groups
    xp, _ = check_upstream(dout, (n, out_channels, *geometry.in_size), weight, weight.dtype)
    x_mat = xp.reshape(x, (n, groups, in_channels // groups, height * width))
    w_mat = _weight_matrix(xp, weight, groups)

    dweight, dx_parts = None, []
    for part in batch_pieces(n, _batch_piece(xp, out_channels, dout.dtype, geometry, limit)):
        cols = _im2col(xp, dout[part, ...], geometry, groups)
        dweight_part = _weight_gradient(xp, x_mat[part, ...], cols)
        dweight = dweight_part if dweight is None else dweight + dweight_part
        if input_grad:
            dx_parts.append(xp.matmul(w_mat, cols))
    cols = None  # the last piece's columns go before dx is assembled (a lower peak)

    dx = xp.reshape(concat_pieces(xp, dx_parts), (n, in_channels, height, width)) if input_grad else None
    dweight = xp.reshape(dweight, weight.shape)
    dbias = xp.sum(dout, axis=(0, 2, 3)) if has_bias else None
    return dx, dweight, dbias


def conv_transpose_options(stride=1, padding=0, output_padding=0, dilation=1):
    """The transposed convolution's arguments checked and normalised to (height, width) pairs: ``(stride,
    padding, output_padding, dilation)``, output_padding below the stride or the dilation on each axis.
    :class:`xpcnn.nn.ConvTranspose2d` calls it when it is built, the op on every call."""
    stride = int_pair(stride, "stride", minimum=1)
    padding = int_pair(padding, "padding", minimum=0)
    output_padding = int_pair(output_padding, "output_padding", minimum=0)
    dilation = int_pair(dilation, "dilation", minimum=1)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"output_padding must be smaller than the stride or the dilation on each axis, got output_padding "
            f"{output_padding} with stride {stride} and dilation {dilation}"
        )
    return stride, padding, output_padding, dilation


def _conv_transpose_geometry(size, kernel, stride, padding, output_padding, dilation) -> WindowGeometry:
    """The geometry of the convolution that conv_transpose2d transposes: its input is the transposed
    convolution's output (Hout, Wout), padded by p on both sides, its output x's (H, W).

    ``Hout = (H - 1) * s - 2p + d(k - 1) + output_padding + 1``: the padded output reaches as far as the last
    window, and output_padding rows (columns) beyond it that no window reaches; with output_padding >= the stride
    (PyTorch allows it below the dilation) that is more than a convolution's output size rounds away. Raises a
    ValueError for an output smaller than 1 x 1.
    """
    out_size = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, d, p, op in zip(size, kernel, stride, dilation, padding, output_padding)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"the output would be {out_size[0]} x {out_size[1]} = (H - 1) * stride - 2 * padding + dilation * "
            f"(kernel - 1) + output_padding + 1 for x of height x width {size[0]} x {size[1]}, weight kernel size "
            f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}, output_padding {output_padding}; "
            "it must be at least 1 x 1"
        )
    pads = tuple((p, p) for p in padding)
    return WindowGeometry(out_size, tuple(kernel), tuple(stride), tuple(dilation), pads, tuple(size))

def _correlate_transposed(xp, dout, weight, geometry: WindowGeometry, groups: int, channels: int, limit: int, device):
    """The transpose of :func:`_correlate` (in x): from dout (N, O, out_h, out_w) to (N, C, H, W), C = channels.

    conv2d's input gradient, and conv_transpose2d's output. ``dcols[n, g] = weight[g]^T @ dout[n, g]`` added back
    where the forward pass gathered its columns (col2im), piece by piece; or, with stride 1, where it is the
    cheaper path (:func:`_transposed_geometry`), a correlation of dout padded by ``d(k-1) - p`` with the kernel
    flipped and its channels swapped. That padding, like col2im's wide rows, puts zeros in front of the weights:
    both need weights known to be finite (:func:`xpcnn._dispatch.known_finite`), or a NaN or inf weight would
    spread NaN where PyTorch has none.
    """
    n, out_channels = dout.shape[:2]
    finite = known_finite(xp, weight)
    ratio = profile_for(dout).transposed_dx_ratio
    transposed = _transposed_geometry(geometry, channels, out_channels, ratio) if finite else None
    if transposed is not None:
        dx, _ = _correlate(xp, dout, _flipped_transpose(xp, weight, groups), transposed, groups, limit)
        return dx
    wide_rows = (
        finite
        and _windows_reach_the_far_edge(geometry)  # stride 1, no rows left below the last window
        and out_channels <= channels * len(geometry.offsets())  # extending dout costs less than dcols' scatter
    )
    w_mat_t = xp.matrix_transpose(_weight_matrix(xp, weight, groups))
    dout_mat = xp.reshape(dout, (n, groups, out_channels // groups, geometry.out_size[0] * geometry.out_size[1]))
    pieces = batch_pieces(n, _batch_piece(xp, channels, dout.dtype, geometry, limit))
    return concat_pieces(xp, [_col2im(xp, w_mat_t, dout_mat[part, ...], geometry, channels, wide_rows, device)
                              for part in pieces])


def _windows_reach_the_far_edge(geometry: WindowGeometry) -> bool:
    """Stride 1, and the last window ends on the padded input's last row and column: what col2im's wide rows
    need (a transposed convolution's output_padding leaves rows and columns that no window reaches)."""
    spans = tuple(o + d * (k - 1) for o, d, k in zip(geometry.out_size, geometry.dilation, geometry.kernel))
    return geometry.stride == (1, 1) and spans == geometry.padded_size


def _col2im(xp, w_mat_t, dout, geometry: WindowGeometry, channels: int, wide_rows: bool, device):
    """dx (m, C, H, W) of one piece from dout (m, G, Og, P): ``dcols[n, g] = weight[g]^T @ dout[n, g]``, each
    kernel offset's rows of dcols added back where they were gathered.

    With ``wide_rows`` (stride 1 without overhang, out_channels <= C * K, weights known finite) dout's rows are
    first extended with zeros to the padded width, so that dcols' rows are too and each offset adds one contiguous
    run (:func:`xpcnn._windows.scatter_wide_rows`) instead of a row at a time (NumPy pays per row; figures in
    benchmarks/README.md). The zeros stay zeros through the product only with finite weights.
    """
    m, groups, group_out, _ = dout.shape
    num_offsets, (out_h, out_w) = len(geometry.offsets()), geometry.out_size
    like = dict(dtype=dout.dtype, device=device)
    if wide_rows:
        extra = geometry.padded_size[1] - out_w
        rows = xp.reshape(dout, (m, groups, group_out, out_h, out_w))
        rows = xp.concat([rows, xp.zeros((m, groups, group_out, out_h, extra), **like)], axis=-1)
        dcols = xp.matmul(w_mat_t, xp.reshape(rows, (m, groups, group_out, out_h * (out_w + extra))))
        dcols = xp.reshape(dcols, (m, channels, num_offsets, out_h * (out_w + extra)))
        return scatter_wide_rows(xp, (dcols[:, :, k, :] for k in range(num_offsets)), geometry, (m, channels), **like)
    dcols = xp.matmul(w_mat_t, dout)
    # Two reshapes, each only splitting or merging axes (Dask cannot do both in one); views elsewhere.
    dcols = xp.reshape(dcols, (m, groups, channels // groups, num_offsets, out_h, out_w))
    dcols = xp.reshape(dcols, (m, channels, num_offsets, out_h, out_w))
    return scatter_windows(xp, (dcols[:, :, k, ...] for k in range(num_offsets)), geometry, (m, channels), **like)


def _weight_gradient(xp, dout, cols):
    """``sum_n dout[n, g] @ cols[n, g]^T``, (G, Og, Cg*K), from dout (m, G, Og, P) and cols (m, G, Cg*K, P).

    A product per sample, summed, when ``P >= ratio * Og`` (the cost model's
    ``per_sample_weight_gradient_ratio``); otherwise one product with the batch folded into the positions, at the
    price of a transposed copy of cols: per sample, the thin (Og x P) by (P x Cg*K) products would write, and the
    sum read, P / Og times more than that copy.
    """
    m, groups, group_out, positions = dout.shape
    if positions >= profile_for(dout).per_sample_weight_gradient_ratio * group_out:
        return xp.sum(xp.matmul(dout, xp.matrix_transpose(cols)), axis=0)
    dout = xp.reshape(xp.permute_dims(dout, (1, 2, 0, 3)), (groups, group_out, m * positions))
    cols = xp.reshape(xp.permute_dims(cols, (1, 0, 3, 2)), (groups, m * positions, cols.shape[2]))
    return xp.matmul(dout, cols)


def conv_options(kernel, stride=1, padding=0, dilation=1):
    """The convolution arguments checked and normalised: ``(stride, padding, dilation)``, padding as
    ((top, bottom), (left, right)). :class:`xpcnn.nn.Conv2d` calls it when it is built, the op on every call."""
    stride = int_pair(stride, "stride", minimum=1)
    dilation = int_pair(dilation, "dilation", minimum=1)
    return stride, _padding_pairs(padding, kernel, stride, dilation), dilation


def _padding_pairs(padding, kernel, stride, dilation):
    """((top, bottom), (left, right)) from an int, a pair, ``"valid"`` or ``"same"``."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((total // 2, total - total // 2) for total in totals)
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    ph, pw = int_pair(padding, "padding", minimum=0)
    return ((ph, ph), (pw, pw))


def _correlate(xp, x, weight, geometry: WindowGeometry, groups: int, limit: int):
    """Cross-correlation of x with weight (no bias) by im2col, piece by piece: (N, O, out_h, out_w), and the
    columns when the batch was one piece (else None)."""
    w_mat = _weight_matrix(xp, weight, groups)
    pieces = batch_pieces(x.shape[0], _batch_piece(xp, x.shape[1], x.dtype, geometry, limit))
    outs = []
    for part in pieces:
        columns = _im2col(xp, x[part, ...], geometry, groups)
        outs.append(xp.matmul(w_mat, columns))
    if len(pieces) > 1:
        columns = None  # the last piece's columns go before the pieces are joined (a lower peak)
    out = xp.reshape(concat_pieces(xp, outs), (x.shape[0], weight.shape[0], *geometry.out_size))
    return out, columns


def _transposed_geometry(geometry: WindowGeometry, in_channels: int, out_channels: int, ratio: float):
    """The geometry of dx as a correlation of dout (stride 1, padding ``d(k-1) - p`` before, and after whatever
    gives back the input's size: ``d(k-1) - p`` too, plus a transposed convolution's output_padding) when that
    path applies and is the cheaper one (``O * H * W <= ratio * C * out_h * out_w``, the cost model's
    ``transposed_dx_ratio``); None for col2im."""
    (height, width), (out_h, out_w) = geometry.in_size, geometry.out_size
    if geometry.stride != (1, 1) or out_channels * height * width > ratio * in_channels * out_h * out_w:
        return None
    pads = tuple(
        (d * (k - 1) - before, size - out + before)
        for k, d, (before, _), size, out in zip(
            geometry.kernel, geometry.dilation, geometry.padding, geometry.in_size, geometry.out_size
        )
    )
    if min(min(p) for p in pads) < 0:
        return None
    return window_geometry(geometry.out_size, geometry.kernel, (1, 1), geometry.dilation, pads)


def _flipped_transpose(xp, weight, groups: int):
    """(O, Cg, kh, kw) -> (C, Og, kh, kw): in and out channels swapped within each group, the kernel flipped."""
    out_channels, group_channels, kh, kw = weight.shape
    w = xp.reshape(weight, (groups, out_channels // groups, group_channels, kh, kw))
    w = xp.permute_dims(w, (0, 2, 1, 3, 4))
    w = xp.reshape(w, (groups * group_channels, out_channels // groups, kh, kw))
    return xp.flip(w, axis=(2, 3))


def _batch_piece(xp, channels: int, dtype, geometry: WindowGeometry, limit: int) -> int:
    """Samples per piece: as many as keep one piece's column buffer (and padded input) within the workspace
    limit, at least one. ``channels`` and ``dtype`` are those of the correlation's input: the array the columns
    are gathered from (im2col) or added back into (col2im)."""
    kh, kw = geometry.kernel
    padded_h, padded_w = geometry.padded_size
    per_sample = channels * (kh * kw * geometry.out_size[0] * geometry.out_size[1] + padded_h * padded_w)
    return samples_per_piece(per_sample * xp.finfo(dtype).bits // 8, limit)


def _im2col(xp, x, geometry: WindowGeometry, groups: int):
    """Columns (N, G, Cg*kh*kw, out_h*out_w) of x padded, ordered (channel, i, j) as the weights are."""
    n, channels = x.shape[:2]
    kh, kw = geometry.kernel
    out_h, out_w = geometry.out_size
    cols = stacked_windows(xp, x, geometry, 0.0)
    # Two reshapes, each only splitting or merging axes (Dask cannot do both in one); views elsewhere.
    cols = xp.reshape(cols, (n, groups, channels // groups, kh * kw, out_h * out_w))
    return xp.reshape(cols, (n, groups, channels // groups * kh * kw, out_h * out_w))


def _weight_matrix(xp, weight, groups: int):
    """weight (O, Cg, kh, kw) as (G, Og, Cg*kh*kw)."""
    return xp.reshape(weight, (groups, weight.shape[0] // groups, -1))
