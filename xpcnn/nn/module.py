"""Parameters and the Module base class (the containers are in :mod:`xpcnn.nn.containers`).

A module's ``forward(x)`` keeps what its ``backward(dout)`` needs; ``backward`` returns the input gradient and
adds the parameter gradients to each ``Parameter.grad``. ``backward(dout, input_grad=False)`` skips the input
gradient (and returns None) where nothing needs it, as PyTorch does for an input without ``requires_grad``: a
Sequential model then stops at its first layer with parameters. Parameters and buffers are found by attribute, in the
order they were set, and named as in PyTorch (``"0.weight"``, ``"3.running_mean"``).
"""

from __future__ import annotations

import functools
import threading

import array_api_compat

from .._host import from_numpy, to_numpy
from .._validation import as_bool, namespace_and_device
from .init import resolve


class Parameter:
    """A trainable array (``data``) and the gradient accumulated for it (``grad``, None after ``zero_grad``).

    Parameters
    ----------
    data : array
        The value, in any array library, shape and (floating) dtype; kept as given (not copied). Optimizers replace
        ``data`` with a new array at each step.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> p = nn.Parameter(np.zeros((2, 3), dtype=np.float32))
    >>> p
    Parameter(shape=(2, 3), dtype=float32)
    >>> p.accumulate(np.ones((2, 3), dtype=np.float32)); p.accumulate(np.ones((2, 3), dtype=np.float32))
    >>> p.grad[0]
    array([2., 2., 2.], dtype=float32)
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    def accumulate(self, grad) -> None:
        """Add ``grad`` to ``self.grad`` (set it when None): what a backward pass does for each use of the
        parameter, so that a parameter used twice gets the sum of both gradients."""
        self.grad = grad if self.grad is None else self.grad + grad

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model: a forward pass that keeps what its backward pass needs.

    The contract
    ------------
    ``forward(x)`` returns the output and keeps, in ``self._cache``, what the backward pass will need (the
    functional ops' caches, the shapes of a split...). ``backward(dout, *, input_grad=True)`` takes that cache with
    :meth:`_take_cache` (which raises a clear error when there was no forward pass, or when a failed backward pass
    used it), adds each parameter's gradient to its ``Parameter.grad`` (:meth:`Parameter.accumulate`) and returns
    the gradient of the input — or None when ``input_grad`` is False (nothing before this module needs it, as for
    an input without ``requires_grad`` in PyTorch: skip the work). One forward, then one backward.

    Parameters are :class:`Parameter` attributes, child modules are :class:`Module` attributes; both are found in
    the order they were set and named as in PyTorch (``"down.0.weight"``). Non-trainable state saved in the state
    dict (BatchNorm's running statistics) is named in the class attribute ``buffer_names``. ``train()`` and
    ``eval()`` set ``self.training`` through the tree; ``to()``, ``state_dict()``, ``load_state_dict()`` and
    :func:`xpcnn.save`/:func:`xpcnn.load` work on any module built this way. ``repr`` prints the children as
    PyTorch does; override :meth:`extra_repr` to show a module's own arguments.

    Common arguments
    ----------------
    The layers with parameters or buffers (``Conv2d``, ``ConvTranspose2d``, ``Linear``, the normalisation layers)
    take these keyword-only arguments, and the layers that draw random numbers (``Dropout``) take ``seed``:

    ``xp``
        The array library the parameters are made in: a module or namespace (``numpy``, ``cupy``, ``torch``,
        ``jax.numpy``, ``array_api_strict``...) or its importable name (``"cupy"``). Default: NumPy. A name that
        cannot be imported raises ValueError; an object that is no array library raises TypeError.
    ``device``
        That library's device for the parameters (``"cpu"``, ``torch.device("cuda:0")``...). Default: the
        library's default device. The input must be on the same device.
    ``dtype``
        A real floating dtype of that library; default ``float32`` (as PyTorch). Anything else (an integer or
        complex dtype) raises TypeError at construction. The input should have the same dtype.
    ``seed``
        The seed of the parameters' initialisation (and of Dropout's masks), an int. Default: a fresh seed drawn
        from the global one (:func:`xpcnn.nn.manual_seed`), so that two layers differ and a script that sets
        the global seed gets the same model every time. The same seed gives the same values on every backend.

    Weights and biases are initialised as PyTorch's defaults: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for convolution
    and linear layers (fan_in = in_channels / groups * kh * kw, or in_features), ones and zeros for the normalisation
    layers' weight and bias (PyTorch's values, not its random stream). ``model.to(xp, device=..., dtype=...)`` moves
    or casts a built model.

    Examples
    --------
    A U-Net level: its skip connection crosses from the down path to the up path, so the backward pass adds the
    two gradients that reach x (the skip's and the down path's):

    >>> import numpy as np
    >>> from xpcnn import nn
    >>> class UNetLevel(nn.Module):
    ...     def __init__(self, channels, inner):
    ...         super().__init__()
    ...         self.down = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU())
    ...         self.inner = inner
    ...         self.up = nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1)
    ...         self.merge = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU())
    ...
    ...     def forward(self, x):
    ...         up = self.up(self.inner(self.down(x)))
    ...         self._cache = x.shape[1]                   # where the skip's channels end in the join
    ...         return self.merge(np.concat([x, up], axis=1))
    ...
    ...     def backward(self, dout, *, input_grad=True):
    ...         channels = self._take_cache()
    ...         djoined = self.merge.backward(dout)
    ...         dskip, dup = djoined[:, :channels], djoined[:, channels:]
    ...         dx = self.down.backward(self.inner.backward(self.up.backward(dup)), input_grad=input_grad)
    ...         return dx + dskip if input_grad else None
    >>> level = UNetLevel(4, nn.Identity())
    >>> x = np.ones((2, 4, 8, 8), np.float32)
    >>> level.backward(np.ones_like(level(x))).shape
    (2, 4, 8, 8)

    For a model on any backend, join with the input's namespace (``array_api_compat.array_namespace(x).concat``)
    or use :class:`xpcnn.nn.Concat` and :class:`xpcnn.nn.Residual`, which do this bookkeeping for you.
    """

    buffer_names: tuple[str, ...] = ()  # non-trainable arrays kept in the state dict (BatchNorm's statistics)
    optional_buffer_names: tuple[str, ...] = ()  # buffers older state dicts lack: loading keeps their value
    extra_state_names: tuple[str, ...] = ()  # plain Python ints a checkpoint keeps (Dropout's call counter)

    def __init__(self):
        self.training = True
        self._cache = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:
            cls.backward = _guarded_backward(cls.__dict__["backward"])

    def __call__(self, x):
        """``self.forward(x)``."""
        return self.forward(x)

    def forward(self, x):
        """The output for input ``x`` (in the layout the module was built for, NCHW by default); keeps in
        ``self._cache`` what ``backward`` needs. Subclasses implement it."""
        raise NotImplementedError

    def backward(self, dout, *, input_grad=True):
        """Add the parameter gradients to their ``grad``; return the input gradient (None if not ``input_grad``)."""
        raise NotImplementedError

    def _take_cache(self):
        """The forward pass's cache, released so that a second backward without a forward is caught."""
        if isinstance(self._cache, _FailedBackward):
            error = self._cache.error
            raise RuntimeError(
                f"{type(self).__name__}.backward: the cache of the last forward pass was used by a backward pass that "
                f"failed ({type(error).__name__}: {error}); run forward again (after zero_grad: the layers after the "
                "failure had already added their parameter gradients)"
            )
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward pass before it (each forward pass's cache "
                "serves one backward pass: a module instance used twice in one model, as PyTorch code often reuses "
                "one ReLU, keeps only its last forward's cache; give each use its own instance)"
            )
        cache, self._cache = self._cache, None
        return cache

    # -- the module tree ------------------------------------------------------------------------------------------

    def named_children(self):
        """``[(name, module)]`` of the direct children, in the order they were set."""
        return [(name, value) for name, value in vars(self).items() if isinstance(value, Module)]

    def modules(self):
        """This module and every module below it, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_parameters(self, prefix: str = ""):
        """``(name, Parameter)`` pairs of this module and every module below it, named as in PyTorch
        (``"0.weight"``), each ``prefix``-ed."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        """Every :class:`Parameter` of the tree, in :meth:`named_parameters`' order (what an optimizer takes)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        """``(name, array)`` pairs of the non-trainable state listed in ``buffer_names`` (batch norm's running
        statistics), through the tree."""
        for name in self.buffer_names:
            yield prefix + name, getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def named_extra_state(self, prefix: str = ""):
        """``(name, value)`` of the plain Python state named in ``extra_state_names`` (ints such as a Dropout
        layer's count of forward passes, which picks its next mask), through the tree: what a checkpoint keeps
        besides :meth:`state_dict` so that a resumed run draws the same random numbers."""
        for name in self.extra_state_names:
            yield prefix + name, getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_extra_state(f"{prefix}{name}.")

    def load_extra_state(self, state: dict) -> None:
        """Set the values :meth:`named_extra_state` lists from ``state`` (checked first: the same names, ints).

        Raises
        ------
        ValueError
            When the names differ from the model's (the model is left unchanged).
        """
        own = dict(self.named_extra_state())
        if set(state) != set(own):
            raise ValueError(f"extra state does not match the model: missing {sorted(set(own) - set(state))}, "
                             f"unexpected {sorted(set(state) - set(own))}")
        for name, value in state.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"extra state {name!r} must be an int, got {type(value).__name__} {value!r}")
        for name, value in state.items():
            *path, attr = name.split(".")
            owner = self
            for part in path:
                owner = dict(owner.named_children())[part]
            setattr(owner, attr, value)

    def _optional_buffers(self, prefix: str = "") -> set:
        names = {prefix + name for name in self.optional_buffer_names if name in self.buffer_names}
        for name, child in self.named_children():
            names |= child._optional_buffers(f"{prefix}{name}.")
        return names

    def named_gradients(self):
        """{name: grad} of every parameter that has one."""
        return {name: p.grad for name, p in self.named_parameters() if p.grad is not None}

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to None."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        """Set training mode (``mode=True``: batch statistics, dropout) or eval mode through the tree; returns
        self."""
        self.training = mode
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self):
        """``train(False)``: running statistics, no dropout. Returns self."""
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

    def extra_repr(self) -> str:
        """The arguments shown between the parentheses of :meth:`__repr__` (override it in a subclass)."""
        return ""

    def __repr__(self):
        """PyTorch's layout: ``Name(extra_repr)``, or one line per child, ``(name): child``, indented."""
        extra, children = self.extra_repr(), self.named_children()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + [f"({name}): {_indented(repr(child))}" for name, child in children]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def check_input(self, x) -> None:
        """A ValueError when ``x`` is not in the parameters' namespace and device (no silent host/device copy)."""
        params = self.parameters()
        if params:
            namespace_and_device(x=x, model=params[0].data)


class _FailedBackward:
    """Stands in the cache of a module whose cache a failed backward pass had already taken."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


_backward_calls = threading.local()


def _guarded_backward(backward):
    """Wrap a Module subclass's ``backward``: ``input_grad`` is checked, and when the outermost backward call fails,
    every module whose cache it had taken is marked, so that calling backward again says what happened instead of
    "called without a forward pass"."""

    @functools.wraps(backward)
    def guarded(self, dout, *, input_grad=True):
        input_grad = as_bool(input_grad, "input_grad")
        if getattr(_backward_calls, "active", False):
            return backward(self, dout, input_grad=input_grad)
        holding = [m for m in self.modules() if getattr(m, "_cache", None) is not None]
        _backward_calls.active = True
        try:
            return backward(self, dout, input_grad=input_grad)
        except Exception as error:
            for module in holding:
                if module._cache is None:
                    module._cache = _FailedBackward(error)
            raise
        finally:
            _backward_calls.active = False

    return guarded


def located(error: Exception, where: str, module: Module) -> Exception:
    """``error`` again, its message prefixed with where it happened inside a container: ``layer 7, Linear(1568,
    64, bias=True): ...`` (the class name alone for a module whose repr spans lines)."""
    text = repr(module)
    name = text if "\n" not in text and len(text) <= 120 else type(module).__name__
    try:
        return type(error)(f"{where}, {name}: {error}")
    except Exception:  # an exception type that takes other arguments keeps its own message
        return error


def _indented(text: str) -> str:
    return text.replace("\n", "\n  ")


def _dtype_name(a) -> str:
    return str(a.dtype).rsplit(".", 1)[-1]
