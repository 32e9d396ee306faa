"""A pytest plugin: the ``xp`` fixture over the backend matrix, and a ``torch`` fixture.

Use it with ``pytest -p xpcnn.testing.pytest_plugin``, or ``pytest_plugins = ["xpcnn.testing.pytest_plugin"]`` in
the root ``conftest.py``, or import what you need into any ``conftest.py``::

    from xpcnn.testing.pytest_plugin import pytest_configure, torch, xp  # noqa: F401

* ``xp``: every test taking it runs once per backend of :mod:`xpcnn.testing.backends` (ids ``numpy``,
  ``array_api_strict-device1``, ``torch``, ``jax``, ``jax-jit``, ``dask``, ``cupy``...), the missing ones skipped
  with the reason. For a narrower matrix define your own: ``xp = xpcnn.testing.xp_fixture(dask=False)``.
* ``torch``: the torch module, or a skip without it; ``XPCNN_REQUIRE_TORCH=1`` makes a missing torch an error (for
  CI, where a silently skipped reference would hide everything).
* ``pytest_configure``: pins array-api-strict's API version (:data:`xpcnn.testing.API_VERSION`) and honours
  ``XPCNN_REQUIRE_TORCH``.
"""

from __future__ import annotations

import pytest

from .backends import configure_array_api_strict, require_torch, xp_fixture

xp = xp_fixture()


def pytest_configure(config):
    if require_torch():
        try:
            import torch  # noqa: F401  # host: the backend matrix imports each library it offers
        except ImportError:
            raise pytest.UsageError("XPCNN_REQUIRE_TORCH=1 but torch is not installed") from None
    configure_array_api_strict()


@pytest.fixture(scope="session")
def torch():
    """PyTorch, the reference; skips without it unless XPCNN_REQUIRE_TORCH=1."""
    try:
        import torch  # host: the backend matrix imports each library it offers
    except ImportError:
        if require_torch():
            pytest.fail("XPCNN_REQUIRE_TORCH=1 but torch is not installed")
        pytest.skip("torch is not installed")
    return torch
