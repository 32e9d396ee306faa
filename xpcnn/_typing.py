"""Type aliases of the public signatures."""

from __future__ import annotations

from typing import Any, TypeAlias

Array: TypeAlias = Any
"""An array of any array API library (NumPy, CuPy, PyTorch, JAX, Dask, array-api-strict): the type of every array
argument and result. The standard defines no common array type, so this documents rather than checks."""

__all__ = ["Array"]
