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


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name.startswith("xpcnn.interop."):  # the adapters' examples need their framework (no dependency of xpcnn)
        pytest.importorskip(name.rsplit(".", 1)[1])
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
