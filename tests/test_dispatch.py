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
