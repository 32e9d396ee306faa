"""Sphinx configuration of xpcnn's API reference: autodoc reads the docstrings (numpydoc sections, through
napoleon). Build: ``python -m sphinx -W -b html docs/api docs/api/_build`` (the tests do, warnings as errors)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import xpcnn  # noqa: E402

project = "xpcnn"
author = "the xpcnn authors"
release = version = xpcnn.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["torch", "jax"]  # the adapters import their framework lazily; documented without it
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = False  # free-form types ("array, shape (N, C, H, W)") are shown as written, not parsed into links
napoleon_use_keyword = False
napoleon_custom_sections = [("The contract", "notes_style"), ("Calling it", "notes_style"),
                            ("Common arguments", "notes_style")]

nitpicky = True  # every cross-reference must resolve...
nitpick_ignore_regex = [
    # ...except the plain words used as types in the docstrings (array, int, float, ...) and other libraries' names.
    ("py:class", r"(array|arrays|int|float|bool|str|dict|list|tuple|callable|optional|sequence|iterable|"
                 r"text stream|module|namespace|device|dtype|None|os\.PathLike|type|object)"),
    ("py:class", r".*\b(of|or|and)\b.*"),  # "iterable of Parameter", "float or array", ...
    ("py:class", r"[({\[].*"),  # "(float, float)", "{'mean', 'sum', 'none'}"
    ("py:class", r"(numpy|torch|jax|cupy|array_api_strict|array_api_compat)\..*"),
    ("py:class", r"xpcnn\..*\._[A-Za-z].*|_[A-Za-z].*"),  # private bases (_Loss, _Monitor)
    ("py:class", r"shape.*|default.*|.*\d.*"),
    ("py:obj", r".*"),
    ("py:class", r"(N|C|H|W|out_h|out_w)"),  # shape letters in NamedTuple field comments
    ("py:class", r"collections\.abc\..*"),  # no intersphinx: the build runs offline
    ("py:class", r"xpcnn\.functional\.\w+\.[A-Z]\w*"),  # type aliases in signatures (ConvShape, Normalized)
    ("py:(class|mod|meth|func)", r"(xpcnn\.)?_.*|.*\._[a-z_]+|__\w+__"),  # private names (xpcnn._tuning, _lr_at)
    ("py:exc", r"(?![A-Z][A-Za-z]*(Error|Exception|Warning)$).*"),  # prose lines under Raises, not exception names
]
html_theme = "alabaster"
html_title = f"xpcnn {release} API reference"


PUBLIC_MODULES = ["xpcnn", "xpcnn.nn", "xpcnn.functional", "xpcnn.optim", "xpcnn.optim.lr_scheduler", "xpcnn.config"]


def _resolve_public(app, env, node, contnode):
    """Resolve a short reference (``max_pool2d_forward``, ``Parameter.accumulate``) written in a submodule's
    docstring to the public name it is documented under (``xpcnn.functional.max_pool2d_forward``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].split(".")[-2:] if "." in node["reftarget"] else [node["reftarget"]]
    domain = env.get_domain("py")
    for module in PUBLIC_MODULES:
        name = ".".join([module, *target])
        if name in domain.objects:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
    return None


def setup(app):
    app.connect("missing-reference", _resolve_public)
