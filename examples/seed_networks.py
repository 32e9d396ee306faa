"""The networks of the seed articles on CNN backpropagation, built and trained with xpcnn.

Articles 1 and 2 (NCHW): a 6x6 input, a 3x3 convolution (with and without ReLU), 2x2 pooling (max, then average), a
4->1 linear layer, an arctan output and an L2 cost, trained by plain SGD on the articles' two images (pixel sums +26
and -12; the targets are arctan of the sums). The original notebook's run never fits the second target (its
prediction stays near +1.56 against -1.49); these do. For one step, the script prints where the pooling layer sends
its gradient.

Articles 3 and 4 index their arrays (m, h, w, c): channels last, built here with ``data_format="NHWC"``.

* Article 3 ("Convolutional Neural Network (CNN) - Backward Propagation of the Pooling Layers"): 3x3 average and
  max pooling with stride 1 and no padding. It has no network and no data; the script pools a small integer
  (2, 5, 5, 2) example and prints, for one image and channel, where each layer sends the gradient, beside the
  article's loop ``dA_prev[m, i:i+H, j:j+W, c] += ...`` (``article_pool_backward``). That loop is completed and
  corrected here: ``average_dA`` is dA / (H * W); the max-pool slice ``a_prev[vert_start:vert_end, ..., c]`` has no
  sample index (it needs ``a_prev = A_prev[m]``, not shown) and its update writes ``j:(j+K)`` for ``j:(j+W)``; and
  the mask ``a_prev_slice == max`` sends the whole gradient to every tied maximum (a window holding its maximum
  twice passes on twice its gradient), where PyTorch and xpcnn send it to the first.
* Article 4 ("Demystifying Deep Learning, Part 9: Backpropagation in a Convolutional Neural Network"): its network
  in its layer order, conv 3x3 (1 -> 4 channels, no padding) -> ReLU -> 2x2 max (or average) pooling -> Flatten ->
  Linear -> ReLU -> Linear -> softmax cross-entropy. The article gives neither its data nor the convolution's sizes,
  so those are chosen here and the data are synthetic: 8x8 one-channel images of a vertical bar, a horizontal bar or
  a diagonal (3 classes) at random places with Gaussian noise (``cnn_data``). Its code has bugs that xpcnn does not
  share: the average pooling ``x_patches.mean(axis=3).mean(axis=4)`` averages the wrong axes (the output columns,
  then the channels); the max mask ``np.isclose(x, upsampled_max)`` routes the gradient to every value close to the
  window's maximum; and ``fc_backward`` scales dW by 1/m but not dx, so its weights get the mean loss's gradient and
  the layers below it the summed loss's, m times larger. The script trains it for 100 full-batch SGD steps and
  prints the loss going down.

``check_against_nchw`` builds both channels-last networks again in NCHW with the same weights and checks, on the
transposed input, the same loss and outputs and the same parameter and input gradients (the Linear after Flatten
gets its weight columns permuted: ``flatten_permutation``).

    python examples/seed_networks.py
"""

from __future__ import annotations

import argparse

import numpy as np

import xpcnn
from xpcnn import nn

X1 = [[1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 1],
      [1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 0, 1]]
X2 = [[-1, 0, -1, 0, 0, 1], [-1, 0, -1, 0, 0, 1], [-1, 0, -1, 1, 0, 1],
      [-1, -1, -1, 0, 0, -1], [-1, 0, -1, 0, 0, -1], [-1, 0, -1, 0, 0, -1]]


def seed_data():
    """The two images (2, 1, 6, 6) and their targets arctan(pixel sum) (2, 1), float64."""
    x = np.array([X1, X2], dtype=np.float64)[:, None]
    return x, np.arctan(x.sum(axis=(1, 2, 3)))[:, None]


def seed_network(relu: bool, pool: type, seed: int = 0):
    nn.manual_seed(seed)
    layers = [nn.Conv2d(1, 1, 3, bias=False, dtype=np.float64)]
    layers += [nn.ReLU()] if relu else []
    layers += [pool(2), nn.Flatten(), nn.Linear(4, 1, bias=False, dtype=np.float64), nn.Arctan()]
    return nn.Sequential(*layers)


def train(model, x, y, *, lr=0.5, steps=3000):
    """Plain full-batch SGD on the mean squared error; returns the final predictions (2,)."""
    optimizer, loss = xpcnn.optim.SGD(model.parameters(), lr=lr), nn.MSELoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model.forward(x), y)
        model.backward(loss.backward())
        optimizer.step()
    return model.forward(x)[:, 0]


def pooling_gradient(model, x, y):
    """One forward/backward pass; returns the pooling layer's input, the gradient arriving at its output and the
    gradient it sends to its input."""
    at = next(i for i, layer in enumerate(model.layers) if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)))
    h = x
    for layer in model.layers[:at]:
        h = layer.forward(h)
    pool_input = h
    for layer in model.layers[at:]:
        h = layer.forward(h)
    loss = nn.MSELoss()
    loss(h, y)
    g = loss.backward()
    for layer in reversed(model.layers[at + 1 :]):
        g = layer.backward(g)
    return pool_input, g, model.layers[at].backward(g)



# -- Article 3: backward propagation of the pooling layers, (m, h, w, c) ---------------------------------------------

POOL_SIZE, POOL_STRIDE = 3, 1  # the article's (height, width, stride) = (3, 3, 1), no padding


def pooling_example(seed: int = 0):
    """A small integer (m, h, w, c) = (2, 5, 5, 2) input and an integer upstream gradient (2, 3, 3, 2), float64."""
    rng = np.random.default_rng(seed)
    a_prev = rng.integers(0, 10, size=(2, 5, 5, 2)).astype(np.float64)
    return a_prev, rng.integers(1, 10, size=(2, 3, 3, 2)).astype(np.float64)


def article_pools(data_format: str = "NHWC"):
    """The article's two layers: {"average": AvgPool2d, "max": MaxPool2d}, 3x3, stride 1, in ``data_format``."""
    return {"average": nn.AvgPool2d(POOL_SIZE, stride=POOL_STRIDE, data_format=data_format),
            "max": nn.MaxPool2d(POOL_SIZE, stride=POOL_STRIDE, data_format=data_format)}


def article_pool_backward(a_prev, dA, mode: str, size: int = POOL_SIZE, stride: int = POOL_STRIDE):
    """The article's loop over (m, i, j, c), corrected (see the module docstring): ``average`` spreads
    dA / (H * W) over the window, ``max`` gives dA to the window's first maximum. The reference the layers match."""
    dA_prev = np.zeros_like(a_prev)
    m_count, h_out, w_out, c_count = dA.shape
    for m in range(m_count):
        for i in range(h_out):
            for j in range(w_out):
                for c in range(c_count):
                    rows, cols = slice(i * stride, i * stride + size), slice(j * stride, j * stride + size)
                    if mode == "average":
                        dA_prev[m, rows, cols, c] += np.ones((size, size)) * dA[m, i, j, c] / (size * size)
                    else:
                        a_prev_slice = a_prev[m, rows, cols, c]
                        mask = np.zeros((size, size))
                        mask[np.unravel_index(np.argmax(a_prev_slice), mask.shape)] = 1  # the first maximum
                        dA_prev[m, rows, cols, c] += mask * dA[m, i, j, c]
    return dA_prev


def tied_windows(a_prev, size: int = POOL_SIZE, stride: int = POOL_STRIDE) -> int:
    """How many windows hold their maximum more than once (where the article's equality mask double-counts)."""
    m_count, h, w, c_count = a_prev.shape
    count = 0
    for i in range(0, h - size + 1, stride):
        for j in range(0, w - size + 1, stride):
            window = a_prev[:, i : i + size, j : j + size, :]
            count += int(((window == window.max(axis=(1, 2), keepdims=True)).sum(axis=(1, 2)) > 1).sum())
    return count


def pool_backward(layer, a_prev, dA):
    """One forward and backward pass of a pooling layer; returns (A, dA_prev)."""
    out = layer.forward(a_prev)
    return out, layer.backward(dA)


# -- Article 4: conv -> ReLU -> pool -> fully connected -> softmax, (m, h, w, c) -------------------------------------

CNN_SIZE, CNN_CLASSES = 8, 3
POOLS = {"max": nn.MaxPool2d, "average": nn.AvgPool2d}


def cnn_data(m: int = 48, size: int = CNN_SIZE, *, noise: float = 0.3, seed: int = 0):
    """Synthetic images (m, size, size, 1) float64 and labels (m,) int64: 0 a vertical bar, 1 a horizontal bar,
    2 a diagonal, each at a random place, plus Gaussian noise of standard deviation ``noise``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(m) % CNN_CLASSES
    x = noise * rng.standard_normal((m, size, size, 1))
    for n, (label, at) in enumerate(zip(labels, rng.integers(1, size - 1, size=m))):
        if label == 0:
            x[n, :, at, 0] += 1.0
        elif label == 1:
            x[n, at, :, 0] += 1.0
        else:
            x[n, np.arange(size), (np.arange(size) + at) % size, 0] += 1.0
    return x, labels.astype(np.int64)


def article_cnn(pool: str = "max", data_format: str = "NHWC", *, size: int = CNN_SIZE, channels: int = 4,
                hidden: int = 16, seed: int = 0):
    """The article's network in its order: conv 3x3 (1 -> ``channels``) -> ReLU -> 2x2 ``pool`` -> Flatten ->
    Linear -> ReLU -> Linear (-> softmax, in the loss), float64, in ``data_format``. The same ``seed`` gives the
    same weights in both layouts (weights are (out, in, kh, kw) in both), except the order of the first Linear's
    input features, which follows Flatten's (see :func:`flatten_permutation`)."""
    pooled = (size - 2) // 2
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, data_format=data_format, dtype=np.float64, seed=seed),
        nn.ReLU(),
        POOLS[pool](2, data_format=data_format),
        nn.Flatten(data_format=data_format),
        nn.Linear(pooled * pooled * channels, hidden, dtype=np.float64, seed=seed + 1),
        nn.ReLU(),
        nn.Linear(hidden, CNN_CLASSES, dtype=np.float64, seed=seed + 2),
    )


FIRST_LINEAR = "4.weight"  # the Linear after Flatten, in article_cnn's state dict


def train_cnn(model, x, labels, *, lr: float = 0.5, steps: int = 150):
    """Full-batch SGD on softmax cross-entropy; returns the loss before each step and the final accuracy."""
    optimizer, criterion = xpcnn.optim.SGD(model.parameters(), lr=lr), nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        losses.append(criterion(model.forward(x), labels))
        model.backward(criterion.backward(), input_grad=False)
        optimizer.step()
    accuracy = (np.argmax(model.forward(x), axis=1) == labels).mean()
    return [float(loss) for loss in losses], float(accuracy)


# -- The channels-last networks against the NCHW path ------------------------------------------------------------

def flatten_permutation(h: int, w: int, c: int):
    """``perm`` with ``flat_nchw == flat_nhwc[:, perm]``: an NCHW Flatten orders the features (c, h, w), an NHWC one
    (h, w, c). The NCHW feature at position (c, i, j) is the NHWC feature at (i * w + j) * c_count + c, so a Linear
    that reads NHWC features with ``weight`` computes the same as one that reads NCHW features with
    ``weight[:, perm]``, and its NCHW weight gradient equals ``dweight_nhwc[:, perm]``."""
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def nchw_twin(model, pool: str, *, size: int = CNN_SIZE, channels: int = 4, hidden: int = 16):
    """``article_cnn(pool, "NCHW")`` holding ``model``'s (NHWC) weights: every array as it is, except the Linear
    after Flatten, whose weight columns are permuted into the NCHW feature order."""
    twin = article_cnn(pool, "NCHW", size=size, channels=channels, hidden=hidden)
    pooled = (size - 2) // 2
    state = dict(model.state_dict())
    state[FIRST_LINEAR] = state[FIRST_LINEAR][:, flatten_permutation(pooled, pooled, channels)]
    twin.load_state_dict(state)
    return twin


def _largest_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def check_against_nchw(*, m: int = 6, size: int = CNN_SIZE, channels: int = 4, hidden: int = 16, steps: int = 5,
                       seed: int = 0) -> dict[str, float]:
    """The channels-last networks of articles 3 and 4 against the same networks built NCHW on the transposed input.

    Article 3: each pooling layer's output and input gradient on :func:`pooling_example`. Article 4 (max and average
    pooling): the loss on ``m`` samples of :func:`cnn_data`, every parameter gradient (the first Linear's compared
    through :func:`flatten_permutation`) and the input gradient, from :func:`nchw_twin`; then ``steps`` steps of
    :func:`train_cnn` in each layout: the loss at every step and the weights at the end (the NHWC network's mapped to
    NCHW by :func:`nchw_twin`).

    Returns
    -------
    dict
        {what: largest absolute difference}; all float64, so everything should agree to ~1e-15.
    """
    to_nchw = (0, 3, 1, 2)
    differences = {}
    a_prev, dA = pooling_example(seed)
    nchw_pools = article_pools("NCHW")
    for mode, layer in article_pools("NHWC").items():
        out, dA_prev = pool_backward(layer, a_prev, dA)
        out_nchw, dA_prev_nchw = pool_backward(nchw_pools[mode], a_prev.transpose(to_nchw), dA.transpose(to_nchw))
        differences[f"{mode} pool output"] = _largest_difference(out.transpose(to_nchw), out_nchw)
        differences[f"{mode} pool input gradient"] = _largest_difference(dA_prev.transpose(to_nchw), dA_prev_nchw)

    x, labels = cnn_data(m, size, seed=seed)
    pooled = (size - 2) // 2
    perm = flatten_permutation(pooled, pooled, channels)
    for pool in POOLS:
        nhwc = article_cnn(pool, "NHWC", size=size, channels=channels, hidden=hidden, seed=seed)
        nchw = nchw_twin(nhwc, pool, size=size, channels=channels, hidden=hidden)
        results = []
        for model, inputs in ((nhwc, x), (nchw, x.transpose(to_nchw))):
            criterion = nn.CrossEntropyLoss()
            loss = criterion(model.forward(inputs), labels)
            results.append((loss, model.backward(criterion.backward()), model.named_gradients()))
        (loss, dx, grads), (loss_nchw, dx_nchw, grads_nchw) = results
        differences[f"cnn ({pool} pool) loss"] = _largest_difference(loss, loss_nchw)
        for name, grad in grads.items():
            expected = grad[:, perm] if name == FIRST_LINEAR else grad
            differences[f"cnn ({pool} pool) d{name}"] = _largest_difference(expected, grads_nchw[name])
        differences[f"cnn ({pool} pool) input gradient"] = _largest_difference(dx.transpose(to_nchw), dx_nchw)
        if steps:  # then train both: the same losses step by step and the same weights at the end
            losses, _ = train_cnn(nhwc, x, labels, steps=steps)
            losses_nchw, _ = train_cnn(nchw, x.transpose(to_nchw), labels, steps=steps)
            differences[f"cnn ({pool} pool) losses over {steps} SGD steps"] = _largest_difference(losses, losses_nchw)
            trained = nchw_twin(nhwc, pool, size=size, channels=channels, hidden=hidden).state_dict()
            differences[f"cnn ({pool} pool) weights after {steps} SGD steps"] = max(
                _largest_difference(value, trained[name]) for name, value in nchw.state_dict().items())
    return differences


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Trains each seed network and prints its predictions and pooling gradients, the "
                                   "channels-last pooling routing and CNN loss, and the check of the channels-last "
                                   "networks against NCHW; it takes no options.").parse_args(argv)
    np.set_printoptions(precision=4, suppress=True)
    x, y = seed_data()
    print(f"targets: {y[:, 0]}")
    for pool in (nn.MaxPool2d, nn.AvgPool2d):
        for relu in (False, True):
            model = seed_network(relu, pool)
            name = f"conv3x3{' + ReLU' if relu else ''} + {pool.__name__}(2) + linear 4->1 + arctan"
            pool_input, upstream, routed = pooling_gradient(model, x, y)
            if not relu:
                print(f"\n== {pool.__name__}: one step, first image ==")
                print("pooling input (the 4x4 convolution output):\n", pool_input[0, 0])
                print("gradient arriving at the 2x2 pooling output:\n", upstream[0, 0])
                print("gradient sent to the pooling input:\n", routed[0, 0])
            predictions = train(model, x, y)
            print(f"{name}: predictions {predictions} (error {np.abs(predictions - y[:, 0]).max():.4f})")
    show_pooling_article()
    show_cnn_article()
    steps = 5
    differences = check_against_nchw(steps=steps)
    worst = max(differences, key=differences.get)
    print(f"\n== channels-last against NCHW (same weights, transposed input) ==\n{len(differences)} comparisons "
          f"(outputs, losses, every parameter and input gradient, {steps} SGD steps): largest difference "
          f"{differences[worst]:.1e} ({worst})")


def show_pooling_article():
    a_prev, dA = pooling_example()
    print(f"\n== article 3: 3x3 pooling, stride 1, channels last: A_prev {a_prev.shape} (m, h, w, c), "
          f"dA {dA.shape} ==")
    print("A_prev[0, :, :, 0]:\n", a_prev[0, :, :, 0])
    print("dA[0, :, :, 0]:\n", dA[0, :, :, 0])
    for mode, layer in article_pools("NHWC").items():
        _, dA_prev = pool_backward(layer, a_prev, dA)
        off = _largest_difference(dA_prev, article_pool_backward(a_prev, dA, mode))
        print(f"{mode} pooling: dA_prev[0, :, :, 0] (largest difference from the article's loop, corrected, over "
              f"all m and c: {off:.1e}):\n", dA_prev[0, :, :, 0])
    print(f"{tied_windows(a_prev)} of {dA.size} windows hold their maximum twice or more: the article's mask "
          f"(a_prev_slice == max) would pass on their gradient more than once")


def show_cnn_article(steps: int = 100, every: int = 10):
    x, labels = cnn_data()
    x_test, labels_test = cnn_data(seed=1)
    print(f"\n== article 4: conv -> ReLU -> pool -> FC, channels last, synthetic bars {x.shape} (m, h, w, c), "
          f"{CNN_CLASSES} classes ==")
    for pool in POOLS:
        model = article_cnn(pool)
        losses, accuracy = train_cnn(model, x, labels, steps=steps)
        test_accuracy = (np.argmax(model.forward(x_test), axis=1) == labels_test).mean()
        shown = ", ".join(f"{losses[i]:.3f}" for i in range(0, steps, every))
        print(f"{pool} pooling: loss every {every} steps {shown}; final {losses[-1]:.4f}, "
              f"accuracy {accuracy:.2f} (new samples: {test_accuracy:.2f})")


if __name__ == "__main__":
    main()
