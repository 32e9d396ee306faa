"""Train a LeNet-style CNN on scikit-learn's bundled handwritten digits (1797 8x8 images, no download).

    python examples/train_digits.py                      # NumPy on the CPU
    python examples/train_digits.py --backend cupy       # the same code on the GPU
    python examples/train_digits.py --backend torch      # PyTorch tensors through the array API

Prints the test accuracy and the wall time, saves the weights (.npz) and a PNG of the training curves.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import array_api_compat
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xpcnn
from xpcnn import nn


def lenet(xp, device=None, dtype=None):
    """Two conv/ReLU/max-pool stages and two linear layers, sized for 1x8x8 inputs."""
    nn.manual_seed(0)
    common = dict(xp=xp, device=device, dtype=dtype)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, **common), nn.ReLU(), nn.MaxPool2d(2),   # 32x4x4
        nn.Conv2d(32, 64, 3, padding=1, **common), nn.ReLU(), nn.MaxPool2d(2),  # 64x2x2
        nn.Flatten(),
        nn.Linear(256, 128, **common), nn.ReLU(),
        nn.Linear(128, 10, **common),
    )


def digits_split(test_size=0.25, seed=0):
    """The fixed train/test split: images (N, 1, 8, 8) scaled to [0, 1] as float32, labels as int64."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, digits.target.astype(np.int64), test_size=test_size, random_state=seed,
                            stratify=digits.target)


def plot_history(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], label="train")
    ax_loss.plot(epochs, history["val_loss"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, history["accuracy"], label="train")
    ax_acc.plot(epochs, history["val_accuracy"], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy", help="array library")
    parser.add_argument("--device", default=None, help="device for the backend, e.g. cuda for --backend torch")
    parser.add_argument("--epochs", type=int, default=25, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    parser.add_argument("--out", type=Path, default=Path("digits-output"), help="folder for weights and plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    library = importlib.import_module(args.backend)
    model = lenet(library, device=args.device)
    xp = array_api_compat.array_namespace(model[0].weight.data)
    device = array_api_compat.device(model[0].weight.data)
    x_train, x_test, y_train, y_test = digits_split()
    # The data moves to the model's device once, here.
    x_train, x_test, y_train, y_test = (xp.asarray(a, device=device) for a in (x_train, x_test, y_train, y_test))

    history = xpcnn.fit(
        model, nn.CrossEntropyLoss(), xpcnn.optim.Adam(model.parameters(), lr=args.lr), x_train, y_train,
        epochs=args.epochs, batch_size=args.batch_size, validation_data=(x_test, y_test), seed=0,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    xpcnn.save(model, args.out / "lenet_digits.npz")
    plot_history(history, args.out / "training_curves.png")
    print(f"backend {args.backend}: test accuracy {history['val_accuracy'][-1]:.4f} "
          f"({x_test.shape[0]} images), train accuracy {history['accuracy'][-1]:.4f}, {seconds:.1f} s")
    print(f"saved {args.out / 'lenet_digits.npz'} and {args.out / 'training_curves.png'}")
    return history, seconds


if __name__ == "__main__":
    main()
