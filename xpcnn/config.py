"""Global settings.

``workspace_limit``: the most bytes a convolution may spend on its column buffer (the im2col matrix of the
kernel-offset slices, ``kh * kw`` times the size of the input it covers), and a pooling op on its temporaries.
Larger batches are processed in pieces of whole samples that fit (at least one sample at a time); results are the
same. Small pieces also stay in the CPU's caches, which makes them faster than one large buffer: the default,
2 MiB, was as fast as or faster than 256 KiB, 512 KiB and 1 MiB on every benchmark workload (a machine with 1 MiB
of L2 per core and a shared 32 MiB L3). Set it globally with :func:`set_workspace_limit` (or the
:func:`workspace_limit` context manager), or per call with ``conv2d_forward(..., workspace_limit=...)`` and the
pooling functions' ``workspace_limit=``.
"""

from __future__ import annotations

from contextlib import contextmanager

DEFAULT_WORKSPACE_LIMIT = 2 * 2**20

_settings = {"workspace_limit": DEFAULT_WORKSPACE_LIMIT}


def get_workspace_limit() -> int:
    return _settings["workspace_limit"]


def set_workspace_limit(nbytes: int) -> None:
    """Bytes a convolution's column buffer may take (>= 1; one sample is always processed at least)."""
    _settings["workspace_limit"] = resolve_workspace_limit(nbytes)


def resolve_workspace_limit(nbytes=None) -> int:
    """``nbytes`` checked (an int >= 1), or the global setting when None."""
    from ._validation import as_int

    if nbytes is None:
        return get_workspace_limit()
    nbytes = as_int(nbytes, "workspace_limit")
    if nbytes < 1:
        raise ValueError(f"workspace_limit must be >= 1 byte, got {nbytes}")
    return nbytes


@contextmanager
def workspace_limit(nbytes: int):
    """Temporarily set the workspace limit."""
    previous = get_workspace_limit()
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        _settings["workspace_limit"] = previous
