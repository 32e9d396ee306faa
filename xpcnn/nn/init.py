"""Seeded parameter initialisation, made directly in the chosen namespace, device and dtype.

Every layer draws its parameters from xpcnn's counter-based generator: ``(seed, stream)`` where the seed is the
layer's ``seed=`` argument or, by default, the global seed (:func:`manual_seed`) with a fresh stream per layer.
The same seed gives the same parameters on every backend.
"""

from __future__ import annotations

import importlib

import array_api_compat
import array_api_compat.numpy as default_namespace

from .._random import has_int64, uniform
from .._validation import as_int

_global = {"seed": 0, "streams": 0}


def manual_seed(seed: int) -> None:
    """Reset the global seed: the layers built after it get the same parameters every time (and the same on every
    backend). Each layer built without ``seed=`` draws a fresh seed from it, in construction order.

    Parameters
    ----------
    seed : int
        The new global seed (0 when the library is imported).

    Raises
    ------
    TypeError
        ``seed`` is not an int.

    Examples
    --------
    >>> from xpcnn import nn
    >>> nn.manual_seed(7)
    >>> a = nn.Linear(3, 2)
    >>> nn.manual_seed(7)
    >>> b = nn.Linear(3, 2)
    >>> bool((a.weight.data == b.weight.data).all())
    True
    >>> nn.manual_seed(0)                     # the seed at import
    """
    _global.update(seed=as_int(seed, "seed"), streams=0)


def next_seed() -> int:
    """A fresh seed from the global one, for a layer built without ``seed=``."""
    seed = (_global["seed"] << 20) + _global["streams"]
    _global["streams"] += 1
    return seed


def resolve(xp=None, device=None, dtype=None):
    """The (namespace, device, dtype) a layer's arrays are made in; NumPy, CPU and float32 by default.

    ``xp`` is an array library or namespace (``numpy``, ``cupy``, ``torch``, ``array_api_strict``...) or its
    importable name (``"cupy"``, ``"jax.numpy"``). ``dtype`` must be a real floating dtype of that library.

    Raises
    ------
    TypeError
        For an ``xp`` that is no array library, or a dtype that is not a real floating one.
    """
    xp = default_namespace if xp is None else _namespace(xp)
    if dtype is None:
        dtype = xp.float32
    try:
        floating = xp.isdtype(dtype, "real floating")
    except Exception:  # not a dtype of this library at all
        floating = False
    if not floating:
        raise TypeError(f"dtype must be a real floating dtype of {xp.__name__} (float32 or float64), got {dtype!r}")
    if device is None:
        device = array_api_compat.device(xp.empty(0, dtype=dtype))
    return xp, device, dtype


def _namespace(xp):
    """The array API namespace of an array library given as a module or by its importable name."""
    if isinstance(xp, str):
        try:
            xp = importlib.import_module(xp)
        except ImportError as error:
            raise ValueError(f"xp {xp!r} names no importable array library ({error})") from None
    try:
        return array_api_compat.array_namespace(xp.empty(0))
    except Exception:
        raise TypeError(
            f"xp must be an array library (numpy, cupy, torch, jax.numpy...) or its name, got {type(xp).__name__}"
        ) from None


def uniform_parameter(shape, bound: float, *, xp, device, dtype, seed: int, stream: int):
    """U(-bound, bound) of ``shape``: PyTorch's default for conv and linear layers uses bound = 1 / sqrt(fan_in)."""
    u = uniform(xp, shape, seed=seed, stream=stream, device=device)
    return xp.astype((2.0 * u - 1.0) * bound, dtype)


def counter_dtype(xp):
    """The dtype of a layer's counters (batch norm's ``num_batches_tracked``): int64 as PyTorch, or int32 in a
    namespace without int64 (JAX without 64-bit mode, which would truncate int64 to int32 with a warning)."""
    return xp.int64 if has_int64(xp) else xp.int32
