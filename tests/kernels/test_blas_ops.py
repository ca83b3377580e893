"""Tests of the cuBLAS kernels (streamq/kernels/blas_ops.py).

Every provider is checked against the float64 ``reference``; the reference is
checked against naive loops that index the flat column-major arrays directly
(IDX2C = i + j * ld), written independently of the numpy views the kernels use.
"""

import numpy as np
import pytest

from streamq import kernels
import streamq.kernels.blas_ops  # noqa: F401  (registers the cublas.* ops explicitly)

try:  # load every builtin kernel module; one of them failing must not hide ours
    kernels.ops()
except ImportError:
    pass

FLOATS = [np.float32, np.float64]
# float16 inputs and outputs are rounded to 11 significant bits (eps 9.8e-4), so the
# float16 tolerance is looser than the float32 one by the ratio of the epsilons.
RTOL = {np.float16: 5e-3, np.float32: 1e-4, np.float64: 1e-12}


def P(op):
    return kernels.providers(op)


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(r, n, dtype):
    return r.standard_normal(n).astype(dtype)


def assert_close(actual, expected, dtype, scale=1.0):
    """Relative tolerance per dtype, plus an absolute floor relative to ``scale``
    (the magnitude of the terms summed), so cancellation does not fail the test."""
    rtol = RTOL[np.dtype(dtype).type]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------
# naive oracles over flat arrays
# ----------------------------------------------------------------------------

def naive_gemm(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """Return a float64 copy of C after C = alpha op(A) op(B) + beta C (BLAS rules)."""
    out = C.astype(np.float64)
    for j in range(n):
        for i in range(m):
            s = 0.0
            if alpha != 0:
                for p in range(k):
                    a = A[p + i * lda] if ta in "TC" else A[i + p * lda]
                    b = B[j + p * ldb] if tb in "TC" else B[p + j * ldb]
                    s += float(a) * float(b)
            out[i + j * ldc] = alpha * s + (beta * float(C[i + j * ldc]) if beta != 0 else 0.0)
    return out


def blas_index(i, n, inc):
    """Flat index of element i of an n-vector with increment inc (reference BLAS)."""
    return i * inc if inc >= 0 else (n - 1 - i) * (-inc)


def gemm_operands(r, ta, tb, m, n, k, dtype, pad=(2, 1, 3)):
    lda = (m if ta == "N" else k) + pad[0]
    ldb = (k if tb == "N" else n) + pad[1]
    ldc = m + pad[2]
    A = randn(r, lda * (k if ta == "N" else m), dtype)
    B = randn(r, ldb * (n if tb == "N" else k), dtype)
    C = randn(r, ldc * n, dtype)
    return A, lda, B, ldb, C, ldc


def padding_mask(m, n, ldc, size):
    """True where a flat C element lies outside the m x n submatrix."""
    mask = np.ones(size, bool)
    for j in range(n):
        mask[j * ldc:j * ldc + m] = False
    return mask


# ----------------------------------------------------------------------------
# gemm
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("ta", ["N", "T"])
@pytest.mark.parametrize("tb", ["N", "T"])
def test_gemm_reference_matches_naive_loop(ta, tb):
    r = rng(1)
    m, n, k = 4, 3, 5
    A, lda, B, ldb, C, ldc = gemm_operands(r, ta, tb, m, n, k, np.float64)
    expected = naive_gemm(ta, tb, m, n, k, 1.5, A, lda, B, ldb, -0.5, C, ldc)
    kernels.get("cublas.gemm", "reference")(ta, tb, m, n, k, 1.5, A, lda, B, ldb, -0.5, C, ldc)
    np.testing.assert_allclose(C, expected, rtol=1e-13, atol=1e-13)


def test_gemm_reference_hand_computed():
    # A = [[1, 2], [3, 4]] and B = [[5, 6], [7, 8]], column-major: A @ B = [[19, 22], [43, 50]]
    A = np.array([1, 3, 2, 4], np.float64)
    B = np.array([5, 7, 6, 8], np.float64)
    C = np.full(4, 7.0)
    kernels.get("cublas.gemm", "reference")("N", "N", 2, 2, 2, 1.0, A, 2, B, 2, 0.0, C, 2)
    np.testing.assert_array_equal(C, [19, 43, 22, 50])


@pytest.mark.parametrize("provider", P("cublas.gemm"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("ta,tb", [("N", "N"), ("T", "N"), ("N", "T"), ("C", "T")])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.7, 1.0), (-1.3, 0.25)])
def test_gemm_matches_reference(provider, dtype, ta, tb, alpha, beta):
    r = rng(2)
    m, n, k = 7, 5, 9  # odd sizes
    A, lda, B, ldb, C, ldc = gemm_operands(r, ta, tb, m, n, k, dtype)
    expected = C.copy()
    kernels.get("cublas.gemm", "reference")(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta,
                                            expected, ldc)
    before = C.copy()
    kernels.get("cublas.gemm", provider)(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    assert_close(C, expected, dtype, scale=abs(alpha) * k + abs(beta))
    mask = padding_mask(m, n, ldc, C.size)
    np.testing.assert_array_equal(C[mask], before[mask])  # ldc padding untouched


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_accepts_int_ops_and_lowercase(provider):
    r = rng(3)
    m, n, k = 3, 4, 2
    A, lda, B, ldb, C, ldc = gemm_operands(r, "T", "T", m, n, k, np.float64)
    C1, C2 = C.copy(), C.copy()
    gemm = kernels.get("cublas.gemm", provider)
    gemm("T", "C", m, n, k, 1.0, A, lda, B, ldb, 0.5, C1, ldc)
    gemm(1, 2, m, n, k, 1.0, A, lda, B, ldb, 0.5, C2, ldc)
    gemm("t", "c", m, n, k, 1.0, A, lda, B, ldb, 0.5, C, ldc)
    np.testing.assert_array_equal(C1, C2)
    np.testing.assert_array_equal(C1, C)


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_beta_zero_does_not_read_c(provider):
    r = rng(4)
    m, n, k = 6, 3, 4
    A, lda, B, ldb, C, ldc = gemm_operands(r, "N", "N", m, n, k, np.float32)
    C[:] = np.nan
    kernels.get("cublas.gemm", provider)("N", "N", m, n, k, 2.0, A, lda, B, ldb, 0.0, C, ldc)
    mask = padding_mask(m, n, ldc, C.size)
    assert np.isfinite(C[~mask]).all()
    assert np.isnan(C[mask]).all()  # padding still untouched


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_alpha_zero_or_k_zero_scales_c(provider):
    r = rng(5)
    m, n = 4, 3
    gemm = kernels.get("cublas.gemm", provider)
    A, lda, B, ldb, C, ldc = gemm_operands(r, "N", "N", m, n, 2, np.float64)
    A[:], B[:] = np.nan, np.nan  # alpha == 0: A and B are not read
    expected = C * 3.0
    gemm("N", "N", m, n, 2, 0.0, A, lda, B, ldb, 3.0, C, ldc)
    mask = padding_mask(m, n, ldc, C.size)
    np.testing.assert_array_equal(C[~mask], expected[~mask])
    # k == 0: C = beta * C; with beta == 0 NaN in C is replaced by zeros
    C2 = np.full(ldc * n, np.nan)
    gemm("N", "N", m, n, 0, 1.0, np.empty(0), m, np.empty(0), 1, 0.0, C2, ldc)
    assert (C2[~mask] == 0).all() and np.isnan(C2[mask]).all()


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_empty_result_is_noop(provider):
    C = np.full(6, np.nan)
    gemm = kernels.get("cublas.gemm", provider)
    gemm("N", "N", 0, 3, 4, 1.0, np.empty(0), 1, np.ones(12), 4, 0.0, C, 1)
    gemm("N", "N", 2, 0, 4, 1.0, np.ones(8), 2, np.empty(0), 4, 0.0, C, 2)
    assert np.isnan(C).all()


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_nan_inf_inputs_propagate_like_reference(provider):
    r = rng(6)
    m, n, k = 5, 4, 3
    A, lda, B, ldb, C, ldc = gemm_operands(r, "N", "N", m, n, k, np.float64)
    A[0], A[lda + 1] = np.inf, np.nan  # rows 0 and 1 of op(A)
    expected = C.copy()
    kernels.get("cublas.gemm", "reference")("N", "N", m, n, k, 1.0, A, lda, B, ldb, 1.0,
                                            expected, ldc)
    kernels.get("cublas.gemm", provider)("N", "N", m, n, k, 1.0, A, lda, B, ldb, 1.0, C, ldc)
    np.testing.assert_allclose(C, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(C[1]) and not np.isfinite(C[0])


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_non_contiguous_flat_arrays(provider):
    r = rng(7)
    m, n, k = 3, 4, 5
    A, lda, B, ldb, C, ldc = gemm_operands(r, "N", "T", m, n, k, np.float64)
    # the same data seen through stride-2 flat views
    A2, B2, C2 = (np.repeat(x, 2)[::2] for x in (A, B, C))
    assert not A2.flags.c_contiguous or A2.strides[0] != 8
    expected = C.copy()
    kernels.get("cublas.gemm", "reference")("N", "T", m, n, k, 1.0, A, lda, B, ldb, 0.5,
                                            expected, ldc)
    kernels.get("cublas.gemm", provider)("N", "T", m, n, k, 1.0, A2, lda, B2, ldb, 0.5, C2, ldc)
    np.testing.assert_allclose(C2, expected, rtol=1e-12)


@pytest.mark.parametrize("provider", P("cublas.gemm"))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_operands_in_one_device_buffer(provider, dtype):
    """A, B, C as flat views into one allocation (as device memory is): only C's m x n changes."""
    r = rng(17)
    m, n, k, lda, ldb, ldc = 6, 5, 7, 9, 8, 10
    pool = randn(r, 600, dtype)
    A, B, C = pool[0:], pool[100:], pool[200:]  # each view runs to the end of the pool
    want = naive_gemm("T", "N", m, n, k, 1.5, A.copy(), lda, B.copy(), ldb, -0.5, C.copy(), ldc)
    before = pool.copy()
    kernels.get("cublas.gemm", provider)("T", "N", m, n, k, 1.5, A, lda, B, ldb, -0.5, C, ldc)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    mask = padding_mask(m, n, ldc, C.size)
    np.testing.assert_allclose(C[~mask], want[~mask], rtol=rtol, atol=rtol)
    changed = np.flatnonzero(pool != before)
    assert set(changed) <= set(200 + np.flatnonzero(~mask))


def test_gemm_blas_blends_without_temporaries():
    """alpha/beta are BLAS's own: no result-sized temporary is allocated (cblas route)."""
    import tracemalloc

    from streamq.kernels import _conv_gemm
    if not _conv_gemm.have_cblas():
        pytest.skip("no direct cblas in this numpy build")
    r = rng(18)
    m = n = k = 300
    A, B, C = (randn(r, 300 * 300, np.float32) for _ in range(3))
    want = C.astype(np.float64) * 0.25 + 2.0 * (
        B.astype(np.float64).reshape(300, 300) @ A.astype(np.float64).reshape(300, 300)).reshape(-1)
    gemm = kernels.get("cublas.gemm", "blas")
    tracemalloc.start()
    try:
        gemm("N", "N", m, n, k, 2.0, A, m, B, k, 0.25, C, m)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < C.nbytes // 4
    np.testing.assert_allclose(C, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_larger_square(provider):
    r = rng(8)
    m = n = k = 67
    A, lda, B, ldb, C, ldc = gemm_operands(r, "N", "N", m, n, k, np.float32, pad=(0, 0, 0))
    expected = C.copy()
    kernels.get("cublas.gemm", "reference")("N", "N", m, n, k, 1.0, A, lda, B, ldb, 0.0,
                                            expected, ldc)
    kernels.get("cublas.gemm", provider)("N", "N", m, n, k, 1.0, A, lda, B, ldb, 0.0, C, ldc)
    assert_close(C, expected, np.float32, scale=k)


GEMM_OK = dict(transa="N", transb="N", m=2, n=2, k=2, alpha=1.0, A=np.ones(4), lda=2,
               B=np.ones(4), ldb=2, beta=0.0, C=np.ones(4), ldc=2)


@pytest.mark.parametrize("provider", P("cublas.gemm"))
@pytest.mark.parametrize("change,exc,name", [
    (dict(m=-1), ValueError, "m"),
    (dict(n=-1), ValueError, "n"),
    (dict(k=-2), ValueError, "k"),
    (dict(transa="X"), ValueError, "transa"),
    (dict(transb=3), ValueError, "transb"),
    (dict(lda=1), ValueError, "lda"),
    (dict(transb="T", ldb=1), ValueError, "ldb"),
    (dict(ldc=1), ValueError, "ldc"),
    (dict(A=np.ones(3)), ValueError, "A"),
    (dict(B=np.ones(3)), ValueError, "B"),
    (dict(C=np.ones(3)), ValueError, "C"),
    (dict(B=np.ones(4, np.float32)), TypeError, "B"),
    (dict(A=np.ones(4, np.int64)), TypeError, "A"),
    (dict(A=[1.0, 1.0, 1.0, 1.0]), TypeError, "A"),
    (dict(C=np.ones((2, 2))), ValueError, "C"),
    (dict(m=2.0), TypeError, "m"),
    (dict(alpha="1"), TypeError, "alpha"),
])
def test_gemm_rejects_bad_arguments(provider, change, exc, name):
    args = {**GEMM_OK, **change}
    with pytest.raises(exc, match=rf"\b{name}\b"):
        kernels.get("cublas.gemm", provider)(**args)


@pytest.mark.parametrize("provider", P("cublas.gemm"))
def test_gemm_rejects_read_only_c(provider):
    C = np.ones(4)
    C.flags.writeable = False
    with pytest.raises(ValueError, match=r"\bC\b"):
        kernels.get("cublas.gemm", provider)(**{**GEMM_OK, "C": C})


# ----------------------------------------------------------------------------
# gemm_strided_batched
# ----------------------------------------------------------------------------

def batched_operands(r, m, n, k, batch, dtype, stride_a_zero=False):
    lda, ldb, ldc = m + 1, k, m + 2
    sa = 0 if stride_a_zero else lda * k + 3
    sb, sc = ldb * n + 1, ldc * n + 4
    A = randn(r, sa * (batch - 1) + lda * k, dtype)
    B = randn(r, sb * (batch - 1) + ldb * n, dtype)
    C = randn(r, sc * (batch - 1) + ldc * n, dtype)
    return A, lda, sa, B, ldb, sb, C, ldc, sc


def test_gemm_strided_batched_reference_matches_per_batch_naive():
    r = rng(10)
    m, n, k, batch = 3, 2, 4, 3
    A, lda, sa, B, ldb, sb, C, ldc, sc = batched_operands(r, m, n, k, batch, np.float64)
    expected = C.astype(np.float64)
    for i in range(batch):
        part = naive_gemm("N", "N", m, n, k, 0.5, A[i * sa:], lda, B[i * sb:], ldb, 2.0,
                          C[i * sc:], ldc)
        expected[i * sc:i * sc + ldc * n] = part[:ldc * n]
    kernels.get("cublas.gemm_strided_batched", "reference")(
        "N", "N", m, n, k, 0.5, A, lda, sa, B, ldb, sb, 2.0, C, ldc, sc, batch)
    np.testing.assert_allclose(C, expected, rtol=1e-13)


@pytest.mark.parametrize("provider", P("cublas.gemm_strided_batched"))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("batch,stride_a_zero", [(1, False), (4, False), (3, True)])
@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_gemm_strided_batched_matches_reference(provider, dtype, batch, stride_a_zero, beta):
    r = rng(11)
    m, n, k = 5, 3, 7
    A, lda, sa, B, ldb, sb, C, ldc, sc = batched_operands(r, m, n, k, batch, dtype, stride_a_zero)
    expected = C.copy()
    before = C.copy()
    if beta == 0:
        C[:] = np.nan  # never read...
        expected[:] = np.nan
    kernels.get("cublas.gemm_strided_batched", "reference")(
        "N", "N", m, n, k, 1.25, A, lda, sa, B, ldb, sb, beta, expected, ldc, sc, batch)
    kernels.get("cublas.gemm_strided_batched", provider)(
        "N", "N", m, n, k, 1.25, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch)
    written = np.zeros(C.size, bool)
    for i in range(batch):
        written[i * sc:i * sc + ldc * n] |= ~padding_mask(m, n, ldc, ldc * n)
    assert_close(C[written], expected[written], dtype, scale=1.25 * k + 1)
    untouched = C[~written] if beta == 0 else C[~written] - before[~written]
    assert (np.isnan(untouched) if beta == 0 else untouched == 0).all()  # ...and gaps untouched


@pytest.mark.parametrize("provider", P("cublas.gemm_strided_batched"))
def test_gemm_strided_batched_transposed(provider):
    r = rng(12)
    m, n, k, batch = 4, 3, 2, 2
    A = randn(r, 2 * k * m, np.float32)
    B = randn(r, 2 * n * k, np.float32)
    C = np.zeros(2 * m * n, np.float32)
    kernels.get("cublas.gemm_strided_batched", provider)(
        "T", "T", m, n, k, 1.0, A, k, k * m, B, n, n * k, 0.0, C, m, m * n, batch)
    for i in range(batch):
        a = A[i * k * m:(i + 1) * k * m].reshape(m, k)  # column-major k x m is row-major m x k
        b = B[i * n * k:(i + 1) * n * k].reshape(k, n)
        c = C[i * m * n:(i + 1) * m * n].reshape(n, m).T
        assert_close(c, a.astype(np.float64) @ b.astype(np.float64), np.float32, scale=k)


@pytest.mark.parametrize("provider", P("cublas.gemm_strided_batched"))
@pytest.mark.parametrize("change,name", [
    (dict(batchCount=-1), "batchCount"),
    (dict(strideA=-4), "strideA"),
    (dict(strideC=6), "C"),
    (dict(strideC=0), "strideC"),
    (dict(strideB=5), "B"),
    (dict(ldb=1), "ldb"),
])
def test_gemm_strided_batched_rejects_bad_arguments(provider, change, name):
    args = dict(transa="N", transb="N", m=2, n=2, k=2, alpha=1.0, A=np.ones(8), lda=2, strideA=4,
                B=np.ones(8), ldb=2, strideB=4, beta=0.0, C=np.ones(8), ldc=2, strideC=4,
                batchCount=2)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        kernels.get("cublas.gemm_strided_batched", provider)(**{**args, **change})


# ----------------------------------------------------------------------------
# gemv
# ----------------------------------------------------------------------------

def naive_gemv(trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
    out = y.astype(np.float64)
    len_x, len_y = (m, n) if trans != "N" else (n, m)
    for i in range(len_y):
        s = 0.0
        for j in range(len_x):
            a = A[j + i * lda] if trans != "N" else A[i + j * lda]
            s += float(a) * float(x[blas_index(j, len_x, incx)])
        yi = blas_index(i, len_y, incy)
        out[yi] = alpha * s + (beta * float(y[yi]) if beta != 0 else 0.0)
    return out


def gemv_operands(r, trans, m, n, incx, incy, dtype):
    lda = m + 2
    len_x, len_y = (m, n) if trans != "N" else (n, m)
    A = randn(r, lda * n, dtype)
    x = randn(r, (len_x - 1) * abs(incx) + 1, dtype)
    y = randn(r, (len_y - 1) * abs(incy) + 1, dtype)
    return A, lda, x, y


@pytest.mark.parametrize("trans", ["N", "T"])
@pytest.mark.parametrize("incx,incy", [(1, 1), (2, -3), (-1, 2)])
def test_gemv_reference_matches_naive_loop(trans, incx, incy):
    r = rng(20)
    m, n = 4, 3
    A, lda, x, y = gemv_operands(r, trans, m, n, incx, incy, np.float64)
    expected = naive_gemv(trans, m, n, 0.75, A, lda, x, incx, 1.5, y, incy)
    kernels.get("cublas.gemv", "reference")(trans, m, n, 0.75, A, lda, x, incx, 1.5, y, incy)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("provider", P("cublas.gemv"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("trans", ["N", "T"])
@pytest.mark.parametrize("incx,incy", [(1, 1), (3, -2)])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemv_matches_reference(provider, dtype, trans, incx, incy, beta):
    r = rng(21)
    m, n = 9, 6
    A, lda, x, y = gemv_operands(r, trans, m, n, incx, incy, dtype)
    if beta == 0:
        y[:] = np.nan  # never read; elements between the increments stay NaN
    expected = y.copy()
    kernels.get("cublas.gemv", "reference")(trans, m, n, -1.5, A, lda, x, incx, beta, expected,
                                            incy)
    kernels.get("cublas.gemv", provider)(trans, m, n, -1.5, A, lda, x, incx, beta, y, incy)
    assert_close(y, expected, dtype, scale=1.5 * max(m, n) + 1)
    if beta == 0 and abs(incy) > 1:
        assert np.isnan(y[1]) and np.isfinite(y[0])


@pytest.mark.parametrize("provider", P("cublas.gemv"))
def test_gemv_quick_returns(provider):
    gemv = kernels.get("cublas.gemv", provider)
    y = np.array([1.0, np.nan, 3.0])
    gemv("N", 3, 0, 1.0, np.ones(3), 3, np.ones(1), 1, 0.0, y, 1)  # n == 0: y untouched
    np.testing.assert_array_equal(y, [1.0, np.nan, 3.0])
    A = np.full(6, np.nan)
    gemv("N", 3, 2, 0.0, A, 3, np.full(2, np.nan), 1, 2.0, y, 1)  # alpha == 0: y = beta y
    np.testing.assert_array_equal(y, [2.0, np.nan, 6.0])
    gemv("N", 3, 2, 0.0, A, 3, np.full(2, np.nan), 1, 0.0, y, 1)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("provider", P("cublas.gemv"))
@pytest.mark.parametrize("change,exc,name", [
    (dict(m=-1), ValueError, "m"),
    (dict(trans="Q"), ValueError, "trans"),
    (dict(lda=1), ValueError, "lda"),
    (dict(incx=0), ValueError, "incx"),
    (dict(incy=0), ValueError, "incy"),
    (dict(x=np.ones(1)), ValueError, "x"),
    (dict(y=np.ones(1)), ValueError, "y"),
    (dict(A=np.ones(3)), ValueError, "A"),
    (dict(x=np.ones(2, np.float32)), TypeError, "x"),
])
def test_gemv_rejects_bad_arguments(provider, change, exc, name):
    args = dict(trans="N", m=2, n=2, alpha=1.0, A=np.ones(4), lda=2, x=np.ones(2), incx=1,
                beta=0.0, y=np.ones(2), incy=1)
    with pytest.raises(exc, match=rf"\b{name}\b"):
        kernels.get("cublas.gemv", provider)(**{**args, **change})


# ----------------------------------------------------------------------------
# level 1
# ----------------------------------------------------------------------------

INCS = [(1, 1), (2, 3), (-2, 1), (1, -1), (0, 2)]


def vec(r, n, inc, dtype):
    return randn(r, (n - 1) * abs(inc) + 1, dtype)


@pytest.mark.parametrize("incx,incy", INCS)
def test_axpy_dot_reference_match_naive_loops(incx, incy):
    r = rng(30)
    n = 5
    x, y = vec(r, n, incx, np.float64), vec(r, n, incy, np.float64)
    expected_dot = sum(x[blas_index(i, n, incx)] * y[blas_index(i, n, incy)] for i in range(n))
    assert kernels.get("cublas.dot", "reference")(n, x, incx, y, incy) == pytest.approx(
        expected_dot, rel=1e-14)
    expected = y.copy()
    for i in range(n):
        expected[blas_index(i, n, incy)] += 2.5 * x[blas_index(i, n, incx)]
    kernels.get("cublas.axpy", "reference")(n, 2.5, x, incx, y, incy)
    np.testing.assert_allclose(y, expected, rtol=1e-14)


@pytest.mark.parametrize("provider", P("cublas.axpy"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("incx,incy", INCS)
def test_axpy_matches_reference(provider, dtype, incx, incy):
    r = rng(31)
    n = 37
    x, y = vec(r, n, incx, dtype), vec(r, n, incy, dtype)
    x[min(3, x.size - 1)] = np.inf
    expected = y.copy()
    kernels.get("cublas.axpy", "reference")(n, -0.75, x, incx, expected, incy)
    kernels.get("cublas.axpy", provider)(n, -0.75, x, incx, y, incy)
    np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64),
                               rtol=RTOL[dtype], atol=RTOL[dtype], equal_nan=True)


@pytest.mark.parametrize("provider", P("cublas.axpy"))
def test_axpy_quick_returns_and_errors(provider):
    axpy = kernels.get("cublas.axpy", provider)
    y = np.array([1.0, 2.0])
    axpy(0, 1.0, np.ones(2), 1, y, 1)
    axpy(2, 0.0, np.full(2, np.nan), 1, y, 1)  # alpha == 0: x not read
    np.testing.assert_array_equal(y, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\bincy\b"):
        axpy(2, 1.0, np.ones(2), 1, y, 0)
    with pytest.raises(ValueError, match=r"\bx\b"):
        axpy(2, 1.0, np.ones(2), 2, y, 1)
    with pytest.raises(TypeError, match=r"\bx\b"):
        axpy(2, 1.0, np.ones(2, np.float32), 1, y, 1)


@pytest.mark.parametrize("provider", P("cublas.dot"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("incx,incy", INCS)
def test_dot_matches_reference(provider, dtype, incx, incy):
    r = rng(32)
    n = 101
    x, y = vec(r, n, incx, dtype), vec(r, n, incy, dtype)
    ref = kernels.get("cublas.dot", "reference")(n, x, incx, y, incy)
    got = kernels.get("cublas.dot", provider)(n, x, incx, y, incy)
    assert isinstance(got, float)
    scale = float(np.abs(x).max() * np.abs(y).max() * n)
    assert got == pytest.approx(ref, rel=RTOL[dtype], abs=RTOL[dtype] * scale)


@pytest.mark.parametrize("provider", P("cublas.dot"))
def test_dot_empty_and_nan(provider):
    dot = kernels.get("cublas.dot", provider)
    assert dot(0, np.ones(1), 1, np.ones(1), 1) == 0.0
    assert np.isnan(dot(2, np.array([1.0, np.nan]), 1, np.ones(2), 1))
    with pytest.raises(ValueError, match=r"\by\b"):
        dot(3, np.ones(3), 1, np.ones(2), 1)


@pytest.mark.parametrize("provider", P("cublas.scal"))
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
def test_scal_matches_reference_and_naive(provider, dtype):
    r = rng(33)
    n, incx = 11, 3
    x = vec(r, n, incx, dtype)
    naive = x.astype(np.float64)
    naive[::incx] *= 1.5
    ref = x.copy()
    kernels.get("cublas.scal", "reference")(n, 1.5, ref, incx)
    kernels.get("cublas.scal", provider)(n, 1.5, x, incx)
    np.testing.assert_allclose(ref.astype(np.float64), naive, rtol=RTOL[dtype])
    np.testing.assert_allclose(x.astype(np.float64), ref.astype(np.float64), rtol=RTOL[dtype])


@pytest.mark.parametrize("provider", P("cublas.scal"))
def test_scal_quick_returns(provider):
    x = np.array([1.0, 2.0])
    kernels.get("cublas.scal", provider)(2, 3.0, x, -1)  # incx <= 0: no-op (reference BLAS)
    kernels.get("cublas.scal", provider)(0, 3.0, x, 1)
    np.testing.assert_array_equal(x, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\bx\b"):
        kernels.get("cublas.scal", provider)(3, 3.0, x, 1)


def test_nrm2_asum_amax_reference_match_hand_values():
    x = np.array([3.0, -9.0, 4.0, 9.0, 0.0])
    assert kernels.get("cublas.nrm2", "reference")(5, x, 1) == pytest.approx(np.sqrt(187.0))
    assert kernels.get("cublas.nrm2", "reference")(3, x, 2) == 5.0  # [3, 4, 0]
    assert kernels.get("cublas.asum", "reference")(5, x, 1) == 25.0
    assert kernels.get("cublas.amax", "reference")(5, x, 1) == 2  # first of the tied |9|s
    assert kernels.get("cublas.amax", "reference")(3, x, 2) == 2  # 1-based within [3, 4, 0]


@pytest.mark.parametrize("op", ["cublas.nrm2", "cublas.asum", "cublas.amax"])
@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
@pytest.mark.parametrize("incx", [1, 2])
def test_reductions_match_reference(op, dtype, incx):
    r = rng(34)
    n = 97
    x = vec(r, n, incx, dtype)
    naive = {"cublas.nrm2": np.sqrt(sum(float(v) ** 2 for v in x[::incx])),
             "cublas.asum": sum(abs(float(v)) for v in x[::incx]),
             "cublas.amax": 1 + max(range(n), key=lambda i: (abs(float(x[i * incx])), -i))}[op]
    ref = kernels.get(op, "reference")(n, x, incx)
    assert ref == pytest.approx(naive, rel=RTOL[dtype])
    for provider in P(op):
        got = kernels.get(op, provider)(n, x, incx)
        assert type(got) is type(ref)
        assert got == pytest.approx(ref, rel=RTOL[dtype])


@pytest.mark.parametrize("op", ["cublas.nrm2", "cublas.asum", "cublas.amax"])
def test_reductions_quick_returns_and_errors(op):
    for provider in P(op):
        f = kernels.get(op, provider)
        assert f(0, np.ones(3), 1) == 0
        assert f(3, np.ones(3), 0) == 0
        assert f(3, np.ones(3), -1) == 0
        with pytest.raises(ValueError, match=r"\bx\b"):
            f(3, np.ones(3), 2)
        with pytest.raises(TypeError, match=r"\bincx\b"):
            f(3, np.ones(3), 1.0)


@pytest.mark.parametrize("provider", P("cublas.nrm2"))
def test_nrm2_no_overflow_underflow_and_special_values(provider):
    nrm2 = kernels.get("cublas.nrm2", provider)
    assert nrm2(2, np.array([3e200, 4e200]), 1) == pytest.approx(5e200, rel=1e-14)
    assert nrm2(2, np.array([3e-200, 4e-200]), 1) == pytest.approx(5e-200, rel=1e-14)
    assert nrm2(2, np.array([3e30, 4e30], np.float32), 1) == pytest.approx(5e30, rel=1e-6)
    assert nrm2(2, np.array([np.inf, 1.0]), 1) == np.inf
    assert np.isnan(nrm2(3, np.array([np.inf, np.nan, 1.0]), 1))


@pytest.mark.parametrize("provider", P("cublas.amax"))
def test_amax_nan_is_largest_and_first_wins(provider):
    amax = kernels.get("cublas.amax", provider)
    assert amax(4, np.array([1.0, np.nan, 5.0, np.nan]), 1) == 2
    assert amax(4, np.array([1.0, -5.0, 5.0, np.inf]), 1) == 4
    assert amax(3, np.array([-2.0, 2.0, 1.0], np.float32), 1) == 1
