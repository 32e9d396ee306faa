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

:func:`module` wraps a whole :class:`xpcnn.nn.Module` the same way, functionally: its parameters and its state
(batch norm's running statistics and ``num_batches_tracked``, Dropout's count of training passes, which picks its
next mask) are arguments, and the updated state is a result. ``apply_fn(params, state, x, training=...)`` binds
them to a private copy of the module for the duration of one call, runs the module's ``forward`` (and, in the
gradient rule, ``forward`` again from the same state, then ``backward``), and unbinds them, so that no traced
array stays behind in any module.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import array_api_compat

from .._validation import as_bool
from . import gradient_slots

__all__ = ["function", "module"]


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


def module(xpcnn_module):
    """Wrap an xpcnn module as a pure JAX function of its parameters, its state and its input (a ``jax.custom_vjp``
    whose gradient rule is the module's hand-written backward pass).

    Parameters
    ----------
    xpcnn_module : xpcnn.nn.Module
        A module whose parameters and buffers are JAX arrays (built with ``xp=jax.numpy``, or moved with
        ``.to(jax.numpy)``). It is copied (its arrays are shared: JAX arrays are immutable); later changes to it
        do not reach the wrapper.

    Returns
    -------
    apply_fn : callable
        ``out, new_state = apply_fn(params, state, x, *, training)``: the module's forward pass on ``x`` with those
        parameters and that state, in training mode (batch statistics, dropout; the state is updated) or not
        (``training=False``: running statistics, no dropout; ``new_state`` is ``state``). ``training`` is a Python
        bool, static under ``jax.jit``. ``jax.grad``/``jax.vjp`` differentiate ``out`` with respect to ``params``
        and ``x`` through the module's own ``backward`` (the forward pass is recomputed from the same state in
        the gradient rule: see the module's notes); ``new_state`` and ``state`` get no gradient. NumPy arrays
        among the arguments are taken as JAX arrays.
    params : dict of str to jax.Array
        The module's parameters, named as in its state dict (``"0.weight"``), in ``named_parameters()``' order.
    state : dict of str to jax.Array
        Its buffers (``"1.running_mean"``, ``"1.running_var"``, ``"1.num_batches_tracked"``) and its extra state
        (``"4.calls"``: a Dropout's count of training passes, as a 0-d integer array), as the module has them.

    Raises
    ------
    TypeError
        For a module that is no xpcnn module, or whose arrays are not JAX arrays; for ``training`` not a bool.
    ValueError
        When ``apply_fn``'s ``params`` or ``state`` do not have the module's names and shapes (every missing and
        unexpected name and every shape mismatch is listed).

    Notes
    -----
    The gradients are those of the module's ``backward``: the same numbers as calling ``forward`` then
    ``backward`` on the module with those parameters and that state, and a training step (``jax.grad``, then an
    update of ``params`` and ``state = new_state``) follows the module's own training step for step (Dropout
    draws the mask of its counter; the counter may be traced by ``jax.jit``). The input gradient is always
    computed.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from xpcnn import nn
    >>> from xpcnn.interop.jax import module
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, xp=jnp, seed=0), nn.BatchNorm2d(4, xp=jnp), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(4 * 6 * 6, 2, xp=jnp, seed=1))
    >>> apply_fn, params, state = module(model)
    >>> sorted(state)
    ['1.num_batches_tracked', '1.running_mean', '1.running_var']
    >>> def loss(params, state, x):
    ...     out, new_state = apply_fn(params, state, x, training=True)
    ...     return jnp.sum(out ** 2), new_state
    >>> x = jnp.ones((8, 1, 6, 6), dtype=jnp.float32)
    >>> grads, state = jax.jit(jax.grad(loss, has_aux=True))(params, state, x)
    >>> grads["0.weight"].shape, int(state["1.num_batches_tracked"])
    ((4, 1, 3, 3), 1)
    """
    import jax  # host: the adapter's own framework, imported only when the adapter is used
    import jax.numpy as jnp  # host: likewise

    from ..nn.init import counter_dtype
    from ..nn.module import Module

    if not isinstance(xpcnn_module, Module):
        raise TypeError(f"module expects an xpcnn.nn.Module, got {type(xpcnn_module).__name__}")
    arrays = xpcnn_module.state_dict()
    for name, value in arrays.items():
        if not isinstance(value, jax.Array):
            raise TypeError(
                f"module: {name!r} of {type(xpcnn_module).__name__} is a {type(value).__module__}."
                f"{type(value).__name__}, not a JAX array; build the module with xp=jax.numpy (or move it with "
                ".to(jax.numpy))"
            )
    # A private copy of the module tree; its arrays are shared (immutable), the Python objects are not.
    clone = copy.deepcopy(xpcnn_module, memo={id(a): a for a in arrays.values()})
    for m in clone.modules():
        m._cache = None
    clone.zero_grad()
    params = {name: p.data for name, p in clone.named_parameters()}
    counter = counter_dtype(jnp)  # int64 in 64-bit mode, else int32
    device = array_api_compat.device(next(iter(arrays.values()))) if arrays else None
    state = {**dict(clone.named_buffers()),
             **{name: jnp.asarray(value, dtype=counter, device=device)
                for name, value in clone.named_extra_state()}}
    binding = _Binding(clone, params, state)

    def run(training, params, state, x, dout=None):
        """The forward pass (and with ``dout`` the backward pass) of the clone bound to ``params`` and ``state``:
        ``(out, new_state)``, or ``(dx, grads)``."""
        with binding.bound(params, state, training):
            out = clone.forward(x)
            if dout is None:
                return out, binding.state()
            dx = clone.backward(dout)
            return dx, {name: jnp.zeros_like(params[name]) if p.grad is None else p.grad
                        for name, p in clone.named_parameters()}

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def core(training, params, state, x):
        return run(training, params, state, x)

    def core_fwd(training, params, state, x):
        return run(training, params, state, x), (params, state, x)  # residuals: the inputs (recomputed below)

    def core_bwd(training, residuals, cotangents):
        params, state, x = residuals
        dx, grads = run(training, params, state, x, dout=cotangents[0])
        return grads, None, dx

    core.defvjp(core_fwd, core_bwd)

    def apply_fn(params, state, x, *, training):
        training = as_bool(training, "training")
        params = {name: jnp.asarray(value) for name, value in binding.checked("params", params).items()}
        state = {name: jnp.asarray(value) for name, value in binding.checked("state", state).items()}
        out, new_state = core(training, params, state, jnp.asarray(x))
        return out, (new_state if training else state)

    apply_fn.__name__ = apply_fn.__qualname__ = f"apply_{type(xpcnn_module).__name__}"
    apply_fn.__doc__ = (f"{type(xpcnn_module).__name__} as a pure JAX function: ``out, new_state = "
                        "apply_fn(params, state, x, *, training)``; see :func:`xpcnn.interop.jax.module`.")
    return apply_fn, params, state


class _Binding:
    """Binds parameters and state to a module tree for one call, and puts its own values back afterwards."""

    def __init__(self, module, params: dict, state: dict):
        self.module = module
        self.shapes = {"params": {k: tuple(v.shape) for k, v in params.items()},
                       "state": {k: tuple(v.shape) for k, v in state.items()}}
        self.params = dict(module.named_parameters())
        self.buffers = [name for name, _ in module.named_buffers()]
        self.extra = [name for name, _ in module.named_extra_state()]

    def checked(self, what: str, given) -> dict:
        """``given`` (a mapping) after checking that its names and shapes are the module's ``what``."""
        expected = self.shapes[what]
        if not hasattr(given, "items"):
            raise TypeError(f"{what} must be a dict of arrays (as module() returned it), got {type(given).__name__}")
        problems = [f"missing {name!r}" for name in expected if name not in given]
        problems += [f"unexpected {name!r}" for name in given if name not in expected]
        for name, value in given.items():
            shape = tuple(getattr(value, "shape", ()))
            if name in expected and shape != expected[name]:
                problems.append(f"{name!r} has shape {shape}, the module expects {expected[name]}")
        if problems:
            verb = "do" if what == "params" else "does"
            raise ValueError(f"{what} {verb} not match the module: " + "; ".join(problems))
        return dict(given)

    def state(self) -> dict:
        values = {**dict(self.module.named_buffers()), **dict(self.module.named_extra_state())}
        return {name: values[name] for name in self.shapes["state"]}

    @contextlib.contextmanager
    def bound(self, params: dict, state: dict, training: bool):
        module = self.module
        saved = ({name: p.data for name, p in self.params.items()}, self.state(), module.training)
        try:
            for name, p in self.params.items():
                p.data, p.grad = params[name], None
            for name in self.buffers + self.extra:
                module._assign(name, state[name])
            module.train(training)
            yield
        finally:
            for name, p in self.params.items():
                p.data, p.grad = saved[0][name], None
            for name in self.buffers + self.extra:
                module._assign(name, saved[1][name])
            module.train(saved[2])
            for m in module.modules():
                m._cache = None
