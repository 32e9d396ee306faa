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
          "xpcnn.interop.jax", "xpcnn.distributed"]


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


# -- every public callable documents its arguments (what ``help()`` shows) ----------------------------------------

DOCUMENTED = ["xpcnn", "xpcnn.nn", "xpcnn.functional", "xpcnn.optim", "xpcnn.config", "xpcnn.distributed"]
PARAMETERS = re.compile(r"^\s*Parameters\s*\n\s*-{3,}\s*$", re.M)
EXAMPLES = re.compile(r"^\s*(Examples?\s*\n\s*-{3,}\s*$|>>> )", re.M)

# Names still without a "Parameters" section, or without the required example: each one is listed here explicitly,
# and the test fails when one of them gets its docs (so the list only shrinks). All are documented now.
NO_PARAMETERS_YET: set[str] = set()
NO_EXAMPLE_YET: set[str] = set()
CACHE_FIELDS_NOT_NAMED_YET: set[str] = set()


def _public_callables():
    seen = set()
    for module_name in DOCUMENTED:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj


def _own_docstring(obj) -> str:
    """The docstring ``help()`` shows first: a class's own (not inherited) plus its ``__init__``'s."""
    if not inspect.isclass(obj):
        return obj.__doc__ or ""
    doc = obj.__dict__.get("__doc__") or ""
    if "__init__" in obj.__dict__:
        doc += "\n" + (obj.__init__.__doc__ or "")
    return doc


def _takes_arguments(obj) -> bool:
    try:
        return bool(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return True


def _is_cache(obj) -> bool:
    return inspect.isclass(obj) and obj.__name__.endswith("Cache") and hasattr(obj, "_fields")


def _needs_example(name, obj) -> bool:
    """Every public function and class shows an example (every layer, container and loss module, every forward
    and backward function...); an op's cache is shown by its op's example."""
    return not _is_cache(obj)


def test_every_public_callable_has_a_parameters_section():
    missing = sorted(
        name for name, obj in _public_callables()
        if not _is_cache(obj) and _takes_arguments(obj) and not PARAMETERS.search(_own_docstring(obj))
    )
    new = sorted(set(missing) - NO_PARAMETERS_YET)
    assert not new, f"no numpydoc 'Parameters' section: {new}"
    done = NO_PARAMETERS_YET - set(missing)
    assert not done, f"documented now: remove from NO_PARAMETERS_YET: {sorted(done)}"


def test_every_public_callable_has_an_example():
    missing = sorted(
        name for name, obj in _public_callables()
        if _needs_example(name, obj) and not EXAMPLES.search(_own_docstring(obj))
    )
    assert set(missing) <= NO_EXAMPLE_YET, f"no example: {sorted(set(missing) - NO_EXAMPLE_YET)}"
    done = NO_EXAMPLE_YET - set(missing)
    assert not done, f"documented now: remove from NO_EXAMPLE_YET: {sorted(done)}"


def test_every_cache_names_its_fields():
    """An op's cache (a NamedTuple) says what each field holds: its docstring names every field."""
    missing = {}
    for name, obj in _public_callables():
        if _is_cache(obj):
            doc = _own_docstring(obj)
            absent = [f for f in obj._fields if not re.search(rf"\b{f}\b", doc)]
            if absent:
                missing[name] = absent
    assert set(missing) <= CACHE_FIELDS_NOT_NAMED_YET, f"fields not named: {missing}"
    done = CACHE_FIELDS_NOT_NAMED_YET - set(missing)
    assert not done, f"documented now: remove from CACHE_FIELDS_NOT_NAMED_YET: {sorted(done)}"


def test_help_of_a_layer_explains_the_common_arguments():
    """help(nn.Linear) (and every layer with parameters) points at the one place that explains xp, device, dtype
    (float32 by default) and seed, and that place explains them."""
    import pydoc

    from xpcnn import nn

    for layer in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm):
        text = pydoc.render_doc(layer, renderer=pydoc.plaintext)
        assert "xp, device, dtype" in text and "Common arguments" in text, layer.__name__
    module_doc = nn.Module.__doc__
    for word in ("``xp``", "``device``", "``dtype``", "``seed``", "float32", "manual_seed", "fan_in"):
        assert word in module_doc, word
