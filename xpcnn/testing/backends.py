"""The backend matrix: one array namespace bound to one device, for each installed array library.

A :class:`Backend` puts NumPy test data on its device (``asarray``), brings results back (``to_numpy``) and checks
where an array lives (``assert_on_backend``); every other attribute is its namespace's (``xp.zeros``,
``xp.float32``...). :func:`available_backends` lists those installed here; :func:`backend_params` gives them as
``pytest.param``\\ s (the missing ones skipped, with the reason), and :func:`xp_fixture` makes the ``xp`` fixture of
them (:mod:`xpcnn.testing.pytest_plugin` is one ready-made).

The matrix, by id:

=================================  ====================================================================================
``numpy``                          NumPy on the CPU (through array-api-compat)
``array_api_strict-CPU_DEVICE``    array-api-strict (the standard and nothing more; API version :data:`API_VERSION`)
``array_api_strict-device1``       array-api-strict on its fake accelerator ``device1``: an array made without
                                   ``device=`` or sent through NumPy lands elsewhere, and mixing them raises — a GPU's
                                   mistakes, on a CPU
``array_api_strict-no_float64``    a device without float64 (:meth:`Backend.float_dtypes` has float32 only)
``torch``                          PyTorch on the CPU (through array-api-compat)
``jax``                            JAX, eager, with 64-bit floats enabled (``jax_enable_x64``: JAX's default turns
                                   float64 into float32 silently)
``jax-jit``                        the same, and :meth:`Backend.compile` is ``jax.jit``: the toolkit's checks run
                                   forward and backward compiled
``dask``                           Dask arrays chunked along the batch axis (lazy: :meth:`Backend.to_numpy` computes)
``cupy``                           CuPy on GPU 0, only where CUDA is available
=================================  ====================================================================================
"""

from __future__ import annotations

import importlib.util
import os

import array_api_compat
import numpy as np  # host: test data is made in NumPy and moved to each backend

from .._host import to_numpy

__all__ = ["API_VERSION", "Backend", "numpy_backend", "strict_backend", "available_backends", "backend_params",
           "xp_fixture", "configure_array_api_strict", "LAZY_BACKENDS"]

API_VERSION = "2024.12"  # the array API version array-api-strict is pinned to
LAZY_BACKENDS = ("jax", "jax-jit", "dask")  # backends whose eager ops compile or build graphs per shape
STRICT_DEVICES = (("CPU_DEVICE", True), ("device1", True), ("no_float64", False))  # (device, has float64)


class Backend:
    """An array namespace bound to one device.

    Parameters
    ----------
    name : str
        The backend's id in the matrix (``"numpy"``, ``"array_api_strict-device1"``, ``"jax-jit"``...).
    namespace : module
        Its array API namespace (array-api-compat's for NumPy, PyTorch, JAX, Dask, CuPy).
    device : object
        The device its arrays go to.
    float64 : bool
        Whether the device has float64 (array-api-strict's ``no_float64`` has not). Also :attr:`supports_float64`.
        (An attribute of the backend, so ``xp.float64`` is this flag, not the namespace's dtype: use
        ``xp.namespace.float64`` for that.)
    jit : bool
        Whether :meth:`compile` compiles (``jax.jit``); only for JAX.

    ``xp.asarray(a, dtype)`` puts NumPy data there, ``xp.to_numpy(a)`` brings it back; every other attribute is the
    namespace's own (``xp.zeros``, ``xp.float32``).
    """

    def __init__(self, name: str, namespace, device, *, float64: bool = True, jit: bool = False):
        self.name, self.namespace, self.device, self.float64, self.jit = name, namespace, device, float64, jit

    def __getattr__(self, attr):
        if attr in ("namespace", "__setstate__"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.namespace, attr)

    def __repr__(self):
        return self.name

    @property
    def supports_float64(self) -> bool:
        """Whether the device has float64 (the ``float64`` flag)."""
        return self.float64

    @property
    def lazy(self) -> bool:
        """Whether the backend compiles or builds a graph per call (JAX, Dask): slow for many small calls."""
        return self.name in LAZY_BACKENDS

    def float_dtypes(self) -> list:
        """The floating dtypes this device supports, as (namespace dtype, NumPy dtype) pairs: float32, float64."""
        pairs = [(self.namespace.float32, np.float32)]
        if self.float64:
            pairs.append((self.namespace.float64, np.float64))
        return pairs

    def dtype(self, dtype):
        """The namespace's dtype named like ``dtype`` (a NumPy dtype, a name such as ``"float32"``, or the
        namespace's own)."""
        if isinstance(dtype, str) or isinstance(dtype, type) or isinstance(dtype, np.dtype):
            return getattr(self.namespace, np.dtype(dtype).name)
        return dtype

    def asarray(self, a, dtype=None):
        """A copy of ``a`` (array-like, NumPy) on this backend's device, with ``dtype`` (by default NumPy's: a
        ValueError for float64 data on a device without float64, rather than a silent float32)."""
        a = np.asarray(a)  # host: test data
        if dtype is None and a.dtype == np.float64 and not self.float64:
            raise ValueError(f"{self.name} has no float64: pass the dtype of the test (one of xp.float_dtypes())")
        dtype = self.dtype(a.dtype if dtype is None else dtype)
        if self.name.startswith("array_api_strict"):
            a = self.namespace.asarray(a, dtype=dtype)  # on the default CPU device, then moved
            return a.to_device(self.device)
        if self.name == "dask":
            a = self.namespace.asarray(a, dtype=dtype)
            return a.rechunk({0: 1}) if a.ndim else a  # chunked along the batch axis only
        return self.namespace.asarray(a, dtype=dtype, device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        """``a`` as a host NumPy array (computed, for Dask; copied from the device, for CuPy and array-api-strict)."""
        return to_numpy(a)

    def compile(self, fn):
        """``fn`` compiled for this backend (``jax.jit`` on ``jax-jit``), else ``fn`` itself. ``fn`` must take and
        return arrays (or tuples of them); close over everything else."""
        if self.jit:
            import jax  # host: the backend matrix imports each library it offers

            return jax.jit(fn)
        return fn

    def assert_on_backend(self, a, dtype) -> None:
        """``a`` belongs to this backend's namespace, lives on its device and has ``dtype`` (AssertionError)."""
        assert array_api_compat.array_namespace(a) is self.namespace, f"{type(a)} is not from {self.name}"
        assert array_api_compat.device(a) == self.device, f"{array_api_compat.device(a)} != {self.device}"
        dtype = self.dtype(dtype)
        assert a.dtype == dtype, f"{a.dtype} != {dtype}"


def numpy_backend() -> Backend:
    """NumPy on the CPU."""
    return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu")  # host: the NumPy backend


def strict_backend(device: str = "device1") -> Backend:
    """array-api-strict on one of its devices (``"CPU_DEVICE"``, ``"device1"``, ``"no_float64"``). Pin its API version
    with :func:`configure_array_api_strict` (the pytest plugin does)."""
    import array_api_strict

    float64 = dict(STRICT_DEVICES).get(device, True)
    return Backend(f"array_api_strict-{device}", array_api_strict, array_api_strict.Device(device), float64=float64)


def configure_array_api_strict(api_version: str = API_VERSION) -> None:
    """Pin array-api-strict's API version (a global flag of that library); nothing when it is not installed."""
    try:
        import array_api_strict
    except ImportError:
        return
    array_api_strict.set_array_api_strict_flags(api_version=api_version)


def _matrix(*, strict=True, torch=True, jax=True, jax_jit=True, dask=True, cupy=True):
    """[(id, Backend or None, reason it is missing)] in the matrix's order."""
    rows = [("numpy", numpy_backend(), None)]
    if strict:
        found = importlib.util.find_spec("array_api_strict") is not None
        for device, _ in STRICT_DEVICES:
            rows.append((f"array_api_strict-{device}", strict_backend(device) if found else None,
                         "array-api-strict is not installed"))
    if torch:
        try:
            import torch as torch_module  # host: the backend matrix imports each library it offers
        except ImportError:
            rows.append(("torch", None, "torch is not installed"))
        else:
            ns = array_api_compat.array_namespace(torch_module.empty(0))
            rows.append(("torch", Backend("torch", ns, torch_module.device("cpu")), None))
            cuda = Backend("torch", ns, torch_module.device("cuda", 0)) if torch_module.cuda.is_available() else None
            rows.append(("torch-cuda", cuda, "no PyTorch CUDA"))
    if jax or jax_jit:
        try:
            import jax as jax_module  # host: the backend matrix imports each library it offers
        except ImportError:
            jax_module = None
        else:
            jax_module.config.update("jax_enable_x64", True)  # float64 stays float64
            ns = array_api_compat.array_namespace(jax_module.numpy.empty(0))
            cpu = jax_module.devices("cpu")[0]
        for name, wanted, jit in (("jax", jax, False), ("jax-jit", jax_jit, True)):
            if wanted:
                rows.append((name, None if jax_module is None else Backend(name, ns, cpu, jit=jit),
                             "jax is not installed"))
        if jax and jax_module is not None:
            try:
                gpus = jax_module.devices("gpu")
            except RuntimeError:  # no GPU backend
                gpus = []
            rows.append(("jax-gpu", Backend("jax", ns, gpus[0]) if gpus else None, "no JAX GPU"))
    if dask:
        try:
            import dask.array as da
        except ImportError:
            rows.append(("dask", None, "dask is not installed"))
        else:
            rows.append(("dask", Backend("dask", array_api_compat.array_namespace(da.empty(0)), "cpu"), None))
    if cupy:
        try:
            import cupy as cupy_module  # host: the backend matrix imports each library it offers

            gpu = cupy_module.cuda.is_available()
        except Exception:  # cupy missing, or no CUDA driver
            gpu = False
        if gpu:
            ns = array_api_compat.array_namespace(cupy_module.empty(0))
            rows.append(("cupy", Backend("cupy", ns, cupy_module.cuda.Device(0)), None))
        else:
            rows.append(("cupy", None, "no CuPy with a GPU"))
    return rows


def available_backends(**include) -> list[Backend]:
    """The installed backends of the matrix, as :class:`Backend` objects (for use outside pytest).

    Keyword arguments ``strict``, ``torch``, ``jax``, ``jax_jit``, ``dask``, ``cupy`` (all True by default) leave a
    family out. Importing JAX here enables its 64-bit floats.

    Examples
    --------
    >>> from xpcnn.testing import available_backends
    >>> [b.name for b in available_backends(strict=False, torch=False, jax=False, jax_jit=False, dask=False)]
    ['numpy']
    """
    return [backend for _, backend, _ in _matrix(**include) if backend is not None]


def backend_params(**include) -> list:
    """The matrix as ``pytest.param``\\ s with ids (``"numpy"``, ``"array_api_strict-device1"``, ``"jax-jit"``...);
    a backend that is not installed is a param skipped with the reason. Options as :func:`available_backends`."""
    import pytest

    return [pytest.param(backend, id=name) if backend is not None
            else pytest.param(None, id=name, marks=pytest.mark.skip(reason=reason))
            for name, backend, reason in _matrix(**include)]


def xp_fixture(**include):
    """A pytest fixture parametrised over the backend matrix: put ``xp = xp_fixture()`` in a ``conftest.py`` and
    every test taking ``xp`` runs once per backend (options as :func:`available_backends`: ``xp_fixture(dask=False)``).

    Examples
    --------
    In ``conftest.py``::

        from xpcnn.testing import xp_fixture
        xp = xp_fixture()
    """
    import pytest

    @pytest.fixture(params=backend_params(**include))
    def xp(request):
        """The backend under test (an :class:`xpcnn.testing.Backend`)."""
        return request.param

    return xp


def require_torch() -> bool:
    """Whether ``XPCNN_REQUIRE_TORCH=1`` asks for a missing PyTorch to be an error instead of a skip."""
    return os.environ.get("XPCNN_REQUIRE_TORCH") == "1"
