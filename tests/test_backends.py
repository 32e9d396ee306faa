"""Arrays of different libraries or devices in one call raise a ValueError naming both, for every op."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F


def _two_arg_calls(a, b):
    """Calls where a is the first array argument and b a second one, of matching shapes."""
    return [
        lambda: F.conv2d_forward(a((1, 2, 4, 4)), b((3, 2, 3, 3))),
        lambda: F.conv2d_forward(a((1, 2, 4, 4)), a((3, 2, 3, 3)), b((3,))),
        lambda: F.linear_forward(a((2, 4)), b((3, 4))),
        lambda: F.mse_loss_forward(a((2, 4)), b((2, 4))),
    ]


def test_mixed_libraries_raise(torch):
    numpy_array = lambda shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    torch_array = lambda shape: torch.zeros(shape, dtype=torch.float32)  # noqa: E731
    for call in _two_arg_calls(numpy_array, torch_array):
        with pytest.raises(ValueError, match="torch array but .* numpy array"):
            call()
    with pytest.raises(ValueError, match="torch array but logits is a numpy array"):
        F.softmax_cross_entropy_forward(np.zeros((2, 3)), torch.tensor([0, 1]))


def test_mixed_devices_raise():
    strict = pytest.importorskip("array_api_strict")
    cpu, device1 = strict.Device("CPU_DEVICE"), strict.Device("device1")
    on = lambda device: lambda shape: strict.zeros(shape, dtype=strict.float32, device=device)  # noqa: E731
    for call in _two_arg_calls(on(device1), on(cpu)):
        with pytest.raises(ValueError, match="device"):
            call()


def test_backward_rejects_dout_from_another_device():
    strict = pytest.importorskip("array_api_strict")
    x = strict.zeros((1, 1, 4, 4), dtype=strict.float32, device=strict.Device("device1"))
    out, cache = F.max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match="dout is on device"):
        F.max_pool2d_backward(strict.zeros(out.shape, dtype=strict.float32), cache)
