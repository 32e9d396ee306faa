"""Checking a hand-written backward pass: against float64 central finite differences, and against PyTorch autograd.

Both checks take an xpcnn-style pair — ``out, cache = forward(*inputs, **kwargs)`` and ``backward(dout, cache)``,
which returns the gradient of the first input or a tuple of gradients of the leading array inputs (``(dx, dw, db)``) —
and a random upstream gradient ``dout`` (seeded), so that every output element weighs in.

Inputs are NumPy arrays (or arrays of any backend, copied to the host): floating arrays are differentiated, integer
arrays (class targets) are passed along, and anything else (kernel sizes, None, tuples) is a static argument, as are
the keyword arguments ``kwargs``. The pair runs on ``backend`` (NumPy by default; under ``jax.jit`` on the
``jax-jit`` backend), its results are checked to live on that backend with the expected dtype, and the references
are computed on the host in float64.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import array_api_compat
import numpy as np  # host: the references are computed on the host, in float64

from .._host import to_numpy
from ..interop import gradient_slots
from .assertions import assert_close, dtype_name
from .backends import Backend, numpy_backend, require_torch

__all__ = ["numerical_gradient", "check_gradients", "check_module_gradients", "GRADIENT_TOLERANCES",
           "check_against_torch", "GradientCheckError", "GradientCheckResult", "InputCheck"]


def numerical_gradient(f, x: np.ndarray, dout, eps: float = 1e-6) -> np.ndarray:
    """Gradient of ``sum(f(x) * dout)`` with respect to ``x`` by central differences (float64 NumPy).

    ``f`` maps a NumPy array shaped like ``x`` to a NumPy array (or scalar) shaped like ``dout``; ``x`` is not
    modified. Costs two evaluations of ``f`` per element of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn.testing import numerical_gradient
    >>> numerical_gradient(lambda v: v ** 2, np.array([1.0, -2.0]), np.ones(2)).round(6)
    array([ 2., -4.])
    """
    grad = np.zeros_like(x)
    for i in range(x.size):
        shifted = []
        for sign in (1.0, -1.0):
            xs = x.copy()
            xs.flat[i] += sign * eps
            shifted.append(np.sum(f(xs) * dout))
        grad.flat[i] = (shifted[0] - shifted[1]) / (2 * eps)
    return grad


@dataclass
class InputCheck:
    """How one input's hand-written gradient compares with the reference (finite differences or PyTorch)."""

    name: str
    shape: tuple
    passed: bool
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    worst_index: tuple = ()
    analytic: float = 0.0
    reference: float = 0.0
    problem: str = ""  # a gradient missing, of the wrong shape, namespace, device or dtype

    def __str__(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        where = f"{self.name}[{', '.join(map(str, self.worst_index))}]"
        return (f"{self.name} {self.shape}: max abs error {self.max_abs_error:.3g}, max rel error "
                f"{self.max_rel_error:.3g}; worst at {where}: backward {self.analytic!r}, reference "
                f"{self.reference!r}" + ("" if self.passed else "  <-- FAILED"))


@dataclass
class GradientCheckResult:
    """Every input's :class:`InputCheck`; ``str()`` is the readable report, ``passed`` the verdict."""

    function: str
    checks: list
    settings: str

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"gradient check of {self.function} {verdict} ({self.settings})"]
        return "\n".join(lines + [f"  {check}" for check in self.checks])


class GradientCheckError(AssertionError):
    """A hand-written gradient disagrees with the reference; the message is the report, ``result`` the details."""

    def __init__(self, result: GradientCheckResult):
        super().__init__(str(result))
        self.result = result


# -- the pieces both checks share -------------------------------------------------------------------------------------


def _is_array(a) -> bool:
    if isinstance(a, np.ndarray):
        return True
    try:
        array_api_compat.array_namespace(a)
    except TypeError:
        return False
    return not isinstance(a, (int, float, complex, bool))


def _named_inputs(forward, inputs, kwargs: dict) -> tuple[list[str], list, dict]:
    """(names, host values, keyword arguments) of a call of ``forward``.

    A dict of inputs is bound to ``forward``'s signature by name, so that its positions are those the backward
    pass's gradients follow (:func:`xpcnn.interop.gradient_slots`); a sequence is taken as the positional arguments
    (named ``"input 0"``...). Arrays become host NumPy copies, floating ones float64."""
    if isinstance(inputs, dict):
        try:
            signature = inspect.signature(forward)
            bound = signature.bind(**inputs, **kwargs)
        except (TypeError, ValueError):  # no signature, or one without these names: the dict's order
            names, values = list(inputs), list(inputs.values())
        else:  # positional up to the first argument left out; the rest by keyword (static)
            values, kwargs = list(bound.args), dict(bound.kwargs)
            names = list(signature.parameters)[:len(values)]
    else:
        values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        names = [f"input {i}" for i in range(len(values))]
    host = []
    for value in values:
        if _is_array(value):
            value = np.array(to_numpy(value), copy=True)  # host: the test's own copy
            if value.dtype.kind == "f":
                value = value.astype(np.float64)
        host.append(value)
    return names, host, kwargs


def _floating(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic)) and a.dtype.kind == "f"


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def _run_on_backend(forward, backward, host_args, kwargs, dout, backend: Backend, float_dtype):
    """Forward and backward of the pair on ``backend`` (compiled where it compiles), floating inputs and ``dout`` in
    ``float_dtype``: (out, grads) as backend arrays."""
    positions = [i for i, a in enumerate(host_args) if isinstance(a, np.ndarray)]

    def run(dout, *arrays):
        merged = list(host_args)
        for i, a in zip(positions, arrays):
            merged[i] = a
        out, cache = forward(*merged, **kwargs)
        return out, _as_tuple(backward(dout, cache))

    arrays = [backend.asarray(host_args[i], float_dtype if _floating(host_args[i]) else None) for i in positions]
    return backend.compile(run)(backend.asarray(dout, float_dtype), *arrays)


def _skip(reason: str, error: type[Exception]):
    """pytest.skip(reason) inside a pytest run; ``error(reason)`` elsewhere."""
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(reason)
    raise error(reason)


def _name_of(forward) -> str:
    return getattr(forward, "__qualname__", None) or getattr(forward, "__name__", None) or repr(forward)


def _compare(name, analytic: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> InputCheck:
    if analytic.shape != reference.shape:
        return InputCheck(name, reference.shape, False, problem=f"backward gave shape {analytic.shape}, expected "
                                                                f"{reference.shape}")
    if reference.size == 0:
        return InputCheck(name, reference.shape, True)
    error = np.abs(analytic - reference)
    both_nan = np.isnan(analytic) & np.isnan(reference)
    error = np.where(both_nan, 0.0, np.where(np.isnan(error), np.inf, error))
    allowed = atol + rtol * np.abs(reference)
    excess = np.where(error == 0, 0.0, error / np.where(allowed > 0, allowed, np.finfo(np.float64).tiny))
    worst = np.unravel_index(int(np.argmax(excess)), reference.shape)
    rel = error / np.maximum(np.abs(reference), np.finfo(np.float64).tiny)
    return InputCheck(
        name, reference.shape, bool(np.all(error <= allowed)),
        max_abs_error=float(np.max(error)), max_rel_error=float(np.max(np.where(error == 0, 0.0, rel))),
        worst_index=tuple(int(i) for i in worst), analytic=float(analytic[worst]), reference=float(reference[worst]),
    )


# -- finite differences -----------------------------------------------------------------------------------------------


GRADIENT_TOLERANCES = {"float64": (1e-5, 1e-7), "float32": (1e-3, 1e-4)}  # (rtol, atol) of check_gradients


def check_gradients(forward, backward, inputs, *, kwargs: dict | None = None, backend: Backend | None = None,
                    dtype=None, wrt=None, eps: float = 1e-6, rtol: float | None = None, atol: float | None = None,
                    seed: int = 0) -> GradientCheckResult:
    """Check a hand-written backward pass against float64 central finite differences.

    Parameters
    ----------
    forward, backward : callable
        The pair: ``out, cache = forward(*inputs, **kwargs)``; ``backward(dout, cache)`` returns the gradient of the
        first input, or a tuple of gradients of the leading array inputs (arrays and Nones in order; options between
        them take no place: :func:`xpcnn.interop.gradient_slots`).
    inputs : sequence or dict
        The positional arguments, or a dict of arguments by name (bound to ``forward``'s signature: the names appear
        in the report). Floating arrays are checked, in float64; integer arrays and non-arrays are passed along.
    kwargs : dict, optional
        Keyword arguments of ``forward`` (options).
    backend : Backend, optional
        Where the pair runs (the ``xp`` fixture's value); NumPy by default. The finite differences are always
        computed with NumPy in float64.
    dtype : {"float64", "float32"}, optional
        The dtype the pair runs in on ``backend``: float64 by default, float32 on a device without float64
        (array-api-strict's ``no_float64``), with float32's tolerances.
    wrt : sequence of int or str, optional
        The inputs to check (positions or names); by default every floating array input the backward pass returns a
        gradient for, or None in its place (which fails: "backward returned no gradient").
    eps : float
        The finite-difference step.
    rtol, atol : float, optional
        An element passes when ``|backward - numeric| <= atol + rtol * |numeric|``; by default 1e-5 and 1e-7 in
        float64, 1e-3 and 1e-4 in float32 (:data:`GRADIENT_TOLERANCES`).
    seed : int
        Seeds the random upstream gradient ``dout`` (standard normal, the output's shape).

    Returns
    -------
    GradientCheckResult
        The per-input report (``print`` it), when every element passes.

    Raises
    ------
    GradientCheckError
        (an AssertionError) when an element fails, a gradient is missing or has the wrong shape, or the pair's
        results are not the backend's arrays of ``dtype``: its message reports each input's largest absolute and
        relative errors and its worst element, with both values.

    Notes
    -----
    Central differences have an error of order ``eps**2`` from curvature and ``1e-16 / eps`` from rounding; choose
    inputs away from kinks (ReLU at 0, max-pooling ties), where the derivative is one-sided. Each checked element
    costs two forward passes: keep the inputs small.

    Examples
    --------
    >>> import numpy as np
    >>> import xpcnn.functional as F
    >>> from xpcnn.testing import check_gradients
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    >>> result = check_gradients(F.conv2d_forward, F.conv2d_backward, dict(x=x, w=w, b=b), kwargs=dict(stride=2))
    >>> result.passed
    True
    """
    kwargs = dict(kwargs or {})
    backend = numpy_backend() if backend is None else backend
    name = dtype_name(dtype) if dtype is not None else "float64" if backend.float64 else "float32"
    if name not in GRADIENT_TOLERANCES:
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    if name == "float64" and not backend.float64:
        _skip(f"check_gradients in float64, which {backend.name} lacks", ValueError)
    float_dtype = backend.dtype(name)
    rtol = GRADIENT_TOLERANCES[name][0] if rtol is None else rtol
    atol = GRADIENT_TOLERANCES[name][1] if atol is None else atol
    names, host, kwargs = _named_inputs(forward, inputs, kwargs)
    out_ref = np.asarray(to_numpy(forward(*host, **kwargs)[0]), dtype=np.float64)  # host: the reference output
    dout = np.random.default_rng(seed).standard_normal(out_ref.shape)
    out, grads = _run_on_backend(forward, backward, host, kwargs, dout, backend, float_dtype)

    checks = []
    try:
        assert_close(out, out_ref, backend=backend, dtype=name, err_msg="forward on the backend vs NumPy",
                     rtol=None if name == "float64" else rtol, atol=None if name == "float64" else atol)
    except AssertionError as error:
        checks.append(InputCheck("output", out_ref.shape, False, problem=str(error).strip()))
    by_position = dict(zip(gradient_slots(host, _is_array), grads))  # which input each gradient belongs to
    for i in _wrt(wrt, names, host, by_position):
        grad = by_position.get(i)
        if grad is None:
            checks.append(InputCheck(names[i], host[i].shape, False, problem="backward returned no gradient"))
            continue
        try:
            backend.assert_on_backend(grad, float_dtype)
        except AssertionError as error:
            checks.append(InputCheck(names[i], host[i].shape, False, problem=f"gradient not on the backend: {error}"))
            continue

        def loss_of(value, i=i):
            args = list(host)
            args[i] = value
            return np.asarray(to_numpy(forward(*args, **kwargs)[0]), dtype=np.float64)  # host: the reference

        numeric = numerical_gradient(loss_of, host[i], dout, eps)
        checks.append(_compare(names[i], backend.to_numpy(grad).astype(np.float64), numeric, rtol, atol))
    settings = (f"float64 central differences, eps={eps:g}; backward in {name} on {backend.name}; rtol={rtol:g}, "
                f"atol={atol:g}")
    result = GradientCheckResult(_name_of(backward), checks, settings)
    if not result.passed:
        raise GradientCheckError(result)
    return result


def _wrt(wrt, names, host, by_position) -> list[int]:
    if wrt is None:
        return [i for i, a in enumerate(host) if _floating(a) and i in by_position]
    positions = []
    for item in wrt:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"wrt: no input named {item!r}; the inputs are {names}")
            item = names.index(item)
        if not isinstance(item, int) or not 0 <= item < len(host) or not _floating(host[item]):
            raise ValueError(f"wrt: {item!r} is not the position or name of a floating array input")
        positions.append(item)
    return positions


def check_module_gradients(module, x, *, backend: Backend | None = None, dtype=None, eps: float = 1e-6,
                           rtol: float | None = None, atol: float | None = None,
                           seed: int = 0) -> GradientCheckResult:
    """Check an :class:`xpcnn.nn.Module`'s backward pass — the input's gradient and every parameter's — against
    float64 central finite differences.

    Parameters
    ----------
    module : xpcnn.nn.Module
        The module (a layer, a container, your own); it is copied, never changed. Its mode counts: in training mode
        batch norm uses the batch's statistics, and a Dropout's mask is held fixed (every evaluation starts from the
        module's state, so its n-th mask is the same each time).
    x : array
        The input (NumPy or any backend; copied to the host in float64).
    backend : Backend, optional
        Where the module's copy runs (moved there with ``Module.to``; under ``jax.jit`` on ``jax-jit``); NumPy by
        default. The finite differences run on a float64 NumPy copy.
    dtype, eps, rtol, atol, seed
        As for :func:`check_gradients`.

    Returns
    -------
    GradientCheckResult
        The report: ``"input"`` and each parameter by its state-dict name (``"0.weight"``).

    Raises
    ------
    GradientCheckError
        When an element fails, or the backward pass leaves a parameter without a gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn import nn
    >>> from xpcnn.testing import check_module_gradients
    >>> block = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh())
    >>> x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    >>> [check.name for check in check_module_gradients(block, x).checks]
    ['input', '0.weight', '0.bias', '1.weight', '1.bias']
    """
    import copy

    from ..nn.module import Module

    if not isinstance(module, Module):
        raise TypeError(f"check_module_gradients takes an xpcnn.nn.Module, got {type(module).__name__}")
    backend = numpy_backend() if backend is None else backend
    name = dtype_name(dtype) if dtype is not None else "float64" if backend.float64 else "float32"
    if name not in GRADIENT_TOLERANCES:
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    if name == "float64" and not backend.float64:
        _skip(f"check_module_gradients in float64, which {backend.name} lacks", ValueError)
    float_dtype = backend.dtype(name)
    rtol = GRADIENT_TOLERANCES[name][0] if rtol is None else rtol
    atol = GRADIENT_TOLERANCES[name][1] if atol is None else atol
    host_x = np.array(to_numpy(x), dtype=np.float64, copy=True)  # host: the test's own copy

    # The reference: a float64 NumPy copy, each evaluation from the same state (Dropout's call count included).
    numpy_ns = numpy_backend().namespace
    reference = copy.deepcopy(module).to(numpy_ns, "cpu", numpy_ns.float64)
    state = [(m, dict(vars(m))) for m in reference.modules()]

    def evaluate(value):
        for m, attributes in state:
            vars(m).clear()
            vars(m).update(attributes)
        return np.asarray(reference.forward(value), dtype=np.float64)  # host: the reference output

    out_ref = evaluate(host_x)
    dout = np.random.default_rng(seed).standard_normal(out_ref.shape)
    numeric = {"input": numerical_gradient(evaluate, host_x, dout, eps)}
    for pname, p in reference.named_parameters():
        original = p.data

        def with_parameter(value, p=p):
            p.data = value
            return evaluate(host_x)

        numeric[pname] = numerical_gradient(with_parameter, np.array(original, copy=True), dout, eps)
        p.data = original

    # The module's own passes on the backend, on a copy moved there (compiled where the backend compiles).
    moved = copy.deepcopy(module).to(backend.namespace, backend.device, float_dtype)
    params = list(moved.named_parameters())
    arrays = moved.state_dict()  # parameters and buffers: arguments of the compiled function, as x is

    def run(x, dout, arrays):
        for name, a in arrays.items():
            moved._assign(name, a)
        for _, p in params:
            p.grad = None
        out = moved.forward(x)
        dx = moved.backward(dout)
        return out, dx, tuple(p.grad for _, p in params)

    out, dx, grads = backend.compile(run)(backend.asarray(host_x, float_dtype), backend.asarray(dout, float_dtype),
                                          arrays)
    checks = []
    try:
        assert_close(out, out_ref, backend=backend, dtype=name, err_msg="forward on the backend vs NumPy",
                     rtol=None if name == "float64" else rtol, atol=None if name == "float64" else atol)
    except AssertionError as error:
        checks.append(InputCheck("output", out_ref.shape, False, problem=str(error).strip()))
    for label, grad in [("input", dx), *zip([n for n, _ in params], grads)]:
        if grad is None:
            checks.append(InputCheck(label, numeric[label].shape, False, problem="backward left no gradient"))
            continue
        try:
            backend.assert_on_backend(grad, float_dtype)
        except AssertionError as error:
            checks.append(InputCheck(label, numeric[label].shape, False, problem=f"gradient not on the backend: "
                                                                                 f"{error}"))
            continue
        checks.append(_compare(label, backend.to_numpy(grad).astype(np.float64), numeric[label], rtol, atol))
    settings = (f"float64 central differences, eps={eps:g}; backward in {name} on {backend.name}; rtol={rtol:g}, "
                f"atol={atol:g}")
    result = GradientCheckResult(f"{type(module).__name__}.backward", checks, settings)
    if not result.passed:
        raise GradientCheckError(result)
    return result


# -- PyTorch autograd -------------------------------------------------------------------------------------------------


def torch_autograd(reference, host_args, kwargs, dout_seed_or_rng):
    """Run ``reference(*tensors, **kwargs)`` in PyTorch and backpropagate a random ``dout`` (standard normal, drawn
    from ``dout_seed_or_rng``: a seed or a ``np.random.Generator``).

    NumPy arrays become tensors of their dtype (float64 for a float64 reference), floating ones requiring grad; other
    arguments pass unchanged. Returns (out, {position: grad}, dout) as NumPy arrays (positions whose tensor got no
    gradient are left out)."""
    import torch  # host: the reference framework

    tensors = [torch.tensor(np.asarray(a), requires_grad=_floating(a)) if isinstance(a, (np.ndarray, np.generic))
               else a for a in host_args]
    out = reference(*tensors, **kwargs)
    rng = dout_seed_or_rng if isinstance(dout_seed_or_rng, np.random.Generator) else np.random.default_rng(
        dout_seed_or_rng)
    dout = rng.standard_normal(tuple(out.shape))
    out.backward(torch.tensor(dout, dtype=out.dtype))
    grads = {i: t.grad.numpy() for i, t in enumerate(tensors) if isinstance(t, torch.Tensor) and t.grad is not None}
    return out.detach().numpy(), grads, dout


def check_against_torch(forward, backward, reference, inputs, *, kwargs: dict | None = None,
                        reference_kwargs: dict | None = None, backend: Backend | None = None, dtype="float64",
                        rtol: float | None = None, atol: float | None = None, seed: int = 0) -> None:
    """Check a forward/backward pair against a PyTorch reference function and its autograd.

    Parameters
    ----------
    forward, backward : callable
        The pair, as for :func:`check_gradients`.
    reference : callable
        A PyTorch function of the same positional inputs, as tensors (``torch.nn.functional.conv2d``, a lambda).
    inputs : sequence or dict
        The arguments, as for :func:`check_gradients`; ``reference`` takes them positionally, in the order given.
    kwargs : dict, optional
        Keyword arguments of ``forward``; also ``reference``'s unless ``reference_kwargs`` is given.
    reference_kwargs : dict, optional
        Keyword arguments of ``reference``.
    backend : Backend, optional
        Where the pair runs (the ``xp`` fixture's value); NumPy by default.
    dtype : str or dtype
        The floating dtype the pair runs in (``"float32"``, ``"float64"``); the reference always runs in float64.
        A backend without it skips the check.
    rtol, atol : float, optional
        By default :func:`~xpcnn.testing.default_tolerances` for ``dtype``.
    seed : int
        Seeds the random upstream gradient.

    Raises
    ------
    AssertionError
        Listing every output or gradient that differs (values, namespace, device, dtype or shape), or that one side
        gives and the other does not.

    Skips the test (pytest) or raises an ImportError (elsewhere) without PyTorch; ``XPCNN_REQUIRE_TORCH=1`` makes that
    an error in pytest too.

    Examples
    --------
    >>> import numpy as np
    >>> import xpcnn.functional as F
    >>> from xpcnn.testing import check_against_torch
    >>> import torch
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    >>> check_against_torch(F.max_pool2d_forward, F.max_pool2d_backward, torch.nn.functional.max_pool2d, (x, 2),
    ...                     dtype="float32")
    """
    try:
        import torch  # noqa: F401  # host: the reference framework
    except ImportError:
        if require_torch():
            raise ImportError("XPCNN_REQUIRE_TORCH=1 but torch is not installed") from None
        _skip("torch is not installed (check_against_torch)", ImportError)
    kwargs = dict(kwargs or {})
    backend = numpy_backend() if backend is None else backend
    float_dtype = backend.dtype(dtype)
    if not backend.float64 and str(float_dtype).endswith("float64"):
        _skip(f"check_against_torch in float64, which {backend.name} lacks", ValueError)
    # The reference takes the inputs as given (a dict's values in order); the pair, bound to its signature.
    ref_names, ref_host, _ = _named_inputs(None, inputs, {})
    out_ref, ref_grads, dout = torch_autograd(reference, ref_host, kwargs if reference_kwargs is None else
                                              reference_kwargs, seed)
    grads_ref = {ref_names[j]: grad for j, grad in ref_grads.items()}
    names, host, kwargs = _named_inputs(forward, inputs, kwargs)
    out, grads = _run_on_backend(forward, backward, host, kwargs, dout, backend, float_dtype)
    by_position = dict(zip(gradient_slots(host, _is_array), grads))
    problems = []

    def compare(actual, expected, what):
        try:
            assert_close(actual, expected, backend=backend, dtype=float_dtype, rtol=rtol, atol=atol, err_msg=what)
        except AssertionError as error:
            problems.append(str(error).strip())

    compare(out, out_ref, "output")
    for i, a in enumerate(host):
        if not _floating(a):
            continue
        grad = by_position.get(i)
        if names[i] not in grads_ref and grad is None:
            continue
        if grad is None:
            problems.append(f"{names[i]}: PyTorch gives a gradient, backward gives none")
            continue
        compare(grad, grads_ref.get(names[i], np.zeros_like(a)), f"gradient of {names[i]}")
    if problems:
        raise AssertionError(f"{_name_of(forward)}/{_name_of(backward)} vs PyTorch ({backend.name}, "
                             f"{dtype}):\n" + "\n".join(problems))
