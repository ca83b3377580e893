"""cuDNN enums with NVIDIA's values (cuDNN 8.9's legacy API), its status conventions,
the handle, the algorithm-performance structs and the descriptor base class."""

from __future__ import annotations

import enum

import numpy as np

from ._cublas_cudnn_shared import Library, LibraryError, LibraryHandle

__all__ = ["cudnnStatus_t", "cudnnDataType_t", "cudnnTensorFormat_t", "cudnnNanPropagation_t",
           "cudnnConvolutionMode_t", "cudnnMathType_t", "cudnnConvolutionFwdAlgo_t",
           "cudnnConvolutionBwdDataAlgo_t", "cudnnConvolutionBwdFilterAlgo_t", "cudnnDeterminism_t",
           "cudnnPoolingMode_t", "cudnnActivationMode_t", "cudnnBatchNormMode_t", "cudnnBatchNormOps_t",
           "cudnnSoftmaxAlgorithm_t", "cudnnSoftmaxMode_t", "cudnnOpTensorOp_t",
           "cudnnConvolutionFwdAlgoPerf_t", "cudnnConvolutionBwdDataAlgoPerf_t",
           "cudnnConvolutionBwdFilterAlgoPerf_t", "cudnnHandle_t", "Descriptor", "LIB",
           "CUDNN_VERSION", "CUDNN_DIM_MAX", "CUDNN_BN_MIN_EPSILON", "live_handle", "numpy_dtype",
           "scalar_dtype"]

CUDNN_VERSION = 8907          # the API level the facade implements: cuDNN 8.9.7
CUDNN_DIM_MAX = 8
CUDNN_BN_MIN_EPSILON = 0.0


class cudnnStatus_t(enum.IntEnum):
    """cuDNN status codes (cuDNN 8's values)."""

    CUDNN_STATUS_SUCCESS = 0
    CUDNN_STATUS_NOT_INITIALIZED = 1
    CUDNN_STATUS_ALLOC_FAILED = 2
    CUDNN_STATUS_BAD_PARAM = 3
    CUDNN_STATUS_INTERNAL_ERROR = 4
    CUDNN_STATUS_INVALID_VALUE = 5
    CUDNN_STATUS_ARCH_MISMATCH = 6
    CUDNN_STATUS_MAPPING_ERROR = 7
    CUDNN_STATUS_EXECUTION_FAILED = 8
    CUDNN_STATUS_NOT_SUPPORTED = 9
    CUDNN_STATUS_LICENSE_ERROR = 10
    CUDNN_STATUS_RUNTIME_PREREQUISITE_MISSING = 11
    CUDNN_STATUS_RUNTIME_IN_PROGRESS = 12
    CUDNN_STATUS_RUNTIME_FP_OVERFLOW = 13
    CUDNN_STATUS_VERSION_MISMATCH = 14


class cudnnDataType_t(enum.IntEnum):
    """Element types; the facade computes FLOAT, DOUBLE and HALF."""

    CUDNN_DATA_FLOAT = 0
    CUDNN_DATA_DOUBLE = 1
    CUDNN_DATA_HALF = 2
    CUDNN_DATA_INT8 = 3
    CUDNN_DATA_INT32 = 4
    CUDNN_DATA_INT8x4 = 5
    CUDNN_DATA_UINT8 = 6
    CUDNN_DATA_UINT8x4 = 7
    CUDNN_DATA_INT8x32 = 8
    CUDNN_DATA_BFLOAT16 = 9
    CUDNN_DATA_INT64 = 10
    CUDNN_DATA_BOOLEAN = 11
    CUDNN_DATA_FP8_E4M3 = 12
    CUDNN_DATA_FP8_E5M2 = 13
    CUDNN_DATA_FAST_FLOAT_FOR_FP8 = 14


class cudnnTensorFormat_t(enum.IntEnum):
    """Memory layouts of 4-D tensor and filter descriptors."""

    CUDNN_TENSOR_NCHW = 0
    CUDNN_TENSOR_NHWC = 1
    CUDNN_TENSOR_NCHW_VECT_C = 2


class cudnnNanPropagation_t(enum.IntEnum):
    """NaN handling of max pooling, ReLU and op tensor (the facade always propagates)."""

    CUDNN_NOT_PROPAGATE_NAN = 0
    CUDNN_PROPAGATE_NAN = 1


class cudnnConvolutionMode_t(enum.IntEnum):
    """True convolution (filter flipped) or cross-correlation."""

    CUDNN_CONVOLUTION = 0
    CUDNN_CROSS_CORRELATION = 1


class cudnnMathType_t(enum.IntEnum):
    """Tensor-core math permissions (recorded; the facade computes in full precision)."""

    CUDNN_DEFAULT_MATH = 0
    CUDNN_TENSOR_OP_MATH = 1
    CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2
    CUDNN_FMA_MATH = 3


class cudnnConvolutionFwdAlgo_t(enum.IntEnum):
    """Forward convolution algorithms (all run the kernel provider's convolution)."""

    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM = 0
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM = 1
    CUDNN_CONVOLUTION_FWD_ALGO_GEMM = 2
    CUDNN_CONVOLUTION_FWD_ALGO_DIRECT = 3
    CUDNN_CONVOLUTION_FWD_ALGO_FFT = 4
    CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING = 5
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD = 6
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED = 7
    CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8


class cudnnConvolutionBwdDataAlgo_t(enum.IntEnum):
    """Backward-data convolution algorithms."""

    CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 = 0
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 = 1
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT = 2
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING = 3
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD = 4
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED = 5
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT = 6


class cudnnConvolutionBwdFilterAlgo_t(enum.IntEnum):
    """Backward-filter convolution algorithms."""

    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 = 0
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 = 1
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT = 2
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 = 3
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD = 4
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED = 5
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING = 6
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT = 7


class cudnnDeterminism_t(enum.IntEnum):
    """Whether an algorithm gives bit-identical results run to run."""

    CUDNN_NON_DETERMINISTIC = 0
    CUDNN_DETERMINISTIC = 1


class cudnnPoolingMode_t(enum.IntEnum):
    """Pooling modes."""

    CUDNN_POOLING_MAX = 0
    CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING = 1
    CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING = 2
    CUDNN_POOLING_MAX_DETERMINISTIC = 3


class cudnnActivationMode_t(enum.IntEnum):
    """Activation functions."""

    CUDNN_ACTIVATION_SIGMOID = 0
    CUDNN_ACTIVATION_RELU = 1
    CUDNN_ACTIVATION_TANH = 2
    CUDNN_ACTIVATION_CLIPPED_RELU = 3
    CUDNN_ACTIVATION_ELU = 4
    CUDNN_ACTIVATION_IDENTITY = 5
    CUDNN_ACTIVATION_SWISH = 6


class cudnnBatchNormMode_t(enum.IntEnum):
    """Batch normalization modes (SPATIAL_PERSISTENT computes as SPATIAL)."""

    CUDNN_BATCHNORM_PER_ACTIVATION = 0
    CUDNN_BATCHNORM_SPATIAL = 1
    CUDNN_BATCHNORM_SPATIAL_PERSISTENT = 2


class cudnnBatchNormOps_t(enum.IntEnum):
    """What the *Ex batch-norm calls fuse: BN only, BN then activation, BN + add then activation."""

    CUDNN_BATCHNORM_OPS_BN = 0
    CUDNN_BATCHNORM_OPS_BN_ACTIVATION = 1
    CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION = 2


class cudnnSoftmaxAlgorithm_t(enum.IntEnum):
    """Softmax algorithms (FAST is computed as ACCURATE: never overflows)."""

    CUDNN_SOFTMAX_FAST = 0
    CUDNN_SOFTMAX_ACCURATE = 1
    CUDNN_SOFTMAX_LOG = 2


class cudnnSoftmaxMode_t(enum.IntEnum):
    """Softmax over C*H*W per image (INSTANCE) or over C per pixel (CHANNEL)."""

    CUDNN_SOFTMAX_MODE_INSTANCE = 0
    CUDNN_SOFTMAX_MODE_CHANNEL = 1


class cudnnOpTensorOp_t(enum.IntEnum):
    """cudnnOpTensor's operations."""

    CUDNN_OP_TENSOR_ADD = 0
    CUDNN_OP_TENSOR_MUL = 1
    CUDNN_OP_TENSOR_MIN = 2
    CUDNN_OP_TENSOR_MAX = 3
    CUDNN_OP_TENSOR_SQRT = 4
    CUDNN_OP_TENSOR_NOT = 5


class _AlgoPerf:
    """One algorithm's entry in an algorithm query (fields as cuDNN's struct)."""

    __slots__ = ("algo", "status", "time", "memory", "determinism", "mathType")

    def __init__(self, algo, status, time, memory, determinism, mathType):
        self.algo = algo
        self.status = status
        self.time = time            # milliseconds; -1.0 for heuristic (_v7) answers
        self.memory = memory        # workspace bytes the algorithm needs
        self.determinism = determinism
        self.mathType = mathType

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.algo.name} {self.status.name} time={self.time} "
                f"memory={self.memory}>")


class cudnnConvolutionFwdAlgoPerf_t(_AlgoPerf):
    """Result entry of cudnnGetConvolutionForwardAlgorithm_v7 / cudnnFindConvolutionForwardAlgorithm."""


class cudnnConvolutionBwdDataAlgoPerf_t(_AlgoPerf):
    """Result entry of the backward-data algorithm queries."""


class cudnnConvolutionBwdFilterAlgoPerf_t(_AlgoPerf):
    """Result entry of the backward-filter algorithm queries."""


LIB = Library(
    "cuDNN",
    success=cudnnStatus_t.CUDNN_STATUS_SUCCESS,
    bad_value=cudnnStatus_t.CUDNN_STATUS_BAD_PARAM,
    exec_failed=cudnnStatus_t.CUDNN_STATUS_EXECUTION_FAILED,
    not_supported=cudnnStatus_t.CUDNN_STATUS_NOT_SUPPORTED,
    bad_handle=cudnnStatus_t.CUDNN_STATUS_BAD_PARAM,
    mapping_error=cudnnStatus_t.CUDNN_STATUS_MAPPING_ERROR,
)


class cudnnHandle_t(LibraryHandle):
    """A cuDNN context (cudnnCreate): the current device and the stream work goes to."""

    def __init__(self):
        super().__init__(LIB, "cudnnHandle_t")


def live_handle(handle) -> cudnnHandle_t:
    """``handle`` if it is a live cuDNN handle, else CUDNN_STATUS_BAD_PARAM."""
    if not isinstance(handle, cudnnHandle_t):
        raise LibraryError(LIB.bad_handle, f"handle is not a cudnnHandle_t from cudnnCreate: "
                                           f"{handle!r}")
    if handle.destroyed:
        raise LibraryError(LIB.bad_handle, "handle was destroyed by cudnnDestroy")
    return handle


class Descriptor:
    """Base of every cuDNN descriptor object: created unset, set once or more, destroyed once."""

    kind = "descriptor"

    def __init__(self):
        self.is_set = False
        self.destroyed = False

    def __repr__(self) -> str:
        state = "destroyed" if self.destroyed else ("set" if self.is_set else "unset")
        return f"<{type(self).__name__} {state}>"

    @classmethod
    def live(cls, desc, what: str, *, must_be_set: bool = True):
        """``desc`` if it is a live descriptor of this class (set, unless told otherwise)."""
        if not isinstance(desc, cls):
            raise LIB.bad(f"{what} must be a {cls.__name__}, got {desc!r}")
        if desc.destroyed:
            raise LIB.bad(f"{what} was destroyed")
        if must_be_set and not desc.is_set:
            raise LIB.bad(f"{what} was never set (call the matching cudnnSet*Descriptor first)")
        return desc


_DTYPES = {cudnnDataType_t.CUDNN_DATA_FLOAT: np.dtype(np.float32),
           cudnnDataType_t.CUDNN_DATA_DOUBLE: np.dtype(np.float64),
           cudnnDataType_t.CUDNN_DATA_HALF: np.dtype(np.float16)}


def numpy_dtype(data_type: cudnnDataType_t, what: str) -> np.dtype:
    """The numpy dtype of a data type the facade computes with (else NOT_SUPPORTED)."""
    dtype = _DTYPES.get(data_type)
    if dtype is None:
        raise LibraryError(cudnnStatus_t.CUDNN_STATUS_NOT_SUPPORTED,
                           f"{what}: data type {data_type.name} is not supported by the facade "
                           f"(FLOAT, DOUBLE and HALF are)")
    return dtype


def scalar_dtype(dtype: np.dtype) -> np.dtype:
    """cuDNN's type for alpha/beta: double for double data, float otherwise."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
