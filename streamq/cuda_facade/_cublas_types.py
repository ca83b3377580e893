"""cuBLAS enums with NVIDIA's values, the library's status conventions and its handle."""

from __future__ import annotations

import enum

import numpy as np

from ._cublas_cudnn_shared import Library, LibraryError, LibraryHandle

__all__ = ["cublasStatus_t", "cublasOperation_t", "cublasPointerMode_t", "cublasMath_t",
           "cudaDataType", "cublasComputeType_t", "cublasGemmAlgo_t", "cublasHandle_t", "LIB",
           "STATUS_STRINGS", "live_handle"]


class cublasStatus_t(enum.IntEnum):
    """cuBLAS status codes (values of cublas_api.h)."""

    CUBLAS_STATUS_SUCCESS = 0
    CUBLAS_STATUS_NOT_INITIALIZED = 1
    CUBLAS_STATUS_ALLOC_FAILED = 3
    CUBLAS_STATUS_INVALID_VALUE = 7
    CUBLAS_STATUS_ARCH_MISMATCH = 8
    CUBLAS_STATUS_MAPPING_ERROR = 11
    CUBLAS_STATUS_EXECUTION_FAILED = 13
    CUBLAS_STATUS_INTERNAL_ERROR = 14
    CUBLAS_STATUS_NOT_SUPPORTED = 15
    CUBLAS_STATUS_LICENSE_ERROR = 16


STATUS_STRINGS = {
    cublasStatus_t.CUBLAS_STATUS_SUCCESS: "success",
    cublasStatus_t.CUBLAS_STATUS_NOT_INITIALIZED: "the library was not initialized",
    cublasStatus_t.CUBLAS_STATUS_ALLOC_FAILED: "the resource allocation failed",
    cublasStatus_t.CUBLAS_STATUS_INVALID_VALUE: "an invalid numeric value was used as an argument",
    cublasStatus_t.CUBLAS_STATUS_ARCH_MISMATCH: "an absent device architectural feature is required",
    cublasStatus_t.CUBLAS_STATUS_MAPPING_ERROR: "an access to GPU memory space failed",
    cublasStatus_t.CUBLAS_STATUS_EXECUTION_FAILED: "the GPU program failed to execute",
    cublasStatus_t.CUBLAS_STATUS_INTERNAL_ERROR: "an internal operation failed",
    cublasStatus_t.CUBLAS_STATUS_NOT_SUPPORTED: "the functionality requested is not supported",
    cublasStatus_t.CUBLAS_STATUS_LICENSE_ERROR: "error detected trying to check the license",
}


class cublasOperation_t(enum.IntEnum):
    """Transpose operation of a matrix argument."""

    CUBLAS_OP_N = 0
    CUBLAS_OP_T = 1
    CUBLAS_OP_C = 2
    CUBLAS_OP_CONJG = 3


class cublasPointerMode_t(enum.IntEnum):
    """Where scalar arguments and results live: host memory or device memory."""

    CUBLAS_POINTER_MODE_HOST = 0
    CUBLAS_POINTER_MODE_DEVICE = 1


class cublasMath_t(enum.IntEnum):
    """Math modes (the disallow-reduced-precision flag may be or-ed into the others)."""

    CUBLAS_DEFAULT_MATH = 0
    CUBLAS_TENSOR_OP_MATH = 1
    CUBLAS_PEDANTIC_MATH = 2
    CUBLAS_TF32_TENSOR_OP_MATH = 3
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16


class cudaDataType(enum.IntEnum):
    """Element types of the *Ex functions (library_types.h)."""

    CUDA_R_32F = 0
    CUDA_R_64F = 1
    CUDA_R_16F = 2
    CUDA_R_8I = 3
    CUDA_C_32F = 4
    CUDA_C_64F = 5
    CUDA_C_16F = 6
    CUDA_C_8I = 7
    CUDA_R_8U = 8
    CUDA_C_8U = 9
    CUDA_R_32I = 10
    CUDA_C_32I = 11
    CUDA_R_16BF = 14
    CUDA_C_16BF = 15


class cublasComputeType_t(enum.IntEnum):
    """Compute (accumulation) types of cublasGemmEx and friends."""

    CUBLAS_COMPUTE_16F = 64
    CUBLAS_COMPUTE_16F_PEDANTIC = 65
    CUBLAS_COMPUTE_32F = 68
    CUBLAS_COMPUTE_32F_PEDANTIC = 69
    CUBLAS_COMPUTE_64F = 70
    CUBLAS_COMPUTE_64F_PEDANTIC = 71
    CUBLAS_COMPUTE_32I = 72
    CUBLAS_COMPUTE_32I_PEDANTIC = 73
    CUBLAS_COMPUTE_32F_FAST_16F = 74
    CUBLAS_COMPUTE_32F_FAST_16BF = 75
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77


cublasGemmAlgo_t = enum.IntEnum("cublasGemmAlgo_t", [
    ("CUBLAS_GEMM_DEFAULT", -1),
    *[(f"CUBLAS_GEMM_ALGO{i}", i) for i in range(24)],
    ("CUBLAS_GEMM_DEFAULT_TENSOR_OP", 99),
    *[(f"CUBLAS_GEMM_ALGO{i}_TENSOR_OP", 100 + i) for i in range(16)],
], module=__name__)
cublasGemmAlgo_t.__doc__ = "GEMM algorithm hints; every one runs the same kernel provider here."

# numpy dtype of each real cudaDataType the facade computes with.
DATA_DTYPES = {cudaDataType.CUDA_R_16F: np.dtype(np.float16),
               cudaDataType.CUDA_R_32F: np.dtype(np.float32),
               cudaDataType.CUDA_R_64F: np.dtype(np.float64)}

LIB = Library(
    "cuBLAS",
    success=cublasStatus_t.CUBLAS_STATUS_SUCCESS,
    bad_value=cublasStatus_t.CUBLAS_STATUS_INVALID_VALUE,
    exec_failed=cublasStatus_t.CUBLAS_STATUS_EXECUTION_FAILED,
    not_supported=cublasStatus_t.CUBLAS_STATUS_NOT_SUPPORTED,
    bad_handle=cublasStatus_t.CUBLAS_STATUS_NOT_INITIALIZED,
)


class cublasHandle_t(LibraryHandle):
    """A cuBLAS context (cublasCreate): device, stream, pointer mode, math mode, workspace."""

    def __init__(self):
        super().__init__(LIB, "cublasHandle_t")
        self.pointer_mode = cublasPointerMode_t.CUBLAS_POINTER_MODE_HOST
        self.math_mode = cublasMath_t.CUBLAS_DEFAULT_MATH
        self.workspace = (0, 0)

    @property
    def device_pointers(self) -> bool:
        """True in CUBLAS_POINTER_MODE_DEVICE."""
        return self.pointer_mode == cublasPointerMode_t.CUBLAS_POINTER_MODE_DEVICE


def live_handle(handle) -> cublasHandle_t:
    """``handle`` if it is a live cuBLAS handle, else CUBLAS_STATUS_NOT_INITIALIZED."""
    if not isinstance(handle, cublasHandle_t):
        raise LibraryError(LIB.bad_handle, f"handle is not a cublasHandle_t from cublasCreate: "
                                           f"{handle!r}")
    if handle.destroyed:
        raise LibraryError(LIB.bad_handle, "handle was destroyed by cublasDestroy")
    return handle
