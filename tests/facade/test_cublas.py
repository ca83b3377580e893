"""The cuBLAS facade (streamq.cuda_facade.cublas) against cuBLAS's documented semantics.

References are computed here in float64 numpy from hand-built Fortran-order
(column-major) arrays, never through the kernel registry. Documented rules are
quoted from the cuBLAS Library User Guide (docs.nvidia.com/cuda/cublas/),
sections "cuBLAS Datatypes Reference", "cublas<t>gemm()", "Level-1 Function
Reference", "cublasSetPointerMode()" and "cublasDestroy()".
"""

from __future__ import annotations

import functools
import json
import threading
import time

import facade_helpers
import numpy as np
import pytest
from facade_helpers import D2H, H2D, WAIT, fresh_stream, handle_fixture, library_ok
from facade_helpers import StreamGate as Gate

import streamq
from streamq.cuda_facade import cublas as cb
from streamq.cuda_facade import runtime as rt

S = cb.cublasStatus_t
OK = S.CUBLAS_STATUS_SUCCESS
INVALID = S.CUBLAS_STATUS_INVALID_VALUE
N, T, C = cb.CUBLAS_OP_N, cb.CUBLAS_OP_T, cb.CUBLAS_OP_C
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12),
       np.float16: dict(rtol=2e-3, atol=2e-3)}
pytestmark = pytest.mark.usefixtures("clean_library_device")


# -- helpers -----------------------------------------------------------------------------------------

ok = library_ok(cb.last_status_detail)
# cuBLAS is column-major: host arrays go to and come from the device in Fortran order.
upload = functools.partial(facade_helpers.upload, order="F")
download = functools.partial(facade_helpers.download, order="F")
handle = handle_fixture(cb.cublasCreate, cb.cublasDestroy, ok)


@pytest.fixture
def stream():
    """A fresh stream, destroyed after the test without the synchronize of conftest's."""
    yield from fresh_stream(synchronize=False)


def rand(rng, shape, dtype):
    return np.asfortranarray(rng.uniform(-1, 1, shape).astype(dtype))


# -- GEMM ----------------------------------------------------------------------------------------------

def test_sgemm_hand_computed_column_major(handle):
    # Column-major: A (2x3) stored as [1, 2, 3, 4, 5, 6] is [[1, 3, 5], [2, 4, 6]].
    A = np.array([1, 2, 3, 4, 5, 6], np.float32)
    B = np.array([1, 0, 0, 0, 1, 1], np.float32)   # 3x2: [[1, 0], [0, 1], [0, 1]]
    a, b, c = upload(A), upload(B), upload(np.full(4, 7, np.float32))
    ok(cb.cublasSgemm(handle, N, N, 2, 2, 3, 1.0, a, 2, b, 3, 0.5, c, 2))
    # C = A@B + 0.5*7: column 0 = A[:,0] = [1, 2]; column 1 = A[:,1] + A[:,2] = [8, 10].
    np.testing.assert_array_equal(download(c, 4, np.float32), [4.5, 5.5, 11.5, 13.5])


@pytest.mark.parametrize("dtype,fn", [(np.float32, cb.cublasSgemm), (np.float64, cb.cublasDgemm)])
@pytest.mark.parametrize("ta,tb", [(N, N), (N, T), (T, N), (T, T), (C, N), (N, C)])
def test_gemm_every_transpose_with_padded_leading_dims(handle, dtype, fn, ta, tb):
    rng = np.random.default_rng(int(ta) * 3 + int(tb))
    m, n, k, pad = 5, 4, 3, 2
    a_rows, a_cols = (m, k) if ta == N else (k, m)
    b_rows, b_cols = (k, n) if tb == N else (n, k)
    A, B = rand(rng, (a_rows + pad, a_cols), dtype), rand(rng, (b_rows + pad, b_cols), dtype)
    C0 = rand(rng, (m + pad, n), dtype)
    a, b, c = upload(A), upload(B), upload(C0)
    ok(fn(handle, ta, tb, m, n, k, 0.75, a, a_rows + pad, b, b_rows + pad, -1.5, c, m + pad))
    opA = A[:a_rows].astype(np.float64)
    opA = opA if ta == N else opA.T
    opB = B[:b_rows].astype(np.float64)
    opB = opB if tb == N else opB.T
    got = download(c, (m + pad, n), dtype)
    np.testing.assert_allclose(got[:m], 0.75 * opA @ opB - 1.5 * C0[:m], **TOL[dtype])
    np.testing.assert_array_equal(got[m:], C0[m:])     # the ldc padding rows are never written


def test_gemm_beta_zero_does_not_read_c_and_k_zero_scales(handle):
    # cuBLAS: "if beta == 0, then C does not have to be a valid input".
    A, B = np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)
    a, b, c = upload(A), upload(B), upload(np.full((2, 2), np.nan, np.float32))
    ok(cb.cublasSgemm(handle, N, N, 2, 2, 2, 1.0, a, 2, b, 2, 0.0, c, 2))
    np.testing.assert_array_equal(download(c, (2, 2), np.float32), np.full((2, 2), 2.0))
    # k == 0: C = beta * C, A and B are not read (NULL is fine).
    ok(cb.cublasSgemm(handle, N, N, 2, 2, 0, 1.0, None, 2, None, 2, 3.0, c, 2))
    np.testing.assert_array_equal(download(c, (2, 2), np.float32), np.full((2, 2), 6.0))
    # m == 0: quick return, nothing is read or written.
    ok(cb.cublasSgemm(handle, N, N, 0, 2, 2, 1.0, None, 1, None, 2, 0.0, None, 1))


@pytest.mark.parametrize("args,why", [
    (dict(lda=1), "lda"),                # lda < max(1, m) for transa N
    (dict(ldb=2), "ldb"),                # ldb < max(1, k)
    (dict(ldc=2), "ldc"),                # ldc < max(1, m)
    (dict(m=-1), "m"), (dict(n=-1), "n"), (dict(k=-2), "k"),
    (dict(transa=7), "transa"), (dict(transb=cb.CUBLAS_OP_CONJG), "transb"),
])
def test_gemm_invalid_values_enqueue_nothing(handle, args, why):
    # cublas<t>gemm: CUBLAS_STATUS_INVALID_VALUE "if m, n, k < 0 ... or if lda < max(1, m)
    # if transa == CUBLAS_OP_N and lda < max(1, k) otherwise, or if ldb < ..., or ldc < max(1, m)".
    m, n, k = 3, 2, 4
    a, b = upload(np.ones((m, k), np.float32)), upload(np.ones((k, n), np.float32))
    c = upload(np.full((m, n), 9, np.float32))
    call = dict(transa=N, transb=N, m=m, n=n, k=k, lda=m, ldb=k, ldc=m)
    call.update(args)
    status = cb.cublasSgemm(handle, call["transa"], call["transb"], call["m"], call["n"], call["k"],
                            1.0, a, call["lda"], b, call["ldb"], 0.0, c, call["ldc"])
    assert status == (INVALID,)
    assert why in cb.last_status_detail()
    np.testing.assert_array_equal(download(c, (m, n), np.float32), 9)


def test_gemm_bad_pointers_are_invalid_value(handle):
    a = upload(np.ones((4, 4), np.float32))
    small = upload(np.ones(3, np.float32))
    good = upload(np.zeros((4, 4), np.float32))
    for A, why in ((None, "NULL"), (12288, "not in any live"), (a + 2, "aligned"),
                   (small, "past the end")):
        assert cb.cublasSgemm(handle, N, N, 4, 4, 4, 1.0, A, 4, a, 4, 0.0, good, 4) == (INVALID,)
        assert why in cb.last_status_detail()
    freed = upload(np.ones((4, 4), np.float32))
    ok(rt.cudaFree(freed))
    assert cb.cublasSgemm(handle, N, N, 4, 4, 4, 1.0, a, 4, a, 4, 0.0, freed, 4) == (INVALID,)
    # A numpy array in host memory is not device memory.
    host = np.ones(16, np.float32)
    assert cb.cublasSgemm(handle, N, N, 4, 4, 4, 1.0, host, 4, a, 4, 0.0, good, 4) == (INVALID,)


@pytest.mark.parametrize("dtype,fn", [(np.float32, cb.cublasSgemmStridedBatched),
                                      (np.float64, cb.cublasDgemmStridedBatched)])
def test_gemm_strided_batched(handle, dtype, fn):
    rng = np.random.default_rng(1)
    m, n, k, batch = 3, 2, 4, 3
    A = rand(rng, (m * k * batch,), dtype)
    B = rand(rng, (k * n,), dtype)                    # strideB = 0: one B for every batch
    C0 = rand(rng, (m * n * batch,), dtype)
    a, b, c = upload(A), upload(B), upload(C0)
    ok(fn(handle, N, T, m, n, k, 2.0, a, m, m * k, b, n, 0, 1.0, c, m, m * n, batch))
    got = download(c, (m * n * batch,), dtype)
    Bm = B.astype(np.float64).reshape((n, k), order="F").T
    for i in range(batch):
        Ai = A[i * m * k:(i + 1) * m * k].astype(np.float64).reshape((m, k), order="F")
        Ci = C0[i * m * n:(i + 1) * m * n].astype(np.float64).reshape((m, n), order="F")
        np.testing.assert_allclose(got[i * m * n:(i + 1) * m * n].reshape((m, n), order="F"),
                                   2.0 * Ai @ Bm + Ci, **TOL[dtype])
    # strideC == 0 with several batches would write one C from every batch.
    assert fn(handle, N, N, m, n, k, 1.0, a, m, 0, b, k, 0, 0.0, c, m, 0, 2) == (INVALID,)
    assert fn(handle, N, N, m, n, k, 1.0, a, m, -1, b, k, 0, 0.0, c, m, m * n, 2) == (INVALID,)


CT = cb.cublasComputeType_t


@pytest.mark.parametrize("ab,cdt,compute", [
    (np.float32, np.float32, CT.CUBLAS_COMPUTE_32F),
    (np.float32, np.float32, CT.CUBLAS_COMPUTE_32F_FAST_TF32),
    (np.float64, np.float64, CT.CUBLAS_COMPUTE_64F),
    (np.float16, np.float32, CT.CUBLAS_COMPUTE_32F),     # half inputs, float output
    (np.float16, np.float16, CT.CUBLAS_COMPUTE_32F),
    (np.float16, np.float16, CT.CUBLAS_COMPUTE_16F),
])
def test_gemm_ex_type_combinations(handle, ab, cdt, compute):
    types = {np.float16: cb.CUDA_R_16F, np.float32: cb.CUDA_R_32F, np.float64: cb.CUDA_R_64F}
    scalar = {CT.CUBLAS_COMPUTE_16F: np.float16, CT.CUBLAS_COMPUTE_64F: np.float64}.get(compute,
                                                                                       np.float32)
    rng = np.random.default_rng(2)
    A, B, C0 = rand(rng, (4, 3), ab), rand(rng, (3, 5), ab), rand(rng, (4, 5), cdt)
    a, b, c = upload(A), upload(B), upload(C0)
    alpha, beta = np.array([0.5], scalar), np.array([2.0], scalar)   # host pointers of the scale type
    ok(cb.cublasGemmEx(handle, N, N, 4, 5, 3, alpha, a, types[ab], 4, b, types[ab], 3, beta, c,
                       types[cdt], 4, compute, cb.CUBLAS_GEMM_DEFAULT))
    want = 0.5 * A.astype(np.float64) @ B.astype(np.float64) + 2.0 * C0
    np.testing.assert_allclose(download(c, (4, 5), cdt), want, **TOL[cdt])


def test_gemm_ex_rejections(handle):
    a = upload(np.ones((2, 2), np.float32))
    common = (handle, N, N, 2, 2, 2, 1.0, a)
    # A valid compute type that cannot take this data: NOT_SUPPORTED.
    assert cb.cublasGemmEx(*common, cb.CUDA_R_32F, 2, a, cb.CUDA_R_32F, 2, 0.0, a, cb.CUDA_R_32F, 2,
                           CT.CUBLAS_COMPUTE_64F, -1) == (S.CUBLAS_STATUS_NOT_SUPPORTED,)
    assert cb.cublasGemmEx(*common, cb.CUDA_R_32F, 2, a, cb.CUDA_R_16F, 2, 0.0, a, cb.CUDA_R_32F, 2,
                           CT.CUBLAS_COMPUTE_32F, -1) == (S.CUBLAS_STATUS_NOT_SUPPORTED,)
    # Not an enum value at all: INVALID_VALUE.
    assert cb.cublasGemmEx(*common, cb.CUDA_R_32F, 2, a, cb.CUDA_R_32F, 2, 0.0, a, cb.CUDA_R_32F, 2,
                           0, -1) == (INVALID,)
    assert cb.cublasGemmEx(*common, 99, 2, a, cb.CUDA_R_32F, 2, 0.0, a, cb.CUDA_R_32F, 2,
                           CT.CUBLAS_COMPUTE_32F, -1) == (INVALID,)
    assert cb.cublasGemmEx(*common, cb.CUDA_R_32F, 2, a, cb.CUDA_R_32F, 2, 0.0, a, cb.CUDA_R_32F, 2,
                           CT.CUBLAS_COMPUTE_32F, 50) == (INVALID,)


def test_gemm_strided_batched_ex(handle):
    rng = np.random.default_rng(3)
    A, B = rand(rng, (2 * 6,), np.float16), rand(rng, (2 * 6,), np.float16)
    a, b, c = upload(A), upload(B), upload(np.zeros(2 * 4, np.float32))
    ok(cb.cublasGemmStridedBatchedEx(handle, N, N, 2, 2, 3, np.float32(1.0), a, cb.CUDA_R_16F, 2, 6,
                                     b, cb.CUDA_R_16F, 3, 6, np.float32(0.0), c, cb.CUDA_R_32F, 2, 4,
                                     2, CT.CUBLAS_COMPUTE_32F, cb.CUBLAS_GEMM_DEFAULT_TENSOR_OP))
    got = download(c, (8,), np.float32)
    for i in range(2):
        Ai = A[6 * i:6 * i + 6].astype(np.float64).reshape((2, 3), order="F")
        Bi = B[6 * i:6 * i + 6].astype(np.float64).reshape((3, 2), order="F")
        np.testing.assert_allclose(got[4 * i:4 * i + 4].reshape((2, 2), order="F"), Ai @ Bi,
                                   rtol=1e-6, atol=1e-6)


# -- levels 1 and 2 -------------------------------------------------------------------------------------

def blas_vector(flat: np.ndarray, n: int, inc: int) -> np.ndarray:
    """The BLAS n-vector of a flat array (negative increments walk backwards)."""
    v = flat[:(n - 1) * abs(inc) + 1:abs(inc)]
    return v[::-1] if inc < 0 else v


@pytest.mark.parametrize("dtype,fn", [(np.float32, cb.cublasSgemv), (np.float64, cb.cublasDgemv)])
@pytest.mark.parametrize("trans,incx,incy", [(N, 1, 1), (T, 2, -1), (C, -3, 2)])
def test_gemv(handle, dtype, fn, trans, incx, incy):
    rng = np.random.default_rng(4)
    m, n, lda = 4, 3, 6
    A = rand(rng, (lda, n), dtype)
    lx, ly = (n, m) if trans == N else (m, n)
    X, Y0 = rand(rng, ((lx - 1) * abs(incx) + 1,), dtype), rand(rng, ((ly - 1) * abs(incy) + 1,), dtype)
    a, x, y = upload(A), upload(X), upload(Y0)
    ok(fn(handle, trans, m, n, 1.5, a, lda, x, incx, 0.5, y, incy))
    opA = A[:m].astype(np.float64) if trans == N else A[:m].astype(np.float64).T
    got = download(y, Y0.shape, dtype)
    want = Y0.astype(np.float64).copy()
    blas_vector(want, ly, incy)[...] = 1.5 * opA @ blas_vector(X.astype(np.float64), lx, incx) \
        + 0.5 * blas_vector(Y0.astype(np.float64), ly, incy)
    np.testing.assert_allclose(got, want, **TOL[dtype])
    # alpha == 0: y = beta * y, A and x are not read (NULL is fine).
    ok(fn(handle, trans, m, n, 0.0, None, lda, None, incx, 2.0, y, incy))
    blas_vector(want, ly, incy)[...] *= 2
    np.testing.assert_allclose(download(y, Y0.shape, dtype), want, **TOL[dtype])
    # cublas<t>gemv: INVALID_VALUE "if m, n < 0 or incx, incy = 0 ... or lda < max(1, m)".
    assert fn(handle, trans, m, n, 1.0, a, lda, x, 0, 0.0, y, 1) == (INVALID,)
    assert fn(handle, trans, m, n, 1.0, a, m - 1, x, 1, 0.0, y, 1) == (INVALID,)


def test_axpy_and_scal_with_increments(handle):
    X = np.array([1, 2, 3, 4, 5, 6], np.float64)
    Y = np.array([10, 20, 30, 40, 50, 60], np.float64)
    x, y = upload(X), upload(Y)
    ok(cb.cublasDaxpy(handle, 3, 2.0, x, 2, y, -2))
    # x = (1, 3, 5); y walks backwards: y[4], y[2], y[0] get 2*1, 2*3, 2*5.
    np.testing.assert_array_equal(download(y, 6, np.float64), [20, 20, 36, 40, 52, 60])
    ok(cb.cublasDscal(handle, 2, -1.0, y, 3))
    np.testing.assert_array_equal(download(y, 6, np.float64), [-20, 20, 36, -40, 52, 60])
    # "If n <= 0 or incx <= 0 ... returns immediately" (reference BLAS quick return).
    ok(cb.cublasDscal(handle, 6, 0.0, y, 0))
    np.testing.assert_array_equal(download(y, 6, np.float64), [-20, 20, 36, -40, 52, 60])
    assert cb.cublasDaxpy(handle, 3, 1.0, x, 1, y, 0) == (INVALID,)
    xs, ys = upload(X.astype(np.float32)), upload(Y.astype(np.float32))
    ok(cb.cublasSaxpy(handle, 6, 0.5, xs, 1, ys, 1))
    np.testing.assert_array_equal(download(ys, 6, np.float32), Y + 0.5 * X)


def test_reductions_hand_computed(handle):
    # 1-based index of the first maximum |x_i|, as cuBLAS's Isamax/Idamax.
    X = np.array([1.0, -7.0, 7.0, 3.0, -4.0], np.float32)
    x = upload(X)
    res_f, res_i = np.zeros(1, np.float32), np.zeros(1, np.int32)
    ok(cb.cublasIsamax(handle, 5, x, 1, res_i))
    assert res_i[0] == 2
    ok(cb.cublasIsamax(handle, 3, x, 2, res_i))      # (1, 7, -4): index 2
    assert res_i[0] == 2
    ok(cb.cublasSasum(handle, 5, x, 1, res_f))
    assert res_f[0] == 22.0
    ok(cb.cublasSnrm2(handle, 2, upload(np.array([3, 4], np.float32)), 1, res_f))
    assert res_f[0] == 5.0
    ok(cb.cublasSdot(handle, 3, x, 1, x, -1, res_f))  # (1, -7, 7) . (7, -7, 1) = 7 + 49 + 7
    assert res_f[0] == 63.0
    d = upload(np.array([3e200, 4e200], np.float64))
    out = np.zeros(1, np.float64)
    ok(cb.cublasDnrm2(handle, 2, d, 1, out))          # no overflow
    assert out[0] == pytest.approx(5e200, rel=1e-15)
    ok(cb.cublasDasum(handle, 0, d, 1, out))          # n <= 0: result 0
    assert out[0] == 0.0
    ok(cb.cublasIdamax(handle, 2, d, -1, res_i))      # incx <= 0: result 0
    assert res_i[0] == 0
    ok(cb.cublasDdot(handle, 2, d, 1, upload(np.array([1e-200, 1e-200])), 1, out))
    assert out[0] == pytest.approx(7.0)


def test_reduction_result_arguments_are_checked(handle):
    x = upload(np.ones(4, np.float32))
    assert cb.cublasSdot(handle, 4, x, 1, x, 1, np.zeros(1, np.float64)) == (INVALID,)
    assert cb.cublasIsamax(handle, 4, x, 1, np.zeros(1, np.int64)) == (INVALID,)
    assert cb.cublasSasum(handle, 4, x, 1, None) == (INVALID,)
    # Host pointer mode: a device pointer for the result is refused.
    assert cb.cublasSasum(handle, 4, x, 1, upload(np.zeros(1, np.float32))) == (INVALID,)
    # A pinned host allocation of the facade is a valid host pointer.
    pinned = ok(rt.cudaMallocHost(4))
    ok(cb.cublasSasum(handle, 4, x, 1, pinned))
    assert streamq.cuda_facade._memory.typed_view(pinned, np.float32, (1,))[0] == 4.0
    ok(rt.cudaFreeHost(pinned))


@pytest.mark.timeout(30)
def test_host_mode_reduction_blocks_until_written(handle, stream):
    # cuBLAS: with CUBLAS_POINTER_MODE_HOST, a function returning a scalar result blocks the
    # host until the result is computed; with device mode it returns immediately.
    ok(cb.cublasSetStream(handle, stream))
    x = upload(np.arange(1, 5, dtype=np.float32))
    gate = Gate(stream)
    opened = []
    t = threading.Thread(target=lambda: (time.sleep(0.2), opened.append(time.perf_counter()),
                                         gate.release.set()))
    t.start()
    result = np.zeros(1, np.float32)
    ok(cb.cublasSdot(handle, 4, x, 1, x, 1, result))
    returned = time.perf_counter()
    t.join()
    assert opened and returned >= opened[0]
    assert result[0] == 30.0


@pytest.mark.timeout(30)
def test_device_pointer_mode_reads_scalars_when_the_op_runs(handle, stream):
    ok(cb.cublasSetStream(handle, stream))
    ok(cb.cublasSetPointerMode(handle, cb.CUBLAS_POINTER_MODE_DEVICE))
    assert ok(cb.cublasGetPointerMode(handle)) == cb.CUBLAS_POINTER_MODE_DEVICE
    alpha, beta = upload(np.array([1.0], np.float32)), upload(np.array([0.0], np.float32))
    a, b, c = upload(np.eye(2, dtype=np.float32)), upload(np.ones((2, 2), np.float32)), \
        upload(np.zeros((2, 2), np.float32))
    result = upload(np.zeros(1, np.float32))
    gate = Gate(stream)
    ok(cb.cublasSgemm(handle, N, N, 2, 2, 2, alpha, a, 2, b, 2, beta, c, 2))
    ok(cb.cublasSasum(handle, 4, b, 1, result))      # returns at once: the stream is still gated
    # Change alpha in device memory before the gemm runs: it must see the new value.
    streamq.cuda_facade._memory.typed_view(alpha, np.float32, (1,))[0] = 3.0
    gate.release.set()
    ok(rt.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(download(c, (2, 2), np.float32), np.full((2, 2), 3.0))
    assert download(result, (1,), np.float32)[0] == 4.0
    # Device mode wants device pointers, not numbers.
    assert cb.cublasSgemm(handle, N, N, 2, 2, 2, 1.0, a, 2, b, 2, beta, c, 2) == (INVALID,)


@pytest.mark.timeout(30)
def test_host_mode_scalars_are_read_at_call_time(handle, stream):
    ok(cb.cublasSetStream(handle, stream))
    alpha = np.array([2.0], np.float32)
    x, y = upload(np.ones(3, np.float32)), upload(np.zeros(3, np.float32))
    gate = Gate(stream)
    ok(cb.cublasSaxpy(handle, 3, alpha, x, 1, y, 1))
    alpha[0] = 100.0                                  # too late: the value was taken at the call
    gate.release.set()
    np.testing.assert_array_equal(download(y, 3, np.float32), [2, 2, 2])
    # The scalar's type must be the routine's (a float64 array for a float32 routine is a bug).
    assert cb.cublasSaxpy(handle, 3, np.array([1.0]), x, 1, y, 1) == (INVALID,)
    assert cb.cublasSaxpy(handle, 3, upload(np.ones(1, np.float32)), x, 1, y, 1) == (INVALID,)
    pinned = ok(rt.cudaMallocHost(4))
    streamq.cuda_facade._memory.typed_view(pinned, np.float32, (1,))[0] = -1.0
    ok(cb.cublasSaxpy(handle, 3, pinned, x, 1, y, 1))
    np.testing.assert_array_equal(download(y, 3, np.float32), [1, 1, 1])
    ok(rt.cudaFreeHost(pinned))


# -- handles, streams, errors ------------------------------------------------------------------------------

def test_handle_lifecycle_and_settings(handle, stream):
    assert int(ok(cb.cublasGetStream(handle))) == 0
    ok(cb.cublasSetStream(handle, stream))
    assert int(ok(cb.cublasGetStream(handle))) == int(stream)
    ok(cb.cublasSetStream(handle, 0))
    assert ok(cb.cublasGetMathMode(handle)) == cb.CUBLAS_DEFAULT_MATH
    mode = cb.CUBLAS_PEDANTIC_MATH | cb.CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
    ok(cb.cublasSetMathMode(handle, mode))
    assert ok(cb.cublasGetMathMode(handle)) == mode
    assert cb.cublasSetMathMode(handle, 9) == (INVALID,)
    assert cb.cublasSetPointerMode(handle, 2) == (INVALID,)
    ws = ok(rt.cudaMalloc(1024))
    ok(cb.cublasSetWorkspace(handle, ws, 1024))
    assert cb.cublasSetWorkspace(handle, ws, 4096) == (INVALID,)
    assert ok(cb.cublasGetStatusName(INVALID)) == "CUBLAS_STATUS_INVALID_VALUE"
    assert "invalid" in ok(cb.cublasGetStatusString(7))
    ok(cb.cublasDestroy(handle))
    # Every routine: CUBLAS_STATUS_NOT_INITIALIZED "the library was not initialized".
    x = upload(np.ones(2, np.float32))
    assert cb.cublasSscal(handle, 2, 1.0, x, 1) == (S.CUBLAS_STATUS_NOT_INITIALIZED,)
    assert cb.cublasDestroy(handle) == (S.CUBLAS_STATUS_NOT_INITIALIZED,)
    assert cb.cublasSscal(None, 2, 1.0, x, 1) == (S.CUBLAS_STATUS_NOT_INITIALIZED,)
    assert cb.cublasGetStream("handle") == (S.CUBLAS_STATUS_NOT_INITIALIZED, None)


def test_destroyed_streams(handle):
    s = ok(rt.cudaStreamCreate())
    ok(cb.cublasSetStream(handle, s))
    ok(rt.cudaStreamDestroy(s))
    x = upload(np.ones(2, np.float32))
    # The work cannot be launched on a destroyed stream.
    assert cb.cublasSscal(handle, 2, 1.0, x, 1) == (S.CUBLAS_STATUS_EXECUTION_FAILED,)
    assert cb.cublasSetStream(handle, s) == (INVALID,)


@pytest.mark.timeout(30)
def test_destroy_synchronizes_the_device(handle, stream):
    # cublasDestroy "will implicitly call cudaDeviceSynchronize()".
    ok(cb.cublasSetStream(handle, stream))
    x = upload(np.ones(4, np.float64))
    gate = Gate(stream)
    ok(cb.cublasDscal(handle, 4, 5.0, x, 1))
    gate.open_after(0.1)
    ok(cb.cublasDestroy(handle))
    assert rt.cudaStreamQuery(stream) == (rt.cudaError_t.cudaSuccess,)
    np.testing.assert_array_equal(download(x, 4, np.float64), 5.0)


@pytest.mark.timeout(30)
def test_ops_run_in_stream_order_after_other_work(handle, stream):
    ok(cb.cublasSetStream(handle, stream))
    X = np.arange(1, 7, dtype=np.float32)
    x, y = upload(np.zeros(6, np.float32)), upload(np.zeros(6, np.float32))
    gate = Gate(stream)
    pinned = ok(rt.cudaMallocHost(X.nbytes))
    streamq.cuda_facade._memory.typed_view(pinned, np.float32, (6,))[:] = X
    ok(rt.cudaMemcpyAsync(x, pinned, X.nbytes, H2D, stream))    # x = X, after the gate
    ok(cb.cublasSaxpy(handle, 6, 2.0, x, 1, y, 1))              # must see the copy
    ok(rt.cudaMemsetAsync(x, 0, X.nbytes, stream))              # must not overtake the axpy
    ok(cb.cublasSaxpy(handle, 6, 1.0, x, 1, y, 1))
    gate.release.set()
    np.testing.assert_array_equal(download(y, 6, np.float32), 2 * X)
    ok(rt.cudaFreeHost(pinned))


@pytest.mark.timeout(60)
def test_many_host_threads_and_streams():
    rng = np.random.default_rng(5)
    mats = [(rand(rng, (8, 8), np.float64), rand(rng, (8, 8), np.float64)) for _ in range(6)]
    results, errors = {}, []

    def worker(i):
        try:
            h = ok(cb.cublasCreate())
            s = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
            ok(cb.cublasSetStream(h, s))
            A, B = mats[i]
            a, b, c = upload(A), upload(B), upload(np.zeros((8, 8)))
            for _ in range(20):       # C = A@B + C, 20 times, in stream order
                ok(cb.cublasDgemm(h, N, N, 8, 8, 8, 1.0, a, 8, b, 8, 1.0, c, 8))
            ok(rt.cudaStreamSynchronize(s))
            out = np.empty(64)
            ok(rt.cudaMemcpy(out, c, 512, D2H))
            results[i] = out.reshape((8, 8), order="F")
            ok(cb.cublasDestroy(h))
            ok(rt.cudaStreamDestroy(s))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not errors, errors
    for i, (A, B) in enumerate(mats):
        np.testing.assert_allclose(results[i], 20 * (A @ B), rtol=1e-12, atol=1e-12)


@pytest.mark.timeout(30)
def test_per_thread_stream_handle_follows_the_calling_thread(handle):
    # cudaStreamPerThread is "an implicit stream local to both the thread and the calling
    # Context": one handle set to it sends each host thread's work to that thread's stream.
    ok(cb.cublasSetStream(handle, rt.cudaStreamPerThread))
    x = upload(np.ones(4, np.float32))
    gates, gated, done = [], threading.Event(), []

    def other_thread():
        gates.append(Gate(rt.cudaStreamPerThread))    # holds only this thread's stream
        gated.set()
        result = np.zeros(1, np.float32)
        ok(cb.cublasSasum(handle, 4, x, 1, result))   # blocks behind its own gate
        done.append(float(result[0]))

    t = threading.Thread(target=other_thread)
    t.start()
    assert gated.wait(WAIT)
    result = np.zeros(1, np.float32)
    ok(cb.cublasSasum(handle, 4, x, 1, result))       # this thread's stream is free
    assert result[0] == 4.0 and not done
    gates[0].release.set()
    t.join(WAIT)
    assert done == [4.0]


def test_sticky_device_error_fails_the_launch(handle):
    x = upload(np.ones(2, np.float32))

    def boom(_):
        raise RuntimeError("kernel fault")
    ok(rt.cudaLaunchHostFunc(0, boom, None))
    rt.cudaDeviceSynchronize()
    # The device failed: work cannot be launched any more (cuBLAS: "the function failed
    # to launch on the GPU").
    assert cb.cublasSscal(handle, 2, 1.0, x, 1) == (S.CUBLAS_STATUS_EXECUTION_FAILED,)
    assert "kernel fault" in cb.last_status_detail()


def test_queue_log_records_the_kernel_with_its_buffers(handle, tmp_path):
    a, b, c = (upload(np.ones((3, 3), np.float32)) for _ in range(3))
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ok(cb.cublasSgemm(handle, N, N, 3, 3, 3, 1.0, a, 3, b, 3, 0.0, c, 3))
        ok(rt.cudaDeviceSynchronize())
    finally:
        streamq.trace.disable()
    tasks = [r for r in map(json.loads, path.read_text().splitlines())
             if r.get("type") == "task" and r.get("name") == "cublas.gemm"]
    assert len(tasks) == 1 and tasks[0]["kind"] == "kernel"
    assert {r["buffer"] for r in tasks[0]["reads"]} == {a, b}
    (w,) = tasks[0]["writes"]
    assert (w["buffer"], w["offset"], w["bytes"], w["dtype"]) == (c, 0, 36, "<f4")


def test_capture_records_gemm_into_a_graph(handle, stream):
    ok(cb.cublasSetStream(handle, stream))
    a, b = upload(np.eye(2, dtype=np.float64)), upload(np.array([[1.0, 2.0], [3.0, 4.0]]))
    c = upload(np.zeros((2, 2)))
    ok(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
    ok(cb.cublasDgemm(handle, N, N, 2, 2, 2, 1.0, a, 2, b, 2, 1.0, c, 2))
    # A host-mode reduction must block for its result, which a capture cannot do.
    out = np.zeros(1)
    assert cb.cublasDasum(handle, 4, b, 1, out) == (S.CUBLAS_STATUS_NOT_SUPPORTED,)
    graph = ok(rt.cudaStreamEndCapture(stream))
    np.testing.assert_array_equal(download(c, (2, 2), np.float64), 0)   # captured, not run
    exe = ok(rt.cudaGraphInstantiate(graph, 0))
    for _ in range(2):
        ok(rt.cudaGraphLaunch(exe, stream))
    ok(rt.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(download(c, (2, 2), np.float64), 2 * np.array([[1, 2], [3, 4]]))


@pytest.mark.timeout(30)
def test_blocking_call_from_a_host_function_is_refused(handle, stream):
    # CUDA: a host function "must not make any CUDA API calls"; a blocking reduction made
    # from one would wait for its own stream. The facade refuses it instead of hanging.
    ok(cb.cublasSetStream(handle, stream))
    x = upload(np.ones(4, np.float32))
    seen = []

    def host_fn(_):
        seen.append(cb.cublasSasum(handle, 4, x, 1, np.zeros(1, np.float32)))
        seen.append(cb.cublasDestroy(handle))
    ok(rt.cudaLaunchHostFunc(stream, host_fn, None))
    ok(rt.cudaStreamSynchronize(stream))
    assert seen == [(S.CUBLAS_STATUS_NOT_SUPPORTED,)] * 2
    assert not handle.destroyed
