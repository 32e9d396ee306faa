"""Saving and loading weights: ``.npz`` files of host arrays, or ``.safetensors`` files.

Two formats, one contract:

* ``"npz"``: NumPy's zip of ``.npy`` arrays, read with ``allow_pickle=False``; needs nothing but NumPy.
* ``"safetensors"``: the `safetensors <https://github.com/huggingface/safetensors>`_ format (a JSON header, then
  the raw little-endian tensors; no pickle, memory-mappable), written and read with the ``safetensors`` package's
  NumPy API (``pip install 'xpcnn[safetensors]'``). PyTorch reads it with ``safetensors.torch.load_file`` and the
  names are PyTorch's ``state_dict`` names for the same structure (see :mod:`xpcnn.interop.torch`), so a file
  written here loads into the equivalent ``torch.nn.Module``, and one written by ``safetensors.torch.save_file``
  loads here. The header's metadata says ``{"format": "pt"}`` (PyTorch's names and weight layouts, as the
  Hugging Face tools expect) and ``{"producer": "xpcnn"}``.

The format is ``format=`` when given, else the path's suffix (``.safetensors`` or ``.npz``); :func:`load` of a path
with another suffix recognises the format by the file's first bytes, and :func:`save` writes ``.npz`` there.

``save`` writes to a temporary file beside the target and renames it into place, so a crash never leaves a
half-written file where a good one was. ``load`` checks every name, shape and dtype against the model before
changing anything (a ValueError lists every mismatch), and converts to the model's own namespace and device:
weights saved from CuPy load into NumPy and back.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import array_api_compat
import numpy as np  # host: weight files hold host arrays

from ._host import to_numpy
from .nn.module import Module

__all__ = ["save", "load", "FORMATS"]

FORMATS = ("npz", "safetensors")
_SUFFIXES = {".npz": "npz", ".safetensors": "safetensors"}
_SAFETENSORS_METADATA = {"format": "pt", "producer": "xpcnn"}
_INSTALL_SAFETENSORS = "pip install 'xpcnn[safetensors]'"


def save(model, path, *, format: str | None = None) -> None:
    """Write ``model.state_dict()`` (or a ``{name: array}`` dict) to ``path``, atomically.

    Parameters
    ----------
    model : xpcnn.nn.Module or dict
        The model, or a dict of arrays of any backend.
    path : str or os.PathLike
        The file to write (replaced if it exists; its folder must exist).
    format : {"npz", "safetensors"}, optional
        The file format; by default ``"safetensors"`` for a ``.safetensors`` suffix, else ``"npz"``.

    Raises
    ------
    TypeError
        For a model that is neither a Module nor a dict.
    ValueError
        For an unknown ``format``.
    FileNotFoundError
        When the folder of ``path`` does not exist.
    ImportError
        For ``"safetensors"`` without the ``safetensors`` package.

    Examples
    --------
    >>> import os, tempfile, numpy as np, xpcnn
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(3, 2, seed=0), nn.ReLU())
    >>> folder = tempfile.mkdtemp()
    >>> xpcnn.save(model, os.path.join(folder, "weights.npz"))
    >>> xpcnn.save(model, os.path.join(folder, "weights.safetensors"))   # needs the safetensors package
    >>> copy = xpcnn.load(nn.Sequential(nn.Linear(3, 2, seed=1), nn.ReLU()), os.path.join(folder, "weights.npz"))
    >>> bool((copy[0].weight.data == model[0].weight.data).all())
    True
    """
    if not isinstance(model, (Module, dict)):
        raise TypeError(f"model must be an xpcnn.nn.Module or a dict of arrays, got {type(model).__name__}")
    path = os.fspath(path)
    fmt = _format(path, format, default="npz")
    if fmt == "safetensors":
        safetensors_numpy = _safetensors_numpy()
    state = model.state_dict() if isinstance(model, Module) else dict(model)
    not_arrays = [f"{name!r} is of type {type(value).__name__}" for name, value in state.items() if not _is_array(value)]
    if not_arrays:
        raise TypeError(f"save: the dict's values must be arrays; {', '.join(not_arrays)}")
    arrays = {name: to_numpy(value) for name, value in state.items()}
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".xpcnn-", suffix=f".{fmt}.tmp", dir=directory)
    os.chmod(tmp, 0o666 & ~_umask())  # the permissions of a file made by open(), not mkstemp's 0600
    try:
        if fmt == "npz":
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # host: writing the file
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            # host: the file's bytes, C-ordered (not np.ascontiguousarray: it turns a 0-d array into a 1-d one)
            contiguous = {name: np.require(a, requirements="C") for name, a in arrays.items()}
            safetensors_numpy.save_file(contiguous, tmp, metadata=_SAFETENSORS_METADATA)
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(model: Module, path, *, format: str | None = None) -> Module:
    """Load weights saved by :func:`save` (or a PyTorch ``state_dict`` saved as safetensors) into ``model``.

    Parameters
    ----------
    model : xpcnn.nn.Module
        The model to load into; unchanged on any error.
    path : str or os.PathLike
        An ``.npz`` or ``.safetensors`` file.
    format : {"npz", "safetensors"}, optional
        By default from the suffix, else from the file's first bytes.

    Returns
    -------
    xpcnn.nn.Module
        ``model``, its parameters and buffers replaced (in its own namespace and device).

    Raises
    ------
    ValueError
        When the file is no weights file of that format (truncated, pickled objects...), or when its names, shapes
        or dtypes do not match the model (every mismatch is listed).
    TypeError
        For a model that is not a Module.
    FileNotFoundError
        When there is no such file.
    ImportError
        For a safetensors file without the ``safetensors`` package.

    Examples
    --------
    >>> import os, tempfile, xpcnn
    >>> from xpcnn import nn
    >>> path = os.path.join(tempfile.mkdtemp(), "linear.safetensors")
    >>> xpcnn.save(nn.Linear(4, 2, seed=0), path)
    >>> xpcnn.load(nn.Linear(4, 2), path).weight.data.shape
    (2, 4)
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an xpcnn.nn.Module to load weights into, got {type(model).__name__}")
    fmt = _format(os.fspath(path), format, default=None) or _sniff(path)
    state = _read_npz(path) if fmt == "npz" else _read_safetensors(path)
    model.load_state_dict(state)
    return model


def _read_safetensors(path) -> dict:
    """``{name: NumPy array}`` of a safetensors file (memory-mapped while read); a ValueError for a bad file."""
    _safetensors_numpy()  # a clear ImportError without the package
    import safetensors  # host: the file reader

    not_weights = f"{os.fspath(path)!r} is not a safetensors weights file"
    try:
        with safetensors.safe_open(os.fspath(path), framework="np") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # host: reading the file
    except FileNotFoundError:
        raise
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{not_weights}: {error}") from error


def _read_npz(path) -> dict:
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
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{not_weights}: {_reason(error)}") from error


def _is_array(value) -> bool:
    if isinstance(value, np.ndarray):  # host: a NumPy array is one
        return True
    try:
        array_api_compat.array_namespace(value)
    except TypeError:
        return False
    return not isinstance(value, (bool, int, float, complex))


def _format(path: str, format: str | None, *, default: str | None) -> str | None:
    """``format`` checked, else the suffix's format, else ``default``."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS} or None (from the suffix), got {format!r}")
        return format
    return _SUFFIXES.get(os.path.splitext(path)[1].lower(), default)


def _sniff(path) -> str:
    """The format of a file whose suffix says none: a zip (``.npz``) starts with ``PK``, a safetensors file with its
    8-byte header length and then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and not head.startswith(b"PK"):
        return "safetensors"
    return "npz"  # and np.load says what is wrong with it


def _safetensors_numpy():
    try:
        import safetensors.numpy  # host: the optional file writer
    except ImportError as error:
        raise ImportError(
            f"the safetensors format needs the safetensors package, which is not installed: {_INSTALL_SAFETENSORS} "
            "(or save as .npz)"
        ) from error
    return safetensors.numpy


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(error: Exception) -> str:
    """NumPy's reason, without its advice to pass ``allow_pickle`` (which ``load`` never does: no pickle)."""
    if "allow_pickle" in str(error):
        return "it holds Python objects (pickled), which xpcnn never loads"
    return str(error)
