"""Loss objects: ``loss = criterion(output, target)``, then ``criterion.backward(dloss=1.0)`` returns d(output)."""

from __future__ import annotations

from .. import functional as F
from .._validation import as_bool, check_reduction


class _Loss:
    forward_fn = backward_fn = None

    def __init__(self, reduction="mean"):
        check_reduction(reduction)
        self.reduction = reduction
        self._cache = None

    def _options(self):
        return {"reduction": self.reduction}

    def __call__(self, output, target):
        loss, self._cache = type(self).forward_fn(output, target, **self._options())
        return loss

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward pass before it")
        cache, self._cache = self._cache, None
        return type(self).backward_fn(dloss, cache)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class targets.

    ``check_targets=False`` skips the range check of every call (a device sync on a GPU; out-of-range targets
    then give NaN): :func:`xpcnn.fit` checks the whole target array once instead.
    """

    forward_fn, backward_fn = F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward

    def __init__(self, reduction="mean", check_targets=True):
        super().__init__(reduction)
        self.check_targets = as_bool(check_targets, "check_targets")

    def _options(self):
        return {"reduction": self.reduction, "check_targets": self.check_targets}


class MSELoss(_Loss):
    """Mean squared error between arrays of one shape."""

    forward_fn, backward_fn = F.mse_loss_forward, F.mse_loss_backward
