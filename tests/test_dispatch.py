"""The dispatch point: which backends take a shortcut. Every shortcut's standard fallback runs on the others."""

from __future__ import annotations

import numpy as np

from xpcnn._dispatch import known_finite, updates_in_place

SHORTCUT_BACKENDS = ("numpy", "torch", "cupy")


def test_updates_in_place_only_where_the_library_allows_it(xp):
    assert updates_in_place(xp.asarray(np.zeros(3, dtype=np.float32))) == (xp.name in SHORTCUT_BACKENDS)


def test_known_finite_only_on_host_numpy(xp):
    finite = xp.asarray(np.arange(4, dtype=np.float32))
    assert known_finite(xp.namespace, finite) == (xp.name == "numpy")
    for bad in (np.inf, -np.inf, np.nan):
        assert not known_finite(xp.namespace, xp.asarray(np.array([0.0, bad], dtype=np.float32)))


def test_multiply_by_mask_on_every_backend(xp):
    from xpcnn._dispatch import multiply_by_mask

    for np_dtype in (np.float32, np.float64) if xp.name != "array_api_strict-no_float64" else (np.float32,):
        a = xp.asarray(np.array([1.5, -2.0, 3.0, 0.25], dtype=np_dtype))
        mask = xp.asarray(np.array([True, False, True, False]))
        got = multiply_by_mask(xp.namespace, a, mask)
        xp.assert_on_backend(got, getattr(xp.namespace, np.dtype(np_dtype).name))
        np.testing.assert_array_equal(xp.to_numpy(got), np.array([1.5, 0.0, 3.0, 0.0], dtype=np_dtype))


def test_max_over_propagates_nan_on_every_backend(xp):
    """The shape on which XLA's CPU reduction dropped the NaN (JAX 0.10), and a plain one."""
    from xpcnn._dispatch import max_over

    for shape, axis in (((10, 9, 64), 1), ((9, 2), 0)):
        a = np.zeros(shape, dtype=np.float32)
        a.reshape(-1)[5] = np.nan
        a.reshape(-1)[-1] = -np.inf
        got = max_over(xp.namespace, xp.asarray(a), axis=axis)
        xp.assert_on_backend(got, xp.namespace.float32)
        np.testing.assert_array_equal(xp.to_numpy(got), a.max(axis=axis))
