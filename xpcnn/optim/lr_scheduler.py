"""Learning-rate schedulers with ``torch.optim.lr_scheduler``'s names and semantics: StepLR, MultiStepLR,
ExponentialLR, CosineAnnealingLR, OneCycleLR and ReduceLROnPlateau.

A scheduler reads and writes the optimizer's ``lr`` (a Python float), so it never touches an array and never
synchronises with a device; only :meth:`ReduceLROnPlateau.step` reads a metric, which is the user's explicit sync
when the metric is an array. StepLR, MultiStepLR, ExponentialLR and CosineAnnealingLR use the closed forms of
PyTorch's chained ``get_lr`` (equal to PyTorch's learning rates to rounding), so a learning rate set by hand
between steps is overwritten at the next step. ``state_dict()`` holds plain Python values only.
"""

from __future__ import annotations

import bisect
import math
import numbers

import array_api_compat

from .._validation import as_bool, as_float, as_int
from .optimizers import SGD, Adam, Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR",
           "ReduceLROnPlateau"]


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an xpcnn.optim optimizer (SGD, Adam, AdamW), got {type(optimizer).__name__}")


class LRScheduler:
    """Base class of the epoch-indexed schedulers: ``step()`` advances ``last_epoch`` by one and sets the
    optimizer's ``lr`` to :meth:`_lr_at` of it. Construction performs the first step (``last_epoch`` 0), as in
    PyTorch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose ``lr`` is scheduled; its ``lr`` at construction is the base learning rate.
    last_epoch : int
        -1 (the default) to start a schedule. A schedule is resumed with :meth:`load_state_dict`.

    Raises
    ------
    TypeError
        When ``optimizer`` is not an xpcnn optimizer or ``last_epoch`` not an int.
    ValueError
        For another ``last_epoch`` than -1.

    Examples
    --------
    A subclass implements ``_lr_at(epoch) -> lr`` from ``self.base_lrs[0]``:

    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> class HalveEveryEpoch(optim.LRScheduler):
    ...     def _lr_at(self, epoch):
    ...         return self.base_lrs[0] * 0.5 ** epoch
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = HalveEveryEpoch(opt)
    >>> for _ in range(3):
    ...     sched.step()
    >>> opt.lr
    0.125
    """

    def __init__(self, optimizer, last_epoch=-1):
        _check_optimizer(optimizer)
        last_epoch = as_int(last_epoch, "last_epoch", minimum=-1)
        if last_epoch != -1:
            raise ValueError(f"last_epoch must be -1 (resume with load_state_dict), got {last_epoch}")
        self.optimizer = optimizer
        self.base_lrs = [self._initial_lr()]
        self.last_epoch = last_epoch
        self.step()

    def _initial_lr(self) -> float:
        return self.optimizer.lr

    def _lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one step and set the optimizer's learning rate (no array is touched)."""
        self.last_epoch += 1
        self.optimizer.lr = self._lr_at(self.last_epoch)
        self._last_lr = [self.optimizer.lr]

    def get_last_lr(self) -> list[float]:
        """The learning rate the last :meth:`step` set, as a one-element list (one entry per parameter group,
        as in PyTorch)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The scheduler's state as plain Python values (everything but the optimizer)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state from :meth:`state_dict` and set the optimizer's learning rate to the saved last one
        (so the order of loading the optimizer and the scheduler does not matter).

        Raises
        ------
        ValueError
            When ``state_dict`` is not a dict of this scheduler's keys.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = set(self.state_dict())
        if set(state_dict) != expected:
            raise ValueError(
                f"state_dict is not a {type(self).__name__} state: missing keys {sorted(expected - set(state_dict))}, "
                f"unexpected keys {sorted(set(state_dict) - expected)}"
            )
        for k, v in state_dict.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)
        self._apply_loaded()

    def _apply_loaded(self) -> None:
        self.optimizer.lr = self._last_lr[0]


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps: ``lr = base_lr * gamma ** (epoch //
    step_size)``, as ``torch.optim.lr_scheduler.StepLR``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Steps between decays, >= 1.
    gamma : float
        Multiplicative factor, >= 0 (default 0.1).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    >>> for _ in range(4):
    ...     sched.step()
    >>> sched.get_last_lr()
    [0.25]
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = as_int(step_size, "step_size", minimum=1)
        self.gamma = as_float(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, epoch):
        return self.base_lrs[0] * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone (a milestone given twice decays twice), as
    ``torch.optim.lr_scheduler.MultiStepLR``.

    Parameters
    ----------
    optimizer : Optimizer
    milestones : sequence of int
        Steps (>= 0) at which the learning rate decays.
    gamma : float
        Multiplicative factor, >= 0 (default 0.1).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = optim.MultiStepLR(opt, milestones=[1, 3], gamma=0.5)
    >>> sched.step(); sched.get_last_lr()
    [0.5]
    """

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"milestones must be a sequence of ints, got {type(milestones).__name__}")
        self.milestones = sorted(as_int(m, "milestones", minimum=0) for m in milestones)
        self.gamma = as_float(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, epoch):
        return self.base_lrs[0] * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every step: ``lr = base_lr * gamma ** epoch``, as
    ``torch.optim.lr_scheduler.ExponentialLR``.

    Parameters
    ----------
    optimizer : Optimizer
    gamma : float
        Multiplicative factor, >= 0.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = optim.ExponentialLR(opt, gamma=0.5)
    >>> sched.step(); opt.lr
    0.5
    """

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = as_float(gamma, "gamma", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, epoch):
        return self.base_lrs[0] * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base learning rate to ``eta_min`` over ``T_max`` steps (and back up after,
    periodically), as ``torch.optim.lr_scheduler.CosineAnnealingLR``:
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Steps of the half period, >= 1.
    eta_min : float
        The smallest learning rate, >= 0 (default 0).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = optim.CosineAnnealingLR(opt, T_max=2)
    >>> sched.step(); round(opt.lr, 12)
    0.5
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = as_int(T_max, "T_max", minimum=1)
        self.eta_min = as_float(eta_min, "eta_min", minimum=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, epoch):
        base = self.base_lrs[0]
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class OneCycleLR(LRScheduler):
    """The 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR``: the learning rate rises from
    ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of the steps, then anneals to
    ``max_lr / div_factor / final_div_factor`` (with ``three_phase``, it first comes back down to the initial
    learning rate, symmetrically). With ``cycle_momentum``, SGD's ``momentum`` or Adam's ``beta1`` moves the
    other way between ``max_momentum`` and ``base_momentum``. Call :meth:`step` after each batch; stepping past
    ``total_steps`` is a ValueError.

    Parameters
    ----------
    optimizer : Optimizer
    max_lr : float
        The peak learning rate, >= 0 (it replaces the optimizer's ``lr``).
    total_steps : int, optional
        Steps in the cycle; else ``epochs * steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
    pct_start : float
        Fraction of the cycle spent increasing the learning rate, in [0, 1] (default 0.3).
    anneal_strategy : {'cos', 'linear'}
    cycle_momentum : bool
        Cycle SGD's momentum or Adam's beta1 (default True).
    base_momentum, max_momentum : float
        Momentum bounds (defaults 0.85 and 0.95).
    div_factor, final_div_factor : float
        ``initial_lr = max_lr / div_factor``, ``min_lr = initial_lr / final_div_factor`` (defaults 25, 1e4).
    three_phase : bool
        Use the three-phase schedule (default False).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it; ValueError when stepped more than ``total_steps`` times.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    >>> sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    >>> round(opt.lr, 12), opt.momentum
    (0.04, 0.95)
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, last_epoch=-1):
        _check_optimizer(optimizer)
        if total_steps is not None:
            self.total_steps = as_int(total_steps, "total_steps", minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = as_int(epochs, "epochs", minimum=1) * as_int(steps_per_epoch, "steps_per_epoch", minimum=1)
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        pct_start = as_float(pct_start, "pct_start")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.three_phase = as_bool(three_phase, "three_phase")
        self.cycle_momentum = as_bool(cycle_momentum, "cycle_momentum")
        max_lr = as_float(max_lr, "max_lr", minimum=0.0)
        div_factor = as_float(div_factor, "div_factor")
        final_div_factor = as_float(final_div_factor, "final_div_factor")
        if div_factor <= 0 or final_div_factor <= 0:
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor} and {final_div_factor}")
        self.initial_lr = max_lr / div_factor
        self.max_lr = max_lr
        self.min_lr = self.initial_lr / final_div_factor
        self.base_momentum = as_float(base_momentum, "base_momentum", minimum=0.0)
        self.max_momentum = as_float(max_momentum, "max_momentum", minimum=0.0)
        self.use_beta1 = isinstance(optimizer, Adam)
        if self.cycle_momentum:
            if not isinstance(optimizer, (SGD, Adam)):
                raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
            if self.use_beta1 and max(self.base_momentum, self.max_momentum) >= 1.0:
                raise ValueError("base_momentum and max_momentum must be < 1 for Adam's beta1")
            self._set_momentum(optimizer, self.max_momentum)
        n = self.total_steps
        if self.three_phase:
            self.phases = [
                [float(pct_start * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"],
                [float(2 * pct_start * n) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"],
                [n - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"],
            ]
        else:
            self.phases = [
                [float(pct_start * n) - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"],
                [n - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"],
            ]
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, optimizer, value):
        if self.use_beta1:
            optimizer.betas = (value, optimizer.betas[1])
        else:
            optimizer.momentum = value

    def _initial_lr(self):
        return self.initial_lr

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lr_at(self, step_num):
        if step_num > self.total_steps:
            raise ValueError(f"Tried to step {step_num} times. The specified number of total steps is {self.total_steps}")
        start_step = 0.0
        for i, (end_step, start_lr, end_lr, start_m, end_m) in enumerate(self.phases):
            if step_num <= end_step or i == len(self.phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                lr = self._anneal(getattr(self, start_lr), getattr(self, end_lr), pct)
                if self.cycle_momentum:
                    self._momentum = self._anneal(getattr(self, start_m), getattr(self, end_m), pct)
                    self._set_momentum(self.optimizer, self._momentum)
                return lr
            start_step = end_step

    def step(self) -> None:
        if self.last_epoch + 1 > self.total_steps:  # refuse before changing anything
            self._lr_at(self.last_epoch + 1)
        super().step()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["phases"] = [list(p) for p in self.phases]
        return state

    def _apply_loaded(self) -> None:
        super()._apply_loaded()
        if self.cycle_momentum and hasattr(self, "_momentum"):
            self._set_momentum(self.optimizer, self._momentum)


class ReduceLROnPlateau:
    """Reduce the learning rate when a metric stopped improving, as ``torch.optim.lr_scheduler.ReduceLROnPlateau``:
    after more than ``patience`` steps without an improvement (by ``threshold``, relative or absolute), the
    learning rate becomes ``max(lr * factor, min_lr)`` (unless that changes it by ``eps`` or less), then
    ``cooldown`` steps pass before counting again.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {'min', 'max'}
        Whether the metric should go down or up.
    factor : float
        In [0, 1) (default 0.1).
    patience : int
        Steps without improvement tolerated, >= 0 (default 10).
    threshold : float
        Smallest improvement that counts, >= 0 (default 1e-4).
    threshold_mode : {'rel', 'abs'}
    cooldown : int
        Steps to wait after a reduction, >= 0 (default 0).
    min_lr : float
        Lower bound of the learning rate, >= 0.
    eps : float
        Smallest change of the learning rate applied, >= 0 (default 1e-8).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    >>> sched = optim.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    >>> for loss in [1.0, 1.0, 1.0]:
    ...     sched.step(loss)
    >>> opt.lr
    0.5
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        _check_optimizer(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = as_float(factor, "factor", minimum=0.0)
        if self.factor >= 1.0:
            raise ValueError(f"factor must be < 1.0, got {self.factor}")
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.patience = as_int(patience, "patience", minimum=0)
        self.threshold = as_float(threshold, "threshold", minimum=0.0)
        self.cooldown = as_int(cooldown, "cooldown", minimum=0)
        self.min_lr = as_float(min_lr, "min_lr", minimum=0.0)
        self.eps = as_float(eps, "eps", minimum=0.0)
        self.last_epoch = 0
        self._last_lr = [optimizer.lr]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metrics) -> None:
        """Record one value of the metric (a Python number, or a 0-d array: reading it is a host sync the user
        asks for) and reduce the learning rate when it has stopped improving.

        Raises
        ------
        TypeError
            When ``metrics`` is not a real number or a 0-d real array.
        """
        current = _metric_value(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old_lr = self.optimizer.lr
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [self.optimizer.lr]

    get_last_lr = LRScheduler.get_last_lr
    state_dict = LRScheduler.state_dict
    load_state_dict = LRScheduler.load_state_dict
    _apply_loaded = LRScheduler._apply_loaded


def _metric_value(metrics) -> float:
    if array_api_compat.is_array_api_obj(metrics):
        from .._host import to_numpy

        if metrics.ndim != 0:
            raise TypeError(f"metrics must be a number or a 0-d array, got an array of shape {tuple(metrics.shape)}")
        value = to_numpy(metrics)  # host: the metric read the user asked for
        if value.dtype.kind not in "fiu":
            raise TypeError(f"metrics must be a real number, got an array of dtype {value.dtype}")
        return float(value)
    if isinstance(metrics, bool) or not isinstance(metrics, numbers.Real):
        raise TypeError(f"metrics must be a real number or a 0-d array, got {type(metrics).__name__} {metrics!r}")
    return float(metrics)
