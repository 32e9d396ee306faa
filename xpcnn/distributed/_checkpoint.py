"""Fault-tolerant training checkpoints: one ``.npz`` of arrays and a JSON manifest, written atomically, no pickle.

A checkpoint directory holds ``manifest.json`` and the ``state-<step>.npz`` it names. Writing one: the new npz
goes to a temporary file, is flushed to disk and renamed into place; then the manifest likewise; then older npz
files are removed. A crash at any moment leaves the previous manifest and the npz it names intact, so a reader
always sees one whole checkpoint. The manifest records the npz's SHA-256, checked on reading.

npz keys: ``model/<state-dict name>``, ``optimizer/<parameter index>/<state name>``, ``driver/<name>``. Everything
else (step, epoch, history, hyperparameters, dropout counters, non-array optimizer state) is in the manifest.
(This is the data-parallel trainer's own small writer; it is meant to be unified with :mod:`xpcnn.checkpoint`.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np  # host: checkpoints are host files

from .._host import to_numpy

__all__ = ["write", "read", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "xpcnn.distributed checkpoint 1"


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def write(directory: str, snapshot: dict) -> None:
    """Write ``snapshot`` (see :func:`xpcnn.distributed._fit` for its keys) into ``directory`` atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays, optimizer_scalars = {}, {}
    for name, value in snapshot["model"].items():
        arrays[f"model/{name}"] = to_numpy(value)
    for index, entry in snapshot["optimizer"]["state"].items():
        for key, value in entry.items():
            if _is_array(value):
                arrays[f"optimizer/{index}/{key}"] = to_numpy(value)
            else:
                optimizer_scalars.setdefault(str(index), {})[key] = value
    for name, value in snapshot["driver_arrays"].items():
        arrays[f"driver/{name}"] = to_numpy(value)
    step = snapshot["meta"]["step"]
    npz_name = f"state-{step:09d}.npz"
    _atomic_write(os.path.join(directory, npz_name), lambda f: np.savez(f, **arrays))
    with open(os.path.join(directory, npz_name), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    manifest = {
        "format": FORMAT,
        "arrays": npz_name,
        "sha256": digest,
        **snapshot["meta"],
        "optimizer_scalars": optimizer_scalars,
        "param_groups": snapshot["optimizer"]["param_groups"],
    }
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _atomic_write(os.path.join(directory, MANIFEST), lambda f: f.write(text))
    for old in os.listdir(directory):
        if old.startswith("state-") and old.endswith(".npz") and old != npz_name:
            os.unlink(os.path.join(directory, old))


def read(directory: str) -> dict | None:
    """The snapshot in ``directory``, or None when it holds no manifest. Raises a ValueError for a damaged one."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        manifest = json.loads(f.read())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"checkpoint {directory!r}: not a {FORMAT!r} manifest")
    npz_path = os.path.join(directory, manifest["arrays"])
    with open(npz_path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != manifest["sha256"]:
            raise ValueError(f"checkpoint {directory!r}: {manifest['arrays']} does not match its manifest's SHA-256")
    model, driver_arrays, optimizer_state = {}, {}, {}
    with np.load(npz_path, allow_pickle=False) as f:
        for key in f.files:
            kind, rest = key.split("/", 1)
            if kind == "model":
                model[rest] = np.array(f[key])
            elif kind == "driver":
                driver_arrays[rest] = np.array(f[key])
            else:
                index, name = rest.split("/", 1)
                optimizer_state.setdefault(int(index), {})[name] = np.array(f[key])
    for index, entry in manifest.pop("optimizer_scalars").items():
        optimizer_state.setdefault(int(index), {}).update(entry)
    groups = manifest.pop("param_groups")
    for group in groups:
        for key, value in group.items():
            if isinstance(value, list) and key != "params":
                group[key] = tuple(value)
    for drop in ("format", "arrays", "sha256"):
        manifest.pop(drop)
    return {"model": model, "optimizer": {"state": optimizer_state, "param_groups": groups},
            "driver_arrays": driver_arrays, "meta": manifest}
