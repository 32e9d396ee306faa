"""Where each replica reads its samples, and which samples of a global batch are its own.

A data set is given as one of

* a pair ``(x, y)`` of arrays (any backend; sent once to every worker, straight from the driver, as host NumPy
  arrays),
* the path of an ``.npz`` file with arrays ``x`` and ``y``,
* the path of a zarr group (a directory or any store URL zarr opens) with arrays ``x`` and ``y`` chunked along
  the samples, or a pair of ``zarr.Array``: each replica reads only the rows of its shards, step by step.

Paths must be readable from every worker. Nothing goes through the scheduler: the driver sends a
:class:`DataSpec` (a few strings and, for in-memory data, the arrays), and every replica opens the data itself.

Every replica recomputes the global order of an epoch exactly as :func:`xpcnn.fit` does (``argsort`` of xpcnn's
counter-based uniform numbers for ``(seed, epoch)``) and takes its contiguous slice of each global batch:
:func:`shard_bounds`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np  # host: the data set is read into host memory before it moves to the model's device

from .._host import from_numpy, to_numpy
from .._random import uniform

__all__ = ["DataSpec", "data_spec", "shard_bounds", "batch_bounds", "epoch_order"]


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "arrays", "npz" or "zarr"
    x: Any = None  # host arrays for "arrays"; zarr arrays for a pair of zarr.Array
    y: Any = None
    path: str | None = None

    def open(self):
        """(x, y, n) on the replica: host arrays, or zarr arrays read row by row."""
        if self.kind == "arrays":
            return self.x, self.y
        if self.kind == "npz":
            with np.load(self.path, allow_pickle=False) as f:
                return np.array(f["x"]), np.array(f["y"])
        if self.x is not None:
            return self.x, self.y
        import zarr

        group = zarr.open_group(self.path, mode="r")
        return group["x"], group["y"]


def _is_zarr_array(a) -> bool:
    return type(a).__module__.startswith("zarr") and hasattr(a, "oindex")


def data_spec(data, name: str = "data") -> tuple[DataSpec, tuple, int, Any, Any]:
    """Check ``data`` and describe it for the replicas: ``(spec, sample shape, n, x dtype, y dtype)``."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if path.endswith(".npz"):
            if not os.path.exists(path):
                raise ValueError(f"{name}: no such .npz file {path!r}")
            with np.load(path, allow_pickle=False) as f:
                missing = {"x", "y"} - set(f.files)
                if missing:
                    raise ValueError(f"{name}: the .npz file must hold arrays 'x' and 'y', {path!r} has {f.files}")
                x, y = f["x"], f["y"]
            spec = DataSpec("npz", path=path)
        else:
            try:
                import zarr
            except ImportError as error:
                raise ValueError(f"{name}: {path!r} is not an .npz file, and zarr is not installed to open it") from error
            try:
                group = zarr.open_group(path, mode="r")
                x, y = group["x"], group["y"]
            except Exception as error:  # noqa: BLE001 - zarr raises several kinds
                raise ValueError(f"{name}: {path!r} must be a zarr group with arrays 'x' and 'y' ({error})") from error
            spec = DataSpec("zarr", path=path)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if _is_zarr_array(x) and _is_zarr_array(y):
            spec = DataSpec("zarr", x=x, y=y)
        else:
            for part, a in (("x", x), ("y", y)):
                if not array_api_compat.is_array_api_obj(a):
                    raise TypeError(f"{name}: {part} must be an array, got {type(a).__name__}")
            x, y = to_numpy(x), to_numpy(y)
            spec = DataSpec("arrays", x=x, y=y)
    else:
        raise TypeError(
            f"{name} must be a pair (x, y) of arrays or zarr arrays, an .npz path or a zarr group path, "
            f"got {type(data).__name__}"
        )
    if len(x.shape) < 1 or len(y.shape) < 1:
        raise ValueError(f"{name}: x and y must have a sample axis first, got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: x must hold at least one sample, got 0")
    return spec, tuple(x.shape[1:]), int(x.shape[0]), np.dtype(x.dtype), np.dtype(y.dtype)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each global batch, as :func:`xpcnn.fit` cuts them."""
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def shard_bounds(size: int, replicas: int, rank: int) -> tuple[int, int]:
    """``(lo, hi)``: rank's contiguous slice of a batch of ``size`` samples; the first ``size % replicas`` ranks
    take one sample more (a rank may get none)."""
    base, extra = divmod(size, replicas)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def epoch_order(xp, n: int, seed: int, epoch: int, shuffle: bool, device):
    """The order of the samples in ``epoch``: :func:`xpcnn.fit`'s, computed the same way on the model's device."""
    if not shuffle:
        return xp.arange(n, dtype=xp.int64, device=device)
    return xp.argsort(uniform(xp, (n,), seed=seed, stream=epoch, device=device))


class Samples:
    """A replica's view of a data set: rows by index, in the model's namespace and on its device."""

    def __init__(self, spec: DataSpec, xp, device):
        self.xp, self.device = xp, device
        x, y = spec.open()
        self.zarr = _is_zarr_array(x)
        if self.zarr:
            self.x, self.y = x, y
        else:  # a fresh copy: aligned, and on the model's device
            self.x, self.y = from_numpy(np.asarray(x), xp, device), from_numpy(np.asarray(y), xp, device)
        self.n = int(x.shape[0])

    def rows(self, index):
        """(x, y) of the samples at ``index`` (an int64 array on the model's device), in that order."""
        if not self.zarr:
            return self.xp.take(self.x, index, axis=0), self.xp.take(self.y, index, axis=0)
        host = to_numpy(index)
        if host.size == 0:  # zarr takes no empty selection
            return self.range(0, 0)
        return (from_numpy(np.asarray(self.x.oindex[host]), self.xp, self.device),
                from_numpy(np.asarray(self.y.oindex[host]), self.xp, self.device))

    def range(self, lo: int, hi: int):
        """(x, y) of the samples lo..hi-1."""
        if not self.zarr:
            return self.x[lo:hi, ...], self.y[lo:hi, ...]
        return (from_numpy(np.asarray(self.x[lo:hi]), self.xp, self.device),
                from_numpy(np.asarray(self.y[lo:hi]), self.xp, self.device))
