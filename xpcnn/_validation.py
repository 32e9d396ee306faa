"""Argument checks shared by every op.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument, what was expected and what was given,
so that bad input never surfaces as an ``IndexError`` or a broadcasting error from deep inside an op.
"""

from __future__ import annotations

import math
import numbers
import operator

import array_api_compat
from array_api_compat import array_namespace, device as device_of


def library_name(a) -> str:
    """Short name of the library an array belongs to: ``numpy``, ``torch``, ``array_api_strict``..."""
    return type(a).__module__.split(".")[0]


def namespace_and_device(*, optional=(), **arrays):
    """The array namespace and device shared by the named array arguments.

    ``optional`` names the arguments that may be None (they are skipped then); None for any other is a TypeError.
    Raises a TypeError for a non-array and a ValueError naming both arguments when they come from different
    libraries or live on different devices: xpcnn never copies between host and device behind the user's back.

    An array whose device is not known (a JAX array traced by ``jax.jit``: its device is chosen when the compiled
    function runs) is compatible with every device of its library, so that weights closed over by a jitted
    function meet a traced input; arrays whose devices are known are still compared with each other. The device
    returned is then None (new arrays go where the traced computation runs, JAX's default).
    """
    first_name = first = xp = None
    known_name = known = None  # the first argument whose device is known, and that device
    unknown = False
    for name, a in arrays.items():
        if a is None and name in optional:
            continue
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
        if first is None:
            first_name, first, xp = name, a, array_namespace(a)
        elif array_namespace(a) is not xp:
            raise ValueError(
                f"{name} is a {library_name(a)} array but {first_name} is a {library_name(first)} array; "
                "all arrays of one call must come from the same library"
            )
        device = device_of(a)
        if device is None:
            unknown = True
        elif known_name is None:
            known_name, known = name, device
        elif device != known:
            raise ValueError(
                f"{name} is on device {device!r} but {known_name} is on device {known!r}; "
                "move them to one device explicitly"
            )
    return xp, (None if unknown or first is None else known)


def same_device(a, b) -> bool:
    """Whether ``a`` and ``b`` may be combined without a copy: their devices are equal, or one is not known (a
    traced JAX array: see :func:`namespace_and_device`)."""
    da, db = device_of(a), device_of(b)
    return da is None or db is None or da == db


def check_floating(xp, a, name: str) -> None:
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype (float32 or float64), got {a.dtype}")


_PARAMETER_NAMES = ("weight", "bias", "running_mean", "running_var")  # a layer's arrays, cast with model.to


def check_same_dtype(a, name: str, ref, ref_name: str, *, parameter: bool | None = None) -> None:
    """A TypeError when ``a``'s dtype is not ``ref``'s, saying how to cast (xpcnn never casts behind the user's
    back): a layer's weight against its input suggests ``xp.astype(x, ...)`` or ``model.to(..., dtype=...)``, any
    other pair ``xp.astype(<name>, ...)``. ``parameter`` says whether ``a`` is a layer's array (by default: when
    ``name`` is weight, bias or a running statistic)."""
    if a.dtype == ref.dtype:
        return
    have, want = _dtype_name(a.dtype), _dtype_name(ref.dtype)
    if name in _PARAMETER_NAMES if parameter is None else parameter:
        advice = (f"cast the input, xp.astype({ref_name}, xp.{have}), or the model's parameters, "
                  f"model.to(xp, dtype=xp.{want})")
    else:
        advice = f"cast it, xp.astype({name.split(' ', 1)[0]}, xp.{want})"
    raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}; they must match: {advice}")


def _dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def check_ndim(a, name: str, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")


def check_shape(a, name: str, expected: tuple, what: str) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(a.shape)}")


def as_int(value, name: str, *, minimum: int | None = None) -> int:
    """``value`` as a Python int (NumPy integers too; bools, floats and strings are refused), at least ``minimum``."""
    if _is_bool(value):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_float(value, name: str, *, minimum: float | None = None, finite: bool = True) -> float:
    """``value`` as a Python float: a real number (int, float, NumPy scalar or a 0-d host array is not taken:
    strings and bools are refused), never NaN, finite unless ``finite=False``, at least ``minimum``."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    given, value = value, float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {given!r}")
    return value


def as_bool(value, name: str) -> bool:
    """``value`` as a Python bool: only ``True``/``False`` (and NumPy's bools); strings, ints and None are refused."""
    if not _is_bool(value):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _is_bool(value) -> bool:
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def check_cache(cache, expected: type, op: str) -> None:
    """A TypeError when ``cache`` is not what ``op``'s forward pass returned (a cache handed to the wrong op)."""
    if not isinstance(cache, expected):
        raise TypeError(
            f"cache must be the cache that {op}_forward returned ({expected.__name__}), got {type(cache).__name__}"
        )


def int_pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """``value`` as a (height, width) pair of ints, each at least ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (as_int(value[0], name), as_int(value[1], name))
    else:
        pair = (as_int(value, name),) * 2
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_upstream(dout, expected_shape, cached, dtype, name: str = "dout"):
    """Check an upstream gradient against its forward pass: namespace and device of ``cached`` (an array the
    forward pass kept), the forward output's shape and the forward input's ``dtype``. Returns (xp, device)."""
    xp, device = namespace_and_device(**{name: dout, "the forward pass's arrays": cached})
    check_floating(xp, dout, name)
    check_shape(dout, name, expected_shape, "the forward output's shape")
    if dout.dtype != dtype:
        raise TypeError(f"{name} has dtype {dout.dtype} but the forward input had dtype {dtype}; they must match")
    return xp, device


def cache_repr(cache) -> str:
    """A short summary of a cache (or any record of arrays): its class name and fields, each array as its library,
    shape and dtype, never its values — ``CrossEntropyCache(probs=numpy(64, 10) float32, reduction='mean', ...)``.

    Use it as a cache class's ``__repr__`` (``__repr__ = cache_repr`` in the class body). Works on NamedTuples,
    dataclasses, classes with ``__slots__`` and plain objects; nested records are summarised the same way.
    """
    return f"{type(cache).__name__}({', '.join(f'{k}={_summary(v)}' for k, v in _fields(cache).items())})"


def _fields(record) -> dict:
    if hasattr(record, "_asdict"):  # NamedTuple
        return dict(record._asdict())
    import dataclasses

    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    slots = [name for cls in type(record).__mro__ for name in getattr(cls, "__slots__", ())]
    if slots:
        return {name: getattr(record, name, None) for name in slots}
    return dict(vars(record)) if hasattr(record, "__dict__") else {}


_SUMMARY_LIMIT = 60  # characters of a non-array field's repr kept in a cache summary


def _summary(value) -> str:
    if array_api_compat.is_array_api_obj(value):
        return f"{library_name(value)}{tuple(value.shape)} {_dtype_name(value.dtype)}"
    if _is_record(value):
        return cache_repr(value)
    if isinstance(value, (tuple, list)) and any(array_api_compat.is_array_api_obj(v) or _is_record(v) for v in value):
        inner = ", ".join(_summary(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    text = repr(value)
    return text if len(text) <= _SUMMARY_LIMIT else text[: _SUMMARY_LIMIT - 3] + "..."


def _is_record(value) -> bool:
    """A cache-like record: a NamedTuple or a dataclass instance (summarised field by field)."""
    import dataclasses

    return hasattr(value, "_asdict") or (dataclasses.is_dataclass(value) and not isinstance(value, type))
