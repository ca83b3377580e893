"""Memory API types, enums and flags (cuda-python's names and values), argument checks and
the host-synchronization helpers that allocation and copies share."""

from __future__ import annotations

import enum
import operator
import time

import streamq
from streamq import trace

from . import _context
from ._errors import CudaError, cudaError_t
from ._memory import as_address

__all__ = [
    "cudaMemcpyKind", "cudaMemoryType", "cudaMemPoolAttr", "cudaPointerAttributes", "cudaMemPool_t",
    "cuuint64_t", "cudaHostAllocDefault", "cudaHostAllocPortable", "cudaHostAllocMapped",
    "cudaHostAllocWriteCombined", "cudaHostRegisterDefault", "cudaHostRegisterPortable",
    "cudaHostRegisterMapped", "cudaHostRegisterIoMemory", "cudaHostRegisterReadOnly", "cudaMemAttachGlobal",
    "cudaMemAttachHost", "cudaMemAttachSingle", "cudaInvalidDeviceId",
]


class cudaMemcpyKind(enum.IntEnum):
    """Direction of a copy (CUDA's values)."""

    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaMemoryType(enum.IntEnum):
    """What a pointer points to (``cudaPointerAttributes.type``)."""

    cudaMemoryTypeUnregistered = 0
    cudaMemoryTypeHost = 1
    cudaMemoryTypeDevice = 2
    cudaMemoryTypeManaged = 3


class cudaMemPoolAttr(enum.IntEnum):
    """Memory pool attributes (CUDA's values)."""

    cudaMemPoolReuseFollowEventDependencies = 1
    cudaMemPoolReuseAllowOpportunistic = 2
    cudaMemPoolReuseAllowInternalDependencies = 3
    cudaMemPoolAttrReleaseThreshold = 4
    cudaMemPoolAttrReservedMemCurrent = 5
    cudaMemPoolAttrReservedMemHigh = 6
    cudaMemPoolAttrUsedMemCurrent = 7
    cudaMemPoolAttrUsedMemHigh = 8


cudaHostAllocDefault = 0
cudaHostAllocPortable = 1
cudaHostAllocMapped = 2
cudaHostAllocWriteCombined = 4
cudaHostRegisterDefault = 0
cudaHostRegisterPortable = 1
cudaHostRegisterMapped = 2
cudaHostRegisterIoMemory = 4
cudaHostRegisterReadOnly = 8
cudaMemAttachGlobal = 1
cudaMemAttachHost = 2
cudaMemAttachSingle = 4
cudaInvalidDeviceId = -2     # cudaPointerAttributes.device of unregistered memory

_HOST_ALLOC_FLAGS = cudaHostAllocPortable | cudaHostAllocMapped | cudaHostAllocWriteCombined
_HOST_REGISTER_FLAGS = (cudaHostRegisterPortable | cudaHostRegisterMapped | cudaHostRegisterIoMemory
                        | cudaHostRegisterReadOnly)
#: cudaDeviceProp.memPitch of current GPUs: the largest pitch a 2D copy accepts.
MAX_PITCH = (1 << 31) - 1
#: cudaMallocPitch rounds rows up to this many bytes (the facade's allocation alignment).
PITCH_ALIGN = 256

_INVALID = cudaError_t.cudaErrorInvalidValue
_K = cudaMemcpyKind


class cuuint64_t(int):
    """A 64-bit unsigned attribute value (cuda-python's ``cuuint64_t``): an int with ``getPtr``."""

    def __new__(cls, init_value: int = 0):
        value = operator.index(init_value)
        if not 0 <= value < 1 << 64:
            raise ValueError(f"cuuint64_t out of range: {value}")
        return super().__new__(cls, value)

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        """The value (cuda-python returns the address of the C value)."""
        return int(self)


class cudaPointerAttributes:
    """What :func:`cudaPointerGetAttributes` reports: ``type`` (cudaMemoryType),
    ``device``, ``devicePointer`` and ``hostPointer`` (0 where no such address exists)."""

    __slots__ = ("type", "device", "devicePointer", "hostPointer")

    def __init__(self, type=cudaMemoryType.cudaMemoryTypeUnregistered, device=cudaInvalidDeviceId,  # noqa: A002
                 devicePointer=0, hostPointer=0):
        self.type = cudaMemoryType(type)
        self.device = device
        self.devicePointer = devicePointer
        self.hostPointer = hostPointer

    def __repr__(self) -> str:
        return (f"cudaPointerAttributes(type={self.type.name}, device={self.device}, "
                f"devicePointer={self.devicePointer:#x}, hostPointer={self.hostPointer:#x})")


class cudaMemPool_t(_context.IntHandle):
    """A memory pool handle (cuda-python's ``cudaMemPool_t``): ``int(handle)`` is its value."""

    __slots__ = ()
    _kind = "cudaMemPool_t"


# -- argument checks -------------------------------------------------------------------------

def _size(value, name: str) -> int:
    """A byte count: an int >= 0 (bool and float refused)."""
    if isinstance(value, (bool, float)):
        raise CudaError(_INVALID, f"{name} must be an int, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise CudaError(_INVALID, f"{name} must be an int, got {type(value).__name__}") from None
    if n < 0:
        raise CudaError(_INVALID, f"{name} must be >= 0, got {n}")
    return n


def _kind(kind) -> cudaMemcpyKind:
    try:
        return cudaMemcpyKind(operator.index(kind))
    except (TypeError, ValueError):
        raise CudaError(cudaError_t.cudaErrorInvalidMemcpyDirection,
                        f"kind must be a cudaMemcpyKind (0-4), got {kind!r}") from None


def _address(ptr, name: str) -> int:
    """The int value of a pointer argument that must be an address (None counts as 0)."""
    if ptr is None:
        return 0
    address = as_address(ptr)
    if address is None:
        raise CudaError(_INVALID, f"{name} must be a pointer (int), got {type(ptr).__name__}")
    return address


def _flags(value, allowed: int, name: str) -> int:
    flags = operator.index(value)
    if flags < 0 or flags & ~allowed:
        raise CudaError(_INVALID, f"{name}: unknown flag bits in {flags:#x}")
    return flags


def _check_may_block(api_name: str) -> None:
    """Refuse a call that would wait for streams when made from work running on one."""
    queue = streamq.current_queue()
    if queue is None:
        return
    for dev in list(_context._devices):
        if any(s.queue is queue for s in list(dev.streams)):
            raise CudaError(cudaError_t.cudaErrorNotPermitted,
                            f"{api_name} would wait for the stream it is called from (host functions must "
                            "not make synchronizing CUDA calls)")


def _synchronize_devices(api_name: str) -> None:
    """Wait for the work of every device (the implicit synchronization of cudaFree & co.)."""
    start = time.perf_counter_ns()
    for dev in list(_context._devices):
        dev.synchronize()
    _host_sync(api_name, start)


def _host_sync(what: str, start_ns: int) -> None:
    if trace._sink is not None:
        trace.emit({"type": "host_sync", "what": what, "start_ns": start_ns, "end_ns": time.perf_counter_ns()})


def _wait(task, stream, api_name: str) -> None:
    """Block until ``task`` (a synchronous call's op) has run; surface a device fault."""
    if task is not None:
        start = time.perf_counter_ns()
        task.result()
        _host_sync(api_name, start)
    stream.device.check()
