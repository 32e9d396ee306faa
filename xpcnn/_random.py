"""Counter-based random numbers written on the array API, so that they are made on the array's own device.

The array API standard has no random module. ``uniform(xp, shape, seed=, stream=)`` hashes each element's index
together with ``(seed, stream)`` (the ``lowbias32`` integer hash, twice) into 24 random bits. The same
``(seed, stream, shape)`` gives the same numbers on every backend and device, and nothing crosses to the host.
32-bit products are split into 16-bit halves so that int64 never overflows.
"""

from __future__ import annotations

import math

from ._validation import as_int

_MASK32 = 0xFFFFFFFF


def _mul32(x, constant: int):
    """(x * constant) mod 2**32 for int64 arrays holding values in [0, 2**32)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + ((high * (constant & 0xFFFF)) << 16)) & _MASK32


def _hash32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


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
    index = xp.arange(offset, offset + math.prod(shape), dtype=xp.int64, device=device)
    key = _key(seed, stream)
    bits = _hash32(_hash32(index ^ key) ^ _hash32(xp.full_like(index, key ^ 0x5BD1E995)))
    return xp.reshape(xp.astype(bits >> 8, dtype) * (1.0 / 2**24), tuple(shape))
