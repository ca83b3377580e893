"""cuBLAS (v2 API) on streamq: the C functions under their C names, C argument order.

Every function returns a tuple whose first item is a :class:`cublasStatus_t`
(``CUBLAS_STATUS_SUCCESS``, ...), followed by the C function's output
arguments (``cublasCreate() -> (status, handle)``). Handles are
:class:`cublasHandle_t` objects. Device memory is facade memory: pointers are
ints (what ``cudaMalloc`` returns) or numpy views of facade memory.

Every operation is enqueued on the handle's stream (``cublasSetStream``; the
default stream until then) and runs there, in order with the stream's other
work; the numerics are the kernel registry's ``cublas.*`` ops. Before anything
is enqueued, the arguments are checked as cuBLAS checks them
(CUBLAS_STATUS_INVALID_VALUE) and every matrix/vector range is checked against
the allocation table (also CUBLAS_STATUS_INVALID_VALUE: the facade refuses what
would be an illegal address on a GPU). A NULL or destroyed handle is
CUBLAS_STATUS_NOT_INITIALIZED; an op that cannot be launched (destroyed stream,
device already failed) is CUBLAS_STATUS_EXECUTION_FAILED.
:func:`last_status_detail` says in words why the thread's last failed call failed.

Scalars ``alpha``/``beta``: pointer mode host (default) takes numbers, numpy
arrays of the routine's type or facade pinned-host pointers, read at call time;
pointer mode device takes facade pointers, read when the op runs. Reductions
(dot, nrm2, asum, amax) block in host pointer mode until the result is written.
See docs/cuda-facade-libraries.md.
"""

from __future__ import annotations

from . import _context
from ._cublas_gemm import *  # noqa: F401,F403
from ._cublas_gemm import __all__ as _gemm_all
from ._cublas_level12 import *  # noqa: F401,F403
from ._cublas_level12 import __all__ as _level12_all
from ._cublas_types import LIB, STATUS_STRINGS, cublasComputeType_t, cublasGemmAlgo_t, \
    cublasHandle_t, cublasMath_t, cublasOperation_t, cublasPointerMode_t, cublasStatus_t, \
    cudaDataType, live_handle

__all__ = ["cublasStatus_t", "cublasOperation_t", "cublasPointerMode_t", "cublasMath_t",
           "cudaDataType", "cublasComputeType_t", "cublasGemmAlgo_t", "cublasHandle_t",
           "cublasCreate", "cublasDestroy", "cublasSetStream", "cublasGetStream",
           "cublasSetPointerMode", "cublasGetPointerMode", "cublasSetMathMode", "cublasGetMathMode",
           "cublasSetWorkspace", "cublasGetStatusName", "cublasGetStatusString",
           "last_status_detail", *_gemm_all, *_level12_all]

# Enum members at module level, as C code names them (CUBLAS_OP_N, CUDA_R_32F, ...).
for _enum in (cublasStatus_t, cublasOperation_t, cublasPointerMode_t, cublasMath_t, cudaDataType,
              cublasComputeType_t, cublasGemmAlgo_t):
    globals().update(_enum.__members__)
    __all__.extend(_enum.__members__)
del _enum

_MATH_FLAG = cublasMath_t.CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
_MATH_BASES = {cublasMath_t.CUBLAS_DEFAULT_MATH, cublasMath_t.CUBLAS_TENSOR_OP_MATH,
               cublasMath_t.CUBLAS_PEDANTIC_MATH, cublasMath_t.CUBLAS_TF32_TENSOR_OP_MATH}


def last_status_detail() -> str:
    """Why the calling thread's most recent failed cuBLAS call failed, in words ("" if none)."""
    return LIB.last_status_detail()


@LIB.api(1)
def cublasCreate():
    """A new handle on the calling thread's current device, bound to the default
    stream, pointer mode host, default math: ``(status, handle)``."""
    return cublasHandle_t()


@LIB.api()
def cublasDestroy(handle):
    """Release ``handle``. As cuBLAS documents, this implicitly synchronizes the
    device: the handle's pending work completes first. Later use of the handle is
    CUBLAS_STATUS_NOT_INITIALIZED."""
    h = live_handle(handle)
    LIB.check_may_block("cublasDestroy")
    h.destroyed = True
    h.device.synchronize()


@LIB.api()
def cublasSetStream(handle, streamId):
    """Send the handle's later work to ``streamId`` (0/None: the default stream,
    cudaStreamLegacy, cudaStreamPerThread, a cudaStream_t). An unknown or
    destroyed stream, or one of another device: CUBLAS_STATUS_INVALID_VALUE. As in cuBLAS,
    this also drops a workspace given by cublasSetWorkspace."""
    h = live_handle(handle)
    h.set_stream(streamId)
    h.workspace = (0, 0)


@LIB.api(1)
def cublasGetStream(handle):
    """``(status, cudaStream_t)``: the stream the handle's work goes to."""
    return _context.cudaStream_t(live_handle(handle).stream_value)


@LIB.api()
def cublasSetPointerMode(handle, mode):
    """Where later calls read alpha/beta and write results: CUBLAS_POINTER_MODE_HOST
    (numbers / host pointers, read at call time) or CUBLAS_POINTER_MODE_DEVICE
    (facade pointers, read in stream order)."""
    h = live_handle(handle)
    h.pointer_mode = LIB.enum(cublasPointerMode_t, mode, "mode")


@LIB.api(1)
def cublasGetPointerMode(handle):
    """``(status, cublasPointerMode_t)`` of the handle."""
    return live_handle(handle).pointer_mode


@LIB.api()
def cublasSetMathMode(handle, mode):
    """Record the math mode (a cublasMath_t, optionally or-ed with
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION). The facade always computes
    float32 in float32 (never TF32) and float16 products in float32, so every
    mode gives pedantic-or-better results."""
    h = live_handle(handle)
    value = LIB.integer(mode, "mode")
    if value & ~int(_MATH_FLAG) not in _MATH_BASES:
        raise LIB.bad(f"mode must be a cublasMath_t value (optionally | "
                      f"CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), got {mode!r}")
    h.math_mode = value if value & int(_MATH_FLAG) else cublasMath_t(value)


@LIB.api(1)
def cublasGetMathMode(handle):
    """``(status, mode)``: the math mode last set (CUBLAS_DEFAULT_MATH initially)."""
    return live_handle(handle).math_mode


@LIB.api()
def cublasSetWorkspace(handle, workspace, workspaceSizeInBytes):
    """Give the handle a user workspace. The facade's kernels need none; the range is
    still checked (a bad one is CUBLAS_STATUS_INVALID_VALUE) and recorded."""
    h = live_handle(handle)
    size = LIB.integer(workspaceSizeInBytes, "workspaceSizeInBytes", 0)
    if size == 0:
        h.workspace = (0, 0)
        return
    view = LIB.flat(workspace, "u1", size, what="workspace")
    h.workspace = (view.__array_interface__["data"][0], size)


def _status(status) -> cublasStatus_t:
    return LIB.enum(cublasStatus_t, status, "status")


@LIB.api(1)
def cublasGetStatusName(status):
    """``(CUBLAS_STATUS_SUCCESS, name)``: the enum name of ``status`` as a string."""
    return _status(status).name


@LIB.api(1)
def cublasGetStatusString(status):
    """``(CUBLAS_STATUS_SUCCESS, text)``: cuBLAS's description of ``status``."""
    return STATUS_STRINGS[_status(status)]
