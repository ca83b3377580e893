"""cuBLAS levels 1 and 2: gemv, axpy, dot, scal, nrm2, asum, I<t>amax (S and D).

Vectors follow BLAS: element i of an n-vector with increment ``inc`` is at
``ptr + i*inc*itemsize`` (``inc > 0``) or ``ptr + (n-1-i)*|inc|*itemsize``
(``inc < 0``). Reductions write their result through ``result``:

* pointer mode host: ``result`` is a numpy array (or facade pinned-host
  memory); the call **blocks** until the result is written, as cuBLAS's do;
* pointer mode device: ``result`` is facade memory, written in stream order;
  the call returns at once.
"""

from __future__ import annotations

import numpy as np

from streamq.kernels import registry

from ._cublas_args import increment, is_zero, leading_dim, matrix_extent, result_target, scalar, \
    transpose, vector_extent
from ._cublas_cudnn_shared import value_of
from ._cublas_types import LIB, live_handle

__all__ = ["cublasSgemv", "cublasDgemv", "cublasSaxpy", "cublasDaxpy", "cublasSdot", "cublasDdot",
           "cublasSscal", "cublasDscal", "cublasSnrm2", "cublasDnrm2", "cublasSasum", "cublasDasum",
           "cublasIsamax", "cublasIdamax"]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_INT = np.dtype(np.int32)   # cuBLAS writes amax's index as a C int


def _empty(dtype):
    return np.empty(0, dtype)


# -- gemv -------------------------------------------------------------------------------------

def _gemv(dtype, handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    h = live_handle(handle)
    t = transpose(trans, "trans")
    m, n = LIB.integer(m, "m", 0), LIB.integer(n, "n", 0)
    lda = leading_dim(lda, m, "lda")
    incx = increment(incx, "incx", nonzero=True)
    incy = increment(incy, "incy", nonzero=True)
    if m == 0 or n == 0:
        return                                   # quick return: y untouched
    stream = h.stream()
    alpha = scalar(h, alpha, dtype, "alpha")
    beta = scalar(h, beta, dtype, "beta")
    if is_zero(alpha) and isinstance(beta, float) and beta == 1:
        return
    len_x, len_y = (m, n) if t == "T" else (n, m)
    yv = LIB.flat(y, dtype, vector_extent(len_y, incy), what="y")
    reads_ax = not is_zero(alpha)
    av = LIB.flat(A, dtype, matrix_extent(m, n, lda) if reads_ax else 0, what="A")
    xv = LIB.flat(x, dtype, vector_extent(len_x, incx) if reads_ax else 0, what="x")
    kernel = registry.get("cublas.gemv")
    reads = [av, xv] + [s for s in (alpha, beta) if isinstance(s, np.ndarray)]
    if not is_zero(beta):
        reads.append(yv)
    LIB.launch(stream, _run_gemv, (kernel, t, m, n, alpha, av, lda, xv, incx, beta, yv, incy),
               name="cublas.gemv", reads=reads, writes=[yv])


def _run_gemv(kernel, t, m, n, alpha, av, lda, xv, incx, beta, yv, incy):
    kernel(t, m, n, value_of(alpha), av, lda, xv, incx, value_of(beta), yv, incy)


# -- axpy, scal ---------------------------------------------------------------------------------

def _axpy(dtype, handle, n, alpha, x, incx, y, incy):
    h = live_handle(handle)
    n = LIB.integer(n, "n")
    incx = increment(incx, "incx", nonzero=False)
    incy = increment(incy, "incy", nonzero=True)   # every update would hit one element
    if n <= 0:
        return
    stream = h.stream()
    alpha = scalar(h, alpha, dtype, "alpha")
    if is_zero(alpha):
        return
    xv = LIB.flat(x, dtype, vector_extent(n, incx), what="x")
    yv = LIB.flat(y, dtype, vector_extent(n, incy), what="y")
    kernel = registry.get("cublas.axpy")
    reads = [xv, yv] + ([alpha] if isinstance(alpha, np.ndarray) else [])
    LIB.launch(stream, _run_axpy, (kernel, n, alpha, xv, incx, yv, incy), name="cublas.axpy",
               reads=reads, writes=[yv])


def _run_axpy(kernel, n, alpha, xv, incx, yv, incy):
    kernel(n, value_of(alpha), xv, incx, yv, incy)


def _scal(dtype, handle, n, alpha, x, incx):
    h = live_handle(handle)
    n, incx = LIB.integer(n, "n"), LIB.integer(incx, "incx")
    if n <= 0 or incx <= 0:
        return                                   # reference-BLAS quick return
    stream = h.stream()
    alpha = scalar(h, alpha, dtype, "alpha")
    xv = LIB.flat(x, dtype, vector_extent(n, incx), what="x")
    kernel = registry.get("cublas.scal")
    reads = [xv] + ([alpha] if isinstance(alpha, np.ndarray) else [])
    LIB.launch(stream, _run_scal, (kernel, n, alpha, xv, incx), name="cublas.scal",
               reads=reads, writes=[xv])


def _run_scal(kernel, n, alpha, xv, incx):
    kernel(n, value_of(alpha), xv, incx)


# -- reductions ---------------------------------------------------------------------------------

def _reduce(op: str, api_name: str, h, out_dtype, args, vectors, result):
    """Enqueue a reduction writing into ``result``; block in host pointer mode."""
    target = result_target(h, result, out_dtype)
    stream = h.stream()
    blocking = not h.device_pointers
    if blocking:
        LIB.check_may_block(f"{api_name} in host pointer mode")
        if stream.capture is not None:
            raise LIB.unsupported(f"{api_name} in host pointer mode blocks for its result, which "
                                  f"a capturing stream cannot do")
    kernel = registry.get(op)
    task = LIB.launch(stream, _run_reduce, (kernel, args, target), name=op,
                      reads=list(vectors), writes=[target])
    if blocking:
        LIB.wait(stream, task, what=api_name)


def _run_reduce(kernel, args, target):
    target.flat[0] = kernel(*args)


def _dot(dtype, api_name, handle, n, x, incx, y, incy, result):
    h = live_handle(handle)
    n = LIB.integer(n, "n")
    incx = increment(incx, "incx", nonzero=False)
    incy = increment(incy, "incy", nonzero=False)
    xv = LIB.flat(x, dtype, vector_extent(n, incx), what="x")
    yv = LIB.flat(y, dtype, vector_extent(n, incy), what="y")
    _reduce("cublas.dot", api_name, h, dtype, (n, xv, incx, yv, incy), (xv, yv), result)


def _unary_reduce(op, out_dtype, dtype, api_name, handle, n, x, incx, result):
    h = live_handle(handle)
    n, incx = LIB.integer(n, "n"), LIB.integer(incx, "incx")
    quick = n <= 0 or incx <= 0                  # result is 0, x not read
    xv = _empty(dtype) if quick else LIB.flat(x, dtype, vector_extent(n, incx), what="x")
    _reduce(op, api_name, h, out_dtype, (n, xv, incx), (xv,), result)


# -- the public functions (C names, C argument order) ------------------------------------------

@LIB.api()
def cublasSgemv(handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    """y = alpha*op(A)@x + beta*y, A column-major m x n (float32); returns (cublasStatus_t,).

    lda >= max(1, m) and incx, incy != 0, else CUBLAS_STATUS_INVALID_VALUE.
    m == 0 or n == 0 (or alpha == 0 and beta == 1): no-op."""
    _gemv(_F32, handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy)


@LIB.api()
def cublasDgemv(handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    """y = alpha*op(A)@x + beta*y (float64); see cublasSgemv."""
    _gemv(_F64, handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy)


@LIB.api()
def cublasSaxpy(handle, n, alpha, x, incx, y, incy):
    """y = alpha*x + y over n elements (float32); incy == 0 is CUBLAS_STATUS_INVALID_VALUE."""
    _axpy(_F32, handle, n, alpha, x, incx, y, incy)


@LIB.api()
def cublasDaxpy(handle, n, alpha, x, incx, y, incy):
    """y = alpha*x + y over n elements (float64); see cublasSaxpy."""
    _axpy(_F64, handle, n, alpha, x, incx, y, incy)


@LIB.api()
def cublasSscal(handle, n, alpha, x, incx):
    """x = alpha*x over n elements (float32); n <= 0 or incx <= 0 is a no-op."""
    _scal(_F32, handle, n, alpha, x, incx)


@LIB.api()
def cublasDscal(handle, n, alpha, x, incx):
    """x = alpha*x over n elements (float64); see cublasSscal."""
    _scal(_F64, handle, n, alpha, x, incx)


@LIB.api()
def cublasSdot(handle, n, x, incx, y, incy, result):
    """result = sum(x_i*y_i) (float32); blocks until written in host pointer mode."""
    _dot(_F32, "cublasSdot", handle, n, x, incx, y, incy, result)


@LIB.api()
def cublasDdot(handle, n, x, incx, y, incy, result):
    """result = sum(x_i*y_i) (float64); blocks until written in host pointer mode."""
    _dot(_F64, "cublasDdot", handle, n, x, incx, y, incy, result)


@LIB.api()
def cublasSnrm2(handle, n, x, incx, result):
    """result = sqrt(sum(x_i**2)) without overflow (float32); 0 if n <= 0 or incx <= 0."""
    _unary_reduce("cublas.nrm2", _F32, _F32, "cublasSnrm2", handle, n, x, incx, result)


@LIB.api()
def cublasDnrm2(handle, n, x, incx, result):
    """result = sqrt(sum(x_i**2)) without overflow (float64); 0 if n <= 0 or incx <= 0."""
    _unary_reduce("cublas.nrm2", _F64, _F64, "cublasDnrm2", handle, n, x, incx, result)


@LIB.api()
def cublasSasum(handle, n, x, incx, result):
    """result = sum(|x_i|) (float32); 0 if n <= 0 or incx <= 0."""
    _unary_reduce("cublas.asum", _F32, _F32, "cublasSasum", handle, n, x, incx, result)


@LIB.api()
def cublasDasum(handle, n, x, incx, result):
    """result = sum(|x_i|) (float64); 0 if n <= 0 or incx <= 0."""
    _unary_reduce("cublas.asum", _F64, _F64, "cublasDasum", handle, n, x, incx, result)


@LIB.api()
def cublasIsamax(handle, n, x, incx, result):
    """result (int32) = 1-based index of the first largest |x_i| (float32 x); 0 if n <= 0
    or incx <= 0; a NaN counts as the largest."""
    _unary_reduce("cublas.amax", _INT, _F32, "cublasIsamax", handle, n, x, incx, result)


@LIB.api()
def cublasIdamax(handle, n, x, incx, result):
    """result (int32) = 1-based index of the first largest |x_i| (float64 x); see cublasIsamax."""
    _unary_reduce("cublas.amax", _INT, _F64, "cublasIdamax", handle, n, x, incx, result)
