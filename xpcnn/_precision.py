"""Low precision: float16 and bfloat16 are computed in float32 and rounded once, as PyTorch does.

PyTorch computes every op on a 16-bit floating type in float32 (its "opmath" type: sums, variances, products and
scalars such as a leaky ReLU's slope are never rounded to 16 bits on the way) and rounds the result to the input's
dtype at the end. xpcnn does the same, in one place: a forward function decorated with :func:`half_in_float32`
receives its 16-bit floating arrays cast to float32 and returns its output cast back; its cache remembers the
input dtype, and the matching backward function, decorated with :func:`half_in_float32_backward`, casts ``dout``
up and the gradients back down. Float32 and float64 inputs pass straight through.

The float32 temporaries take twice the memory of the 16-bit arrays they come from.
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat

COMPUTE_DTYPE = "float32"
"""The dtype in which 16-bit floating inputs are computed (``xp.float32`` of the input's namespace)."""


def is_low_precision(xp, dtype) -> bool:
    """Whether ``dtype`` is a floating type narrower than float32 (float16, bfloat16)."""
    return xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32


class LowPrecisionCache:
    """The cache of a forward pass computed in float32 for 16-bit input: the float32 computation's own ``cache``
    and the input ``dtype`` (which ``dout`` must have, and which the gradients get). Attributes of the inner cache
    are readable through it; its floating arrays are given in ``dtype``."""

    __slots__ = ("cache", "dtype")

    def __init__(self, cache: Any, dtype: Any):
        self.cache, self.dtype = cache, dtype

    def __getattr__(self, name):
        if name in LowPrecisionCache.__slots__:  # not set yet (unpickling): no inner cache to ask
            raise AttributeError(name)
        value = getattr(self.cache, name)
        if array_api_compat.is_array_api_obj(value):
            xp = array_api_compat.array_namespace(value)
            if xp.isdtype(value.dtype, "real floating"):
                return xp.astype(value, self.dtype)
        return value

    def __repr__(self):
        return f"LowPrecisionCache({type(self.cache).__name__}, dtype={self.dtype})"


def _may_be_low_precision(values) -> bool:
    """A cheap first look: whether any value has a dtype whose name ends in ``float16`` (float16, bfloat16, in
    every library's spelling). Most calls have none and skip the namespace lookups of :func:`_floating_arrays`."""
    return any(str(getattr(v, "dtype", "")).endswith("float16") for v in values)


def _floating_arrays(values):
    return [
        v for v in values
        if array_api_compat.is_array_api_obj(v) and array_api_compat.array_namespace(v).isdtype(v.dtype, "real floating")
    ]


def half_in_float32(forward):
    """Decorate ``NAME_forward(...) -> (out, cache)``: when every floating array argument has one 16-bit floating
    dtype (and one namespace), they are computed in float32, ``out`` is rounded back and the cache is a
    :class:`LowPrecisionCache`. Otherwise (float32, float64, or mixed dtypes, which the op itself rejects) the call
    passes through unchanged."""

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        values = [*args, *kwargs.values()]
        if not _may_be_low_precision(values):
            return forward(*args, **kwargs)
        floating = _floating_arrays(values)
        if not floating:
            return forward(*args, **kwargs)
        xp, dtype = array_api_compat.array_namespace(floating[0]), floating[0].dtype
        if not is_low_precision(xp, dtype) or any(
            a.dtype != dtype or array_api_compat.array_namespace(a) is not xp for a in floating
        ):
            return forward(*args, **kwargs)
        compute = getattr(xp, COMPUTE_DTYPE)
        up = lambda v: xp.astype(v, compute) if any(v is a for a in floating) else v  # noqa: E731
        out, cache = forward(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return xp.astype(out, dtype), LowPrecisionCache(cache, dtype)

    return wrapper


def half_in_float32_backward(backward):
    """Decorate ``NAME_backward(dout, cache, ...)``: for a :class:`LowPrecisionCache`, ``dout`` (which must have
    the forward input's dtype) is cast to float32, the inner cache is used, and every gradient is rounded back."""
    dout_name = backward.__code__.co_varnames[0]

    @functools.wraps(backward)
    def wrapper(dout, cache, *args, **kwargs):
        if not isinstance(cache, LowPrecisionCache):
            return backward(dout, cache, *args, **kwargs)
        if array_api_compat.is_array_api_obj(dout):
            xp = array_api_compat.array_namespace(dout)
            if dout.dtype != cache.dtype:
                raise TypeError(
                    f"{dout_name} has dtype {dout.dtype} but the forward input had dtype {cache.dtype}; they must match"
                )
            dout = xp.astype(dout, getattr(xp, COMPUTE_DTYPE))
        grads = backward(dout, cache.cache, *args, **kwargs)

        def down(g):
            return g if g is None else array_api_compat.array_namespace(g).astype(g, cache.dtype)

        return tuple(map(down, grads)) if isinstance(grads, tuple) else down(grads)

    return wrapper
