"""Saving and loading weights as ``.npz`` files of host arrays.

``save`` writes to a temporary file beside the target and renames it into place, so a crash never leaves a
half-written file where a good one was. ``load`` reads with ``allow_pickle=False``, checks every name, shape and
dtype against the model before changing anything, and converts to the model's own namespace and device: weights
saved from CuPy load into NumPy and back.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np  # host: .npz files are host arrays

from ._host import to_numpy
from .nn.module import Module

__all__ = ["save", "load"]


def save(model, path) -> None:
    """Write ``model.state_dict()`` (or a ``{name: array}`` dict) to ``path`` as ``.npz``, atomically."""
    state = model.state_dict() if isinstance(model, Module) else dict(model)
    arrays = {name: to_numpy(value) for name, value in state.items()}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".xpcnn-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # host: writing the file
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(model: Module, path) -> Module:
    """Load weights saved by :func:`save` into ``model`` (unchanged on any error); returns the model."""
    try:
        with np.load(path, allow_pickle=False) as data:  # host: reading the file
            state = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{os.fspath(path)!r} is not a readable .npz weights file: {error}") from error
    model.load_state_dict(state)
    return model
