"""Optimizers matching ``torch.optim`` step for step: SGD (momentum, dampening, nesterov, weight decay), Adam and
AdamW. Their state (momentum buffers, moment estimates) is made with ``zeros_like`` of each parameter, so it lives
in the parameter's namespace and on its device. Each step assigns a new array to ``Parameter.data`` (no in-place
writes, so immutable backends such as JAX work too); parameters without a gradient are skipped."""

from __future__ import annotations

import math

from array_api_compat import array_namespace

__all__ = ["SGD", "Adam", "AdamW"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.lr = float(lr)
        self.state = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                p.data = self._update(array_namespace(p.data), p.data, p.grad, state)

    def _update(self, xp, param, grad, state):
        raise NotImplementedError


class SGD(Optimizer):
    """``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` at the first step), ``g`` including
    ``weight_decay * param``; the step is ``g + momentum * buf`` with nesterov, else ``buf``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def _update(self, xp, param, grad, state):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = grad if buf is None else self.momentum * buf + (1.0 - self.dampening) * grad
            state["momentum_buffer"] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return param - self.lr * grad


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient)."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
        self.betas, self.eps, self.weight_decay = (beta1, beta2), float(eps), float(weight_decay)

    def _update(self, xp, param, grad, state):
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                param = param * (1.0 - self.lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
        state["step"] += 1
        state["exp_avg"] = beta1 * state["exp_avg"] + (1.0 - beta1) * grad
        state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * (grad * grad)
        step_size = self.lr / (1.0 - beta1 ** state["step"])
        denom = xp.sqrt(state["exp_avg_sq"]) / math.sqrt(1.0 - beta2 ** state["step"]) + self.eps
        return param - step_size * (state["exp_avg"] / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (``param *= 1 - lr * weight_decay`` before the step), as
    ``torch.optim.AdamW``."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
