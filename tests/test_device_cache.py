"""Small constant arrays kept per (library, device, key): made once, then taken without a host copy; never kept for
JAX or Dask."""

from __future__ import annotations

import array_api_compat
import numpy as np

from xpcnn import _device_cache


def test_built_once_per_library_device_and_key(xp):
    builds = []

    def build():
        builds.append(1)
        return xp.asarray(np.arange(3, dtype=np.float32))

    device = array_api_compat.device(xp.asarray(np.zeros(1, dtype=np.float32)))
    first = _device_cache.on_device(xp.namespace, device, ("test", 3), build)
    second = _device_cache.on_device(xp.namespace, device, ("test", 3), build)
    _device_cache.on_device(xp.namespace, device, ("test", 4), build)
    kept = _device_cache.keeps_arrays(xp.namespace)
    assert kept == (xp.name not in ("jax", "dask") and not xp.name.startswith(("jax", "dask")))
    assert (second is first) == kept
    assert len(builds) == (2 if kept else 3)
    np.testing.assert_array_equal(xp.to_numpy(second), np.arange(3, dtype=np.float32))


def test_the_least_recently_used_goes_first():
    import array_api_compat.numpy as xp

    _device_cache.clear()
    first = _device_cache.on_device(xp, "cpu", "first", lambda: xp.zeros(1))
    for k in range(_device_cache.CACHE_SIZE):
        _device_cache.on_device(xp, "cpu", k, lambda: xp.zeros(1))
    assert _device_cache.on_device(xp, "cpu", "first", lambda: xp.zeros(1)) is not first
    assert len(_device_cache._cache) == _device_cache.CACHE_SIZE
