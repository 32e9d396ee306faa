"""The examples in the library's docstrings run as written (doctest), so that ``help()`` never shows a stale one."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import xpcnn

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(xpcnn.__path__, prefix="xpcnn.")
)


NEEDS = {  # modules whose examples need an optional package (none of them a dependency of xpcnn)
    "xpcnn.interop.torch": "torch",
    "xpcnn.interop.jax": "jax",
    "xpcnn.testing.gradients": "torch",  # check_against_torch's example
    "xpcnn.distributed": "distributed",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    for prefix, package in NEEDS.items():
        if name == prefix or name.startswith(prefix + "."):
            pytest.importorskip(package)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
