"""The loss objects: PyTorch's options on CrossEntropyLoss, MSELoss's target gradient, one backward per forward."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import nn


@pytest.mark.torch_reference
def test_cross_entropy_loss_options_match_torch(torch):
    rng = np.random.default_rng(0)
    logits, target = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    target[1] = 2
    weight = rng.random(4) + 0.5
    ours = nn.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.15)
    theirs = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight), ignore_index=2, label_smoothing=0.15)
    z = torch.tensor(logits, requires_grad=True)
    expected = theirs(z, torch.tensor(target))
    expected.backward()
    np.testing.assert_allclose(ours(logits, target), expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.backward(), z.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert repr(ours) == ("CrossEntropyLoss(reduction='mean', check_targets=True, ignore_index=2, "
                          "label_smoothing=0.15, weight=<(4,) float64>)")


def test_mse_loss_target_gradient_and_one_backward_per_forward():
    criterion = nn.MSELoss(reduction="sum")
    criterion(np.array([1.0, 3.0]), np.array([0.0, 1.0]))
    dpred, dtarget = criterion.backward(target_grad=True)
    assert dpred.tolist() == [2.0, 4.0] and dtarget.tolist() == [-2.0, -4.0]
    with pytest.raises(RuntimeError, match="without a forward pass"):
        criterion.backward()
    assert repr(criterion) == "MSELoss(reduction='sum')"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(label_smoothing=-0.1), ValueError, "label_smoothing must be >= 0"),
    (dict(label_smoothing=2.0), ValueError, r"label_smoothing must be in \[0, 1\]"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an int"),
    (dict(weight=[1.0, 2.0]), TypeError, "weight must be an array"),
    (dict(weight=np.ones((2, 2))), ValueError, "weight must be a 1-D floating array"),
    (dict(weight=np.ones(2, np.int64)), ValueError, "weight must be a 1-D floating array"),
])
def test_cross_entropy_loss_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.CrossEntropyLoss(**kwargs)
