"""xpcnn: CNN layers with explicit, readable backpropagation, written once on the Python array API.

The same code runs on NumPy arrays (CPU), CuPy arrays (GPU) and any other array API library; the namespace is
chosen by the input's type. See :mod:`xpcnn.functional` for the forward/backward pairs.
"""

from . import functional

__version__ = "0.1.0"
__all__ = ["functional"]
