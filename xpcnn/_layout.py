"""The two layouts of a batch of images, named once: channels first, ``(N, C, H, W)`` (PyTorch's, the default), and
channels last, ``(N, H, W, C)`` (TensorFlow's and the seed articles'). Every spatial op takes ``data_format``; it is
never guessed from the shapes. Weights keep PyTorch's layout in both."""

from __future__ import annotations

__all__ = ["NCHW", "NHWC", "DATA_FORMATS", "check_data_format", "is_channels_last"]

NCHW, NHWC = "NCHW", "NHWC"
DATA_FORMATS = (NCHW, NHWC)


def check_data_format(data_format, name: str = "data_format") -> str:
    """``data_format`` if it is ``"NCHW"`` or ``"NHWC"``; a ValueError naming the argument otherwise."""
    if not isinstance(data_format, str) or data_format not in DATA_FORMATS:
        raise ValueError(f"{name} must be 'NCHW' or 'NHWC', got {data_format!r}")
    return data_format


def is_channels_last(data_format, name: str = "data_format") -> bool:
    """Whether ``data_format`` (checked as :func:`check_data_format` does) puts the channels last."""
    return check_data_format(data_format, name) == NHWC
