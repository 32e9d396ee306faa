"""Tools to test one's own layers the way xpcnn tests its own: on every backend, against finite differences and
against PyTorch.

* :func:`check_gradients`: a hand-written backward pass against float64 central finite differences (every input
  and parameter, a random upstream gradient), with a readable report of the worst element on failure;
  :func:`check_module_gradients` does the same for an :class:`xpcnn.nn.Module` (the input and every parameter).
* :func:`check_against_torch`: a forward/backward pair against a PyTorch reference function's autograd (skipped
  without PyTorch).
* The backend matrix — NumPy, array-api-strict (on ``device1``, a stand-in for a GPU), PyTorch CPU, JAX with and
  without ``jit``, Dask, CuPy where a GPU is — as :class:`Backend` objects (:func:`available_backends`), as pytest
  params (:func:`backend_params`) and as an ``xp`` fixture (:func:`xp_fixture`, or the plugin
  :mod:`xpcnn.testing.pytest_plugin`: ``pytest -p xpcnn.testing.pytest_plugin``).
* :func:`assert_close`: values, and namespace, device, dtype and shape.

pytest, PyTorch, JAX, Dask and CuPy are imported only when a function needs them.

Examples
--------
A user-written op, its backward pass checked on NumPy:

>>> import numpy as np
>>> from xpcnn.testing import check_gradients
>>> def square_forward(x):
...     return x * x, x
>>> def square_backward(dout, x):
...     return 2 * x * dout
>>> check_gradients(square_forward, square_backward, [np.linspace(-1, 1, 6)]).passed
True
"""

from .assertions import ATOL, RTOL, assert_close, default_tolerances
from .backends import (API_VERSION, Backend, available_backends, backend_params, configure_array_api_strict,
                       numpy_backend, strict_backend, xp_fixture)
from .gradients import (GRADIENT_TOLERANCES, GradientCheckError, GradientCheckResult, InputCheck, check_against_torch,
                        check_gradients, check_module_gradients, numerical_gradient)

__all__ = ["check_gradients", "check_module_gradients", "check_against_torch", "numerical_gradient",
           "GradientCheckError", "GradientCheckResult", "InputCheck", "GRADIENT_TOLERANCES", "assert_close",
           "default_tolerances", "RTOL", "ATOL", "Backend", "numpy_backend", "strict_backend", "available_backends",
           "backend_params", "xp_fixture", "configure_array_api_strict", "API_VERSION"]
