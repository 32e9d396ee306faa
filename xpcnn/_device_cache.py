"""Small constant arrays that an op builds from host data (per-window codes, divisors, index tables), made once per
(library, device, what) and kept, so that later calls copy nothing from the host.

On PyTorch CUDA a copy from pageable host memory makes the host wait for the copy, and every copy is a launch;
:func:`xpcnn._windows.window_indices_on` keeps the window index arrays this way, :func:`on_device` does the same for
everything else. The arrays of lazy libraries (JAX, whose arrays made under ``jax.jit`` are tracers that must not
outlive the trace; Dask) are never kept: they are built on every call.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any

from array_api_compat import is_dask_namespace, is_jax_namespace

__all__ = ["CACHE_SIZE", "on_device", "keeps_arrays", "clear"]

CACHE_SIZE = 256
"""How many arrays :func:`on_device` keeps (the least recently used goes first). They are small: one value per
window position or per output row/column, never per sample or channel."""

_cache: collections.OrderedDict = collections.OrderedDict()
_lock = threading.Lock()


def keeps_arrays(xp) -> bool:
    """Whether arrays of namespace ``xp`` may be kept between calls: not JAX's (tracers under ``jax.jit``) nor
    Dask's (graphs)."""
    return not (is_jax_namespace(xp) or is_dask_namespace(xp))


def on_device(xp, device, key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()`` (an array, or a tuple of arrays, made on ``device`` with ``xp``), made once per
    (``xp``, ``device``, ``key``) and kept. ``key`` names what is built and everything it depends on (the
    geometry, the dtype as a string). Lazy libraries (:func:`keeps_arrays`) build it on every call."""
    if not keeps_arrays(xp):
        return build()
    full_key = (getattr(xp, "__name__", repr(xp)), repr(device), key)
    with _lock:  # ops may be called from several threads at once
        if full_key in _cache:
            _cache.move_to_end(full_key)
            return _cache[full_key]
        value = _cache[full_key] = build()
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return value


def clear() -> None:
    """Forget every kept array (tests; or to free device memory)."""
    with _lock:
        _cache.clear()
