"""Unbatched images, as PyTorch takes them: a 3-D ``(C, H, W)`` (or, channels last, ``(H, W, C)``) input is a batch
of one, and the results come back without the batch axis.

A forward function decorated with :func:`accepts_unbatched` receives every 3-D ``x`` as a batch of one and returns
``(out[0], UnbatchedCache(cache))``; the matching backward function, decorated with
:func:`accepts_unbatched_backward`, gives ``dout`` its batch axis back and returns ``dx[0]``. Batched input passes
straight through, so the op itself is written for 4-D arrays only.
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat

__all__ = ["UnbatchedCache", "accepts_unbatched", "accepts_unbatched_backward", "check_image_ndim"]


class UnbatchedCache:
    """The cache of a forward pass on an unbatched image: the batch-of-one computation's own ``cache``. Attributes
    of the inner cache are readable through it; ``indices`` (max pooling's) comes without the batch axis."""

    __slots__ = ("cache",)

    def __init__(self, cache: Any):
        self.cache = cache

    def __getattr__(self, name):
        return getattr(self.cache, name)

    @property
    def indices(self):
        """The inner cache's ``indices`` without the batch axis."""
        return self.cache.indices[0, ...]

    def __repr__(self):
        return f"UnbatchedCache({self.cache!r})"


LAYOUTS = {"NCHW": ("(N, C, H, W)", "(C, H, W)"), "NHWC": ("(N, H, W, C)", "(H, W, C)")}
"""For each ``data_format``: how a batch and how one image are laid out (for error messages)."""


def check_image_ndim(x, data_format: str = "NCHW", name: str = "x") -> None:
    """A ValueError unless ``x`` is 4-D (a batch) or 3-D (one image), naming both layouts of ``data_format``."""
    if x.ndim not in (3, 4):
        batch, one = LAYOUTS.get(data_format, LAYOUTS["NCHW"])
        raise ValueError(
            f"{name} must be 4-D {batch} or 3-D {one} (one image) with data_format={data_format!r}, got shape "
            f"{tuple(x.shape)}"
        )


def accepts_unbatched(forward):
    """Decorate ``NAME_forward(x, ...) -> (out, cache)`` so that a 3-D ``x`` is computed as a batch of one."""

    @functools.wraps(forward)
    def wrapper(x, *args, **kwargs):
        if not (array_api_compat.is_array_api_obj(x) and x.ndim == 3):
            return forward(x, *args, **kwargs)
        xp = array_api_compat.array_namespace(x)
        out, cache = forward(xp.expand_dims(x, axis=0), *args, **kwargs)
        return out[0, ...], UnbatchedCache(cache)

    return wrapper


def accepts_unbatched_backward(backward):
    """Decorate ``NAME_backward(dout, cache)``: for an :class:`UnbatchedCache`, ``dout`` gets its batch axis back
    and the gradient loses it."""

    @functools.wraps(backward)
    def wrapper(dout, cache, *args, **kwargs):
        if not isinstance(cache, UnbatchedCache):
            return backward(dout, cache, *args, **kwargs)
        if array_api_compat.is_array_api_obj(dout):
            if dout.ndim != 3:
                raise ValueError(
                    f"dout must be 3-D, as the forward output of the unbatched input, got shape {tuple(dout.shape)}"
                )
            dout = array_api_compat.array_namespace(dout).expand_dims(dout, axis=0)
        return backward(dout, cache.cache, *args, **kwargs)[0, ...]

    return wrapper
