"""xpcnn's hand-written passes as JAX gradient rules (``jax.custom_vjp``), usable under ``jax.jit`` and ``jax.grad``.

Design: an xpcnn cache is a Python object (NamedTuples holding geometry objects and options besides arrays), and
a ``custom_vjp`` residual must be a JAX type or a pytree of them that survives ``jit``. So the residuals are the
differentiable inputs themselves, and the backward rule **recomputes** the forward pass to rebuild the cache
before calling xpcnn's backward pass. This costs one more forward pass per gradient (under ``jit`` XLA may share
it with the first), and it keeps both passes exactly xpcnn's, on any device JAX runs on, with no state kept
between tracing the forward and the backward rules.

Arguments that are JAX or NumPy arrays are the function's primal inputs; any other argument (kernel sizes, None,
options) and every keyword argument is static (closed over, as ``nondiff_argnums`` would). Integer arrays (class
targets) are inputs that get no cotangent.
"""

from __future__ import annotations

import functools

from . import gradient_slots

__all__ = ["function"]


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def function(forward, backward, *, n_grads=None):
    """Wrap an xpcnn forward/backward pair as a ``jax.custom_vjp`` function.

    Parameters
    ----------
    forward, backward : callable
        An xpcnn pair: ``out, cache = forward(*args, **kwargs)`` and ``backward(dout, cache)``, which returns the
        gradient of the first argument or a tuple of gradients of the leading array arguments (``(dx, dweight,
        dbias)``: positional arrays and Nones, in order; options between them, such as ``layer_norm``'s
        ``normalized_shape``, take no place: ``xpcnn.interop.gradient_slots``).
    n_grads : int, optional
        How many of those leading array arguments the backward pass's gradients belong to. By default as many as it
        returns. Arguments past them and integer arrays get a zero cotangent.

    Returns
    -------
    callable
        ``f(*args, **kwargs)`` returning ``forward``'s output; ``jax.grad``, ``jax.vjp`` and ``jax.jit`` see
        ``backward`` as its gradient rule (the forward pass is recomputed in the backward rule: see the module's
        notes). Positional arguments that are not arrays, and keyword arguments, are static.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import xpcnn.functional as F
    >>> from xpcnn.interop.jax import function
    >>> conv2d = function(F.conv2d_forward, F.conv2d_backward)
    >>> x = jnp.ones((2, 3, 8, 8)); w = jnp.ones((4, 3, 3, 3)) / 27
    >>> loss = jax.jit(lambda x, w: (conv2d(x, w, None, padding=1) ** 2).sum())
    >>> dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)      # xpcnn's conv2d_backward, traced by jit
    >>> dw.shape
    (4, 3, 3, 3)
    """
    # Imported here, never at module level: JAX is no dependency of xpcnn (only this adapter needs it).
    import jax  # host: the adapter's own framework, imported only when the adapter is used
    import jax.numpy as jnp  # host: likewise
    import numpy as np  # host: only to recognise NumPy arrays among the arguments; nothing is copied

    if n_grads is not None and (not isinstance(n_grads, int) or isinstance(n_grads, bool) or n_grads < 0):
        raise ValueError(f"n_grads must be a non-negative int or None, got {n_grads!r}")

    def is_array(a):
        return isinstance(a, (jax.Array, np.ndarray))

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        positions = [i for i, a in enumerate(args) if is_array(a)]

        def full_args(arrays):
            merged = list(args)
            for i, a in zip(positions, arrays):
                merged[i] = a
            return merged

        @jax.custom_vjp
        def f(*arrays):
            return forward(*full_args(arrays), **kwargs)[0]

        def f_fwd(*arrays):
            return forward(*full_args(arrays), **kwargs)[0], arrays  # residuals: the inputs (recomputed below)

        slots = gradient_slots(args, is_array)

        def f_bwd(arrays, dout):
            _, cache = forward(*full_args(arrays), **kwargs)
            grads = _as_tuple(backward(dout, cache))
            count = min(len(grads), len(grads) if n_grads is None else n_grads)
            cotangents = []
            for i, a in zip(positions, arrays):
                k = slots.index(i)  # which of the backward pass's gradients is this argument's
                grad = grads[k] if k < count else None
                floating = jnp.issubdtype(a.dtype, jnp.inexact)
                cotangents.append(grad if grad is not None and floating else None)
            return tuple(cotangents)

        f.defvjp(f_fwd, f_bwd)
        return f(*(jnp.asarray(args[i]) for i in positions))

    wrapped.__name__ = wrapped.__qualname__ = getattr(forward, "__name__", "xpcnn_function").removesuffix("_forward")
    wrapped.__doc__ = (f"{wrapped.__name__} as a jax.custom_vjp function (xpcnn's forward and hand-written backward "
                       "passes); see :func:`xpcnn.interop.jax.function`.")
    return wrapped
