"""Parameters, the Module base class and Sequential.

A module's ``forward(x)`` keeps what its ``backward(dout)`` needs; ``backward`` returns the input gradient and
adds the parameter gradients to each ``Parameter.grad``. ``backward(dout, input_grad=False)`` skips the input
gradient (and returns None) where nothing needs it, as PyTorch does for an input without ``requires_grad``: a
Sequential model then stops at its first layer with parameters. Parameters and buffers are found by attribute, in the
order they were set, and named as in PyTorch (``"0.weight"``, ``"3.running_mean"``).
"""

from __future__ import annotations

import array_api_compat

from .._host import from_numpy, to_numpy
from .._validation import namespace_and_device
from .init import resolve


class Parameter:
    """A trainable array (``data``) and the gradient accumulated for it (``grad``, None after ``zero_grad``)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    def accumulate(self, grad) -> None:
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model."""

    buffer_names: tuple[str, ...] = ()  # non-trainable arrays kept in the state dict (BatchNorm's statistics)
    optional_buffer_names: tuple[str, ...] = ()  # buffers older state dicts lack: loading keeps their value

    def __init__(self):
        self.training = True
        self._cache = None

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout, *, input_grad=True):
        """Add the parameter gradients to their ``grad``; return the input gradient (None if not ``input_grad``)."""
        raise NotImplementedError

    def _take_cache(self):
        """The forward pass's cache, released so that a second backward without a forward is caught."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward pass before it")
        cache, self._cache = self._cache, None
        return cache

    # -- the module tree ------------------------------------------------------------------------------------------

    def named_children(self):
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        for name in self.buffer_names:
            yield prefix + name, getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def _optional_buffers(self, prefix: str = "") -> set:
        names = {prefix + name for name in self.optional_buffer_names if name in self.buffer_names}
        for name, child in self.named_children():
            names |= child._optional_buffers(f"{prefix}{name}.")
        return names

    def named_gradients(self):
        """{name: grad} of every parameter that has one."""
        return {name: p.grad for name, p in self.named_parameters() if p.grad is not None}

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        self.training = mode
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{name: array} of every parameter and buffer, in the module's own namespace and device."""
        return {**{n: p.data for n, p in self.named_parameters()}, **dict(self.named_buffers())}

    def _assign(self, name: str, value) -> None:
        *path, attr = name.split(".")
        owner = self
        for part in path:
            owner = dict(owner.named_children())[part]
        if isinstance(getattr(owner, attr), Parameter):
            getattr(owner, attr).data = value
        else:
            setattr(owner, attr, value)

    def load_state_dict(self, state: dict) -> None:
        """Replace every parameter and buffer by ``state``'s arrays (host NumPy arrays or the model's own
        namespace). Names, shapes and dtypes are all checked first: on any mismatch a ValueError lists them and the
        model is left unchanged. A buffer its module declares optional (``optional_buffer_names``, such as batch
        norm's ``num_batches_tracked``, which older state dicts lack) keeps its value when ``state`` lacks it, as
        PyTorch does."""
        own = self.state_dict()
        optional = self._optional_buffers()
        problems = [f"missing {name!r}" for name in own if name not in state and name not in optional]
        problems += [f"unexpected {name!r}" for name in state if name not in own]
        for name, target in own.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != tuple(target.shape):
                problems.append(f"{name!r} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}")
            elif _dtype_name(value) != _dtype_name(target):
                problems.append(f"{name!r} has dtype {_dtype_name(value)}, the model expects {_dtype_name(target)}")
        if problems:
            raise ValueError("state does not match the model: " + "; ".join(problems))
        converted = {}
        for name, target in own.items():
            if name not in state:  # an optional buffer
                continue
            xp, device = array_api_compat.array_namespace(target), array_api_compat.device(target)
            value = state[name]
            same = array_api_compat.array_namespace(value) is xp and array_api_compat.device(value) == device
            converted[name] = value if same else from_numpy(to_numpy(value), xp, device)
        for name, value in converted.items():
            self._assign(name, value)

    def to(self, xp, device=None, dtype=None):
        """Move every parameter and buffer to namespace ``xp`` (``numpy``, ``cupy``, ``torch``...) on ``device``,
        optionally casting floating arrays to ``dtype``. An explicit copy through host memory; returns self."""
        xp, device, float_dtype = resolve(xp, device, dtype)
        for name, value in self.state_dict().items():
            moved = from_numpy(to_numpy(value), xp, device)
            if dtype is not None and xp.isdtype(moved.dtype, "real floating"):
                moved = xp.astype(moved, float_dtype)
            self._assign(name, moved)
        self.zero_grad()
        return self

    def check_input(self, x) -> None:
        """A ValueError when ``x`` is not in the parameters' namespace and device (no silent host/device copy)."""
        params = self.parameters()
        if params:
            namespace_and_device(x=x, model=params[0].data)


def _dtype_name(a) -> str:
    return str(a.dtype).rsplit(".", 1)[-1]


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse."""

    def __init__(self, *layers: Module):
        super().__init__()
        for layer in layers:
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Module instances, got {type(layer).__name__}")
        self.layers = list(layers)

    def named_children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        self.check_input(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout, *, input_grad=True):
        """Run the layers' backward passes in reverse. Without ``input_grad``, the first layer with parameters
        computes only their gradients and the layers before it only release their caches."""
        first = next((i for i, layer in enumerate(self.layers) if layer.parameters()), len(self.layers))
        for i in reversed(range(len(self.layers))):
            dout = self.layers[i].backward(dout, input_grad=input_grad or i > first)
        return dout

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}): {layer!r}\n" for i, layer in enumerate(self.layers)) + ")"
