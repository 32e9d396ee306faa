"""Slow, obviously correct references: plain loops over every window, written after PyTorch's CPU kernels.

NumPy float64 only, never shipped in the library. ``padding`` is always ((top, bottom), (left, right)).
"""

from __future__ import annotations

import math

import numpy as np


def conv_out_size(n, k, s, before, after, d):
    return (n + before + after - d * (k - 1) - 1) // s + 1


def pool_out_size(n, k, s, p, d, ceil_mode):
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _padded(x, padding):
    (top, bottom), (left, right) = padding
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv2d(x, weight, bias, stride, padding, dilation, groups, dout):
    """Returns (out, dx, dweight, dbias) of a cross-correlation, by loops over (n, o, oh, ow)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    (sh, sw), (dh, dw) = stride, dilation
    (top, bottom), (left, right) = padding
    oh, ow = conv_out_size(h, kh, sh, top, bottom, dh), conv_out_size(w, kw, sw, left, right, dw)
    xp = _padded(x, padding)
    out = np.zeros((n, o, oh, ow))
    dxp = np.zeros_like(xp)
    dweight = np.zeros_like(weight)
    dbias = np.zeros(o)
    og = o // groups
    for b in range(n):
        for oc in range(o):
            chans = slice(oc // og * cg, oc // og * cg + cg)
            for i in range(oh):
                for j in range(ow):
                    rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
                    cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
                    window = xp[b, chans, rows, cols]
                    out[b, oc, i, j] = np.sum(window * weight[oc]) + (0.0 if bias is None else bias[oc])
                    g = dout[b, oc, i, j]
                    dxp[b, chans, rows, cols] += g * weight[oc]
                    dweight[oc] += g * window
                    dbias[oc] += g
    dx = dxp[:, :, top : top + h, left : left + w]
    return out, dx, dweight, (None if bias is None else dbias)


def conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation, groups, dout):
    """Returns (out, dx, dweight, dbias) of a transposed convolution, by loops over the input (n, c, h, w): each
    element adds ``x * weight[c]`` into the window it reaches in the zero padded output, which is cropped."""
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding[0] + 1
    ow = (w - 1) * sw - 2 * pw + dw * (kw - 1) + output_padding[1] + 1
    out_padded = np.zeros((n, og * groups, oh + 2 * ph, ow + 2 * pw))
    dout_padded = np.pad(dout, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dx = np.zeros_like(x)
    dweight = np.zeros_like(weight)
    cg = c // groups
    for b in range(n):
        for ic in range(c):
            chans = slice(ic // cg * og, ic // cg * og + og)
            for i in range(h):
                for j in range(w):
                    rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
                    cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
                    out_padded[b, chans, rows, cols] += x[b, ic, i, j] * weight[ic]
                    window = dout_padded[b, chans, rows, cols]
                    dx[b, ic, i, j] = np.sum(window * weight[ic])
                    dweight[ic] += x[b, ic, i, j] * window
    out = out_padded[:, :, ph : ph + oh, pw : pw + ow]
    if bias is not None:
        out = out + bias[:, None, None]
    return out, dx, dweight, (None if bias is None else dout.sum(axis=(0, 2, 3)))

def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, dout):
    """Returns (out, indices, dx), window by window as PyTorch's CPU kernel: start at -inf with the first
    position past the top/left padding, then take every in-bounds element that is greater or NaN (so the first
    maximum wins, and the last NaN). A window entirely in the padding (possible with dilation) outputs -inf and
    its gradient goes nowhere (its index, as PyTorch's, may point outside the plane)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = pool_out_size(h, kh, sh, ph, dh, ceil_mode), pool_out_size(w, kw, sw, pw, dw, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    indices = np.zeros((n, c, oh, ow), dtype=np.int64)
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * sh - ph, j * sw - pw
                    h1, w1 = min(h0 + (kh - 1) * dh + 1, h), min(w0 + (kw - 1) * dw + 1, w)
                    while h0 < 0:
                        h0 += dh
                    while w0 < 0:
                        w0 += dw
                    best, where = -math.inf, h0 * w + w0
                    for r in range(h0, h1, dh):
                        for q in range(w0, w1, dw):
                            value = x[b, ch, r, q]
                            if value > best or math.isnan(value):
                                best, where = value, r * w + q
                    out[b, ch, i, j], indices[b, ch, i, j] = best, where
                    if h0 < h1 and w0 < w1:  # the window holds at least one input element
                        dx[b, ch, where // w, where % w] += dout[b, ch, i, j]
    return out, indices, dx


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, dout):
    """Returns (out, dx); the divisor as PyTorch's kernel computes it."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = pool_out_size(h, kh, sh, ph, 1, ceil_mode), pool_out_size(w, kw, sw, pw, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    dx = np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * sh - ph, j * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            if divisor_override is not None:
                divisor = divisor_override
            else:
                divisor = pool_size if count_include_pad else (h1 - h0) * (w1 - w0)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / divisor
            dx[:, :, h0:h1, w0:w1] += (dout[:, :, i, j] / divisor)[:, :, None, None]
    return out, dx


def standardize_rows(v, eps, dxhat):
    """Each row of ``v`` (R, M) standardised on its own (biased variance); returns (xhat, dx) with dx from the
    explicit Jacobian d xhat_i / d v_j = (delta_ij - 1/M - xhat_i xhat_j / M) / sqrt(var + eps), row by row."""
    xhat, dx = np.zeros_like(v), np.zeros_like(v)
    for r in range(v.shape[0]):
        row, m = v[r], v.shape[1]
        mean = math.fsum(row) / m
        inv_std = 1.0 / math.sqrt(math.fsum((row - mean) ** 2) / m + eps)
        xhat[r] = (row - mean) * inv_std
        jacobian = inv_std * (np.eye(m) - 1.0 / m - np.outer(xhat[r], xhat[r]) / m)
        dx[r] = jacobian.T @ dxhat[r]
    return xhat, dx


def normalization(kind, x, weight, bias, eps, dout, *, num_groups=1, normalized_ndim=1):
    """Returns (out, dx, dweight, dbias) of batch norm in training ("batch", x (N, C, *)), layer norm ("layer",
    over the last ``normalized_ndim`` axes) or group norm ("group", x (N, C, *)): the rows that share statistics
    are gathered, standardised by :func:`standardize_rows`, then scaled and shifted per feature."""
    if kind == "batch":
        to_rows = lambda a: np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)  # noqa: E731
        from_rows = lambda r: np.moveaxis(r.reshape((x.shape[1], x.shape[0], *x.shape[2:])), 0, 1)  # noqa: E731
    elif kind == "layer":
        to_rows = lambda a: a.reshape(-1, math.prod(x.shape[x.ndim - normalized_ndim:]))  # noqa: E731
        from_rows = lambda r: r.reshape(x.shape)  # noqa: E731
    else:
        to_rows = lambda a: a.reshape(x.shape[0] * num_groups, -1)  # noqa: E731
        from_rows = lambda r: r.reshape(x.shape)  # noqa: E731
    param_shape = x.shape[x.ndim - normalized_ndim:] if kind == "layer" else (1, x.shape[1]) + (1,) * (x.ndim - 2)
    w = np.ones(param_shape) if weight is None else weight.reshape(param_shape)
    xhat, dx = standardize_rows(to_rows(x), eps, to_rows(dout * w))
    xhat, dx = from_rows(xhat), from_rows(dx)
    out = xhat * w + (0.0 if bias is None else bias.reshape(param_shape))
    axes = tuple(range(x.ndim - normalized_ndim)) if kind == "layer" else (0, *range(2, x.ndim))
    dweight = None if weight is None else (dout * xhat).sum(axis=axes).reshape(weight.shape)
    dbias = None if bias is None else dout.sum(axis=axes).reshape(bias.shape)
    return out, dx, dweight, dbias
def adaptive_bounds(n, out, i):
    """PyTorch's adaptive window along one axis: [floor(i * n / out), ceil((i + 1) * n / out))."""
    return math.floor(i * n / out), math.ceil((i + 1) * n / out)


def adaptive_avg_pool2d(x, output_size, dout):
    """Returns (out, dx), window by window."""
    n, c, h, w = x.shape
    oh, ow = output_size
    out = np.zeros((n, c, oh, ow))
    dx = np.zeros_like(x)
    for i in range(oh):
        h0, h1 = adaptive_bounds(h, oh, i)
        for j in range(ow):
            w0, w1 = adaptive_bounds(w, ow, j)
            count = (h1 - h0) * (w1 - w0)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / count
            dx[:, :, h0:h1, w0:w1] += (dout[:, :, i, j] / count)[:, :, None, None]
    return out, dx


def adaptive_max_pool2d(x, output_size, dout):
    """Returns (out, indices, dx), window by window as PyTorch's CPU kernel: start at -inf with the window's first
    element, then take every element that is greater or NaN (so the first maximum wins, and the last NaN)."""
    n, c, h, w = x.shape
    oh, ow = output_size
    out = np.zeros((n, c, oh, ow))
    indices = np.zeros((n, c, oh, ow), dtype=np.int64)
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                h0, h1 = adaptive_bounds(h, oh, i)
                for j in range(ow):
                    w0, w1 = adaptive_bounds(w, ow, j)
                    best, where = -math.inf, h0 * w + w0
                    for r in range(h0, h1):
                        for q in range(w0, w1):
                            value = x[b, ch, r, q]
                            if value > best or math.isnan(value):
                                best, where = value, r * w + q
                    out[b, ch, i, j], indices[b, ch, i, j] = best, where
                    dx[b, ch, where // w, where % w] += dout[b, ch, i, j]
    return out, indices, dx
