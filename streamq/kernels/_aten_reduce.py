"""ATen reductions: aten::sum, aten::mean, aten::amax, aten::argmax.

``dim`` is an int, a sequence of ints (negative allowed, duplicates refused) or
None / () meaning every dim; ``keepdim`` keeps reduced dims as size 1. The
result goes into ``out`` (exact shape and dtype checked) which is returned.

* sum: bool/integer input sums in int64 (the default out dtype), floats keep
  their dtype; ``dtype=`` casts the input first and is the out dtype. Float
  sums accumulate in float64, so float32 results match the float64 reference
  to rounding. An empty reduction gives 0.
* mean: sum / count, floats only (or a float ``dtype=``); empty gives NaN.
* amax: max over dims, NaN propagates; a reduced dim of size 0 is an error.
* argmax: int64 index of the first maximum, NaN counting as the maximum;
  ``dim=None`` indexes the flattened input (0-d out, or all-ones shape with
  keepdim).

``reference`` reduces in float64 (int64 for integer sums) with numpy;
``numba`` runs parallel kernels when the reduced dims form one block of a
C-contiguous float32/float64 (float16 widened) input, and numpy otherwise.
"""

from __future__ import annotations

import numpy as np

from . import _aten_jit as jit
from ._dnn_common import serial_below
from ._aten_common import (
    FLOAT16, FLOAT64, INT64, JIT_FLOATS, as_c_float, check_out, check_supported, check_tensor,
    is_float, reduced_shape, reduction_dims, split_reduction,
)
from .registry import register

_THREADS_SPLIT = 8          # pieces per row when there are few rows
_SPLIT_MIN = 1 << 15        # only split rows longer than this
_BCHUNK = 1024              # columns per task in (A, K, B) kernels


def _check_keepdim(keepdim):
    if not isinstance(keepdim, (bool, np.bool_)):
        raise TypeError(f"keepdim must be a bool, got {type(keepdim).__name__}")


# ---------------------------------------------------------------- sum/mean --

def _prep_sum(self, dim, keepdim, dtype, out, mean):
    check_tensor("self", self)
    _check_keepdim(keepdim)
    if dtype is not None:
        try:
            dtype = check_supported("dtype", np.dtype(dtype))
        except TypeError:
            raise TypeError(f"dtype must be a numpy dtype, got {dtype!r}") from None
        if mean and not is_float(dtype):
            raise TypeError(f"dtype must be a float dtype for mean, got {dtype}")
    elif mean:
        if not is_float(self.dtype):
            raise TypeError(f"self must be a float array for mean (or pass a float dtype=), "
                            f"got {self.dtype}")
        dtype = self.dtype
    else:
        dtype = self.dtype if is_float(self.dtype) else INT64
    dims = reduction_dims(dim, self.ndim)
    shape = reduced_shape(self.shape, dims, keepdim)
    check_out(out, shape, dtype)
    count = int(np.prod([self.shape[d] for d in dims], dtype=np.int64))
    return dims, shape, dtype, count


def _sum_reference(self, dim, keepdim, dtype, out, mean):
    dims, shape, dtype, count = _prep_sum(self, dim, keepdim, dtype, out, mean)
    src = self.astype(dtype) if dtype != self.dtype else self    # torch casts first
    wide = FLOAT64 if is_float(dtype) else INT64
    total = np.sum(src.astype(wide), axis=dims, keepdims=True).reshape(shape)
    if mean:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / count
    with np.errstate(over="ignore"):
        np.copyto(out, total, casting="unsafe")
    return out


def sum_float64(x: np.ndarray, dims: tuple, shape: tuple) -> np.ndarray:
    """float64 sums of a float array over ``dims``, reshaped to ``shape`` (numba when it can)."""
    split = split_reduction(x.shape, dims) if x.dtype in JIT_FLOATS + (np.dtype(np.float16),) else None
    if split is None or x.size == 0:
        return np.sum(x, axis=dims, dtype=FLOAT64, keepdims=True).reshape(shape)
    A, K, B = split
    flat = as_c_float(x).reshape(-1)
    nsplit = _THREADS_SPLIT if (B == 1 and A < 2 * _THREADS_SPLIT and K >= _SPLIT_MIN) else 1
    res = np.empty(A * B * nsplit, FLOAT64)
    with serial_below(flat.size):
        jit.sum_akb(flat, A, K, B, nsplit, _BCHUNK, res)
    if nsplit > 1:
        res = res.reshape(A, nsplit).sum(axis=1)
    return res.reshape(shape)


def _sum_numba(self, dim, keepdim, dtype, out, mean):
    dims, shape, dtype, count = _prep_sum(self, dim, keepdim, dtype, out, mean)
    if not is_float(dtype):
        np.copyto(out, np.sum(self, axis=dims, dtype=INT64).reshape(shape), casting="unsafe")
        return out
    src = self if dtype == self.dtype else self.astype(dtype)    # torch casts first
    total = sum_float64(src, dims, shape)
    if mean:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / count
    with np.errstate(over="ignore"):
        np.copyto(out, total, casting="unsafe")
    return out


def _register_sum(op, mean, doc):
    for provider, run in (("reference", _sum_reference), ("numba", _sum_numba)):
        def fn(self, dim=None, keepdim=False, *, dtype=None, out, _run=run):
            return _run(self, dim, keepdim, dtype, out, mean)
        fn.__name__ = fn.__qualname__ = f"{op.split('::')[1]}_{provider}"
        fn.__doc__ = f"{op} ({provider} provider). {doc}"
        register(op, provider, fn)


_register_sum("aten::sum", False,
              "Sum of self over dim (None/() = all). Bool/int input -> int64 unless dtype= "
              "is given; dtype= casts self first and is out's dtype. Float sums accumulate in float64.")
_register_sum("aten::mean", True,
              "Mean of self over dim (None/() = all); float input or float dtype=; "
              "an empty reduction gives NaN.")


# ------------------------------------------------------------ amax/argmax --

def _check_nonempty(op, shape, dims):
    for d in dims:
        if shape[d] == 0:
            raise ValueError(f"{op}(): reduction dim {d} of self has size 0")
    if not dims and int(np.prod(shape)) == 0:
        raise ValueError(f"{op}(): self is empty")


def _prep_amax(self, dim, keepdim, out):
    check_tensor("self", self)
    _check_keepdim(keepdim)
    dims = reduction_dims(dim, self.ndim)
    _check_nonempty("amax", self.shape, dims)
    shape = reduced_shape(self.shape, dims, keepdim)
    check_out(out, shape, self.dtype)
    return dims, shape


def amax_reference(self, dim=(), keepdim=False, *, out):
    """aten::amax (reference provider). Max of self over dim (() = all dims); NaN propagates.

    Any dtype; out has self's dtype. A reduced dim of size 0 raises ValueError.
    """
    dims, shape = _prep_amax(self, dim, keepdim, out)
    wide = FLOAT64 if is_float(self.dtype) else self.dtype
    np.copyto(out, np.max(self.astype(wide), axis=dims, keepdims=True).reshape(shape),
              casting="unsafe")
    return out


def amax_numba(self, dim=(), keepdim=False, *, out):
    """aten::amax (numba provider): lane-parallel max kernels; same contract as the reference."""
    dims, shape = _prep_amax(self, dim, keepdim, out)
    split = split_reduction(self.shape, dims)
    if split is None or self.dtype not in JIT_FLOATS + (FLOAT16,) or self.size == 0:
        # integers and bool: numpy's max is exact and SIMD-fast already
        np.copyto(out, np.max(self, axis=dims, keepdims=True).reshape(shape))
        return out
    A, K, B = split
    flat = as_c_float(self).reshape(-1)
    nsplit = _THREADS_SPLIT if (B == 1 and A < 2 * _THREADS_SPLIT and K >= _SPLIT_MIN) else 1
    res = np.empty(A * B * nsplit, flat.dtype)
    with serial_below(flat.size):
        jit.max_akb(flat, A, K, B, nsplit, res)
    if nsplit > 1:
        res = np.max(res.reshape(A, nsplit), axis=1)   # NaN-propagating, like the kernel
    np.copyto(out, res.reshape(shape), casting="unsafe")
    return out


register("aten::amax", "reference", amax_reference)
register("aten::amax", "numba", amax_numba)


def _prep_argmax(self, dim, keepdim, out):
    check_tensor("self", self)
    _check_keepdim(keepdim)
    if dim is None:
        _check_nonempty("argmax", (self.size,), (0,))
        shape = (1,) * self.ndim if keepdim else ()
        check_out(out, shape, INT64)
        return None, shape
    d = reduction_dims(dim, self.ndim) if not isinstance(dim, (list, tuple)) else None
    if d is None:
        raise TypeError(f"dim must be an int or None for argmax, got {type(dim).__name__}")
    _check_nonempty("argmax", self.shape, d)
    shape = reduced_shape(self.shape, d, keepdim)
    check_out(out, shape, INT64)
    return d, shape


def _argmax_axis_reference(x, axis):
    """First index of the maximum along ``axis``, NaN counting as the maximum."""
    x = np.moveaxis(x, axis, -1)
    nan = np.isnan(x) if is_float(x.dtype) else np.zeros(x.shape, bool)
    has_nan = nan.any(axis=-1)
    first_nan = np.argmax(nan, axis=-1)
    # np.argmax also returns the first maximum; NaNs are handled explicitly above.
    clean = np.where(nan, -np.inf, x) if is_float(x.dtype) else x
    return np.where(has_nan, first_nan, np.argmax(clean, axis=-1))


def argmax_reference(self, dim=None, keepdim=False, *, out):
    """aten::argmax (reference provider). int64 index of the first maximum (NaN is the maximum).

    dim=None indexes the flattened self; out is 0-d (all-ones shape with
    keepdim). Empty input or a reduced dim of size 0 raises ValueError.
    """
    d, shape = _prep_argmax(self, dim, keepdim, out)
    wide = FLOAT64 if is_float(self.dtype) else INT64
    x = self.astype(wide)
    if d is None:
        res = _argmax_axis_reference(x.reshape(-1), 0)
    elif not d:  # 0-d input
        res = np.zeros((), INT64)
    else:
        res = _argmax_axis_reference(x, d[0])
    np.copyto(out, np.reshape(res, shape), casting="unsafe")
    return out


def argmax_numba(self, dim=None, keepdim=False, *, out):
    """aten::argmax (numba provider): lane-parallel kernels; same contract as the reference."""
    d, shape = _prep_argmax(self, dim, keepdim, out)
    if d is not None and not d:
        out[...] = 0
        return out
    if not is_float(self.dtype):
        # integers and bool: np.argmax already returns the first maximum
        res = np.argmax(self.reshape(-1) if d is None else self, axis=None if d is None else d[0])
        np.copyto(out, np.reshape(res, shape))
        return out
    x = as_c_float(self)
    if d is None:
        A, K, B = 1, x.size, 1
    else:
        A = int(np.prod(self.shape[:d[0]], dtype=np.int64))
        K = self.shape[d[0]]
        B = int(np.prod(self.shape[d[0] + 1:], dtype=np.int64))
    flat = x.reshape(-1)
    res = np.empty(A * B, INT64)
    with serial_below(flat.size):
        jit.argmax_akb(flat, A, K, B, res)
    np.copyto(out, res.reshape(shape))
    return out


register("aten::argmax", "reference", argmax_reference)
register("aten::argmax", "numba", argmax_numba)
