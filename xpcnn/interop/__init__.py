"""xpcnn inside other frameworks' autodiff: its hand-written backward passes as their gradient rules.

* :mod:`xpcnn.interop.torch`: :func:`~xpcnn.interop.torch.function` wraps a forward/backward pair as a
  ``torch.autograd.Function``; :func:`~xpcnn.interop.torch.module` wraps an xpcnn module (built with ``xp=torch``)
  as a ``torch.nn.Module`` whose ``torch.nn.Parameter``\\ s share memory with the xpcnn parameters.
* :mod:`xpcnn.interop.jax`: :func:`~xpcnn.interop.jax.function` wraps a pair as a ``jax.custom_vjp`` function
  (usable under ``jax.jit`` and ``jax.grad``).

Neither PyTorch nor JAX is a dependency of xpcnn: each submodule imports its framework inside its functions.
"""

__all__ = ["torch", "jax"]
