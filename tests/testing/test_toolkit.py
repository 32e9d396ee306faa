"""xpcnn.testing: the gradient checks pass on right backward passes and report wrong ones readably, on the whole
backend matrix (JAX under jit included); assert_close checks where arrays live; the project's tests use it."""

from __future__ import annotations

import subprocess
import sys

import array_api_compat
import numpy as np
import pytest

import xpcnn.functional as F
from xpcnn.testing import (Backend, GradientCheckError, assert_close, available_backends, backend_params,
                           check_against_torch, check_gradients, check_module_gradients, numpy_backend)

RNG = np.random.default_rng(0)


@pytest.fixture(params=backend_params())
def backend(request):
    """The toolkit's full matrix, jax-jit included (the project's own ``xp`` leaves it out)."""
    return request.param


def scaled_tanh_forward(x, scale):
    y = scale * array_api_compat.array_namespace(x).tanh(x)
    return y, (y, scale)


def scaled_tanh_backward(dout, cache):
    y, scale = cache
    dx = dout * (scale - y * y / scale)  # d/dx s*tanh(x) = s * (1 - tanh(x)^2)
    return dx


def wrong_backward(dout, cache):
    y, scale = cache
    return dout * scale  # forgets the 1 - tanh^2 factor


# -- check_gradients --------------------------------------------------------------------------------------------------


def test_check_gradients_passes_on_every_backend(backend):
    result = check_gradients(scaled_tanh_forward, scaled_tanh_backward, [RNG.standard_normal((3, 4)), 1.5],
                             backend=backend)
    assert result.passed and "input 0 (3, 4)" in str(result) and backend.name in str(result)


def test_conv2d_every_input_and_parameter(backend):
    if backend.name == "dask":
        pytest.skip("a few graphs is enough: the matrix test above runs Dask")
    x, w, b = RNG.standard_normal((2, 3, 5, 4)), RNG.standard_normal((4, 3, 3, 2)), RNG.standard_normal(4)
    result = check_gradients(F.conv2d_forward, F.conv2d_backward, dict(x=x, w=w, b=b),
                             kwargs=dict(stride=(2, 1), padding=1), backend=backend)
    assert [c.name for c in result.checks] == ["x", "w", "b"]


def test_a_wrong_backward_is_reported_at_its_worst_element():
    x = np.array([[0.1, -2.0, 0.5]])
    with pytest.raises(GradientCheckError) as info:
        check_gradients(scaled_tanh_forward, wrong_backward, dict(x=x, scale=2.0))
    message = str(info.value)
    assert "gradient check of wrong_backward FAILED" in message
    assert "worst at x[0, 1]" in message and "<-- FAILED" in message  # tanh'(-2) is far from 1
    check = info.value.result.checks[0]
    assert check.analytic == pytest.approx(check.reference / (1 - np.tanh(-2.0) ** 2), rel=1e-6)


def test_missing_gradients_and_wrong_shapes_are_named():
    def forward(x, w):
        return x * w, (x, w)

    with pytest.raises(GradientCheckError, match="w: backward returned no gradient"):
        check_gradients(forward, lambda dout, c: (dout * c[1], None), dict(x=np.ones(3), w=np.full(3, 2.0)))
    with pytest.raises(GradientCheckError, match=r"w: backward gave shape \(1,\), expected \(3,\)"):
        check_gradients(forward, lambda dout, c: (dout * c[1], np.sum(dout * c[0])[None]),
                        dict(x=np.ones(3), w=np.full(3, 2.0)))


def test_wrt_integer_targets_and_options():
    logits, target = RNG.standard_normal((5, 4)), np.arange(5) % 4
    result = check_gradients(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward,
                             dict(logits=logits, target=target), kwargs=dict(reduction="sum"))
    assert [c.name for c in result.checks] == ["logits"]
    x = RNG.standard_normal((2, 3))
    w = RNG.standard_normal((4, 3))
    assert [c.name for c in check_gradients(F.linear_forward, F.linear_backward, dict(x=x, w=w), wrt=["w"]).checks] \
        == ["w"]
    with pytest.raises(ValueError, match="no input named 'v'"):
        check_gradients(F.linear_forward, F.linear_backward, dict(x=x, w=w), wrt=["v"])
    with pytest.raises(ValueError, match="not the position or name of a floating array"):
        check_gradients(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward, (logits, target), wrt=[1])


def test_a_backend_without_float64_runs_the_pair_in_float32():
    strict = pytest.importorskip("array_api_strict")
    backend = Backend("array_api_strict-no_float64", strict, strict.Device("no_float64"), float64=False)
    result = check_gradients(scaled_tanh_forward, scaled_tanh_backward, [RNG.standard_normal(5), 1.0],
                             backend=backend)
    assert "backward in float32 on array_api_strict-no_float64; rtol=0.001" in str(result)
    with pytest.raises(pytest.skip.Exception, match="in float64, which array_api_strict-no_float64 lacks"):
        check_gradients(scaled_tanh_forward, scaled_tanh_backward, [np.ones(2), 1.0], backend=backend,
                        dtype="float64")
    with pytest.raises(GradientCheckError, match="FAILED"):
        check_gradients(scaled_tanh_forward, wrong_backward, [RNG.standard_normal(5), 1.0], backend=backend)


# -- check_against_torch ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_against_torch_on_every_backend(backend, dtype):
    torch = pytest.importorskip("torch")
    if backend.name == "dask":
        pytest.skip("covered by the matrix test of check_gradients")
    x, w = RNG.standard_normal((2, 3, 6, 5)), RNG.standard_normal((4, 3, 3, 3))
    check_against_torch(F.conv2d_forward, F.conv2d_backward, torch.nn.functional.conv2d, dict(x=x, w=w, b=None),
                        kwargs=dict(stride=2, padding=1), backend=backend, dtype=dtype)


def test_check_against_torch_lists_what_differs():
    torch = pytest.importorskip("torch")

    def forward(x, w):
        return x * w, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout * w, dout * w  # dw is wrong

    with pytest.raises(AssertionError) as info:
        check_against_torch(forward, backward, torch.mul, dict(x=RNG.standard_normal(4), w=RNG.standard_normal(4)))
    message = str(info.value)
    assert "gradient of w" in message and "gradient of x" not in message and "Mismatched elements" in message


def test_check_against_torch_skips_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delenv("XPCNN_REQUIRE_TORCH", raising=False)
    with pytest.raises(pytest.skip.Exception, match="torch is not installed"):
        check_against_torch(F.relu_forward, F.relu_backward, None, [np.ones(3)])
    monkeypatch.setenv("XPCNN_REQUIRE_TORCH", "1")
    with pytest.raises(ImportError, match="XPCNN_REQUIRE_TORCH=1"):
        check_against_torch(F.relu_forward, F.relu_backward, None, [np.ones(3)])


# -- assert_close and the matrix --------------------------------------------------------------------------------------


def test_assert_close_checks_namespace_device_dtype_shape_and_values():
    strict = pytest.importorskip("array_api_strict")
    device1 = Backend("array_api_strict-device1", strict, strict.Device("device1"))
    a = device1.asarray(np.array([1.0, 2.0]))
    assert_close(a, [1.0, 2.0], backend=device1)
    with pytest.raises(AssertionError, match="device: CPU_DEVICE, expected array_api_strict.Device\\('device1'\\)|"
                                             "device: .*CPU_DEVICE.*, expected .*device1"):
        assert_close(strict.asarray([1.0, 2.0]), [1.0, 2.0], backend=device1)
    with pytest.raises(AssertionError, match="namespace: numpy.ndarray is not from array_api_strict-device1"):
        assert_close(np.array([1.0, 2.0]), [1.0, 2.0], backend=device1)
    with pytest.raises(AssertionError, match="dtype: float64, expected float32"):
        assert_close(a, [1.0, 2.0], backend=device1, dtype="float32")
    with pytest.raises(AssertionError, match=r"shape: \(2,\), expected \(1, 2\)"):
        assert_close(a, [[1.0, 2.0]], backend=device1)
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 2"):
        assert_close(a, [1.0, 2.001], backend=device1)
    assert_close(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))  # NaN where NaN is expected
    assert_close(np.float32([1, 2]), np.array([1, 2.0001]), dtype=np.float32)  # float32's tolerance


def test_the_matrix_and_its_ids():
    ids = [p.id for p in backend_params()]
    assert ids[:4] == ["numpy", "array_api_strict-CPU_DEVICE", "array_api_strict-device1",
                       "array_api_strict-no_float64"]
    assert {"torch", "jax", "jax-jit", "dask", "cupy"} <= set(ids)
    assert "jax-jit" not in [p.id for p in backend_params(jax_jit=False)]
    names = [b.name for b in available_backends()]
    assert names[0] == "numpy" and "cupy" not in names or names[-1] == "cupy"
    assert numpy_backend().to_numpy(numpy_backend().asarray([1, 2])).tolist() == [1, 2]


def test_the_projects_tests_use_the_toolkit():
    import xpcnn.testing
    from tests import helpers

    assert helpers.Backend is xpcnn.testing.Backend
    assert helpers.numerical_gradient is xpcnn.testing.numerical_gradient
    assert helpers.RTOL is xpcnn.testing.RTOL


def test_importing_the_toolkit_imports_no_framework_and_no_pytest():
    code = ("import sys, xpcnn, xpcnn.testing; "
            "print(sorted(m for m in ('torch', 'jax', 'dask', 'pytest', 'cupy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _op_params():
    from tests.ops import OPS

    return [pytest.param(op, id=op.name) for op in OPS if not op.indices]  # max pooling's ties: one-sided derivatives


@pytest.mark.parametrize("op", _op_params())
def test_every_public_op_passes_check_gradients(op):
    """xpcnn's own ops, through the toolkit: inputs by name (bound to the signature), every floating input with a
    gradient slot checked."""
    result = check_gradients(op.forward, op.backward, op.inputs(np.random.default_rng(3)), kwargs=op.options)
    assert result.checks and result.passed


def test_the_pytest_plugin_gives_a_users_tests_the_matrix(tmp_path):
    """A user's project: ``pytest -p xpcnn.testing.pytest_plugin`` and a test taking ``xp``."""
    (tmp_path / "test_square.py").write_text(
        "import array_api_compat\n"
        "import numpy as np\n"
        "from xpcnn.testing import assert_close, check_gradients\n\n"
        "def square_forward(x):\n"
        "    return x * x, x\n\n"
        "def square_backward(dout, x):\n"
        "    return 2 * x * dout\n\n"
        "def test_square(xp):\n"
        "    x = np.linspace(-1, 1, 6)\n"
        "    for dtype, np_dtype in xp.float_dtypes():\n"
        "        out, _ = square_forward(xp.asarray(x, dtype))\n"
        "        assert_close(out, x * x, backend=xp, dtype=np_dtype)\n"
        "    check_gradients(square_forward, square_backward, [x], backend=xp)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "xpcnn.testing.pytest_plugin", "-p", "no:cacheprovider",
         "-rs", str(tmp_path / "test_square.py")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for backend in ("numpy", "array_api_strict-device1", "jax-jit"):
        found = any(b.name == backend for b in available_backends())
        assert not found or f"test_square[{backend}]" not in result.stdout  # passed, not reported as skipped
    assert " passed" in result.stdout and "failed" not in result.stdout


# -- check_module_gradients -------------------------------------------------------------------------------------------


def test_check_module_gradients_on_every_backend(backend):
    """A block in training mode (batch statistics, a fixed dropout mask): the input and every parameter."""
    from xpcnn import nn

    nn.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.Dropout(0.3),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    before = {k: np.array(v, copy=True) for k, v in block.state_dict().items()}
    result = check_module_gradients(block, RNG.standard_normal((2, 2, 4, 4)), backend=backend)
    assert [c.name for c in result.checks] == ["input", "0.weight", "0.bias", "1.weight", "1.bias", "5.weight",
                                               "5.bias"]
    for key, value in block.state_dict().items():  # the user's module is never changed
        np.testing.assert_array_equal(value, before[key])
    assert block[3].calls == 0


def test_check_module_gradients_names_a_wrong_parameter_gradient():
    from xpcnn import nn

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(np.array([1.5, -0.5], dtype=np.float32))

        def forward(self, x):
            self._cache = x
            return x * self.weight.data

        def backward(self, dout, *, input_grad=True):
            x = self._take_cache()
            self.weight.accumulate(np.sum(dout, axis=0))  # forgets the factor x
            return dout * self.weight.data if input_grad else None

    with pytest.raises(GradientCheckError) as info:
        check_module_gradients(nn.Sequential(Scale()), RNG.standard_normal((3, 2)))
    message = str(info.value)
    assert "0.weight (2,)" in message and "<-- FAILED" in message
    assert "input (3, 2): max abs error" in message and message.count("<-- FAILED") == 1
    with pytest.raises(TypeError, match="takes an xpcnn.nn.Module"):
        check_module_gradients(lambda x: x, np.ones(2))
