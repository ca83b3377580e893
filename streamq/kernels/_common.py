"""Checks and the alpha/beta blend shared by every kernel module."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_array(name: str, arr, *, ndim: int | None = None, dtype=None,
                shape: tuple | None = None, writable: bool = False) -> np.ndarray:
    """Validate one array argument; raise ValueError/TypeError naming ``name``."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only but is written by this op")
    return arr


def check_float(name: str, arr: np.ndarray) -> np.ndarray:
    """Require a float16/32/64 array."""
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, float32 or float64, got {arr.dtype}")
    return arr


def blend(y: np.ndarray, value: np.ndarray, alpha: float, beta: float) -> None:
    """Write ``y = alpha * value + beta * y`` in place.

    ``beta == 0`` means y is not read at all (cuDNN/cuBLAS rule), so NaN or inf
    already in y cannot leak into the result. ``value`` may be computed in a
    wider dtype; the result is rounded once into y's dtype.
    """
    if beta == 0:
        if alpha == 1:
            np.copyto(y, value, casting="unsafe")
        else:
            np.multiply(value, alpha, out=y, casting="unsafe")
    else:
        scaled = value * alpha if alpha != 1 else value
        if beta == 1:
            np.add(scaled, y, out=y, casting="unsafe")
        else:
            np.add(scaled, y * beta, out=y, casting="unsafe")
