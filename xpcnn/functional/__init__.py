"""Pure forward/backward functions of every layer, in CS231n's ``(out, cache)`` style.

``out, cache = NAME_forward(x, ...)`` computes the layer and keeps what its backward pass needs;
``NAME_backward(dout, cache)`` returns the gradients. Every function is written once against the Python array API
standard: the input's namespace (NumPy, CuPy, PyTorch, JAX, Dask, array-api-strict...), device and dtype are kept.
"""

from .activations import *  # noqa: F403
from .activations import __all__ as _activations
from .conv import *  # noqa: F403
from .conv import __all__ as _conv
from .dropout import *  # noqa: F403
from .dropout import __all__ as _dropout
from .flatten import *  # noqa: F403
from .flatten import __all__ as _flatten
from .interpolate import *  # noqa: F403
from .interpolate import __all__ as _interpolate
from .linear import *  # noqa: F403
from .linear import __all__ as _linear
from .losses import *  # noqa: F403
from .losses import __all__ as _losses
from .normalization import *  # noqa: F403
from .normalization import __all__ as _normalization
from .pooling import *  # noqa: F403
from .pooling import __all__ as _pooling

__all__ = [*_conv, *_pooling, *_interpolate, *_activations, *_linear, *_flatten, *_normalization, *_dropout, *_losses]
