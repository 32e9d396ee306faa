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


def _has_int64(xp) -> bool:
    """Whether ``xp`` has a real int64 (JAX without 64-bit mode has not: it makes int32 arrays instead)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return True
    return "int64" in info().dtypes(kind="signed integer")


def _key(seed: int, stream: int) -> int:
    """A 32-bit key for (seed, stream), mixed on the host (plain Python ints)."""
    key = 0
    for part in (seed, stream):
        key = (key * 0x9E3779B1 + (part & _MASK32) + 0x85EBCA6B * ((part >> 32) & _MASK32) + 1) & _MASK32
        key ^= key >> 15
    return key


def uniform(xp, shape, *, seed: int, stream: int = 0, offset: int = 0, device, dtype=None):
    """Uniform numbers in [0, 1) of ``shape`` on ``device``, in float32 (or ``dtype`` float64): 24 random bits
    need at least float32 (float16 would overflow), so callers cast the result to a smaller dtype themselves.

    ``offset`` skips that many numbers of the ``(seed, stream)`` sequence: element ``i`` (in C order) is the
    number a call without offset gives at flat index ``offset + i``. A block of rows of a larger array thus gets
    the very numbers those rows get in the whole array (data-parallel dropout draws a shard's mask this way).
    """
    seed, stream = as_int(seed, "seed"), as_int(stream, "stream")
    offset = as_int(offset, "offset", minimum=0)
    dtype = xp.float32 if dtype is None else dtype
    if dtype not in (xp.float32, getattr(xp, "float64", None)):
        raise ValueError(f"uniform numbers are made in float32 or float64, got {dtype}")
    key = _key(seed, stream)
    if _has_int64(xp):
        index = xp.arange(offset, offset + math.prod(shape), dtype=xp.int64, device=device)
        bits = _hash32(_hash32(index ^ key) ^ _hash32(xp.full_like(index, key ^ 0x5BD1E995)))
    else:
        bits = _narrow_bits(xp, math.prod(shape), offset, key, device)
    return xp.reshape(xp.astype(bits >> 8, dtype) * (1.0 / 2**24), tuple(shape))


def _narrow_bits(xp, size: int, offset: int, key: int, device):
    """The hash of ``uniform`` in uint32, for a namespace without int64 (the same bits)."""
    if offset + size > 2**32:
        raise ValueError(
            f"uniform: {offset + size} numbers need 64-bit indices, which this namespace ({xp.__name__}) lacks; "
            "enable 64-bit integers (jax.config.update('jax_enable_x64', True) for JAX)"
        )
    # Constants above 2**31 go in as uint32 arrays: JAX refuses Python ints past int32 beside uint32 arrays.
    index = xp.arange(size, dtype=xp.uint32, device=device)
    if offset:
        index = index + xp.asarray(offset, dtype=xp.uint32, device=device)
    key_array = xp.full_like(index, key)
    salt = xp.full_like(index, key ^ 0x5BD1E995)
    return _hash32(_hash32(index ^ key_array, _mul32_narrow) ^ _hash32(salt, _mul32_narrow), _mul32_narrow)
