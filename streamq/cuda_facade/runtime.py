"""The CUDA runtime API as cuda-python exposes it (``cuda.bindings.runtime``), on CPUs.

``from streamq.cuda_facade import runtime as cudart`` replaces
``from cuda.bindings import runtime as cudart``: the same function names and
argument order, every call returning a tuple whose first item is a
``cudaError_t`` member followed by the results, enums and flags under the same
names and values. Devices are CMGs, streams are serial dispatch queues on a
CMG's pinned workers, kernels come from :mod:`streamq.kernels.registry`.
Where the facade differs from CUDA is listed in ``docs/cuda-facade.md``.

Memory functions and enums (``cudaMalloc``, ``cudaMemcpyAsync``,
``cudaMemcpyKind``, ...) come from ``_rt_memory``.
"""

from __future__ import annotations

from ._errors import CudaError, cudaError_t
from ._rt_graph import (
    cudaGraphDestroy, cudaGraphExecDestroy, cudaGraphGetNodes, cudaGraphInstantiate,
    cudaGraphInstantiateWithFlags, cudaGraphLaunch, cudaGraphUpload, cudaStreamBeginCapture,
    cudaStreamEndCapture, cudaStreamGetCaptureInfo, cudaStreamIsCapturing, cudaThreadExchangeStreamCaptureMode,
)
from ._launch import cudaLaunchKernel
from ._rt_device import (
    cudaDeviceGetAttribute, cudaDeviceGetStreamPriorityRange, cudaDeviceReset, cudaDeviceSynchronize,
    cudaDriverGetVersion, cudaGetDevice, cudaGetDeviceCount, cudaGetDeviceProperties, cudaRuntimeGetVersion,
    cudaSetDevice,
)
from ._rt_error import cudaGetErrorName, cudaGetErrorString, cudaGetLastError, cudaPeekAtLastError, last_exception
from ._rt_event import (
    cudaEventCreate, cudaEventCreateWithFlags, cudaEventDestroy, cudaEventElapsedTime, cudaEventQuery,
    cudaEventRecord, cudaEventRecordWithFlags, cudaEventSynchronize, cudaStreamWaitEvent,
)
from ._rt_stream import (
    cudaLaunchHostFunc, cudaStreamAddCallback, cudaStreamCreate, cudaStreamCreateWithFlags,
    cudaStreamCreateWithPriority, cudaStreamDestroy, cudaStreamGetDevice, cudaStreamGetFlags, cudaStreamGetId,
    cudaStreamGetPriority, cudaStreamQuery, cudaStreamSynchronize,
)
from ._rt_types import (
    CUDART_VERSION, cudaComputeMode, cudaDeviceAttr, cudaDeviceProp, cudaEvent_t, cudaEventBlockingSync,
    cudaEventDefault, cudaEventDisableTiming, cudaEventInterprocess, cudaEventRecordDefault,
    cudaEventRecordExternal, cudaEventWaitDefault, cudaEventWaitExternal, cudaGraph_t, cudaGraphExec_t,
    cudaGraphInstantiateFlags, cudaGraphNode_t, cudaHostFn_t, cudaStream_t, cudaStreamCallback_t,
    cudaStreamCaptureMode, cudaStreamCaptureStatus, cudaStreamDefault, cudaStreamLegacy, cudaStreamNonBlocking,
    cudaStreamPerThread, cudaUUID_t, dim3,
)

try:  # memory functions and enums, written alongside this module
    from . import _rt_memory as _memory_module
except ModuleNotFoundError as exc:  # pragma: no cover - only while _rt_memory.py does not exist yet
    if exc.name != f"{__package__}._rt_memory":
        raise
    _memory_module = None
if _memory_module is not None:
    from ._rt_memory import *  # noqa: F401,F403
_memory_names = [] if _memory_module is None else list(getattr(
    _memory_module, "__all__", [n for n in vars(_memory_module) if n.startswith("cuda")]))

__all__ = [
    # errors
    "cudaError_t", "CudaError", "cudaGetLastError", "cudaPeekAtLastError", "cudaGetErrorName",
    "cudaGetErrorString", "last_exception",
    # devices
    "cudaGetDeviceCount", "cudaSetDevice", "cudaGetDevice", "cudaGetDeviceProperties", "cudaDeviceGetAttribute",
    "cudaDeviceSynchronize", "cudaDeviceReset", "cudaDeviceGetStreamPriorityRange", "cudaRuntimeGetVersion",
    "cudaDriverGetVersion",
    # streams
    "cudaStreamCreate", "cudaStreamCreateWithFlags", "cudaStreamCreateWithPriority", "cudaStreamDestroy",
    "cudaStreamSynchronize", "cudaStreamQuery", "cudaStreamWaitEvent", "cudaStreamAddCallback",
    "cudaLaunchHostFunc", "cudaStreamGetFlags", "cudaStreamGetPriority", "cudaStreamGetDevice", "cudaStreamGetId",
    # events
    "cudaEventCreate", "cudaEventCreateWithFlags", "cudaEventRecord", "cudaEventRecordWithFlags", "cudaEventQuery",
    "cudaEventSynchronize", "cudaEventElapsedTime", "cudaEventDestroy",
    # launch, capture, graphs
    "cudaLaunchKernel", "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaStreamIsCapturing",
    "cudaStreamGetCaptureInfo", "cudaThreadExchangeStreamCaptureMode", "cudaGraphInstantiate",
    "cudaGraphInstantiateWithFlags", "cudaGraphUpload", "cudaGraphLaunch", "cudaGraphDestroy",
    "cudaGraphExecDestroy", "cudaGraphGetNodes",
    # types, enums, constants
    "cudaStream_t", "cudaEvent_t", "cudaGraph_t", "cudaGraphExec_t", "cudaGraphNode_t", "cudaHostFn_t",
    "cudaStreamCallback_t", "dim3", "cudaDeviceProp", "cudaUUID_t", "cudaDeviceAttr", "cudaComputeMode",
    "cudaStreamCaptureMode", "cudaStreamCaptureStatus", "cudaGraphInstantiateFlags",
    "cudaStreamDefault", "cudaStreamNonBlocking", "cudaStreamLegacy", "cudaStreamPerThread",
    "cudaEventDefault", "cudaEventBlockingSync", "cudaEventDisableTiming", "cudaEventInterprocess",
    "cudaEventRecordDefault", "cudaEventRecordExternal", "cudaEventWaitDefault", "cudaEventWaitExternal",
    "CUDART_VERSION",
] + list(_memory_names)
