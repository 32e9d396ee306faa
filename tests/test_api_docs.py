"""The API reference (docs/api, Sphinx autodoc + napoleon): it lists every public name, and it builds with warnings
as errors (every cross-reference resolved). Skipped where Sphinx is not installed (``pip install -e .[docs]``)."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
PUBLIC = ["xpcnn", "xpcnn.nn", "xpcnn.functional", "xpcnn.optim", "xpcnn.config", "xpcnn.interop.torch",
          "xpcnn.interop.jax"]


def _public_names():
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                yield f"{module_name}.{name}"


def _listed_names():
    """Names the .rst pages document: ``.. autoX:: name`` under the page's ``currentmodule``, and every member of
    the ``automodule:: ... :members:`` directives."""
    listed = set()
    for page in API.glob("*.rst"):
        module = None
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"\.\. currentmodule:: (\S+)", line):
                module = m.group(1)
            elif m := re.match(r"\.\. auto(class|function|data):: (\S+)", line):
                listed.add(f"{module}.{m.group(2)}")
            elif (m := re.match(r"\.\. automodule:: (\S+)", line)) and i + 1 < len(lines) and ":members:" in lines[i + 1]:
                listed |= {f"{m.group(1)}.{n}" for n in importlib.import_module(m.group(1)).__all__}
    return listed


def test_every_public_name_is_in_the_reference():
    missing = sorted(set(_public_names()) - _listed_names())
    assert not missing, f"add these to docs/api/*.rst: {missing}"


def test_the_reference_builds_without_warnings(tmp_path):
    sphinx_cmd = pytest.importorskip("sphinx.cmd.build")
    out = tmp_path / "html"
    status = sphinx_cmd.build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
                                    str(API), str(out)])
    assert status == 0, "the API reference has warnings (run: python -m sphinx -W -b html docs/api /tmp/api)"
    html = "".join(p.read_text() for p in out.glob("*.html"))
    for name in _public_names():
        assert f'id="{name}"' in html, f"{name} is not rendered"
