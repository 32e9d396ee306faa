"""Optimizers matching ``torch.optim`` step for step: SGD (momentum, dampening, nesterov, weight decay), Adam and
AdamW. Their state (momentum buffers, moment estimates) is made with ``zeros_like`` of each parameter, so it lives
in the parameter's namespace and on its device. Each step assigns a new array to ``Parameter.data`` (no in-place
writes, so immutable backends such as JAX work too); parameters without a gradient are skipped. On accelerators
(the device profile's ``multi_tensor_optimizer``, :mod:`xpcnn._tuning`) Adam and AdamW update all parameters of one
library, device, dtype and step count as one flat array, with the same bits; each ``Parameter.data`` and state array
is then a view (a reshaped slice) of the step's joined result.

The state follows its parameter: when the model was moved to another library or device, or cast, after the state
was made (``model.to(...)``), the next step moves or casts the state the same way before using it (as
``torch.optim``'s ``load_state_dict`` does), so a step never changes a parameter's library, device or dtype."""

from __future__ import annotations

import math

import array_api_compat
from array_api_compat import array_namespace, is_jax_array

from .._dispatch import updates_in_place
from .._host import from_numpy, to_numpy
from .._tuning import profile_for
from .._validation import as_bool, as_float, namespace_and_device

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class of the optimizers: one group of parameters updated by :meth:`step` from their ``grad``.

    Parameters
    ----------
    params : iterable of Parameter
        ``model.parameters()``: the parameters to update (in any namespace and on any device; each one's state is
        made beside it).
    lr : float
        The learning rate, >= 0 (a Python float, which schedulers set between steps).

    Raises
    ------
    TypeError
        For a model, raw arrays or anything else in place of the parameters (``SGD(model, lr=...)``: pass
        ``model.parameters()``), or a non-number ``lr``.
    ValueError
        For an empty parameter list or a negative or non-finite ``lr``.

    Examples
    --------
    A subclass implements ``_update(xp, param, grad, state) -> new param`` (``state``: a dict per parameter, for
    its buffers); :meth:`step` calls it for every parameter with a gradient:

    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> class SignSGD(optim.Optimizer):
    ...     def _update(self, xp, param, grad, state):
    ...         return param - self.lr * xp.sign(grad)
    >>> p = nn.Parameter(np.zeros(3))
    >>> opt = SignSGD([p], lr=0.5)
    >>> p.accumulate(np.array([2.0, -1.0, 0.0])); opt.step()
    >>> p.data
    array([-0.5,  0.5,  0. ])
    """

    def __init__(self, params, lr):
        from ..nn.module import Module, Parameter

        if isinstance(params, Module):
            raise TypeError(f"params must be the model's parameters: pass model.parameters(), got a {type(params).__name__}")
        if array_api_compat.is_array_api_obj(params) or not hasattr(params, "__iter__"):
            raise TypeError(f"params must be an iterable of Parameters (model.parameters()), got {type(params).__name__}")
        self.params = list(params)
        if not self.params:
            raise ValueError("params must not be empty: the optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"params[{i}] must be an xpcnn.nn.Parameter (use model.parameters()), got {type(p).__name__}"
                )
        self.lr = as_float(lr, "lr", minimum=0.0)
        self.state = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``grad = None``), before the next backward pass adds new ones."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient: a new array is assigned to ``Parameter.data`` (nothing is
        written in place); parameters without a gradient are skipped. No host sync."""
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                _follow(state, p.data)
                p.data = self._update(array_namespace(p.data), p.data, p.grad, state)

    def _update(self, xp, param, grad, state):
        raise NotImplementedError

    _hyperparameters: tuple = ()

    def state_dict(self) -> dict:
        """The optimizer's state in ``torch.optim``'s layout: ``{"state": {index: {name: array or number}},
        "param_groups": [{"lr": ..., <hyperparameters>, "params": [0, 1, ...]}]}``. The arrays are the state's own
        (never written in place, so the dict stays valid while training goes on); nothing is copied to host.

        Returns
        -------
        dict

        Example
        -------
        >>> import numpy as np
        >>> from xpcnn import nn, optim
        >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
        >>> opt.state_dict()["param_groups"][0]["lr"]
        0.1
        """
        group = {"lr": self.lr}
        for name in self._hyperparameters:
            value = getattr(self, name)
            group[name] = tuple(value) if isinstance(value, tuple) else value
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(s) for i, s in enumerate(self.state) if s}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state from :meth:`state_dict` (possibly of a model since moved, cast or saved through the
        host): arrays are converted to each parameter's library, device and dtype, and the hyperparameters of
        the single parameter group are set (checked as in the constructor).

        Raises
        ------
        TypeError
            When ``state_dict`` is not such a dict.
        ValueError
            When the number of parameters, an index or the shape of a state array does not match.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise TypeError("state_dict must be a dict with keys 'state' and 'param_groups' (from state_dict())")
        groups, states = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ValueError("state_dict must hold exactly one parameter group")
        group = groups[0]
        n = len(group.get("params", ()))
        if n != len(self.params):
            raise ValueError(
                f"loaded state dict has {n} parameters but the optimizer has {len(self.params)}; "
                "it comes from another model"
            )
        if not isinstance(states, dict):
            raise TypeError(f"state_dict['state'] must be a dict, got {type(states).__name__}")
        new_states = [{} for _ in self.params]
        for index, entry in states.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise ValueError(f"state_dict['state'] has key {index!r}, not a parameter index in [0, {n})")
            param = self.params[index].data
            for name, value in entry.items():
                if array_api_compat.is_array_api_obj(value) and tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"state_dict['state'][{index}][{name!r}] has shape {tuple(value.shape)} but parameter "
                        f"{index} has shape {tuple(param.shape)}"
                    )
                new_states[index][name] = value
            _follow(new_states[index], param)
        unknown = set(group) - {"lr", "params", *self._hyperparameters}
        if unknown:
            raise ValueError(f"state_dict's parameter group has keys {sorted(unknown)} that {type(self).__name__} does not take")
        self._set_hyperparameters({k: v for k, v in group.items() if k != "params"})
        self.state = new_states

    def _set_hyperparameters(self, group: dict) -> None:
        if "lr" in group:
            self.lr = as_float(group["lr"], "lr", minimum=0.0)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    ``g = grad + weight_decay * param``; with momentum ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g``
    at the first step) and ``g = g + momentum * buf`` with nesterov, else ``g = buf``; then
    ``param = param - lr * g``. The momentum buffer is the state (``state_dict()["state"][i]["momentum_buffer"]``).

    Parameters
    ----------
    params : iterable of Parameter
        ``model.parameters()``.
    lr : float
        Learning rate, >= 0 (default 1e-3).
    momentum : float
        >= 0 (default 0: plain SGD, no state).
    dampening : float
        Damping of the momentum (default 0).
    weight_decay : float
        L2 penalty added to the gradient, >= 0 (default 0).
    nesterov : bool
        Nesterov momentum (needs momentum > 0 and dampening 0).
    maximize : bool, keyword only
        Ascend the objective (the gradient's sign flipped), as PyTorch's ``maximize``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> w = nn.Parameter(np.array([1.0, -2.0]))
    >>> opt = optim.SGD([w], lr=0.1, momentum=0.9)
    >>> w.grad = np.array([1.0, 1.0])
    >>> opt.step()
    >>> w.data.tolist()
    [0.9, -2.1]
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False):
        super().__init__(params, lr)
        self.maximize = as_bool(maximize, "maximize")
        momentum, weight_decay = as_float(momentum, "momentum", minimum=0.0), as_float(weight_decay, "weight_decay", minimum=0.0)
        dampening, nesterov = as_float(dampening, "dampening"), as_bool(nesterov, "nesterov")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    _hyperparameters = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")

    def _set_hyperparameters(self, group):
        super()._set_hyperparameters(group)
        for name in ("momentum", "dampening", "weight_decay"):
            if name in group:
                setattr(self, name, as_float(group[name], name, minimum=None if name == "dampening" else 0.0))
        for name in ("nesterov", "maximize"):
            if name in group:
                setattr(self, name, as_bool(group[name], name))

    def _update(self, xp, param, grad, state):
        if self.maximize:
            grad = -grad
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = grad if buf is None else self.momentum * buf + (1.0 - self.dampening) * grad
            state["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return param - self.lr * grad


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    ``m = beta1 * m + (1 - beta1) * g``, ``v = beta2 * v + (1 - beta2) * g**2``, then
    ``param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``. The state per parameter is
    ``step`` (an int), ``exp_avg`` (m) and ``exp_avg_sq`` (v).

    Parameters
    ----------
    params : iterable of Parameter
        ``model.parameters()``.
    lr : float
        Learning rate, >= 0 (default 1e-3).
    betas : (float, float)
        Decay rates of the moment estimates, each in [0, 1) (default (0.9, 0.999)).
    eps : float
        Added to the denominator, >= 0 (default 1e-8).
    weight_decay : float
        L2 penalty added to the gradient, >= 0 (default 0).
    amsgrad : bool
        Use the largest second moment so far (state ``max_exp_avg_sq``), as PyTorch's ``amsgrad``.
    maximize : bool, keyword only
        Ascend the objective (the gradient's sign flipped), as PyTorch's ``maximize``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> w = nn.Parameter(np.array([1.0]))
    >>> opt = optim.Adam([w], lr=0.1)
    >>> w.grad = np.array([3.0])
    >>> opt.step()
    >>> round(float(w.data[0]), 6), opt.state_dict()["state"][0]["step"]
    (0.9, 1)
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, _multi_tensor: bool | None = None):
        super().__init__(params, lr)
        self.amsgrad, self.maximize = as_bool(amsgrad, "amsgrad"), as_bool(maximize, "maximize")
        # None: the device profile's multi_tensor_optimizer; True/False: chosen (the tests take both paths)
        self._multi_tensor = None if _multi_tensor is None else as_bool(_multi_tensor, "_multi_tensor")
        self._joined: dict = {}  # the joined arrays of the last multi-tensor step, with the views handed out
        self._previous: dict = {}
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        beta1, beta2 = as_float(betas[0], "betas[0]"), as_float(betas[1], "betas[1]")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas = (beta1, beta2)
        self.eps = as_float(eps, "eps", minimum=0.0)
        self.weight_decay = as_float(weight_decay, "weight_decay", minimum=0.0)

    _hyperparameters = ("betas", "eps", "weight_decay", "amsgrad", "maximize")

    def _set_hyperparameters(self, group):
        super()._set_hyperparameters(group)
        if "betas" in group:
            betas = group["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
            self.betas = (as_float(betas[0], "betas[0]"), as_float(betas[1], "betas[1]"))
        for name in ("eps", "weight_decay"):
            if name in group:
                setattr(self, name, as_float(group[name], name, minimum=0.0))
        for name in ("amsgrad", "maximize"):
            if name in group:
                setattr(self, name, as_bool(group[name], name))

    def step(self) -> None:
        """Update every parameter that has a gradient (see :meth:`Optimizer.step`). Where the device profile's
        ``multi_tensor_optimizer`` is on (:mod:`xpcnn._tuning`: accelerators), the parameters of one library,
        device, dtype and step count are updated together, as one flat array (:meth:`_update_together`): the
        same arithmetic on every element, so the same bits, in ~14 kernels for all of them instead of 13 each."""
        together: dict = {}
        self._previous, self._joined = self._joined, {}
        for index, (p, state) in enumerate(zip(self.params, self.state)):
            if p.grad is None:
                continue
            _follow(state, p.data)
            if self._multi_tensor if self._multi_tensor is not None else profile_for(p.data).multi_tensor_optimizer:
                key = (id(array_namespace(p.data)), repr(array_api_compat.device(p.data)), str(p.data.dtype),
                       state.get("step", 0))
                together.setdefault(key, []).append(index)
            else:
                p.data = self._update(array_namespace(p.data), p.data, p.grad, state)
        for indices in together.values():
            self._update_together(indices)

    def _update(self, xp, param, grad, state):
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
        if self.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(param)
        state["step"] += 1
        param, moments = self._arithmetic(xp, param, grad, state["step"],
                                          [state[name] for name in self._moment_names()])
        state.update(zip(self._moment_names(), moments))
        return param

    def _moment_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def _arithmetic(self, xp, param, grad, step: int, moments):
        """One Adam step of ``param`` (any shape) at step count ``step``: the new param and the new moments
        (exp_avg, exp_avg_sq[, max_exp_avg_sq]). Elementwise, so applying it to several parameters joined into one
        array gives each element the same bits as applying it to each parameter."""
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq, *max_exp_avg_sq = moments
        if self.maximize:
            grad = -grad
        if self.weight_decay:
            if self.decoupled:
                param = param * (1.0 - self.lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        exp_avg = beta1 * exp_avg + (1.0 - beta1) * grad
        exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * (grad * grad)
        second, moments = exp_avg_sq, [exp_avg, exp_avg_sq]
        if self.amsgrad:  # the largest second moment so far
            second = xp.maximum(max_exp_avg_sq[0], second)
            moments.append(second)
        step_size = self.lr / (1.0 - beta1**step)
        denom = xp.sqrt(second) / math.sqrt(1.0 - beta2**step) + self.eps
        return param - step_size * (exp_avg / denom), moments

    def _update_together(self, indices: list[int]) -> None:
        """:meth:`_update` of the parameters ``indices`` (one library, device, dtype and step count) as one flat
        array: the parameters, gradients and moments are joined (one ``concat`` each), updated, and handed back as
        views of the results (reshaped slices). The next step finds its own views still in place and takes the
        joined arrays without joining again; anything else (a parameter set anew, a loaded state) is joined
        afresh. Nothing is written in place: a state dict taken earlier stays valid."""
        params = [self.params[i] for i in indices]
        states = [self.state[i] for i in indices]
        xp, like = array_namespace(params[0].data), params[0].data
        device, names = array_api_compat.device(like), self._moment_names()
        shapes = [tuple(p.data.shape) for p in params]
        sizes = [math.prod(shape) for shape in shapes]
        # The joined arrays of the last step are taken again where the parameters and moments are still the views
        # handed out then. A view then holds the joined array's values: NumPy, CuPy and PyTorch views share its
        # memory, JAX arrays never change; a Dask array assigned into (``p.data[...] = v``) keeps its identity but
        # not its base's values, so Dask (and array-api-strict) joins afresh at every step.
        previous = self._previous.get(tuple(indices)) if updates_in_place(like) or is_jax_array(like) else None

        def joined(name, arrays):
            if previous is not None and name in previous and all(
                    a is view for a, view in zip(arrays, previous[name][1], strict=True)):
                return previous[name][0]
            if all(a is None for a in arrays):
                return xp.zeros((sum(sizes),), dtype=like.dtype, device=device)
            flat = [xp.zeros((size,), dtype=like.dtype, device=device) if a is None else xp.reshape(a, (-1,))
                    for a, size in zip(arrays, sizes)]
            return flat[0] if len(flat) == 1 else xp.concat(flat)

        param = joined("param", [p.data for p in params])
        grad = joined("grad", [p.grad for p in params])
        moments = [joined(name, [s.get(name) for s in states]) for name in names]
        step = states[0].get("step", 0) + 1
        param, moments = self._arithmetic(xp, param, grad, step, moments)
        starts = [sum(sizes[:k]) for k in range(len(sizes))]

        def views(flat):
            return [xp.reshape(flat[start:start + size], shape) for start, size, shape in zip(starts, sizes, shapes)]

        kept = {"param": (param, views(param))}
        kept.update((name, (flat, views(flat))) for name, flat in zip(names, moments))
        for k, (p, state) in enumerate(zip(params, states)):
            p.data = kept["param"][1][k]
            state["step"] = step
            state.update((name, kept[name][1][k]) for name in names)
        self._joined[tuple(indices)] = kept


class AdamW(Adam):
    """Adam with decoupled weight decay (``param *= 1 - lr * weight_decay`` before the step), as
    ``torch.optim.AdamW``.

    Parameters
    ----------
    params : iterable of Parameter
        ``model.parameters()``.
    lr : float
        Learning rate, >= 0 (default 1e-3).
    betas : (float, float)
        Each in [0, 1) (default (0.9, 0.999)).
    eps : float
        >= 0 (default 1e-8).
    weight_decay : float
        Decoupled decay, >= 0 (default 1e-2).
    amsgrad : bool
        Use the largest second moment so far (state ``max_exp_avg_sq``), as PyTorch's ``amsgrad``.
    maximize : bool, keyword only
        Ascend the objective (the gradient's sign flipped), as PyTorch's ``maximize``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> w = nn.Parameter(np.array([1.0]))
    >>> opt = optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = np.array([0.0])
    >>> opt.step()
    >>> round(float(w.data[0]), 6)
    0.95
    """

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, _multi_tensor: bool | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         _multi_tensor=_multi_tensor)


def _follow(state: dict, param) -> None:
    """Move or cast the arrays of one parameter's state to the parameter's library, device and dtype, where the
    model was moved or cast after the state was made (an explicit copy the user asked for with ``model.to``)."""
    xp, device = array_namespace(param), array_api_compat.device(param)
    for key, value in state.items():
        if not array_api_compat.is_array_api_obj(value):
            continue
        if array_namespace(value) is not xp or array_api_compat.device(value) != device:
            value = from_numpy(to_numpy(value), xp, device)  # host: the model was moved by the user
        if value.dtype != param.dtype:
            value = xp.astype(value, param.dtype)
        state[key] = value
