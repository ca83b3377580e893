"""cuBLAS level 3: cublas{S,D}gemm, ...StridedBatched, cublasGemmEx, cublasGemmStridedBatchedEx.

Column-major, as cuBLAS: element (i, j) of a matrix with leading dimension
``ld`` is at ``ptr + (i + j*ld) * itemsize``. The numerics are the kernel
registry's ``cublas.gemm`` / ``cublas.gemm_strided_batched`` ops, run on the
handle's stream.
"""

from __future__ import annotations

import numpy as np

from streamq.kernels import registry

from ._cublas_args import is_zero, leading_dim, matrix_extent, scalar, transpose
from ._cublas_cudnn_shared import value_of
from ._cublas_types import DATA_DTYPES, LIB, cublasComputeType_t, cublasGemmAlgo_t, cudaDataType, \
    live_handle

__all__ = ["cublasSgemm", "cublasDgemm", "cublasSgemmStridedBatched", "cublasDgemmStridedBatched",
           "cublasGemmEx", "cublasGemmStridedBatchedEx"]

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_CT = cublasComputeType_t

# cublasGemmEx's supported (A/B type, C type) pairs per compute type, and the scalar type.
_EX_COMBOS = {
    _CT.CUBLAS_COMPUTE_16F: ({(_F16, _F16)}, _F16),
    _CT.CUBLAS_COMPUTE_16F_PEDANTIC: ({(_F16, _F16)}, _F16),
    _CT.CUBLAS_COMPUTE_32F: ({(_F16, _F16), (_F16, _F32), (_F32, _F32)}, _F32),
    _CT.CUBLAS_COMPUTE_32F_PEDANTIC: ({(_F16, _F16), (_F16, _F32), (_F32, _F32)}, _F32),
    _CT.CUBLAS_COMPUTE_32F_FAST_16F: ({(_F32, _F32)}, _F32),
    _CT.CUBLAS_COMPUTE_32F_FAST_16BF: ({(_F32, _F32)}, _F32),
    _CT.CUBLAS_COMPUTE_32F_FAST_TF32: ({(_F32, _F32)}, _F32),
    _CT.CUBLAS_COMPUTE_64F: ({(_F64, _F64)}, _F64),
    _CT.CUBLAS_COMPUTE_64F_PEDANTIC: ({(_F64, _F64)}, _F64),
}


class _Gemm:
    """One validated (batched) GEMM call, ready to be enqueued."""

    def __init__(self, handle, transa, transb, m, n, k, lda, ldb, ldc, batched=None):
        self.handle = live_handle(handle)
        self.ta, self.tb = transpose(transa, "transa"), transpose(transb, "transb")
        self.m, self.n, self.k = (LIB.integer(v, name, 0) for v, name in ((m, "m"), (n, "n"), (k, "k")))
        self.a_shape = (self.k, self.m) if self.ta == "T" else (self.m, self.k)
        self.b_shape = (self.n, self.k) if self.tb == "T" else (self.k, self.n)
        self.lda = leading_dim(lda, self.a_shape[0], "lda")
        self.ldb = leading_dim(ldb, self.b_shape[0], "ldb")
        self.ldc = leading_dim(ldc, self.m, "ldc")
        self.batch, self.strides = 1, (0, 0, 0)
        self.batched = batched is not None
        if self.batched:
            stride_a, stride_b, stride_c, count = batched
            self.batch = LIB.integer(count, "batchCount", 0)
            # Negative strides would reach before the pointer: refused (the facade's rule).
            self.strides = tuple(LIB.integer(s, name, 0) for s, name in (
                (stride_a, "strideA"), (stride_b, "strideB"), (stride_c, "strideC")))
            if self.batch > 1 and self.strides[2] == 0 and self.m and self.n:
                raise LIB.bad("strideC must not be 0 when batchCount > 1 (every batch would "
                              "write the same C)")

    @property
    def empty(self) -> bool:
        """cuBLAS's quick return: nothing to compute or write."""
        return self.m == 0 or self.n == 0 or self.batch == 0

    def launch(self, alpha, A, B, beta, C, *, ab_dtype, c_dtype, scalar_dtype) -> None:
        """Check the scalars and memory ranges, then enqueue the kernel on the handle's stream."""
        if self.empty:
            return
        h = self.handle
        stream = h.stream()
        alpha = scalar(h, alpha, scalar_dtype, "alpha")
        beta = scalar(h, beta, scalar_dtype, "beta")
        sa, sb, sc = self.strides
        reads_ab = self.k > 0 and not is_zero(alpha)
        a = LIB.flat(A, ab_dtype, matrix_extent(*self.a_shape, self.lda, sa, self.batch)
                     if reads_ab else 0, what="A")
        b = LIB.flat(B, ab_dtype, matrix_extent(*self.b_shape, self.ldb, sb, self.batch)
                     if reads_ab else 0, what="B")
        c = LIB.flat(C, c_dtype, matrix_extent(self.m, self.n, self.ldc, sc, self.batch), what="C")
        op = "cublas.gemm_strided_batched" if self.batched else "cublas.gemm"
        kernel = registry.get(op)
        convert = c_dtype if ab_dtype != c_dtype else None
        reads = [a, b] + [v for v in (alpha, beta) if isinstance(v, np.ndarray)]
        if not is_zero(beta):
            reads.append(c)
        args = (kernel, self, alpha, a, b, beta, c, convert)
        LIB.launch(stream, _run_gemm, args, name=op, reads=reads, writes=[c])


def _run_gemm(kernel, g: _Gemm, alpha, a, b, beta, c, convert) -> None:
    """The task: read device scalars, widen mixed-precision inputs, call the kernel."""
    alpha, beta = value_of(alpha), value_of(beta)
    if convert is not None and a.size:
        a, b = a.astype(convert), b.astype(convert)
    if a.size == 0:          # alpha == 0 or k == 0: the kernel reads neither A nor B
        a = b = np.empty(0, c.dtype)
    if g.batched:
        sa, sb, sc = g.strides
        kernel(g.ta, g.tb, g.m, g.n, g.k, alpha, a, g.lda, sa, b, g.ldb, sb, beta, c, g.ldc, sc,
               g.batch)
    else:
        kernel(g.ta, g.tb, g.m, g.n, g.k, alpha, a, g.lda, b, g.ldb, beta, c, g.ldc)


def _typed_gemm(name: str, dtype: np.dtype, batched: bool):
    letter = name[6]

    if batched:
        def fn(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
               ldc, strideC, batchCount):
            g = _Gemm(handle, transa, transb, m, n, k, lda, ldb, ldc,
                      (strideA, strideB, strideC, batchCount))
            g.launch(alpha, A, B, beta, C, ab_dtype=dtype, c_dtype=dtype, scalar_dtype=dtype)
        what = ("batchCount GEMMs C_i = alpha*op(A_i)@op(B_i) + beta*C_i, A_i at A + i*strideA "
                "elements (likewise B_i, C_i)")
    else:
        def fn(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
            g = _Gemm(handle, transa, transb, m, n, k, lda, ldb, ldc)
            g.launch(alpha, A, B, beta, C, ab_dtype=dtype, c_dtype=dtype, scalar_dtype=dtype)
        what = "C = alpha*op(A)@op(B) + beta*C"
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (
        f"{name}: {what}, column-major, {dtype} ({letter}); returns (cublasStatus_t,).\n\n"
        f"    Enqueued on the handle's stream. op(A) is m x k, op(B) k x n, C m x n; lda/ldb/ldc\n"
        f"    must be >= max(1, rows as stored) and m, n, k >= 0, else CUBLAS_STATUS_INVALID_VALUE,\n"
        f"    as is a pointer range outside a live facade allocation. m == 0 or n == 0: no-op.\n"
        f"    alpha/beta: numbers or host pointers (pointer mode host), facade pointers (device).\n")
    return LIB.api()(fn)


cublasSgemm = _typed_gemm("cublasSgemm", _F32, False)
cublasDgemm = _typed_gemm("cublasDgemm", _F64, False)
cublasSgemmStridedBatched = _typed_gemm("cublasSgemmStridedBatched", _F32, True)
cublasDgemmStridedBatched = _typed_gemm("cublasDgemmStridedBatched", _F64, True)


def _ex_types(Atype, Btype, Ctype, computeType, algo):
    """(A/B dtype, C dtype, scalar dtype) of a GemmEx call, or the cuBLAS status why not."""
    types = [LIB.enum(cudaDataType, t, name) for t, name in
             ((Atype, "Atype"), (Btype, "Btype"), (Ctype, "Ctype"))]
    compute = LIB.enum(cublasComputeType_t, computeType, "computeType")
    LIB.enum(cublasGemmAlgo_t, algo, "algo")
    if types[0] != types[1]:
        raise LIB.unsupported(f"Atype {types[0].name} and Btype {types[1].name} differ")
    if any(t not in DATA_DTYPES for t in types):
        raise LIB.unsupported(f"data types {[t.name for t in types]}: the facade computes "
                              f"CUDA_R_16F, CUDA_R_32F and CUDA_R_64F only")
    ab, c = DATA_DTYPES[types[0]], DATA_DTYPES[types[2]]
    combos = _EX_COMBOS.get(compute)
    if combos is None or (ab, c) not in combos[0]:
        raise LIB.unsupported(f"{compute.name} with A/B {types[0].name} and C {types[2].name} is "
                              f"not a combination cublasGemmEx supports")
    return ab, c, combos[1]


@LIB.api()
def cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                 Ctype, ldc, computeType, algo):
    """C = alpha*op(A)@op(B) + beta*C with per-matrix types; returns (cublasStatus_t,).

    Supported (A/B, C) types per compute type, as cuBLAS's table: 16F: (16F, 16F);
    32F/32F_PEDANTIC: (16F, 16F), (16F, 32F), (32F, 32F); 32F_FAST_*: (32F, 32F);
    64F: (64F, 64F). alpha/beta have the compute type's scalar type (half for
    16F). Other valid combinations: CUBLAS_STATUS_NOT_SUPPORTED. Half inputs
    are accumulated in float32 and rounded once. ``algo`` is a hint and ignored.
    """
    ab, c, s = _ex_types(Atype, Btype, Ctype, computeType, algo)
    g = _Gemm(handle, transa, transb, m, n, k, lda, ldb, ldc)
    g.launch(alpha, A, B, beta, C, ab_dtype=ab, c_dtype=c, scalar_dtype=s)


@LIB.api()
def cublasGemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B,
                               Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount,
                               computeType, algo):
    """cublasGemmEx over batchCount strided matrices; returns (cublasStatus_t,).

    Types as cublasGemmEx, strides as cublasSgemmStridedBatched.
    """
    ab, c, s = _ex_types(Atype, Btype, Ctype, computeType, algo)
    g = _Gemm(handle, transa, transb, m, n, k, lda, ldb, ldc, (strideA, strideB, strideC, batchCount))
    g.launch(alpha, A, B, beta, C, ab_dtype=ab, c_dtype=c,
             scalar_dtype=s)
