"""The one dispatch point for backend-specific fast paths. Every op is written on the array API standard; the
questions below let it take a shortcut where one library allows it, and each shortcut has a standard fallback
that the tests run too (on array-api-strict, JAX and Dask, and on every backend by switching the shortcut off).
"""

from __future__ import annotations

import math

from array_api_compat import is_cupy_array, is_jax_array, is_numpy_array, is_torch_array


def updates_in_place(array) -> bool:
    """Whether arrays of ``array``'s library may be updated in place (``+=``, slice assignment): NumPy, CuPy and
    PyTorch. xpcnn only ever updates arrays it made itself. Elsewhere ``array_api_extra.at`` adds (JAX's arrays
    are immutable), slower per call, and padding concatenates blocks (slower; benchmarks/README.md)."""
    return is_numpy_array(array) or is_cupy_array(array) or is_torch_array(array)


def known_finite(xp, array) -> bool:
    """True when ``array`` is known to hold no inf or NaN, found out for free: only NumPy's host arrays are
    checked (elsewhere the answer would cost a device sync or force a lazy computation, so it is False)."""
    return is_numpy_array(array) and bool(xp.all(xp.isfinite(array)))


def take_nonnegative(xp, x, indices, *, axis: int):
    """``xp.take(x, indices, axis=axis)`` for indices known to be >= 0. On PyTorch one ``index_select`` (one
    kernel): array-api-compat's ``take`` first maps negative indices (three more kernels per call)."""
    if is_torch_array(x):
        return x.index_select(axis % x.ndim, indices)
    return xp.take(x, indices, axis=axis)


def multiply_by_mask(xp, array, mask):
    """``array * mask`` for a boolean ``mask``: ``array`` where it is True, 0 where False (and NaN there where
    ``array`` is not finite: ``inf * 0``). NumPy, CuPy and PyTorch multiply a floating array by a boolean one
    directly (the mask is widened on the fly, no floating copy of it); the standard has no mixed bool-float
    arithmetic, so elsewhere the mask is cast to ``array``'s dtype first (one more pass and array)."""
    if is_numpy_array(array) or is_cupy_array(array) or is_torch_array(array):
        return array * mask
    return array * xp.astype(mask, array.dtype)


def max_over(xp, x, *, axis: int | None):
    """``xp.max(x, axis=axis)`` with NaN propagating on every backend, as the standard asks: XLA's CPU reductions
    may drop a NaN (openxla/xla#21461; seen with JAX 0.10 on some shapes), so on JAX a reduction over values that
    hold a NaN is set to NaN afterwards (two more operations there, none elsewhere)."""
    out = xp.max(x, axis=axis)
    if is_jax_array(x):
        out = xp.where(xp.any(xp.isnan(x), axis=axis), math.nan, out)
    return out

