"""Global settings: the device profile of the cost model, and the workspace limit.

``device_profile``: the thresholds and algorithm choices of every op come from a profile per kind of device
(:mod:`xpcnn._tuning`): ``"host"`` for CPU memory, ``"accelerator"`` for GPUs. The profile is picked from each
input's library and device; :func:`device_profile` forces one for the code inside it, on any backend (the results
are the same; only the speed differs).

``workspace_limit``: the most bytes a convolution may spend on one batch piece's column buffer (the im2col matrix
of the kernel-offset slices, ``kh * kw`` times the size of the input it covers), and a pooling op on its
temporaries. Larger batches are processed in pieces of whole samples that fit (at least one sample at a time); the
results are the same. By default the profile's value (2 MiB on the host, where small pieces stay in the CPU's
caches; 512 MiB on an accelerator, where each piece costs kernel launches). Set it globally with
:func:`set_workspace_limit` (None goes back to the profile's), temporarily with the :func:`workspace_limit` context
manager, or per call with the ops' ``workspace_limit=`` argument.

``winograd``: 3 x 3, stride-1, dilation-1 convolutions may compute their forward pass, input gradient and weight
gradient with Winograd's minimal filtering (:mod:`xpcnn._winograd`, about 4 times fewer multiplies) where the
cost model (:mod:`xpcnn._tuning`) says it pays off and the data involved is known to be finite. Its float32
rounding error is larger than im2col's (about 1e-5 relative; figures in benchmarks/results/winograd_error.json).
On by default; :func:`set_winograd` turns it off (or on) globally, the :func:`winograd` context manager for the code
inside it, and ``conv2d_forward(..., algorithm="im2col")`` (or ``nn.Conv2d(..., algorithm="im2col")``) per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._tuning import HOST, PROFILES, Profile, forced_profile, profile_for

__all__ = ["device_profile", "get_workspace_limit", "set_workspace_limit", "workspace_limit",
           "resolve_workspace_limit", "DEFAULT_WORKSPACE_LIMIT", "get_winograd", "set_winograd", "winograd"]

DEFAULT_WORKSPACE_LIMIT = HOST.workspace_limit
"""The host profile's workspace limit (kept for compatibility)."""

_settings: dict[str, int | bool | None] = {"workspace_limit": None, "winograd": True}


def get_workspace_limit() -> int | None:
    """The global workspace limit in bytes, or None when each op takes its device profile's.

    Examples
    --------
    >>> import xpcnn
    >>> xpcnn.config.get_workspace_limit() is None      # the default: each device profile's
    True
    """
    return _settings["workspace_limit"]


def set_workspace_limit(nbytes: int | None) -> None:
    """Set the global workspace limit: the bytes a convolution's column buffer (and a pooling op's temporaries)
    may take per batch piece; one sample is always processed at least. Results do not depend on it, only speed and
    peak memory.

    Parameters
    ----------
    nbytes : int or None
        The limit in bytes (>= 1); None goes back to each device profile's value (2 MiB on the host, 512 MiB on an
        accelerator).

    Raises
    ------
    ValueError
        ``nbytes < 1``.
    TypeError
        ``nbytes`` is not an int (or None).

    Examples
    --------
    >>> import xpcnn
    >>> xpcnn.set_workspace_limit(64 * 2**20)
    >>> xpcnn.config.get_workspace_limit()
    67108864
    >>> xpcnn.set_workspace_limit(None)       # back to the device profile's
    """
    _settings["workspace_limit"] = None if nbytes is None else _checked_limit(nbytes)


def resolve_workspace_limit(nbytes: int | None = None, array: Any = None, *, field: str = "workspace_limit") -> int:
    """The workspace limit an op uses: ``nbytes`` checked when given; else the global setting; else the device
    profile's ``field`` for ``array``'s device (the host's when no array is given).

    Parameters
    ----------
    nbytes : int, optional
        An op's ``workspace_limit=`` argument (>= 1).
    array : array, optional
        The op's input, whose library and device pick the profile.
    field : str
        The profile's field to read (``"winograd_workspace_limit"`` for Winograd's pieces).

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    ValueError
        ``nbytes < 1``.
    TypeError
        ``nbytes`` is not an int.

    Examples
    --------
    >>> import xpcnn
    >>> xpcnn.config.resolve_workspace_limit(4096)
    4096
    >>> xpcnn.config.resolve_workspace_limit() == xpcnn.config.DEFAULT_WORKSPACE_LIMIT     # the host profile's
    True
    """
    if nbytes is not None:
        return _checked_limit(nbytes)
    if _settings["workspace_limit"] is not None:
        return _settings["workspace_limit"]
    return getattr(HOST if array is None else profile_for(array), field)


def _checked_limit(nbytes) -> int:
    from ._validation import as_int

    nbytes = as_int(nbytes, "workspace_limit")
    if nbytes < 1:
        raise ValueError(f"workspace_limit must be >= 1 byte, got {nbytes}")
    return nbytes


@contextmanager
def workspace_limit(nbytes: int | None) -> Iterator[None]:
    """Temporarily set the global workspace limit, for the code inside the ``with`` block (the previous setting
    comes back after it, also on an error).

    Parameters
    ----------
    nbytes : int or None
        The limit in bytes (>= 1), as :func:`set_workspace_limit`; None: the device profile's.

    Raises
    ------
    ValueError
        ``nbytes < 1``.
    TypeError
        ``nbytes`` is not an int (or None).

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn import functional as F
    >>> with xpcnn.workspace_limit(4096):      # small pieces of the batch at a time; same results
    ...     out, cache = F.conv2d_forward(np.ones((8, 3, 16, 16)), np.ones((4, 3, 3, 3)))
    >>> out.shape, xpcnn.config.get_workspace_limit()
    ((8, 4, 14, 14), None)
    """
    previous = get_workspace_limit()
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        _settings["workspace_limit"] = previous


def get_winograd() -> bool:
    """Whether convolutions may use Winograd's algorithm where the cost model chooses it (True by default).

    Examples
    --------
    >>> import xpcnn
    >>> xpcnn.config.get_winograd()
    True
    """
    return bool(_settings["winograd"])


def set_winograd(enabled: bool) -> None:
    """Allow (True, the default) or forbid (False) Winograd's algorithm for every convolution; forbidden, every
    3 x 3 convolution uses im2col (results equal up to rounding). An explicit ``algorithm="winograd"`` (or a
    ``_plan``) still takes it.

    Parameters
    ----------
    enabled : bool
        True or False (nothing else: a TypeError names ``enabled``).

    Examples
    --------
    >>> import xpcnn
    >>> xpcnn.config.set_winograd(False)
    >>> xpcnn.config.get_winograd()
    False
    >>> xpcnn.config.set_winograd(True)
    """
    from ._validation import as_bool

    _settings["winograd"] = as_bool(enabled, "enabled")


@contextmanager
def winograd(enabled: bool) -> Iterator[None]:
    """Temporarily allow or forbid Winograd's algorithm (:func:`set_winograd`) for the code inside.

    Parameters
    ----------
    enabled : bool
        Whether Winograd may be chosen inside the block; the previous setting comes back after it.

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn.functional import conv2d_forward
    >>> x, w = np.ones((1, 16, 8, 8), np.float32), np.ones((16, 16, 3, 3), np.float32)
    >>> with xpcnn.config.winograd(False):
    ...     out, cache = conv2d_forward(x, w, padding=1)
    >>> cache.plan.forward.value
    'im2col'
    """
    previous = get_winograd()
    set_winograd(enabled)
    try:
        yield
    finally:
        _settings["winograd"] = previous


@contextmanager
def device_profile(name: str | Profile) -> Iterator[Profile]:
    """Force the cost model's profile (``"host"`` or ``"accelerator"``) for every op called inside, whatever the
    arrays' device. Results are identical under both; the thresholds and algorithm choices differ.

    Parameters
    ----------
    name : {"host", "accelerator"} or Profile
        The profile (``xpcnn._tuning``'s ``Profile`` objects may be passed directly).

    Raises
    ------
    ValueError
        Another name.

    Examples
    --------
    >>> import numpy as np, xpcnn
    >>> from xpcnn.functional import conv2d_forward
    >>> with xpcnn.config.device_profile("accelerator"):
    ...     out, cache = conv2d_forward(np.ones((2, 1, 5, 5)), np.ones((1, 1, 3, 3)))
    >>> out.shape
    (2, 1, 3, 3)
    """
    if isinstance(name, Profile):
        profile = name
    elif isinstance(name, str) and name in PROFILES:
        profile = PROFILES[name]
    else:
        raise ValueError(f"device_profile must be one of {sorted(PROFILES)} or a Profile, got {name!r}")
    token = forced_profile().set(profile)
    try:
        yield profile
    finally:
        forced_profile().reset(token)
