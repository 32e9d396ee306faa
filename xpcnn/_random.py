"""Counter-based random numbers written on the array API, so that they are made on the array's own device.

The array API standard has no random module. ``uniform(xp, shape, seed=, stream=)`` hashes each element's index
together with ``(seed, stream)`` (the ``lowbias32`` integer hash, twice) into 24 random bits. The same
``(seed, stream, shape)`` gives the same numbers on every backend and device, and nothing crosses to the host.
32-bit products are split into 16-bit halves so that int64 never overflows.

A namespace without int64 (JAX without ``jax_enable_x64``, whose int64 silently becomes int32) hashes in uint32
instead, its products split into 16-bit halves too so that no operation overflows 32 bits: the same function of
the index, so the same numbers as every other backend.
"""

from __future__ import annotations

import math

from ._validation import as_int

_MASK32 = 0xFFFFFFFF


def _mul32(x, constant: int):
    """(x * constant) mod 2**32 for int64 arrays holding values in [0, 2**32)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + ((high * (constant & 0xFFFF)) << 16)) & _MASK32


def _mul32_narrow(x, constant: int):
    """(x * constant) mod 2**32 for uint32 arrays, no intermediate value reaching 2**32 (no overflow to rely on):
    x * c = low * c_low + 2**16 * (high * c_low + low * c_high), mod 2**32."""
    low, high = x & 0xFFFF, x >> 16
    c_low, c_high = constant & 0xFFFF, constant >> 16
    product = low * c_low  # < 2**32
    middle = ((high * c_low) & 0xFFFF) + ((low * c_high) & 0xFFFF) + (product >> 16)  # < 3 * 2**16
    return ((middle & 0xFFFF) << 16) | (product & 0xFFFF)


def _hash32(x, mul32=_mul32):
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def has_int64(xp) -> bool:
    """Whether ``xp`` has a real int64 (JAX without 64-bit mode has not: it makes int32 arrays instead)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return True
    return "int64" in info().dtypes(kind="signed integer")


def _mix(key: int, part: int) -> int:
    """One round of the key mixer: ``part`` (any Python int, its low and high 32-bit words) into ``key``."""
    key = (key * 0x9E3779B1 + (part & _MASK32) + 0x85EBCA6B * ((part >> 32) & _MASK32) + 1) & _MASK32
    return key ^ (key >> 15)


def _key(seed: int, stream: int) -> int:
    """A 32-bit key for (seed, stream), mixed on the host (plain Python ints)."""
    return _mix(_mix(0, seed), stream)


def _stream_key(xp, seed: int, stream, *, wide: bool, device):
    """``_key(seed, stream)`` for a 0-d integer array ``stream`` (a counter traced by ``jax.jit``), mixed on the
    device: a 0-d int64 (``wide``) or uint32 array holding the key."""
    start = (_mix(0, seed) * 0x9E3779B1 + 1) & _MASK32  # the host's part of the second round
    if wide:
        part = xp.astype(stream, xp.int64)
        key = (start + (part & _MASK32) + _mul32((part >> 32) & _MASK32, 0x85EBCA6B)) & _MASK32
    else:  # a stream of at most 32 bits: its high word is all ones (negative) or zero, times 0x85EBCA6B mod 2**32
        high_term = xp.astype(stream < 0, xp.uint32) * ((-0x85EBCA6B) & _MASK32)
        key = _add32_narrow(_add32_narrow(xp.astype(stream, xp.uint32), high_term),
                            xp.asarray(start, dtype=xp.uint32, device=device))
    return key ^ (key >> 15)


def _add32_narrow(a, b):
    """(a + b) mod 2**32 for uint32 arrays, no intermediate value reaching 2**32."""
    low = (a & 0xFFFF) + (b & 0xFFFF)
    high = ((a >> 16) + (b >> 16) + (low >> 16)) & 0xFFFF
    return (high << 16) | (low & 0xFFFF)


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def uniform(xp, shape, *, seed: int, stream=0, offset: int = 0, device, dtype=None):
    """Uniform numbers in [0, 1) of ``shape`` on ``device``, in float32 (or ``dtype`` float64): 24 random bits
    need at least float32 (float16 would overflow), so callers cast the result to a smaller dtype themselves.

    ``stream`` is an int or a 0-d integer array of ``xp`` (a counter that ``jax.jit`` traces: the key is then mixed
    on the device, giving the numbers the int would). ``offset`` skips that many numbers of the ``(seed, stream)``
    sequence: element ``i`` (in C order) is the number a call without offset gives at flat index ``offset + i``. A
    block of rows of a larger array thus gets the very numbers those rows get in the whole array (data-parallel
    dropout draws a shard's mask this way).
    """
    seed = as_int(seed, "seed")
    if _is_array(stream):
        if stream.ndim != 0 or not xp.isdtype(stream.dtype, "integral"):
            raise TypeError(f"stream must be an int or a 0-d integer array, got shape {tuple(stream.shape)} and "
                            f"dtype {stream.dtype}")
    else:
        stream = as_int(stream, "stream")
    offset = as_int(offset, "offset", minimum=0)
    dtype = xp.float32 if dtype is None else dtype
    if dtype not in (xp.float32, getattr(xp, "float64", None)):
        raise ValueError(f"uniform numbers are made in float32 or float64, got {dtype}")
    size, wide = math.prod(shape), has_int64(xp)
    if not wide:
        bits = _narrow_bits(xp, size, offset, stream if _is_array(stream) else _key(seed, stream), device, seed=seed)
    elif _is_array(stream):
        index = xp.arange(offset, offset + size, dtype=xp.int64, device=device)
        key = _stream_key(xp, seed, stream, wide=True, device=device)
        bits = _hash32(_hash32(index ^ key) ^ _hash32(key ^ 0x5BD1E995))
    else:
        index = xp.arange(offset, offset + size, dtype=xp.int64, device=device)
        key = _key(seed, stream)
        bits = _hash32(_hash32(index ^ key) ^ _hash32(xp.full_like(index, key ^ 0x5BD1E995)))
    return xp.reshape(xp.astype(bits >> 8, dtype) * (1.0 / 2**24), tuple(shape))


def _narrow_bits(xp, size: int, offset: int, key, device, *, seed: int = 0):
    """The hash of ``uniform`` in uint32, for a namespace without int64 (the same bits). ``key``: the host key, or
    a 0-d integer array holding the stream (its key is mixed with ``seed`` on the device)."""
    if offset + size > 2**32:
        raise ValueError(
            f"uniform: {offset + size} numbers need 64-bit indices, which this namespace ({xp.__name__}) lacks; "
            "enable 64-bit integers (jax.config.update('jax_enable_x64', True) for JAX)"
        )
    index = xp.arange(size, dtype=xp.uint32, device=device)
    if offset:
        index = index + xp.asarray(offset, dtype=xp.uint32, device=device)
    if _is_array(key):
        key = _stream_key(xp, seed, key, wide=False, device=device)
    else:  # constants above 2**31 go in as uint32 arrays: JAX refuses Python ints past int32 beside uint32 arrays
        key = xp.asarray(key, dtype=xp.uint32, device=device)
    return _hash32(_hash32(index ^ key, _mul32_narrow) ^ _hash32(key ^ 0x5BD1E995, _mul32_narrow), _mul32_narrow)
