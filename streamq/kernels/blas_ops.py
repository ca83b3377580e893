"""cuBLAS level-1/2/3 kernels with cuBLAS's column-major semantics.

The CUDA facade hands every vector or matrix over as a *flat* 1-D numpy array
(a view that starts at the device pointer) plus the C arguments, so each op
mirrors its cuBLAS C function minus the handle:

* matrices are column-major: element (i, j) of a matrix with leading dimension
  ``ld`` is ``flat[i + j * ld]`` (0-based);
* vectors follow the BLAS increment rule: element i of an n-vector with
  increment ``inc > 0`` is ``flat[i * inc]``; with ``inc < 0`` it is
  ``flat[(n - 1 - i) * |inc|]`` (the vector is walked backwards);
* ``alpha``/``beta`` follow BLAS: ``beta == 0`` means the output is never read
  (NaN or inf already there cannot leak), ``alpha == 0`` means the inputs of
  the product are never read.

Every argument error that cuBLAS reports as ``CUBLAS_STATUS_INVALID_VALUE``
raises ``ValueError`` here, naming the argument; a wrong array type or dtype
raises ``TypeError``. On top of cuBLAS's checks, every flat array is checked
to be long enough for what it holds *before* anything is computed, so a kernel
never reads or writes outside the arrays it is given. Only the elements an op
defines as its output are written; e.g. the ``ldc`` padding rows of C are never
touched.

Dtypes: float32 (``S``) and float64 (``D``) functions, plus float16 (``H``,
computed in float32 and rounded once). All arrays of one call share a dtype.

Providers: ``blas`` (GEMM: one direct ``cblas_?gemm`` call with BLAS's own
alpha/beta on strided views of the flat arrays, numpy matmul where that cannot
be used; other ops: numpy / BLAS over strided views, no copies where numpy can
hand the views to BLAS directly) and
``reference`` (float64 numpy, rounded once into the output dtype; the oracle).
Full contract per op: ``docs/kernels/blas.md``.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._common import check_array, check_float
from ._conv_gemm import gemm as cblas_gemm
from ._conv_gemm import have_cblas
from .registry import register

__all__ = [
    "gemm_blas", "gemm_reference",
    "gemm_strided_batched_blas", "gemm_strided_batched_reference",
    "gemv_blas", "gemv_reference",
    "axpy_blas", "axpy_reference", "dot_blas", "dot_reference",
    "scal_blas", "scal_reference", "nrm2_blas", "nrm2_reference",
    "asum_blas", "asum_reference", "amax_blas", "amax_reference",
]

# Kernels produce IEEE results (NaN/inf propagate) silently, as the GPU does:
# no numpy RuntimeWarnings for overflow or invalid operations in user data.
_quiet = np.errstate(all="ignore")

# cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2. For real
# dtypes the conjugate transpose is the transpose.
_OPS = {"N": False, "T": True, "C": True, 0: False, 1: True, 2: True}


# ----------------------------------------------------------------------------
# argument checking
# ----------------------------------------------------------------------------

def _op(name: str, value) -> bool:
    """Parse a cublasOperation_t ('N'/'T'/'C' or 0/1/2); True means transposed."""
    key = value.upper() if isinstance(value, str) else value
    if isinstance(value, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
        raise ValueError(f"{name} must be one of 'N', 'T', 'C' or 0, 1, 2, got {value!r}")
    try:
        return _OPS[key if isinstance(key, str) else int(key)]
    except KeyError:
        raise ValueError(f"{name} must be one of 'N', 'T', 'C' or 0, 1, 2, got {value!r}") from None


def _int(name: str, value) -> int:
    if type(value) is int:  # fast path for the common case
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _nonneg(name: str, value) -> int:
    v = _int(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _real(name: str, value) -> float:
    if type(value) is float or type(value) is int:  # fast path for the common case
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _flat(name: str, arr, *, writable: bool = False) -> np.ndarray:
    check_array(name, arr, ndim=1, writable=writable)
    return check_float(name, arr)


def _same_dtype(first: tuple[str, np.ndarray], *others: tuple[str, np.ndarray]) -> np.dtype:
    name0, a0 = first
    for name, a in others:
        if a.dtype != a0.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {name0} has dtype {a0.dtype}; "
                            f"all arrays of one call must share a dtype")
    return a0.dtype


def _check_ld(name: str, ld: int, rows: int, why: str) -> None:
    if ld < max(1, rows):
        raise ValueError(f"{name} must be >= max(1, {rows}) ({why}), got {ld}")


def _extent(rows: int, cols: int, ld: int) -> int:
    """Elements spanned by a rows x cols column-major matrix with leading dim ld."""
    return 0 if rows == 0 or cols == 0 else (cols - 1) * ld + rows


def _check_fits(name: str, arr: np.ndarray, rows: int, cols: int, ld: int,
                stride: int = 0, batch: int = 1) -> None:
    """Raise unless every matrix of the batch lies inside ``arr``."""
    span = _extent(rows, cols, ld)
    if span == 0 or batch == 0:
        return
    first = min(0, (batch - 1) * stride)
    last = max(0, (batch - 1) * stride) + span
    if first < 0:
        raise ValueError(f"stride{name}={stride} places matrix {batch - 1} of {name} before "
                         f"the start of {name}")
    if last > arr.size:
        what = f"{rows}x{cols} matrix with ld{name.lower()}={ld}"
        if batch > 1:
            what = f"{batch} {rows}x{cols} matrices with ld{name.lower()}={ld}, stride{name}={stride}"
        raise ValueError(f"{name} holds {arr.size} elements but {what} needs {last}")


def _strided(arr: np.ndarray, shape: tuple, element_strides: tuple, writable: bool) -> np.ndarray:
    """A view of the flat array ``arr`` with the given shape and strides (in elements)."""
    s = arr.strides[0]
    strides = tuple(e * s for e in element_strides)
    if arr.flags.c_contiguous:  # ndarray() is much cheaper than as_strided
        view = np.ndarray(shape, arr.dtype, arr, 0, strides)
        if not writable:
            view.flags.writeable = False
        return view
    return as_strided(arr, shape, strides, writeable=writable)


def _matrix(arr: np.ndarray, rows: int, cols: int, ld: int, *, writable: bool = False,
            stride: int | None = None, batch: int = 1) -> np.ndarray:
    """Column-major view (rows, cols) -- or (batch, rows, cols) -- of a flat array."""
    if stride is None:
        return _strided(arr, (rows, cols), (1, ld), writable)
    return _strided(arr, (batch, rows, cols), (stride, 1, ld), writable)


def _vector(name: str, arr: np.ndarray, n: int, inc: int, inc_name: str, *,
            writable: bool = False) -> np.ndarray:
    """The n-vector of ``arr`` with increment ``inc``, in BLAS order (see module doc)."""
    if n <= 0:
        return arr[:0]
    step = abs(inc)
    need = (n - 1) * step + 1
    if arr.size < need:
        raise ValueError(f"{name} holds {arr.size} elements but n={n} elements with "
                         f"{inc_name}={inc} need {need}")
    view = _strided(arr, (n,), (step,), writable)
    return view[::-1] if inc < 0 else view


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32; float32/64 in themselves."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _round(value: float, dtype: np.dtype) -> float:
    """A scalar result rounded to the precision of ``dtype`` (cuBLAS writes a T)."""
    return float(dtype.type(value))


# ----------------------------------------------------------------------------
# blending
# ----------------------------------------------------------------------------

def _scale(y: np.ndarray, beta: float) -> None:
    """y = beta * y; beta == 0 writes zeros without reading y."""
    if beta == 0:
        y[...] = 0
    elif beta != 1:
        np.multiply(y, beta, out=y, casting="unsafe")


def _blend_owned(y: np.ndarray, value: np.ndarray, alpha: float, beta: float) -> None:
    """y = alpha * value + beta * y, where ``value`` is a temporary we may overwrite.

    ``beta == 0`` never reads y. Works in value's dtype (float32 for float16 y).
    """
    if alpha != 1:
        np.multiply(value, alpha, out=value)
    if beta != 0:
        if y.dtype == value.dtype:
            if beta != 1:
                np.multiply(y, beta, out=y)
            np.add(y, value, out=y)
            return
        value += np.multiply(y, beta, dtype=value.dtype)
    np.copyto(y, value, casting="unsafe")


def _blend64(y: np.ndarray, value: np.ndarray, alpha: float, beta: float) -> None:
    """y = alpha * value + beta * y computed in float64, rounded once into y.

    ``beta == 0`` never reads y.
    """
    result = alpha * np.asarray(value, dtype=np.float64)
    if beta != 0:
        result = result + beta * y.astype(np.float64)
    np.copyto(y, result, casting="unsafe")


# ----------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------

class _Gemm:
    """Validated GEMM arguments; ``views()`` gives op(A), op(B), C as numpy views."""

    __slots__ = ("ta", "tb", "m", "n", "k", "alpha", "beta", "A", "lda", "B", "ldb",
                 "C", "ldc", "sa", "sb", "sc", "batch")

    def __init__(self, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc,
                 strideA=None, strideB=None, strideC=None, batchCount=None):
        self.ta, self.tb = _op("transa", transa), _op("transb", transb)
        self.m, self.n, self.k = _nonneg("m", m), _nonneg("n", n), _nonneg("k", k)
        self.lda, self.ldb, self.ldc = _int("lda", lda), _int("ldb", ldb), _int("ldc", ldc)
        self.alpha, self.beta = _real("alpha", alpha), _real("beta", beta)
        self.A, self.B = _flat("A", A), _flat("B", B)
        self.C = _flat("C", C, writable=True)
        _same_dtype(("C", self.C), ("A", self.A), ("B", self.B))
        batched = batchCount is not None
        self.batch = _nonneg("batchCount", batchCount) if batched else 1
        self.sa = _int("strideA", strideA) if batched else None
        self.sb = _int("strideB", strideB) if batched else None
        self.sc = _int("strideC", strideC) if batched else None
        m, n, k = self.m, self.n, self.k
        a_rows, a_cols = (k, m) if self.ta else (m, k)
        b_rows, b_cols = (n, k) if self.tb else (k, n)
        _check_ld("lda", self.lda, a_rows, f"rows of A as stored for transa={transa!r}")
        _check_ld("ldb", self.ldb, b_rows, f"rows of B as stored for transb={transb!r}")
        _check_ld("ldc", self.ldc, m, "rows of C")
        if batched and self.batch > 1 and self.sc == 0 and m > 0 and n > 0:
            raise ValueError("strideC must not be 0 when batchCount > 1 "
                             "(every batch would write the same C)")
        if self.nothing_to_do:
            return
        _check_fits("C", self.C, m, n, self.ldc, self.sc or 0, self.batch)
        if self.reads_ab:
            _check_fits("A", self.A, a_rows, a_cols, self.lda, self.sa or 0, self.batch)
            _check_fits("B", self.B, b_rows, b_cols, self.ldb, self.sb or 0, self.batch)

    @property
    def nothing_to_do(self) -> bool:
        return self.m == 0 or self.n == 0 or self.batch == 0

    @property
    def reads_ab(self) -> bool:
        return self.k > 0 and self.alpha != 0

    def c_view(self) -> np.ndarray:
        return _matrix(self.C, self.m, self.n, self.ldc, writable=True,
                       stride=self.sc, batch=self.batch)

    def ab_views(self) -> tuple[np.ndarray, np.ndarray]:
        m, n, k = self.m, self.n, self.k
        a = (_matrix(self.A, k, m, self.lda, stride=self.sa, batch=self.batch).swapaxes(-1, -2)
             if self.ta else _matrix(self.A, m, k, self.lda, stride=self.sa, batch=self.batch))
        b = (_matrix(self.B, n, k, self.ldb, stride=self.sb, batch=self.batch).swapaxes(-1, -2)
             if self.tb else _matrix(self.B, k, n, self.ldb, stride=self.sb, batch=self.batch))
        return a, b


def _gemm_blas_run(g: _Gemm) -> None:
    if g.nothing_to_do:
        return
    c = g.c_view()
    if not g.reads_ab:
        _scale(c, g.beta)
        return
    a, b = g.ab_views()
    # C is column-major, so C^T is a row-major view with leading dim ldc, which is
    # what BLAS (directly, or through numpy's matmul) takes without a copy:
    # C^T = op(B)^T op(A)^T.
    ct, at, bt = c.swapaxes(-1, -2), a.swapaxes(-1, -2), b.swapaxes(-1, -2)
    work = _work_dtype(c.dtype)
    if (work == c.dtype and c.ndim == 2 and have_cblas()
            and not (np.may_share_memory(c, a) or np.may_share_memory(c, b))):
        # One cblas_?gemm call with BLAS's own alpha/beta: no temporary, one pass
        # over C (cblas_gemm falls back to matmul for views BLAS cannot take).
        cblas_gemm(bt, at, ct, g.alpha, g.beta)
        return
    if g.beta == 0 and work == c.dtype:
        np.matmul(bt, at, out=ct)
        if g.alpha != 1:
            np.multiply(ct, g.alpha, out=ct)
        return
    prod = np.matmul(bt.astype(work, copy=False), at.astype(work, copy=False))
    _blend_owned(ct, prod, g.alpha, g.beta)


def _gemm_reference_run(g: _Gemm) -> None:
    if g.nothing_to_do:
        return
    c = g.c_view()
    if not g.reads_ab:
        if g.beta == 0:
            c[...] = 0
        else:
            _blend64(c, np.zeros(c.shape), 0.0, g.beta)
        return
    a, b = g.ab_views()
    value = np.matmul(a.astype(np.float64), b.astype(np.float64))
    _blend64(c, value, g.alpha, g.beta)


_GEMM_DOC = """C = alpha * op(A) @ op(B) + beta * C, column-major, as cublas<t>gemm.

    transa, transb: 'N', 'T' or 'C' (or 0, 1, 2 = CUBLAS_OP_N/T/C); 'C' == 'T'
    for real dtypes. op(A) is m x k, op(B) is k x n, C is m x n. A is stored
    m x k (transa 'N') or k x m (otherwise) with leading dim lda >= max(1, rows
    as stored); likewise B with ldb; ldc >= max(1, m). A, B, C: flat 1-D arrays
    of one float dtype; only C's m x n submatrix is written. m == 0 or n == 0:
    no-op. k == 0 or alpha == 0: C = beta * C and A, B are not read. beta == 0:
    C is not read. Raises ValueError (negative size, bad trans, ld too small,
    array too short) or TypeError (non-array, dtype mismatch). Returns None.
    """


@register("cublas.gemm", "blas")
@_quiet
def gemm_blas(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    _gemm_blas_run(_Gemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc))


@register("cublas.gemm", "reference")
@_quiet
def gemm_reference(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    _gemm_reference_run(_Gemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc))


gemm_blas.__doc__ = _GEMM_DOC + (
    "\n    Provider blas: one cblas_?gemm call on strided views (BLAS's own"
    "\n    alpha/beta, no temporaries); numpy matmul for float16, for views"
    "\n    BLAS cannot take, or when C overlaps A or B.\n")
gemm_reference.__doc__ = _GEMM_DOC + "\n    Provider reference: float64, rounded once.\n"

_GEMM_BATCHED_DOC = """batchCount GEMMs, as cublas<t>gemmStridedBatched.

    For i in range(batchCount): C_i = alpha * op(A_i) @ op(B_i) + beta * C_i,
    where A_i is the matrix at flat offset i * strideA of A (likewise B_i, C_i),
    each with the layout and rules of ``cublas.gemm``. Strides are in elements;
    strideA/strideB may be 0 (one matrix shared by every batch); strideC must be
    nonzero when batchCount > 1. Every matrix of every batch must lie inside its
    flat array (checked up front; a negative stride that reaches before the
    start raises ValueError). batchCount < 0 raises ValueError; 0 is a no-op.
    Batches of C that overlap in memory are undefined, as in cuBLAS.
    """


@register("cublas.gemm_strided_batched", "blas")
@_quiet
def gemm_strided_batched_blas(transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                              beta, C, ldc, strideC, batchCount):
    _gemm_blas_run(_Gemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc,
                         strideA, strideB, strideC, batchCount))


@register("cublas.gemm_strided_batched", "reference")
@_quiet
def gemm_strided_batched_reference(transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
                                   strideB, beta, C, ldc, strideC, batchCount):
    _gemm_reference_run(_Gemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc,
                              strideA, strideB, strideC, batchCount))


gemm_strided_batched_blas.__doc__ = _GEMM_BATCHED_DOC + "\n    Provider blas: batched numpy matmul.\n"
gemm_strided_batched_reference.__doc__ = _GEMM_BATCHED_DOC + "\n    Provider reference: float64.\n"


# ----------------------------------------------------------------------------
# GEMV
# ----------------------------------------------------------------------------

def _gemv_args(trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    """Validate gemv; return (op(A) view, x view, y view, alpha, beta) or None for a no-op."""
    t = _op("trans", trans)
    m, n, lda = _nonneg("m", m), _nonneg("n", n), _int("lda", lda)
    incx, incy = _int("incx", incx), _int("incy", incy)
    alpha, beta = _real("alpha", alpha), _real("beta", beta)
    A, x, y = _flat("A", A), _flat("x", x), _flat("y", y, writable=True)
    _same_dtype(("y", y), ("A", A), ("x", x))
    _check_ld("lda", lda, m, "rows of A")
    if incx == 0:
        raise ValueError("incx must not be 0")
    if incy == 0:
        raise ValueError("incy must not be 0")
    if m == 0 or n == 0 or (alpha == 0 and beta == 1):
        return None  # reference BLAS quick return: y untouched
    len_x, len_y = (m, n) if t else (n, m)
    yv = _vector("y", y, len_y, incy, "incy", writable=True)
    if alpha == 0:
        return None, None, yv, alpha, beta
    _check_fits("A", A, m, n, lda)
    xv = _vector("x", x, len_x, incx, "incx")
    a = _matrix(A, m, n, lda)
    return (a.T if t else a), xv, yv, alpha, beta


_GEMV_DOC = """y = alpha * op(A) @ x + beta * y, as cublas<t>gemv.

    A is m x n column-major with lda >= max(1, m); op(A) = A for trans 'N'
    (x has n elements, y has m), A^T for 'T'/'C' (x has m, y has n). x, y use
    increments incx, incy (nonzero; negative walks the vector backwards).
    m == 0 or n == 0, or alpha == 0 and beta == 1: no-op (y untouched, as the
    reference BLAS). alpha == 0: A and x are not read. beta == 0: y is not read.
    Raises ValueError (negative m/n, lda too small, zero increment, array too
    short) or TypeError (non-array, dtype mismatch). Returns None.
    """


@register("cublas.gemv", "blas")
@_quiet
def gemv_blas(trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    args = _gemv_args(trans, m, n, alpha, A, lda, x, incx, beta, y, incy)
    if args is None:
        return
    a, xv, yv, alpha, beta = args
    if a is None:
        _scale(yv, beta)
        return
    work = _work_dtype(yv.dtype)
    prod = np.matmul(a.astype(work, copy=False), xv.astype(work, copy=False))
    _blend_owned(yv, prod, alpha, beta)


@register("cublas.gemv", "reference")
@_quiet
def gemv_reference(trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    args = _gemv_args(trans, m, n, alpha, A, lda, x, incx, beta, y, incy)
    if args is None:
        return
    a, xv, yv, alpha, beta = args
    if a is None:
        _blend64(yv, np.zeros(yv.shape), 0.0, beta)
        return
    _blend64(yv, a.astype(np.float64) @ xv.astype(np.float64), alpha, beta)


gemv_blas.__doc__ = _GEMV_DOC + "\n    Provider blas: numpy matmul (BLAS gemv).\n"
gemv_reference.__doc__ = _GEMV_DOC + "\n    Provider reference: float64.\n"


# ----------------------------------------------------------------------------
# level 1
# ----------------------------------------------------------------------------

def _axpy_args(n, alpha, x, incx, y, incy):
    n, incx, incy = _int("n", n), _int("incx", incx), _int("incy", incy)
    alpha = _real("alpha", alpha)
    x, y = _flat("x", x), _flat("y", y, writable=True)
    _same_dtype(("y", y), ("x", x))
    if incy == 0:
        raise ValueError("incy must not be 0 (every element would be written to one place)")
    if n <= 0 or alpha == 0:
        return None  # reference BLAS quick return
    return alpha, _vector("x", x, n, incx, "incx"), _vector("y", y, n, incy, "incy", writable=True)


@register("cublas.axpy", "blas")
@_quiet
def axpy_blas(n, alpha, x, incx, y, incy):
    """y = alpha * x + y over n elements, as cublas<t>axpy.

    incx may be 0 (x[0] is added n times) or negative (BLAS order); incy must
    be nonzero. n <= 0 or alpha == 0: no-op. Provider blas: numpy, in the
    array dtype (float32 for float16).
    """
    args = _axpy_args(n, alpha, x, incx, y, incy)
    if args is None:
        return
    alpha, xv, yv = args
    value = np.multiply(xv, alpha, dtype=_work_dtype(yv.dtype))
    _blend_owned(yv, value, 1.0, 1.0)


@register("cublas.axpy", "reference")
@_quiet
def axpy_reference(n, alpha, x, incx, y, incy):
    """y = alpha * x + y over n elements (see axpy_blas); float64, rounded once."""
    args = _axpy_args(n, alpha, x, incx, y, incy)
    if args is None:
        return
    alpha, xv, yv = args
    _blend64(yv, xv.astype(np.float64), alpha, 1.0)


def _dot_args(n, x, incx, y, incy):
    n, incx, incy = _int("n", n), _int("incx", incx), _int("incy", incy)
    x, y = _flat("x", x), _flat("y", y)
    dtype = _same_dtype(("x", x), ("y", y))
    if n <= 0:
        return None, None, dtype
    return _vector("x", x, n, incx, "incx"), _vector("y", y, n, incy, "incy"), dtype


@register("cublas.dot", "blas")
@_quiet
def dot_blas(n, x, incx, y, incy) -> float:
    """sum_i x_i * y_i over n elements, as cublas<t>dot; 0.0 when n <= 0.

    Increments may be 0 or negative (BLAS order). Returns a Python float holding
    a value of the array dtype. Provider blas: BLAS dot (float32 for float16).
    """
    xv, yv, dtype = _dot_args(n, x, incx, y, incy)
    if xv is None:
        return 0.0
    work = _work_dtype(dtype)
    return _round(np.dot(xv.astype(work, copy=False), yv.astype(work, copy=False)), dtype)


@register("cublas.dot", "reference")
@_quiet
def dot_reference(n, x, incx, y, incy) -> float:
    """sum_i x_i * y_i (see dot_blas); float64, rounded once to the array dtype."""
    xv, yv, dtype = _dot_args(n, x, incx, y, incy)
    if xv is None:
        return 0.0
    return _round(np.sum(xv.astype(np.float64) * yv.astype(np.float64)), dtype)


def _unary_args(n, x, incx, *, writable: bool = False):
    """Shared by scal/nrm2/asum/amax: None (n <= 0 or incx <= 0, BLAS quick return) or the view."""
    n, incx = _int("n", n), _int("incx", incx)
    x = _flat("x", x, writable=writable)
    if n <= 0 or incx <= 0:
        return None
    return _vector("x", x, n, incx, "incx", writable=writable)


@register("cublas.scal", "blas")
@_quiet
def scal_blas(n, alpha, x, incx):
    """x = alpha * x over n elements, as cublas<t>scal.

    n <= 0 or incx <= 0: no-op (reference BLAS). alpha == 0 still multiplies
    (NaN * 0 stays NaN, as the reference BLAS). Provider blas: numpy in place.
    """
    alpha = _real("alpha", alpha)
    xv = _unary_args(n, x, incx, writable=True)
    if xv is not None:
        np.multiply(xv, alpha, out=xv, casting="unsafe")


@register("cublas.scal", "reference")
@_quiet
def scal_reference(n, alpha, x, incx):
    """x = alpha * x (see scal_blas); float64, rounded once."""
    alpha = _real("alpha", alpha)
    xv = _unary_args(n, x, incx, writable=True)
    if xv is not None:
        _blend64(xv, xv.astype(np.float64), alpha, 0.0)


def _nrm2_float64(v: np.ndarray) -> float:
    """Euclidean norm of a float64 vector without overflow or underflow."""
    scale = float(np.max(np.abs(v)))
    if scale == 0 or not np.isfinite(scale):
        return scale  # 0, inf or NaN (np.max propagates NaN)
    return scale * float(np.sqrt(np.sum(np.square(v / scale))))


@register("cublas.nrm2", "blas")
@_quiet
def nrm2_blas(n, x, incx) -> float:
    """Euclidean norm of n elements, as cublas<t>nrm2; 0.0 when n <= 0 or incx <= 0.

    No overflow or underflow for any finite input; inf if any element is inf and
    none is NaN; NaN if any is NaN. Returns a Python float rounded to the array
    dtype. Provider blas: BLAS dot, with a scaled second pass only when the
    sum of squares over/underflows (float16/32 are widened to float64).
    """
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0.0
    v = xv.astype(np.float64, copy=False)
    ss = float(np.dot(v, v))
    # float32/16 squares cannot overflow or denormalise in float64; float64 may.
    if np.isfinite(ss) and (xv.dtype != np.float64 or ss > 1e-280):
        return _round(np.sqrt(ss), xv.dtype)
    return _round(_nrm2_float64(v), xv.dtype)


@register("cublas.nrm2", "reference")
@_quiet
def nrm2_reference(n, x, incx) -> float:
    """Euclidean norm (see nrm2_blas); float64, always scaled by max |x_i|."""
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0.0
    return _round(_nrm2_float64(xv.astype(np.float64)), xv.dtype)


@register("cublas.asum", "blas")
@_quiet
def asum_blas(n, x, incx) -> float:
    """sum_i |x_i| over n elements, as cublas<t>asum; 0.0 when n <= 0 or incx <= 0.

    Returns a Python float rounded to the array dtype. Provider blas: numpy
    pairwise sum in the array dtype (float32 for float16).
    """
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0.0
    return _round(np.sum(np.abs(xv), dtype=_work_dtype(xv.dtype)), xv.dtype)


@register("cublas.asum", "reference")
@_quiet
def asum_reference(n, x, incx) -> float:
    """sum_i |x_i| (see asum_blas); float64, rounded once."""
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0.0
    return _round(np.sum(np.abs(xv.astype(np.float64))), xv.dtype)


@register("cublas.amax", "blas")
@_quiet
def amax_blas(n, x, incx) -> int:
    """1-based index of the first element of largest |x_i|, as cublasI<t>amax.

    0 when n <= 0 or incx <= 0. A NaN counts as the largest magnitude (the first
    NaN's index is returned). Provider blas: numpy argmax.
    """
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0
    return int(np.argmax(np.abs(xv))) + 1


@register("cublas.amax", "reference")
@_quiet
def amax_reference(n, x, incx) -> int:
    """1-based index of the first largest |x_i| (see amax_blas); float64."""
    xv = _unary_args(n, x, incx)
    if xv is None:
        return 0
    return int(np.argmax(np.abs(xv.astype(np.float64)))) + 1
