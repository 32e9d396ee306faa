"""xpcnn's hand-written passes as PyTorch autograd rules.

xpcnn takes torch tensors natively (through array-api-compat), so the wrappers call xpcnn on the very tensors
autograd hands them: no copies, on CPU or CUDA. PyTorch records one node per wrapped call; its backward is xpcnn's.

* :func:`function` wraps a functional pair (``conv2d_forward``/``conv2d_backward``...) as a
  ``torch.autograd.Function``;
* :func:`module` wraps an xpcnn :class:`~xpcnn.nn.Module` built with ``xp=torch`` as a ``torch.nn.Module``.

Only first derivatives: the backward passes are not themselves differentiated (``once_differentiable``).
"""

from __future__ import annotations

import functools

__all__ = ["function", "module"]


def _torch():
    # Imported here, never at module level: PyTorch is no dependency of xpcnn (only this adapter needs it).
    import torch  # host: the adapter's own framework, imported only when the adapter is used

    return torch


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def _is_float_tensor(torch, a) -> bool:
    return isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex())


def function(forward, backward, *, n_grads=None):
    """Wrap an xpcnn forward/backward pair as a function recorded by PyTorch autograd.

    Parameters
    ----------
    forward, backward : callable
        An xpcnn pair: ``out, cache = forward(*args, **kwargs)`` and ``backward(dout, cache)``, which returns the
        gradient of the first argument or a tuple of gradients of the leading arguments (``(dx, dweight, dbias)``).
    n_grads : int, optional
        How many leading positional arguments the backward pass's gradients belong to. By default as many as it
        returns. Arguments past them, and those that are not floating tensors (integer targets, kernel sizes,
        options), get no gradient (None).

    Returns
    -------
    callable
        ``f(*args, **kwargs)`` returning ``forward``'s output as a tensor in the autograd graph. Its forward pass is
        ``forward`` on the same tensors, its backward pass ``backward`` (gradients of inputs that need none are
        dropped). Keyword arguments are options, passed to ``forward`` unchanged.

    Examples
    --------
    >>> import torch
    >>> import xpcnn.functional as F
    >>> from xpcnn.interop.torch import function
    >>> conv2d = function(F.conv2d_forward, F.conv2d_backward)
    >>> x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    >>> conv2d(x, w, None, padding=1).sum().backward()         # xpcnn's conv2d_backward gives x.grad, w.grad
    >>> torch.allclose(w.grad, torch.func.grad(lambda w: torch.nn.functional.conv2d(x, w, padding=1).sum())(w))
    True
    """
    torch = _torch()
    if n_grads is not None and (not isinstance(n_grads, int) or isinstance(n_grads, bool) or n_grads < 0):
        raise ValueError(f"n_grads must be a non-negative int or None, got {n_grads!r}")

    class XpcnnFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, kwargs, *args):
            # Detached views (same memory): xpcnn sees plain tensors, never ones that require grad.
            out, cache = forward(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
            ctx.cache = cache
            ctx.float_inputs = tuple(_is_float_tensor(torch, a) for a in args)
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dout):
            grads = _as_tuple(backward(dout, ctx.cache))  # the cache is only read: retain_graph works
            count = len(grads) if n_grads is None else n_grads
            result = []
            for i, needs in enumerate(ctx.needs_input_grad[1:]):
                grad = grads[i] if i < min(count, len(grads)) else None
                result.append(grad if needs and ctx.float_inputs[i] else None)
            return (None, *result)

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        return XpcnnFunction.apply(kwargs, *args)

    wrapped.__name__ = wrapped.__qualname__ = getattr(forward, "__name__", "xpcnn_function").removesuffix("_forward")
    wrapped.__doc__ = (f"{wrapped.__name__} as a PyTorch autograd function (xpcnn's forward and hand-written "
                       "backward passes); see :func:`xpcnn.interop.torch.function`.")
    return wrapped


def module(xpcnn_module):
    """Wrap an xpcnn module as a ``torch.nn.Module`` (its forward and backward passes are xpcnn's).

    Parameters
    ----------
    xpcnn_module : xpcnn.nn.Module
        A module whose parameters are torch tensors (built with ``xp=torch``, or moved with ``.to(torch)``).

    Returns
    -------
    torch.nn.Module
        Its parameters are ``torch.nn.Parameter``\\ s named as the xpcnn ones (``"0.weight"``) that share memory
        with the xpcnn parameter arrays: a torch optimiser's in-place step is seen by the xpcnn module. The torch
        parameters are the truth: each forward pass points the xpcnn parameters at them again (after a
        ``.to(dtype)``, say). Calling it runs ``xpcnn_module.forward`` on the input; autograd's backward pass runs
        ``xpcnn_module.backward(dout)`` and hands every parameter's gradient to autograd (the parameters are
        inputs of the recorded node), which accumulates them into the torch parameters' ``.grad``. The xpcnn
        parameters' own ``.grad`` are left as they were. ``train()``/``eval()`` reach the xpcnn module.
        Buffers (batch norm's running statistics) stay on the xpcnn module (``.xpcnn_module``).

    Raises
    ------
    TypeError
        For a module that is no xpcnn module, or whose parameters are not torch tensors.

    Notes
    -----
    An xpcnn module keeps one forward pass's cache; the wrapper hands each call's caches to its autograd node, so
    the wrapped module may be called several times before the backward pass (shared weights, ``gradcheck``), and
    ``retain_graph=True`` works. Modules whose ``forward`` keeps state other than ``_cache`` for the backward pass
    are not supported.

    Examples
    --------
    >>> import torch
    >>> from xpcnn import nn
    >>> from xpcnn.interop.torch import module
    >>> layer = module(nn.Conv2d(3, 4, 3, padding=1, xp=torch, seed=0))
    >>> model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '3.weight', '3.bias']
    >>> model(torch.randn(5, 3, 8, 8)).sum().backward()         # the convolution's gradients are xpcnn's
    >>> layer.weight.grad.shape
    torch.Size([4, 3, 3, 3])
    """
    torch = _torch()
    from ..nn.module import Module

    if not isinstance(xpcnn_module, Module):
        raise TypeError(f"module expects an xpcnn.nn.Module, got {type(xpcnn_module).__name__}")
    named = list(xpcnn_module.named_parameters())
    for name, p in named:
        if not isinstance(p.data, torch.Tensor):
            raise TypeError(
                f"module: parameter {name!r} of {type(xpcnn_module).__name__} is a {type(p.data).__module__}."
                f"{type(p.data).__name__}, not a torch tensor; build the module with xp=torch (or move it with "
                ".to(torch)) so that its parameters can be shared with PyTorch"
            )
    return _make_wrapper(torch)(xpcnn_module, named)


@functools.cache
def _make_wrapper(torch):
    class ModuleFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, wrapper, x, *params):
            ctx.wrapper = wrapper
            out = wrapper.xpcnn_module.forward(x.detach())  # a detached view: the same memory
            # Each module keeps one forward pass's cache; this call's caches go with its autograd node, so that
            # the module can be called again (shared weights, gradcheck) before this call's backward pass.
            ctx.caches = [(m, m._cache) for m in wrapper.xpcnn_module.modules()]
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dout):
            wrapper = ctx.wrapper
            xparams = [p for _, p in wrapper._xpcnn_params]
            kept = [p.grad for p in xparams]
            for p in xparams:
                p.grad = None
            current = [(m, m._cache) for m in wrapper.xpcnn_module.modules()]
            for m, cache in ctx.caches:  # this call's caches (the backward pass releases them: a retained
                m._cache = cache         # graph runs again from ctx.caches)
            try:
                dx = wrapper.xpcnn_module.backward(dout, input_grad=ctx.needs_input_grad[1])
                grads = [p.grad for p in xparams]
            finally:
                for m, cache in current:
                    m._cache = cache
                for p, grad in zip(xparams, kept):
                    p.grad = grad
            grads = [g if needs else None for g, needs in zip(grads, ctx.needs_input_grad[2:])]
            return (None, dx if ctx.needs_input_grad[1] else None, *grads)

    class XpcnnModule(torch.nn.Module):
        """An xpcnn module inside PyTorch; see :func:`xpcnn.interop.torch.module`."""

        def __init__(self, xpcnn_module, named):
            super().__init__()
            object.__setattr__(self, "xpcnn_module", xpcnn_module)  # not a torch submodule: no torch state
            self._xpcnn_params = named
            self._torch_names = []
            for name, p in named:
                *path, leaf = name.split(".")
                owner = self
                for part in path:
                    if part not in owner._modules:
                        owner.add_module(part, torch.nn.Module())
                    owner = owner._modules[part]
                owner.register_parameter(leaf, torch.nn.Parameter(p.data.detach()))  # shares p.data's memory
                self._torch_names.append(name)
            self.train(xpcnn_module.training)

        def _torch_params(self):
            return [self.get_parameter(name) for name in self._torch_names]

        def forward(self, x):
            params = self._torch_params()
            for (_, p), tp in zip(self._xpcnn_params, params):
                p.data = tp.detach()  # the torch parameter's memory, without its autograd history
            return ModuleFunction.apply(self, x, *params)

        def train(self, mode: bool = True):
            super().train(mode)
            self.xpcnn_module.train(mode)
            return self

        def extra_repr(self):
            return f"xpcnn: {self.xpcnn_module!r}".replace("\n", "\n  ")

    return XpcnnModule
