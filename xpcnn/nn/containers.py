"""Containers: modules made of modules, with the branch bookkeeping of their backward passes written once.

* :class:`Sequential` applies its layers in order; backward runs them in reverse.
* :class:`Residual` adds a body and a shortcut (identity by default): ``out = body(x) + shortcut(x)``; its backward
  passes ``dout`` to both and adds their input gradients (the two paths from x to the output).
* :class:`Concat` feeds x to every branch and joins their outputs along ``dim``; its backward splits ``dout`` into
  the branches' parts and adds their input gradients.

Without an autograd engine the rule is the chain rule by hand: a module used once per forward pass, a gradient
added wherever x fans out. Each container nests in the others and works with ``input_grad=False``, ``train()`` /
``eval()``, ``to()``, state dicts and ``save``/``load``. Their state-dict names are PyTorch's for the same
structure: ``"0.weight"`` in a Sequential, ``"body.0.weight"`` / ``"shortcut.0.weight"`` in a Residual,
``"1.0.weight"`` (branch 1) in a Concat.

An error inside a container names where it happened (``layer 3, Linear(64, 10, bias=True): ...``, ``body``,
``shortcut``, ``branch 1``).
"""

from __future__ import annotations

from array_api_compat import array_namespace

from .._validation import as_int
from .module import Module, located

__all__ = ["Sequential", "Residual", "Concat"]


def _modules(modules, owner: str, names=None) -> list[Module]:
    """``modules`` as a list, each checked to be a Module (a TypeError naming the argument otherwise)."""
    for i, module in enumerate(modules):
        if not isinstance(module, Module):
            where = names[i] if names else f"argument {i}"
            raise TypeError(f"{owner} takes Module instances: {where} is a {type(module).__name__}, got {module!r:.60}")
    return list(modules)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Parameters
    ----------
    *layers : Module
        The layers, first to last. Their state-dict names are their positions (``"0.weight"``).

    Examples
    --------
    >>> from xpcnn import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    """

    def __init__(self, *layers: Module):
        super().__init__()
        self.layers = _modules(layers, "Sequential")

    def named_children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        self.check_input(x)
        for i, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except (ValueError, TypeError) as error:
                raise located(error, f"layer {i}", layer) from error
        return x

    def backward(self, dout, *, input_grad=True):
        """Run the layers' backward passes in reverse. Without ``input_grad``, the first layer with parameters
        computes only their gradients and the layers before it only release their caches."""
        first = next((i for i, layer in enumerate(self.layers) if layer.parameters()), len(self.layers))
        for i in reversed(range(len(self.layers))):
            try:
                dout = self.layers[i].backward(dout, input_grad=input_grad or i > first)
            except (ValueError, TypeError) as error:
                raise located(error, f"layer {i}", self.layers[i]) from error
        return dout


class Residual(Module):
    """``out = body(x) + shortcut(x)``: a residual connection (ResNet's basic block is one).

    Parameters
    ----------
    body : Module
        The residual branch.
    shortcut : Module or None
        The skip branch (a 1x1 convolution with a stride, say, where the body changes the shape); None: identity.

    The backward pass is the sum of the two paths: ``dx = body.backward(dout) + shortcut.backward(dout)`` (``dout``
    itself for the identity). Raises a ValueError when the two outputs' shapes differ.

    Examples
    --------
    >>> from xpcnn import nn
    >>> block = nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                                   nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)))
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        _modules([body] if shortcut is None else [body, shortcut], "Residual", ["body", "shortcut"])
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        try:
            out = self.body.forward(x)
        except (ValueError, TypeError) as error:
            raise located(error, "body", self.body) from error
        try:
            skip = x if self.shortcut is None else self.shortcut.forward(x)
        except (ValueError, TypeError) as error:
            raise located(error, "shortcut", self.shortcut) from error
        if tuple(out.shape) != tuple(skip.shape):
            raise ValueError(
                f"Residual: the body's output has shape {tuple(out.shape)} but the shortcut's has "
                f"{tuple(skip.shape)}; give a shortcut that maps x to the body's shape (a strided 1x1 Conv2d)"
            )
        self._cache = "forward done"
        return out + skip

    def backward(self, dout, *, input_grad=True):
        self._take_cache()
        try:
            dx_body = self.body.backward(dout, input_grad=input_grad)
        except (ValueError, TypeError) as error:
            raise located(error, "body", self.body) from error
        if self.shortcut is None:
            dx_skip = dout
        else:
            try:
                dx_skip = self.shortcut.backward(dout, input_grad=input_grad)
            except (ValueError, TypeError) as error:
                raise located(error, "shortcut", self.shortcut) from error
        return dx_body + dx_skip if input_grad else None


class Concat(Module):
    """Every branch sees x; their outputs are joined along ``dim`` (an Inception block, a U-Net's skip join).

    Parameters
    ----------
    *branches : Module
        The branches; their outputs must agree on every axis but ``dim``. State-dict names are their positions.
    dim : int
        The axis to join along (1: channels of NCHW; negative counts from the end).

    The backward pass splits ``dout`` along ``dim`` into each branch's part and adds the branches' input
    gradients.

    Raises
    ------
    ValueError
        No branch; in the forward pass, outputs that disagree on an axis other than ``dim``.
    TypeError
        A branch that is not a Module.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> block = nn.Concat(nn.Conv2d(3, 4, 1), nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()))
    >>> out = block(np.ones((2, 3, 8, 8), dtype=np.float32))
    >>> out.shape
    (2, 6, 8, 8)
    >>> block.backward(np.ones_like(out)).shape
    (2, 3, 8, 8)
    """

    def __init__(self, *branches: Module, dim: int = 1):
        super().__init__()
        self.branches = _modules(branches, "Concat")
        if not self.branches:
            raise ValueError("Concat needs at least one branch")
        self.dim = as_int(dim, "dim")

    def named_children(self):
        return [(str(i), branch) for i, branch in enumerate(self.branches)]

    def __getitem__(self, index):
        return self.branches[index]

    def __len__(self):
        return len(self.branches)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x):
        outs = []
        for i, branch in enumerate(self.branches):
            try:
                outs.append(branch.forward(x))
            except (ValueError, TypeError) as error:
                raise located(error, f"branch {i}", branch) from error
        ndim = outs[0].ndim
        if not -ndim <= self.dim < ndim:
            raise ValueError(f"Concat: dim must be in [{-ndim}, {ndim - 1}] for {ndim}-D outputs, got {self.dim}")
        axis = self.dim % ndim
        shapes = [tuple(out.shape) for out in outs]
        if any(s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :] for s in shapes):
            raise ValueError(f"Concat: the branches' outputs must agree on every axis but {axis}, got {shapes}")
        out = array_namespace(*outs).concat(outs, axis=axis)
        self._cache = (axis, [s[axis] for s in shapes], tuple(out.shape))
        return out

    def backward(self, dout, *, input_grad=True):
        axis, sizes, shape = self._take_cache()
        if tuple(dout.shape) != shape:
            raise ValueError(f"dout must have shape {shape} (the forward output's shape), got {tuple(dout.shape)}")
        dx, start = None, 0
        for i, (branch, size) in enumerate(zip(self.branches, sizes)):
            part = dout[(slice(None),) * axis + (slice(start, start + size), ...)]
            start += size
            try:
                grad = branch.backward(part, input_grad=input_grad)
            except (ValueError, TypeError) as error:
                raise located(error, f"branch {i}", branch) from error
            dx = grad if dx is None else (None if grad is None else dx + grad)
        return dx
