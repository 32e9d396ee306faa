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
    if not isinstance(model, (Module, dict)):
        raise TypeError(f"model must be an xpcnn.nn.Module or a dict of arrays, got {type(model).__name__}")
    state = model.state_dict() if isinstance(model, Module) else dict(model)
    arrays = {name: to_numpy(value) for name, value in state.items()}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".xpcnn-", suffix=".npz.tmp", dir=directory)
    os.chmod(tmp, 0o666 & ~_umask())  # the permissions of a file made by open(), not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # host: writing the file
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(model: Module, path) -> Module:
    """Load weights saved by :func:`save` into ``model`` (unchanged on any error); returns the model."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module to load weights into, got {type(model).__name__}")
    not_weights = f"{os.fspath(path)!r} is not an xpcnn weights file (an .npz of arrays written by xpcnn.save)"
    try:
        data = np.load(path, allow_pickle=False)  # host: reading the file
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{not_weights}: {_reason(error)}") from error
    if not isinstance(data, np.lib.npyio.NpzFile):  # host: a .npy file holds one bare array
        raise ValueError(f"{not_weights}: it holds a single {type(data).__name__}, not named arrays")
    try:
        with data:
            state = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{not_weights}: {_reason(error)}") from error
    model.load_state_dict(state)
    return model


def _reason(error: Exception) -> str:
    """NumPy's reason, without its advice to pass ``allow_pickle`` (which ``load`` never does: no pickle)."""
    if "allow_pickle" in str(error):
        return "it holds Python objects (pickled), which xpcnn never loads"
    return str(error)
