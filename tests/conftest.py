"""The ``xp`` fixture: every test that takes it runs once per installed backend and device.

The machinery is the public toolkit's (:mod:`xpcnn.testing`): NumPy; array-api-strict (API version pinned) on its
CPU device, on ``device1`` (a stand-in for a GPU: it raises when an array lands on the default device or leaks
through NumPy) and on ``no_float64``; PyTorch CPU through array-api-compat when torch is installed (and PyTorch CUDA,
id ``torch-cuda``, where a GPU is); JAX with 64-bit enabled (and on a GPU, id ``jax-gpu``); Dask with the batch axis
chunked; CuPy when a GPU is available. ``-k "cupy or torch-cuda or jax-gpu"`` selects the GPU runs
(benchmarks/gpu_check.sh). The project's matrix leaves out the
toolkit's ``jax-jit`` (the same JAX arrays again: tests/test_all_ops.py compiles every op under ``jax.jit``, and the
toolkit's own tests run it). Set ``XPCNN_REQUIRE_TORCH=1`` to make a missing torch an error instead of a skip (CI
does).
"""

from __future__ import annotations

from xpcnn.testing import API_VERSION, xp_fixture  # noqa: F401  (API_VERSION: the pinned array API version)
from xpcnn.testing.backends import LAZY_BACKENDS  # noqa: F401
from xpcnn.testing.pytest_plugin import pytest_configure, torch  # noqa: F401  (hook and fixture, registered here)

LAZY_CONFIGS = 4  # random configurations per test on JAX and Dask, whose eager ops compile or build graphs per shape

xp = xp_fixture(jax_jit=False)


def pytest_collection_modifyitems(config, items):
    """On the lazy backends (JAX, Dask) keep the first LAZY_CONFIGS random configurations of each test and drop
    tests marked ``eager_only`` (finite differences: they test the maths, which the eager backends cover)."""
    kept, dropped, configs_seen = [], [], {}
    for item in items:
        spec = getattr(item, "callspec", None)
        backend = spec.params.get("xp") if spec else None
        lazy = getattr(backend, "lazy", False)
        too_many = False
        if lazy and "config" in spec.params:
            # The position among this test's configurations on this backend, counted here: pytest's
            # ``callspec.indices`` is not the index into the parameter list in every pytest version.
            key = (item.nodeid.split("[", 1)[0], backend.name)
            seen = configs_seen.setdefault(key, [])
            config_id = id(spec.params["config"])
            if config_id not in seen:
                seen.append(config_id)
            too_many = seen.index(config_id) >= LAZY_CONFIGS
        (dropped if lazy and (too_many or item.get_closest_marker("eager_only")) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
