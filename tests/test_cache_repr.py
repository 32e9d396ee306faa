"""cache_repr: a cache prints as its class and fields, arrays as library, shape and dtype, never their values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from xpcnn._validation import cache_repr


class _Inner(NamedTuple):
    mask: Any
    p: float

    __repr__ = cache_repr


@dataclass
class _Record:
    x: Any
    parts: tuple
    inner: Any
    note: str


class _Slots:
    __slots__ = ("a", "b")

    def __init__(self):
        self.a, self.b = np.zeros((2, 3), np.float32), None


def test_cache_repr_summarises_arrays_and_nested_records(xp):
    big = xp.asarray(np.arange(10000.0, dtype=np.float32).reshape(100, 100))
    inner = _Inner(xp.asarray(np.ones((4, 5), bool)), 0.5)
    lib = type(big).__module__.split(".")[0]
    assert repr(inner) == f"_Inner(mask={lib}(4, 5) bool, p=0.5)"
    text = cache_repr(_Record(big, (big, 3), inner, "x" * 200))
    assert text.startswith(f"_Record(x={lib}(100, 100) float32, parts=({lib}(100, 100) float32, 3), inner=_Inner(")
    assert "9999" not in text and len(text) < 250 and text.endswith("...)")
    assert cache_repr(_Slots()) == "_Slots(a=numpy(2, 3) float32, b=None)"
