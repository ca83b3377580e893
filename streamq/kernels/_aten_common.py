"""Shared checks for the ATen kernels: torch's dtype promotion, dims, ``out=`` arguments.

Everything here raises ValueError/TypeError whose message names the offending
parameter, and never touches array data beyond what it is asked to check.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._common import check_array

BOOL = np.dtype(np.bool_)
INT64 = np.dtype(np.int64)
FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
#: torch's default floating dtype: what integer true division and Python floats become.
DEFAULT_FLOAT = FLOAT32

INT_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64))
FLOAT_DTYPES = (FLOAT16, FLOAT32, FLOAT64)
#: Every dtype these kernels accept (torch's bool, integer and float types with a numpy twin).
SUPPORTED_DTYPES = (BOOL,) + INT_DTYPES + FLOAT_DTYPES
#: dtypes the numba kernels handle natively; float16 is widened to float32 around them.
JIT_FLOATS = (FLOAT32, FLOAT64)

_BOOL_CAT, _INT_CAT, _FLOAT_CAT = 0, 1, 2


def category(dtype: np.dtype) -> int:
    """0 for bool, 1 for integers, 2 for floats (torch's promotion categories)."""
    if dtype == BOOL:
        return _BOOL_CAT
    if dtype.kind in "ui":
        return _INT_CAT
    return _FLOAT_CAT


def is_float(dtype) -> bool:
    """True for float16/32/64."""
    return np.dtype(dtype) in FLOAT_DTYPES


def check_supported(name: str, dtype: np.dtype) -> np.dtype:
    """Require one of :data:`SUPPORTED_DTYPES`."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {dtype}; expected bool, "
                        "uint8, int8, int16, int32, int64, float16, float32 or float64")
    return dtype


def check_tensor(name: str, arr, *, floating: bool = False) -> np.ndarray:
    """A numpy array of a supported dtype (a float one when ``floating``)."""
    check_array(name, arr)
    check_supported(name, arr.dtype)
    if floating and not is_float(arr.dtype):
        raise TypeError(f"{name} must be float16, float32 or float64, got {arr.dtype}")
    return arr


def promote_types(a: np.dtype, b: np.dtype) -> np.dtype:
    """torch.promote_types: the higher category wins; within one, numpy's rule."""
    ca, cb = category(a), category(b)
    if ca == cb:
        return np.promote_types(a, b)
    return a if ca > cb else b


def _combine(higher, lower):
    # torch's combine_categories: a lower-priority group only matters when it
    # is of a higher category (or the higher group is bool).
    if higher is None:
        return lower
    if lower is None:
        return higher
    if category(higher) == _FLOAT_CAT:
        return higher
    if higher == BOOL or category(lower) == _FLOAT_CAT:
        return promote_types(higher, lower)
    return higher


def is_scalar(value) -> bool:
    """A Python or numpy scalar (bool, int or float); torch's "wrapped number"."""
    return isinstance(value, (bool, np.bool_, numbers.Integral, numbers.Real)) and \
        not isinstance(value, np.ndarray)


def scalar_dtype(value) -> np.dtype:
    """The dtype torch gives a wrapped scalar: bool, int64, or the default float."""
    if isinstance(value, (bool, np.bool_)):
        return BOOL
    if isinstance(value, numbers.Integral):
        return INT64
    if isinstance(value, numbers.Real):
        return DEFAULT_FLOAT
    raise TypeError(f"unsupported scalar {value!r}")


def check_scalar(name: str, value):
    """A bool, int or float (Python or numpy scalar); complex and others are refused."""
    if isinstance(value, np.ndarray) or not is_scalar(value) or isinstance(value, complex):
        raise TypeError(f"{name} must be a real scalar (bool, int or float), got {type(value).__name__}")
    return value


def result_type(*operands) -> np.dtype:
    """torch.result_type over arrays and scalars.

    Three priority groups, as in ATen: arrays with ndim > 0, 0-d arrays, and
    scalars. A lower group changes the result only when it is of a higher
    category (bool < int < float); a Python float alone counts as float32.
    """
    dim = zero = wrapped = None
    for op in operands:
        if isinstance(op, np.ndarray):
            if op.ndim > 0:
                dim = op.dtype if dim is None else promote_types(dim, op.dtype)
            else:
                zero = op.dtype if zero is None else promote_types(zero, op.dtype)
        else:
            dt = scalar_dtype(op)
            wrapped = dt if wrapped is None else promote_types(wrapped, dt)
    return _combine(dim, _combine(zero, wrapped))


def can_cast(src: np.dtype, dst: np.dtype) -> bool:
    """torch.can_cast: no float -> integer and no non-bool -> bool."""
    return category(src) <= category(dst)


def check_out(out, shape, dtype, name: str = "out") -> np.ndarray:
    """``out`` must be a writable array of exactly ``shape`` and ``dtype``."""
    return check_array(name, out, shape=tuple(shape), dtype=dtype, writable=True)


def broadcast_shape(name_a: str, a_shape, name_b: str, b_shape) -> tuple:
    """numpy/torch broadcasting of two shapes; ValueError naming both otherwise."""
    try:
        return tuple(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))
    except ValueError:
        raise ValueError(f"{name_b} with shape {tuple(b_shape)} cannot be broadcast "
                         f"with {name_a} of shape {tuple(a_shape)}") from None


def wrap_dim(dim, ndim: int, name: str = "dim") -> int:
    """One dim in ``[-max(ndim,1), max(ndim,1))`` made non-negative (a 0-d tensor takes 0/-1)."""
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    dim = int(dim)
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise ValueError(f"{name} {dim} is out of range for a {ndim}-d input "
                         f"(expected a value in [{-span}, {span - 1}])")
    return dim % span


def reduction_dims(dim, ndim: int, name: str = "dim") -> tuple[int, ...]:
    """Normalize a reduction ``dim`` (None, (), int or sequence) to sorted unique dims.

    None and the empty sequence mean every dim, as in torch. A 0-d input
    reduces over nothing (its dims are ``()``).
    """
    if dim is None:
        dims = list(range(ndim))
    elif isinstance(dim, (list, tuple)):
        dims = [wrap_dim(d, ndim, name) for d in dim] if len(dim) else list(range(ndim))
    else:
        dims = [wrap_dim(dim, ndim, name)]
    seen = set()
    for d in dims:
        if d in seen:
            raise ValueError(f"{name} {d} appears multiple times in the list of dims")
        seen.add(d)
    return tuple(sorted(d for d in dims if d < ndim))


def reduced_shape(shape, dims, keepdim: bool) -> tuple:
    """The shape left after reducing ``dims`` (kept as size 1 when ``keepdim``)."""
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def split_reduction(shape, dims):
    """``(A, K, B)`` when the reduced dims form one contiguous block of a C-order array.

    The array is then viewable as (A, K, B) reduced over the middle axis. Dims
    of size 1 are ignored. Returns None when the reduced dims are interleaved
    with kept ones.
    """
    marks = [(s, i in dims) for i, s in enumerate(shape) if s != 1]
    reduced = [j for j, (_, r) in enumerate(marks) if r]
    if not reduced:
        return int(np.prod(shape, dtype=np.int64)), 1, 1
    lo, hi = reduced[0], reduced[-1]
    if hi - lo + 1 != len(reduced):
        return None
    prod = lambda part: int(np.prod([s for s, _ in part], dtype=np.int64))  # noqa: E731
    return prod(marks[:lo]), prod(marks[lo:hi + 1]), prod(marks[hi + 1:])


def pair(name: str, value, *, allow_empty: bool = False, minimum: int | None = None):
    """An int or a 1/2-sequence of ints as an (h, w) pair (None when empty and allowed)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        vals = (int(value), int(value))
    elif isinstance(value, (list, tuple)):
        if len(value) == 0 and allow_empty:
            return None
        if len(value) not in (1, 2) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        vals = (int(value[0]), int(value[-1]))
    elif value is None and allow_empty:
        return None
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}")
    if minimum is not None and min(vals) < minimum:
        word = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {word}, got {value!r}")
    return vals


def separate(inp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``inp``, or a copy of it when it partially overlaps ``out``.

    Kernels that read an element and then write the same element are safe when
    input and output are the very same view; any other overlap would let a
    write be read back as input, so that input is copied first.
    """
    if isinstance(inp, np.ndarray) and np.may_share_memory(inp, out):
        same_view = (inp.shape == out.shape and inp.strides == out.strides and
                     inp.__array_interface__["data"][0] == out.__array_interface__["data"][0])
        if not same_view:
            return inp.copy()
    return inp


def as_c_float(arr: np.ndarray) -> np.ndarray:
    """C-contiguous float32/float64 data for a numba kernel (float16 widened to float32)."""
    if arr.dtype == FLOAT16:
        return np.ascontiguousarray(arr, dtype=FLOAT32)
    return np.ascontiguousarray(arr)
