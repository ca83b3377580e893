"""Argument checks shared by the cuBLAS facade's functions (private).

The rules are cuBLAS's: a negative size, a leading dimension smaller than the
rows of the matrix as stored, or an invalid enum is CUBLAS_STATUS_INVALID_VALUE.
On top of them, every matrix and vector range is checked against the facade's
allocation table (also CUBLAS_STATUS_INVALID_VALUE), so nothing outside an
allocation is ever read or written.
"""

from __future__ import annotations

import numpy as np

from . import _memory
from ._cublas_types import LIB, cublasOperation_t

__all__ = ["transpose", "leading_dim", "matrix_extent", "vector_extent", "scalar", "is_zero",
           "result_target", "increment"]

_REAL_OPS = (cublasOperation_t.CUBLAS_OP_N, cublasOperation_t.CUBLAS_OP_T,
             cublasOperation_t.CUBLAS_OP_C)


def transpose(value, what: str) -> str:
    """'N' or 'T' for a cublasOperation_t (CUBLAS_OP_C is 'T' for real data)."""
    op = LIB.enum(cublasOperation_t, value, what, allowed=_REAL_OPS)
    return "N" if op == cublasOperation_t.CUBLAS_OP_N else "T"


def leading_dim(value, rows: int, what: str) -> int:
    """A leading dimension, at least max(1, rows) as cuBLAS requires."""
    ld = LIB.integer(value, what)
    if ld < max(1, rows):
        raise LIB.bad(f"{what} must be >= max(1, {rows}) (rows of the matrix as stored), got {ld}")
    return ld


def increment(value, what: str, *, nonzero: bool) -> int:
    """A vector increment; zero is refused where cuBLAS refuses it."""
    inc = LIB.integer(value, what)
    if nonzero and inc == 0:
        raise LIB.bad(f"{what} must not be 0")
    return inc


def matrix_extent(rows: int, cols: int, ld: int, stride: int = 0, batch: int = 1) -> int:
    """Elements spanned by ``batch`` column-major rows x cols matrices ``stride`` apart."""
    if rows == 0 or cols == 0 or batch == 0:
        return 0
    return (batch - 1) * stride + (cols - 1) * ld + rows


def vector_extent(n: int, inc: int) -> int:
    """Elements spanned by an n-vector with increment ``inc`` (any sign)."""
    return 0 if n <= 0 else (n - 1) * abs(inc) + 1


def scalar(handle, value, dtype, what: str):
    """A scalar argument: its value (host pointer mode, read now) or a one-element
    view of facade memory read when the op runs (device pointer mode)."""
    if handle.device_pointers:
        return LIB.device_scalar(value, dtype, what)
    return LIB.host_scalar(value, dtype, what)


def is_zero(scalar_arg) -> bool:
    """True for a host scalar equal to 0 (a device scalar is unknown until run time)."""
    return isinstance(scalar_arg, float) and scalar_arg == 0


def result_target(handle, result, dtype, what: str = "result"):
    """Where a reduction writes its result: a writable numpy array of ``dtype`` or
    facade host/managed memory (host pointer mode), facade memory (device mode)."""
    dtype = np.dtype(dtype)
    if handle.device_pointers:
        return LIB.device_scalar(result, dtype, what)
    if isinstance(result, np.ndarray):
        if result.dtype != dtype:
            raise LIB.bad(f"{what} is a {result.dtype} array but this call writes a {dtype}")
        if result.size < 1 or not result.flags.writeable:
            raise LIB.bad(f"{what} must be a writable array of at least one element")
        return result
    address = LIB.address(result, what)
    found = _memory.table.find(address)
    if found is None:
        raise LIB.bad(f"{what} {address:#x} is neither a numpy array nor facade memory")
    if found[0].memory == "device":
        raise LIB.bad(f"{what} points to device memory but the pointer mode is "
                      f"CUBLAS_POINTER_MODE_HOST")
    return LIB.view(address, dtype, (1,), what=what)
