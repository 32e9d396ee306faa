"""Loss objects: ``loss = criterion(output, target)``, then ``criterion.backward(dloss=1.0)`` returns d(output).

They are thin wrappers over :mod:`xpcnn.functional`'s loss pairs: calling one runs the forward function and keeps
its cache; :meth:`~_Loss.backward` hands the cache to the backward function once (a second call without a new
forward pass is a RuntimeError).
"""

from __future__ import annotations

import copy

from .. import functional as F
from .._validation import as_bool, as_float, as_int, check_reduction, namespace_and_device
from ..functional.losses import IGNORE_INDEX


class _Loss:
    """Base class of the loss objects: ``reduction`` and the forward/backward pair."""

    forward_fn = backward_fn = None

    def __init__(self, reduction="mean"):
        check_reduction(reduction)
        self.reduction = reduction
        self._cache = None

    def _options(self):
        return {"reduction": self.reduction}

    def __call__(self, output, target):
        """The loss of ``output`` against ``target`` (see the class); keeps what :meth:`backward` needs."""
        loss, self._cache = type(self).forward_fn(output, target, **self._options())
        return loss

    def _take_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward pass before it")
        cache, self._cache = self._cache, None
        return cache

    def backward(self, dloss=1.0):
        """The gradient of the output: ``dloss`` is 1.0 (the default) when the loss is the final objective, else
        the gradient of what follows it (an array of the loss's shape for ``reduction="none"``).

        Raises
        ------
        RuntimeError
            Without a forward pass since the last backward.
        """
        return type(self).backward_fn(dloss, self._take_cache())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._options().items())})"


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy, as ``torch.nn.CrossEntropyLoss`` (see
    :func:`~xpcnn.functional.softmax_cross_entropy_forward` for the formulas).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}
        ``"mean"`` divides by the summed ``weight[target]`` of the rows not ignored (their number without
        ``weight``) for class indices, by the number of rows for class probabilities.
    check_targets : bool
        Check every call's class indices lie in [0, C) (a read of the targets: a device sync on a GPU); ``False``
        skips it (out-of-range targets then give NaN): :func:`xpcnn.fit` checks the whole target array once.
    weight : array, shape (C,), optional
        A weight per class, in the logits' dtype, namespace and device.
    ignore_index : int
        Class-index targets equal to it add nothing (default -100).
    label_smoothing : float
        In [0, 1] (default 0).

    Calling it
    ----------
    ``criterion(logits, target)``: logits (N, C), (N, C, d1, ...) or (C,); target class indices (N,),
    (N, d1, ...) or (), or class probabilities of the logits' shape. ``criterion.backward()`` returns dlogits.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it (the arrays are checked at each call).

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> criterion = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0]), label_smoothing=0.1)
    >>> loss = criterion(np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([1, 0]))
    >>> criterion.backward().shape
    (2, 2)
    """

    forward_fn, backward_fn = F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward

    def backward(self, dloss=1.0, *, target_grad: bool = False):
        """dlogits (and dtarget, as ``(dlogits, dtarget)``, with ``target_grad=True``: class-probability targets
        only); ``dloss`` as for every loss: 1.0 when the loss is the final objective, an array of the loss's shape
        for ``reduction="none"``."""
        return F.softmax_cross_entropy_backward(dloss, self._take_cache(), target_grad=target_grad)

    def __init__(self, reduction="mean", check_targets=True, *, weight=None, ignore_index: int = IGNORE_INDEX,
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.check_targets = as_bool(check_targets, "check_targets")
        if weight is not None:
            xp, _ = namespace_and_device(weight=weight)
            if weight.ndim != 1 or not xp.isdtype(weight.dtype, "real floating"):
                raise ValueError(f"weight must be a 1-D floating array (one weight per class), got shape "
                                 f"{tuple(weight.shape)} and dtype {weight.dtype}")
        self.weight = weight
        self.ignore_index = as_int(ignore_index, "ignore_index")
        self.label_smoothing = as_float(label_smoothing, "label_smoothing", minimum=0.0)
        if self.label_smoothing > 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")

    def _options(self):
        options = {"reduction": self.reduction, "check_targets": self.check_targets}
        if self.weight is not None:
            options["weight"] = self.weight
        if self.ignore_index != IGNORE_INDEX:
            options["ignore_index"] = self.ignore_index
        if self.label_smoothing:
            options["label_smoothing"] = self.label_smoothing
        return options

    def unchecked(self) -> CrossEntropyLoss:
        """A copy with ``check_targets=False`` (what :func:`xpcnn.fit` uses after checking all targets once)."""
        twin = copy.copy(self)
        twin.check_targets, twin._cache = False, None
        return twin

    def __repr__(self):
        options = {k: v for k, v in self._options().items() if k != "weight"}
        if self.weight is not None:
            options["weight"] = f"<{tuple(self.weight.shape)} {str(self.weight.dtype).rsplit('.', 1)[-1]}>"
        return f"CrossEntropyLoss({', '.join(f'{k}={v!r}' if k != 'weight' else f'weight={v}' for k, v in options.items())})"


class MSELoss(_Loss):
    """Mean squared error between arrays of one shape, as ``torch.nn.MSELoss``.

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}

    Calling it
    ----------
    ``criterion(pred, target)``: floating arrays of one shape and dtype. :meth:`backward` returns dpred, or
    ``(dpred, dtarget)`` with ``target_grad=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> criterion = nn.MSELoss()
    >>> float(criterion(np.array([1.0, 3.0]), np.array([0.0, 0.0])))
    5.0
    >>> dpred, dtarget = criterion.backward(target_grad=True)
    >>> dtarget.tolist()
    [-1.0, -3.0]
    """

    forward_fn, backward_fn = F.mse_loss_forward, F.mse_loss_backward

    def backward(self, dloss=1.0, *, target_grad: bool = False):
        """dpred (and dtarget, as ``(dpred, dtarget)``, with ``target_grad=True``); ``dloss`` as for every loss:
        1.0 when the loss is the final objective, an array of the loss's shape for ``reduction="none"``."""
        return F.mse_loss_backward(dloss, self._take_cache(), target_grad=target_grad)
