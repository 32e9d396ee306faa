"""xpcnn inside other frameworks' autodiff: its hand-written backward passes as their gradient rules.

* :mod:`xpcnn.interop.torch`: :func:`~xpcnn.interop.torch.function` wraps a forward/backward pair as a
  ``torch.autograd.Function``; :func:`~xpcnn.interop.torch.module` wraps an xpcnn module (built with ``xp=torch``)
  as a ``torch.nn.Module`` whose ``torch.nn.Parameter``\\ s share memory with the xpcnn parameters.
* :mod:`xpcnn.interop.jax`: :func:`~xpcnn.interop.jax.function` wraps a pair as a ``jax.custom_vjp`` function
  (usable under ``jax.jit`` and ``jax.grad``); :func:`~xpcnn.interop.jax.module` wraps an xpcnn module (built with
  ``xp=jax.numpy``) as a pure function ``out, new_state = apply_fn(params, state, x, training=...)`` of its
  parameters and state (batch norm's statistics, Dropout's counter).

Neither PyTorch nor JAX is a dependency of xpcnn: each submodule imports its framework inside its functions.

Which argument a gradient belongs to
------------------------------------
A backward pass returns a tuple of gradients, ``(dx, dweight, dbias)``, one for each of the forward pass's leading
*array* arguments: the positional arguments that are arrays, or None (an absent optional array, such as a bias),
in order. Options between them (``layer_norm_forward(x, normalized_shape, weight, bias)``'s shape, a kernel size, a
slope) take no place in that tuple. ``gradient_slots`` is that rule, shared by the adapters and by
``xpcnn.testing``.
"""

__all__ = ["torch", "jax", "gradient_slots"]


def gradient_slots(args, is_array) -> list[int]:
    """The positions in ``args`` that a backward pass's gradients belong to, in order: those holding an array
    (``is_array(a)``) or None. Numbers, tuples, strings and other options take no slot.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn.interop import gradient_slots
    >>> x, w = np.ones((2, 3, 4)), np.ones((3, 4))
    >>> gradient_slots([x, (3, 4), w, None], lambda a: isinstance(a, np.ndarray))   # layer_norm(x, shape, w, b)
    [0, 2, 3]
    """
    return [i for i, a in enumerate(args) if a is None or is_array(a)]
