"""The ``xp`` fixture: every test that takes it runs once per installed backend and device.

Backends: NumPy; array-api-strict (API version pinned) on its CPU device, on ``device1`` (a stand-in for a GPU:
it raises when an array lands on the default device or leaks through NumPy) and on ``no_float64``; PyTorch CPU
through array-api-compat when torch is installed (and PyTorch CUDA, id ``torch-cuda``, where a GPU is); JAX with
64-bit enabled (and on a GPU, id ``jax-gpu``, where jax has one); Dask with the batch axis chunked; CuPy when a GPU
is available. ``-k "cupy or torch-cuda or jax-gpu"`` selects the GPU runs (benchmarks/gpu_check.sh). Set
``XPCNN_REQUIRE_TORCH=1`` to make a missing torch an error instead of a skip (CI does).
"""

from __future__ import annotations

import os

import array_api_compat
import numpy as np
import pytest

from tests.helpers import Backend, numpy_backend

API_VERSION = "2024.12"
LAZY_BACKENDS = ("jax", "dask")
LAZY_CONFIGS = 4  # random configurations per test on JAX and Dask, whose eager ops compile or build graphs per shape


def _backends():
    params = [pytest.param(numpy_backend(), id="numpy")]

    try:
        import array_api_strict
    except ImportError:
        array_api_strict = None
    for device, float64 in (("CPU_DEVICE", True), ("device1", True), ("no_float64", False)):
        name = f"array_api_strict-{device}"
        if array_api_strict is None:
            params.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason="array-api-strict missing")))
        else:
            backend = Backend(name, array_api_strict, array_api_strict.Device(device), float64=float64)
            params.append(pytest.param(backend, id=name))

    try:
        import torch
    except ImportError:
        params.append(pytest.param(None, id="torch", marks=pytest.mark.skip(reason="torch is not installed")))
    else:
        ns = array_api_compat.array_namespace(torch.empty(0))
        params.append(pytest.param(Backend("torch", ns, torch.device("cpu")), id="torch"))
        if torch.cuda.is_available():
            params.append(pytest.param(Backend("torch", ns, torch.device("cuda", 0)), id="torch-cuda"))
        else:
            params.append(pytest.param(None, id="torch-cuda", marks=pytest.mark.skip(reason="no PyTorch CUDA")))

    try:
        import jax
    except ImportError:
        params.append(pytest.param(None, id="jax", marks=pytest.mark.skip(reason="jax is not installed")))
    else:
        jax.config.update("jax_enable_x64", True)
        ns = array_api_compat.array_namespace(jax.numpy.empty(0))
        params.append(pytest.param(Backend("jax", ns, jax.devices("cpu")[0]), id="jax"))
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend
            gpus = []
        if gpus:
            params.append(pytest.param(Backend("jax", ns, gpus[0]), id="jax-gpu"))
        else:
            params.append(pytest.param(None, id="jax-gpu", marks=pytest.mark.skip(reason="no JAX GPU")))

    try:
        import dask.array as da
    except ImportError:
        params.append(pytest.param(None, id="dask", marks=pytest.mark.skip(reason="dask is not installed")))
    else:
        ns = array_api_compat.array_namespace(da.empty(0))
        params.append(pytest.param(Backend("dask", ns, "cpu"), id="dask"))

    try:
        import cupy

        gpu = cupy.cuda.is_available()
    except Exception:  # cupy missing, or no CUDA driver
        gpu = False
    if gpu:
        ns = array_api_compat.array_namespace(cupy.empty(0))
        params.append(pytest.param(Backend("cupy", ns, cupy.cuda.Device(0)), id="cupy"))
    else:
        params.append(pytest.param(None, id="cupy", marks=pytest.mark.skip(reason="no CuPy with a GPU")))
    return params


def pytest_configure(config):
    if os.environ.get("XPCNN_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise pytest.UsageError("XPCNN_REQUIRE_TORCH=1 but torch is not installed") from None
    try:
        import array_api_strict
    except ImportError:
        return
    array_api_strict.set_array_api_strict_flags(api_version=API_VERSION)


@pytest.fixture(params=_backends())
def xp(request):
    return request.param


def pytest_collection_modifyitems(config, items):
    """On the lazy backends (JAX, Dask) keep the first LAZY_CONFIGS random configurations of each test and drop
    tests marked ``eager_only`` (finite differences: they test the maths, which the eager backends cover)."""
    kept, dropped = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        backend = spec.params.get("xp") if spec else None
        lazy = getattr(backend, "name", None) in LAZY_BACKENDS
        too_many = spec is not None and spec.indices.get("config", 0) >= LAZY_CONFIGS
        (dropped if lazy and (too_many or item.get_closest_marker("eager_only")) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the reference; skips without it unless XPCNN_REQUIRE_TORCH=1."""
    try:
        import torch
    except ImportError:
        if os.environ.get("XPCNN_REQUIRE_TORCH") == "1":
            pytest.fail("XPCNN_REQUIRE_TORCH=1 but torch is not installed")
        pytest.skip("torch is not installed")
    return torch
