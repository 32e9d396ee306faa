"""``assert_close``: values, and where they live — namespace, device, dtype and shape — checked together."""

from __future__ import annotations

import array_api_compat
import numpy as np  # host: results are compared on the host

from .backends import Backend, numpy_backend

__all__ = ["assert_close", "RTOL", "ATOL", "default_tolerances", "dtype_name"]

# Default tolerances by the dtype under test; ATOL is relative to the expected values' largest finite magnitude
# (at least 1), so that one table serves data of any scale.
RTOL = {np.float64: 1e-9, np.float32: 2e-4, np.float16: 2e-3}
ATOL = {np.float64: 1e-11, np.float32: 2e-5, np.float16: 2e-3}


def default_tolerances(dtype, expected) -> tuple[float, float]:
    """(rtol, atol) for results of ``dtype`` (a NumPy dtype or name): :data:`RTOL`, and :data:`ATOL` times the largest
    finite magnitude of ``expected`` (at least 1). Exact (0, 0) for integer and boolean dtypes; bfloat16 is given
    float16's."""
    name = dtype_name(dtype)
    key = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.float16}.get(name)
    if key is None:
        return 0.0, 0.0
    finite = np.abs(expected[np.isfinite(expected)]) if expected.dtype.kind in "fc" else np.abs(expected)
    scale = float(np.max(finite, initial=1.0))  # host: the test's tolerance
    return RTOL[key], ATOL[key] * scale


def dtype_name(dtype) -> str:
    """``"float32"`` for NumPy's, PyTorch's, JAX's, array-api-strict's float32 (a dtype, a scalar type or a name)."""
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, (np.dtype, type)):
        try:
            return np.dtype(dtype).name
        except TypeError:
            pass
    return str(dtype).rsplit(".", 1)[-1]


def assert_close(actual, expected, *, backend: Backend | None = None, dtype=None, rtol: float | None = None,
                 atol: float | None = None, err_msg: str = "") -> None:
    """Assert that ``actual`` lives where it should and equals ``expected`` within tolerances.

    Parameters
    ----------
    actual : array
        The result, an array of any backend.
    expected : array_like
        The reference: a NumPy array (or anything ``np.asarray`` takes), or an array of ``actual``'s backend.
    backend : Backend, optional
        Where ``actual`` must live: its namespace and device (the ``xp`` fixture's value). By default ``expected``'s
        namespace and device (NumPy's for a list or a NumPy array).
    dtype : dtype or str, optional
        ``actual``'s dtype: the namespace's, a NumPy dtype, or a name (``"float32"``). By default ``expected``'s
        dtype (by name, in ``actual``'s namespace).
    rtol, atol : float, optional
        By default :func:`default_tolerances` for the dtype (exact for integers and booleans).
    err_msg : str
        Prefixed to the failure message.

    Raises
    ------
    AssertionError
        Naming what differs: the namespace, the device, the dtype, the shape, or the values (NumPy's report: how many
        elements, the largest absolute and relative differences). NaN must match NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from xpcnn.testing import assert_close, numpy_backend
    >>> assert_close(np.float32([1, 2]), np.array([1, 2.00001]), backend=numpy_backend(), dtype="float32")
    >>> assert_close(np.float64([1, 2]), np.float32([1, 2]))
    Traceback (most recent call last):
    ...
    AssertionError: dtype: float64, expected float32
    """
    prefix = f"{err_msg}: " if err_msg else ""
    if backend is None:
        if not _is_array(expected):
            expected = np.asarray(expected)  # host: the reference
        namespace = array_api_compat.array_namespace(expected)
        backend = numpy_backend() if array_api_compat.is_numpy_namespace(namespace) else Backend(
            f"{namespace.__name__} (expected's)", namespace, array_api_compat.device(expected))
    try:
        namespace = array_api_compat.array_namespace(actual)
    except TypeError:
        raise AssertionError(f"{prefix}namespace: a {type(actual).__name__} is no array of {backend.name}") from None
    if namespace is not backend.namespace:
        raise AssertionError(f"{prefix}namespace: {type(actual).__module__}.{type(actual).__name__} is not from "
                             f"{backend.name} ({backend.namespace.__name__})")
    device = array_api_compat.device(actual)
    if device != backend.device:
        raise AssertionError(f"{prefix}device: {device}, expected {backend.device}")
    if not isinstance(expected, np.ndarray) and _is_array(expected):
        expected = backend.to_numpy(expected)
    expected = np.asarray(expected)  # host: the reference
    want = dtype_name(dtype if dtype is not None else expected.dtype)
    if dtype_name(actual.dtype) != want:
        raise AssertionError(f"{prefix}dtype: {dtype_name(actual.dtype)}, expected {want}")
    if tuple(actual.shape) != expected.shape:
        raise AssertionError(f"{prefix}shape: {tuple(actual.shape)}, expected {expected.shape}")
    got = backend.to_numpy(actual)
    default_rtol, default_atol = default_tolerances(want, expected)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if want == "bfloat16":
        got, expected = got.astype(np.float32), expected.astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=err_msg)


def _is_array(a) -> bool:
    try:
        array_api_compat.array_namespace(a)
    except TypeError:
        return False
    return True
