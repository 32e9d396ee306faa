"""Gradient clipping with ``torch.nn.utils``' names and semantics: :func:`clip_grad_norm_` and
:func:`clip_grad_value_`. Both assign a new array to each ``Parameter.grad`` (no in-place write, so immutable
backends work) and skip parameters without a gradient. :func:`clip_grad_norm_` never synchronises with the device:
the scale factor stays an array."""

from __future__ import annotations

import math

import array_api_compat
from array_api_compat import array_namespace

from .._dispatch import max_over
from .._validation import as_bool, as_float, check_floating, namespace_and_device

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters):
    from ..nn.module import Parameter

    if isinstance(parameters, Parameter):
        parameters = [parameters]
    if array_api_compat.is_array_api_obj(parameters) or not hasattr(parameters, "__iter__"):
        raise TypeError(f"parameters must be an iterable of Parameters (model.parameters()), got {type(parameters).__name__}")
    parameters = list(parameters)
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters[{i}] must be an xpcnn.nn.Parameter, got {type(p).__name__}")
    return parameters, [p for p in parameters if p.grad is not None]


def _norm(xp, a, p):
    a = xp.abs(a)
    if math.isinf(p):
        return max_over(xp, a, axis=None) if a.size else xp.zeros((), dtype=a.dtype, device=array_api_compat.device(a))
    if p == 2.0:
        return xp.sqrt(xp.sum(a * a))
    if p == 1.0:
        return xp.sum(a)
    return xp.sum(a**p) ** (1.0 / p)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients so that their joint ``norm_type``-norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_``: every gradient is multiplied by
    ``minimum(1, max_norm / (total_norm + 1e-6))`` (an array: no host sync).

    Parameters
    ----------
    parameters : iterable of Parameter, or a Parameter
        Parameters whose ``grad`` (when not None) is clipped; all gradients in one library and on one device.
    max_norm : float
        Largest norm allowed, >= 0 (``inf`` allowed).
    norm_type : float
        Order of the norm, > 0 or ``inf`` (default 2).
    error_if_nonfinite : bool
        Raise when the total norm is NaN or infinite. This reads the norm on the host: a device sync.

    Returns
    -------
    array
        The total norm of the gradients before clipping, a 0-d array in their library and on their device
        (a 0-d NumPy float64 zero when no parameter has a gradient).

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it, or gradients from different libraries or devices.
    RuntimeError
        With ``error_if_nonfinite=True``, when the total norm is not finite.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> p = nn.Parameter(np.zeros(2))
    >>> p.grad = np.array([3.0, 4.0])
    >>> float(optim.clip_grad_norm_([p], max_norm=1.0))
    5.0
    >>> np.round(p.grad, 6)
    array([0.6, 0.8])
    """
    parameters, with_grad = _grads(parameters)
    max_norm = as_float(max_norm, "max_norm", minimum=0.0, finite=False)
    norm_type = as_float(norm_type, "norm_type", finite=False)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    error_if_nonfinite = as_bool(error_if_nonfinite, "error_if_nonfinite")
    if not with_grad:
        import numpy as np  # host: nothing to clip, a plain zero

        return np.asarray(0.0)  # host: no gradient gives no namespace to make the zero in
    xp, device = namespace_and_device(**{f"parameters[{i}].grad": p.grad for i, p in enumerate(with_grad)})
    for i, p in enumerate(with_grad):
        check_floating(xp, p.grad, f"parameters[{i}].grad")
    dtype = xp.result_type(*[p.grad.dtype for p in with_grad]) if len(with_grad) > 1 else with_grad[0].grad.dtype
    norms = xp.stack([xp.astype(_norm(xp, p.grad, norm_type), dtype) for p in with_grad])
    total = _norm(xp, norms, norm_type)
    if error_if_nonfinite:
        from .._host import to_numpy

        if not bool(to_numpy(xp.isfinite(total))):  # host: the sync the user asked for
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot "
                "be clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
                "`error_if_nonfinite=False`"
            )
    coef = max_norm / (total + 1e-6)
    coef = xp.minimum(coef, xp.ones_like(coef))
    for p in with_grad:
        p.grad = p.grad * xp.astype(coef, p.grad.dtype)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clip every gradient element to ``[-clip_value, clip_value]``, as ``torch.nn.utils.clip_grad_value_``.

    Parameters
    ----------
    parameters : iterable of Parameter, or a Parameter
        Parameters whose ``grad`` (when not None) is clipped.
    clip_value : float
        Bound, >= 0.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it.

    Example
    -------
    >>> import numpy as np
    >>> from xpcnn import nn, optim
    >>> p = nn.Parameter(np.zeros(3))
    >>> p.grad = np.array([-2.0, 0.5, 3.0])
    >>> optim.clip_grad_value_([p], 1.0)
    >>> p.grad
    array([-1. ,  0.5,  1. ])
    """
    _, with_grad = _grads(parameters)
    clip_value = as_float(clip_value, "clip_value", minimum=0.0, finite=False)
    for i, p in enumerate(with_grad):
        xp = array_namespace(p.grad)
        check_floating(xp, p.grad, f"parameters[{i}].grad")
        p.grad = xp.clip(p.grad, -clip_value, clip_value)
