"""cuDNN (8.9 legacy API) on streamq: the C functions under their C names, C argument order.

Every function returns a tuple whose first item is a :class:`cudnnStatus_t`
(cuDNN 8's values), followed by the C function's output arguments
(``cudnnCreate() -> (status, handle)``, ``cudnnGetConvolution2dForwardOutputDim
-> (status, n, c, h, w)``). Handles and descriptors are objects
(:class:`cudnnHandle_t`, :class:`cudnnTensorDescriptor_t`, ...). Data pointers
are facade memory (ints from ``cudaMalloc``, or numpy views of it); ``alpha``
and ``beta`` are host values: numbers, numpy arrays (float32 for half/float
data, float64 for double) or facade pinned-host pointers.

Every operation is enqueued on the handle's stream (``cudnnSetStream``; the
default stream until then) and runs there in order with the stream's other
work; the numerics are the kernel registry's ``cudnn.*`` ops. Before anything
is enqueued, descriptors are checked against each other and against the memory
they describe (dims, strides, data types; every element reachable through a
descriptor must lie in one live facade allocation): a mismatch is
CUDNN_STATUS_BAD_PARAM (or the code cuDNN documents, e.g. NOT_SUPPORTED for a
wrong output size), with the reason in :func:`last_status_detail`. An op that
cannot be launched (destroyed stream, device failed) is
CUDNN_STATUS_EXECUTION_FAILED. See docs/cuda-facade-libraries.md.
"""

from __future__ import annotations

from . import _context
from ._cudnn_conv import *  # noqa: F401,F403
from ._cudnn_conv import __all__ as _conv_all
from ._cudnn_descriptors import *  # noqa: F401,F403
from ._cudnn_descriptors import __all__ as _desc_all
from ._cudnn_norm import *  # noqa: F401,F403
from ._cudnn_norm import __all__ as _norm_all
from ._cudnn_ops import *  # noqa: F401,F403
from ._cudnn_ops import __all__ as _ops_all
from ._cudnn_tensors import *  # noqa: F401,F403
from ._cudnn_tensors import __all__ as _tensors_all
from ._cudnn_types import *  # noqa: F401,F403
from ._cudnn_types import __all__ as _types_all
from ._cudnn_types import LIB, cudnnHandle_t, cudnnStatus_t, live_handle

_PRIVATE = {"Descriptor", "LIB", "live_handle", "numpy_dtype", "scalar_dtype", "tensor_view",
            "filter_view", "packed_strides", "conv_output_dims", "pooling_output_dims",
            "DROPOUT_STATE_BYTES"}

__all__ = ["cudnnCreate", "cudnnDestroy", "cudnnSetStream", "cudnnGetStream", "cudnnGetErrorString",
           "cudnnGetVersion", "last_status_detail",
           *(name for group in (_types_all, _tensors_all, _desc_all, _conv_all, _ops_all, _norm_all)
             for name in group if name not in _PRIVATE)]

# Enum members at module level, as C code names them (CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, ...).
for _name in list(_types_all):
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, int) and hasattr(_obj, "__members__"):
        globals().update(_obj.__members__)
        __all__.extend(_obj.__members__)
del _name, _obj


def last_status_detail() -> str:
    """Why the calling thread's most recent failed cuDNN call failed, in words ("" if none)."""
    return LIB.last_status_detail()


@LIB.api(1)
def cudnnCreate():
    """``(status, handle)``: a handle on the calling thread's current device, bound to
    the default stream."""
    return cudnnHandle_t()


@LIB.api()
def cudnnDestroy(handle):
    """Release ``handle`` after the device's pending work completes (an implicit device
    synchronization, as cuBLAS's cublasDestroy does); later use is BAD_PARAM."""
    h = live_handle(handle)
    LIB.check_may_block("cudnnDestroy")
    h.destroyed = True
    h.device.synchronize()


@LIB.api()
def cudnnSetStream(handle, streamId):
    """Send the handle's later work to ``streamId`` (0/None: the default stream). An
    unknown or destroyed stream: BAD_PARAM; a stream of another device:
    CUDNN_STATUS_MAPPING_ERROR, as cuDNN documents."""
    live_handle(handle).set_stream(streamId)


@LIB.api(1)
def cudnnGetStream(handle):
    """``(status, cudaStream_t)``: the stream the handle's work goes to."""
    return _context.cudaStream_t(live_handle(handle).stream_value)


@LIB.api(1)
def cudnnGetErrorString(status):
    """``(CUDNN_STATUS_SUCCESS, text)``: the name of ``status`` ("CUDNN_STATUS_BAD_PARAM"),
    as cuDNN's function returns it; unknown codes give "CUDNN_UNKNOWN_STATUS"."""
    try:
        return cudnnStatus_t(int(status)).name
    except (TypeError, ValueError):
        return "CUDNN_UNKNOWN_STATUS"


@LIB.api(1)
def cudnnGetVersion():
    """``(CUDNN_STATUS_SUCCESS, 8907)``: the cuDNN API level the facade implements (8.9.7)."""
    return CUDNN_VERSION  # noqa: F405
