"""xpcnn's hand-written passes as PyTorch autograd rules.

xpcnn takes torch tensors natively (through array-api-compat), so the wrappers call xpcnn on the very tensors
autograd hands them: no copies, on CPU or CUDA. PyTorch records one node per wrapped call; its backward is xpcnn's.

* :func:`function` wraps a functional pair (``conv2d_forward``/``conv2d_backward``...) as a
  ``torch.autograd.Function``;
* :func:`module` wraps an xpcnn :class:`~xpcnn.nn.Module` built with ``xp=torch`` as a ``torch.nn.Module``.
* :func:`load_torch_state_dict` and :func:`export_torch_state_dict` exchange weights with a PyTorch model built the
  same way, by name.

Only first derivatives: the backward passes are not themselves differentiated (``once_differentiable``).

State-dict names
----------------
An xpcnn model's state-dict names are PyTorch's for the same structure, so the mapping is the identity:

=====================================  =========================================================================
xpcnn                                  the equivalent PyTorch model
=====================================  =========================================================================
``Conv2d``, ``ConvTranspose2d``,       ``torch.nn.Conv2d``... (``weight`` in PyTorch's layout:
``Linear``                             ``(out, in/groups, kh, kw)``, ``(in, out/groups, kh, kw)``, ``(out, in)``;
                                       ``bias``)
``BatchNorm1d/2d``                     ``torch.nn.BatchNorm1d/2d``: ``weight``, ``bias``, ``running_mean``,
                                       ``running_var``, ``num_batches_tracked`` (int64, 0-d; a state dict without
                                       it loads and keeps the model's count, as in PyTorch)
``LayerNorm``, ``GroupNorm``           ``weight``, ``bias``
``Sequential(a, b, ...)``              ``torch.nn.Sequential(a, b, ...)``: ``"0.weight"``, ``"1.running_mean"``
``Residual(body, shortcut)``           a module with attributes ``body`` and ``shortcut`` whose forward is
                                       ``body(x) + shortcut(x)``: ``"body.0.weight"``, ``"shortcut.0.weight"``;
                                       an identity shortcut (None) has no names (``shortcut=None`` or
                                       ``torch.nn.Identity()`` in PyTorch)
``Concat(b0, b1, ..., dim=1)``         a ``torch.nn.ModuleList`` subclass whose forward is
                                       ``torch.cat([b(x) for b in self], dim)``: ``"0.weight"``, ``"1.0.weight"``
                                       (the branches' positions)
your own ``Module``                    its attributes' names, in the order set (``"down.0.weight"``)
=====================================  =========================================================================

Layers without parameters (activations, pooling, ``Flatten``, ``Dropout``, ``Identity``) take a position in a
Sequential, as in PyTorch, and have no names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from . import gradient_slots

__all__ = ["function", "module", "load_torch_state_dict", "export_torch_state_dict"]


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
        gradient of the first argument or a tuple of gradients of the leading array arguments (``(dx, dweight,
        dbias)``: positional tensors and Nones, in order; options between them, such as ``layer_norm``'s
        ``normalized_shape``, take no place: ``xpcnn.interop.gradient_slots``).
    n_grads : int, optional
        How many of those leading array arguments the backward pass's gradients belong to. By default as many as it
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
            ctx.slots = gradient_slots(args, lambda a: isinstance(a, torch.Tensor))
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, dout):
            grads = _as_tuple(backward(dout, ctx.cache))  # the cache is only read: retain_graph works
            count = min(len(grads), len(grads) if n_grads is None else n_grads)
            result = [None] * len(ctx.float_inputs)
            for grad, i in zip(grads[:count], ctx.slots):
                if ctx.needs_input_grad[1 + i] and ctx.float_inputs[i]:
                    result[i] = grad
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
        Buffers (batch norm's running statistics) stay on the xpcnn module (``.xpcnn_module``), and the wrapper's
        ``state_dict()`` holds them under their xpcnn (= PyTorch) names, which its ``load_state_dict()`` loads:
        a checkpoint of a torch model holding wrapped layers is complete, and equals the pure PyTorch model's.

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

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            for name, value in self.xpcnn_module.named_buffers():  # batch norm's statistics, by their xpcnn names
                destination[prefix + name] = value if keep_vars else value.detach()

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                  error_msgs):
            optional = self.xpcnn_module._optional_buffers()
            for name, value in self.xpcnn_module.named_buffers():
                key = prefix + name
                if key not in state_dict:
                    if name not in optional:
                        missing_keys.append(key)
                    continue
                incoming = state_dict.pop(key)  # taken here: the parameters' submodules never see it
                if tuple(incoming.shape) != tuple(value.shape):
                    error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(incoming.shape)} "
                                      f"from checkpoint, the shape in current model is {tuple(value.shape)}.")
                    continue
                self.xpcnn_module._assign(name, incoming.detach().to(device=value.device, dtype=value.dtype,
                                                                      copy=True))
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)

        def extra_repr(self):
            return f"xpcnn: {self.xpcnn_module!r}".replace("\n", "\n  ")

    return XpcnnModule


# -- weights exchanged with PyTorch by name ----------------------------------------------------------------------------


def load_torch_state_dict(model, state_dict_or_path):
    """Load a PyTorch ``state_dict`` into an xpcnn model built the same way (names: see the module's table).

    Parameters
    ----------
    model : xpcnn.nn.Module
        The model to load into, on any backend and device; unchanged on any error.
    state_dict_or_path : dict of torch.Tensor, torch.nn.Module, str or os.PathLike
        A ``state_dict`` (``torch_model.state_dict()``, or any mapping of names to tensors), a PyTorch module (its
        ``state_dict()``), or the path of a safetensors file (``safetensors.torch.save_file(sd, path)``). Pickled
        files (``torch.save``'s ``.pt``) are not opened here: load one with ``torch.load(path,
        weights_only=True)`` and pass the dict.

    Returns
    -------
    xpcnn.nn.Module
        ``model``, its parameters and buffers replaced by copies of the tensors, converted to the model's namespace
        and device (a model built with ``xp=torch`` never shares memory with the state dict).

    Raises
    ------
    ValueError
        When names, shapes or dtypes do not match the model: every missing and unexpected name and every shape and
        dtype mismatch is listed (``missing 'body.0.weight'; '0.weight' has shape (8, 1, 3, 3), the model expects
        (8, 3, 3, 3)``), as :meth:`xpcnn.nn.Module.load_state_dict` does. A ValueError too for a file that is no
        safetensors file.
    TypeError
        For a model that is no xpcnn module, or a state dict holding something other than tensors.

    Notes
    -----
    Load before wrapping with :func:`module`: the wrapper's ``torch.nn.Parameter``\\ s are the truth for the
    parameters of a wrapped module (each of its forward passes points the xpcnn parameters at them), so load a
    wrapped module's parameters with the wrapper's own ``load_state_dict``.

    Examples
    --------
    >>> import torch
    >>> from xpcnn import nn
    >>> from xpcnn.interop.torch import load_torch_state_dict
    >>> ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> model = load_torch_state_dict(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), ref.state_dict())
    >>> sorted(model.state_dict()) == sorted(ref.state_dict())
    True
    """
    torch = _torch()
    from ..nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"load_torch_state_dict: model must be an xpcnn.nn.Module, got {type(model).__name__}")
    state = _torch_state(torch, state_dict_or_path)
    model_is_torch = any(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    # Copies, never the caller's tensors: the model's optimiser must not write into the state dict it was given.
    # A model on another backend gets host copies through load_state_dict's conversion (after its checks).
    model.load_state_dict({name: t.detach().clone() if model_is_torch else t.detach() for name, t in state.items()})
    return model


def export_torch_state_dict(model, *, device=None) -> dict:
    """An xpcnn model's parameters and buffers as a PyTorch ``state_dict`` (a dict of tensors, PyTorch's order).

    Parameters
    ----------
    model : xpcnn.nn.Module
        A model on any backend.
    device : torch.device or str, optional
        Where the tensors go; by default the model's device for a model built with ``xp=torch``, else the CPU.

    Returns
    -------
    dict of str to torch.Tensor
        Copies (no memory shared with the model), dtypes kept, names as in the module's table and in the order
        ``torch_model.state_dict()`` has them (each module's parameters, then its buffers, then its children), so
        ``torch_model.load_state_dict(export_torch_state_dict(model))`` works with ``strict=True``, and
        ``safetensors.torch.save_file(export_torch_state_dict(model), path)`` writes a file PyTorch users can
        load (:func:`xpcnn.save` to a ``.safetensors`` path writes the same tensors without PyTorch).

    Examples
    --------
    >>> import torch
    >>> from xpcnn import nn
    >>> from xpcnn.interop.torch import export_torch_state_dict
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    >>> ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> ref.load_state_dict(export_torch_state_dict(model))
    <All keys matched successfully>
    """
    torch = _torch()
    import numpy as np  # host: the copy of a non-torch array into a tensor goes through host memory

    from .._host import to_numpy
    from ..nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"export_torch_state_dict: model must be an xpcnn.nn.Module, got {type(model).__name__}")
    state = model.state_dict()
    exported = {}
    for name in _torch_order(model):
        value = state[name]
        if isinstance(value, torch.Tensor):
            tensor = value.detach().clone()
        else:
            tensor = torch.from_numpy(np.array(to_numpy(value), copy=True))  # host: an explicit, documented copy
        exported[name] = tensor if device is None else tensor.to(device)
    return exported


def _torch_order(module, prefix: str = ""):
    """The state-dict names in PyTorch's order: a module's own parameters, its own buffers, then its children."""
    for name, _ in module.named_parameters():
        if "." not in name:
            yield prefix + name
    for name, _ in module.named_buffers():
        if "." not in name:
            yield prefix + name
    for name, child in module.named_children():
        yield from _torch_order(child, f"{prefix}{name}.")


def _torch_state(torch, source) -> dict:
    """``{name: tensor}`` from a state dict, a torch module or a safetensors file."""
    if isinstance(source, torch.nn.Module):
        return dict(source.state_dict())
    if isinstance(source, (str, os.PathLike)):
        return _read_torch_file(source)
    if not isinstance(source, Mapping):
        raise TypeError(
            "state_dict_or_path must be a dict of tensors (a state_dict), a torch.nn.Module or the path of a "
            f"safetensors file, got {type(source).__name__}"
        )
    bad = [f"{name!r} ({type(value).__name__})" for name, value in source.items()
           if not isinstance(value, torch.Tensor)]
    if bad:
        raise TypeError(f"the state dict must map names to torch tensors; not tensors: {', '.join(bad)}")
    return dict(source)


def _read_torch_file(path) -> dict:
    from ..serialization import _safetensors_numpy, _sniff

    path = os.fspath(path)
    if _sniff(path) != "safetensors":
        raise ValueError(
            f"{path!r} is not a safetensors file; load_torch_state_dict reads no pickled files (torch.save's .pt): "
            "load one with torch.load(path, weights_only=True) and pass the dict, or save it with "
            "safetensors.torch.save_file"
        )
    _safetensors_numpy()  # a clear ImportError without the package
    import safetensors  # host: the file reader
    import safetensors.torch  # host: likewise, to tensors (bfloat16 included)

    try:
        return safetensors.torch.load_file(path)
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path!r} is not a safetensors weights file: {error}") from error
