"""CUDA runtime memory API: allocation, host memory and registration, pointer
information and memory pools (synchronicity rules: see ``_rt_memory.py``)."""

from __future__ import annotations

import operator
import os
import threading

import numpy as np

from . import _context
from ._context import current_device, resolve_stream
from ._context import device as _device
from ._errors import CudaError, api, cudaError_t
from ._memory import Allocation, Pool, Span, cgroup_room, meminfo, pool, release, resolve, retire, table
from ._rt_memory_types import (
    _HOST_ALLOC_FLAGS, _HOST_REGISTER_FLAGS, _INVALID, PITCH_ALIGN, _address, _check_may_block, _flags, _size,
    _synchronize_devices, cudaHostRegisterReadOnly, cudaInvalidDeviceId, cudaMemAttachGlobal, cudaMemAttachHost,
    cudaMemoryType, cudaMemPool_t, cudaMemPoolAttr, cudaPointerAttributes, cuuint64_t,
)

__all__ = [
    # allocation
    "cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cudaMallocFromPoolAsync", "cudaMallocHost",
    "cudaHostAlloc", "cudaFreeHost", "cudaMallocManaged", "cudaMallocPitch", "cudaHostRegister",
    "cudaHostUnregister", "cudaHostGetDevicePointer", "cudaHostGetFlags",
    # information and pools
    "cudaMemGetInfo", "cudaPointerGetAttributes", "cudaDeviceGetDefaultMemPool", "cudaDeviceGetMemPool",
    "cudaMemPoolTrimTo", "cudaMemPoolGetAttribute", "cudaMemPoolSetAttribute",
]


# -- allocation ------------------------------------------------------------------------------

@api(1)
def cudaMalloc(size):
    """Allocate ``size`` bytes of device memory on the current device; returns the pointer
    (0 for size 0). Memory comes from the device's caching pool, on its NUMA node."""
    size = _size(size, "size")
    dev = current_device()
    dev.check()
    return pool(dev.index).allocate(size).base if size else 0


@api()
def cudaFree(devPtr):
    """Free device or managed memory from cudaMalloc/cudaMallocAsync/cudaMallocManaged/
    cudaMallocPitch, after the devices finish their queued work. ``cudaFree(0)`` does nothing."""
    address = _address(devPtr, "devPtr")
    if address == 0:
        current_device().check()
        return
    _check_may_block("cudaFree")
    alloc = retire(address, ("device", "managed"))
    _synchronize_devices("cudaFree")
    release(alloc)
    current_device().check()      # "may also return error codes from previous, asynchronous launches"


@api(1)
def cudaMallocAsync(size, hStream):
    """Allocate ``size`` bytes from the default pool of the stream's device, usable in
    stream order (the block is ready at once: the pool holds only completed frees)."""
    size = _size(size, "size")
    stream = resolve_stream(hStream)
    return _malloc_async(pool(stream.device.index), size, stream)


@api(1)
def cudaMallocFromPoolAsync(size, memPool, stream):
    """Like cudaMallocAsync, from the pool ``memPool``."""
    size = _size(size, "size")
    target = _pool_of_handle(memPool)
    return _malloc_async(target, size, resolve_stream(stream))


def _malloc_async(target: Pool, size: int, stream) -> int:
    stream.device.check()
    if stream.capture is not None:
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                        "the facade does not capture stream-ordered allocations into graphs")
    if size == 0:
        return 0
    alloc = target.allocate(size)
    alloc.stream = stream
    return alloc.base


@api()
def cudaFreeAsync(devPtr, hStream):
    """Free device memory in stream order: the block returns to its pool when the stream
    reaches this point (the pointer is invalid for new calls at once)."""
    address = _address(devPtr, "devPtr")
    stream = resolve_stream(hStream)
    stream.device.check()
    if address == 0:
        return
    if stream.capture is not None:
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                        "the facade does not capture stream-ordered frees into graphs")
    alloc = retire(address, ("device",))

    def enqueue_release(launch, deferred=False):
        try:
            launch(release, (alloc,), name="cudaFreeAsync", kind="free",
                   on_error=lambda _err: release(alloc))
        except CudaError:
            release(alloc)      # the device failed meanwhile: nothing will run on the stream
            if not deferred:    # deferred: the flush's caller meets the sticky error itself
                raise

    # Kernels the stream's fusion window holds may write the block: they need not (it is
    # dead), and the free waits for them, so the window's chain goes on across the free.
    window = stream.window
    if window is not None and window.discard(alloc.base, alloc.base + alloc.capacity,
                                             then=lambda: enqueue_release(stream._launch, True)):
        return
    enqueue_release(stream.launch)


@api(1)
def cudaMallocHost(size):
    """Allocate ``size`` bytes of pinned host memory (0 for size 0)."""
    return _host_alloc(_size(size, "size"), 0)


@api(1)
def cudaHostAlloc(size, flags):
    """Allocate pinned host memory with cudaHostAlloc* ``flags`` (all are accepted; on
    a CPU every pinned block is already mapped and portable)."""
    return _host_alloc(_size(size, "size"), _flags(flags, _HOST_ALLOC_FLAGS, "flags"))


def _host_alloc(size: int, flags: int) -> int:
    dev = current_device()
    dev.check()
    if size == 0:
        return 0
    alloc = pool(None, "host").allocate(size, device=dev.index)
    alloc.flags = flags
    return alloc.base


@api()
def cudaFreeHost(ptr):
    """Free pinned host memory from cudaMallocHost/cudaHostAlloc, after the devices
    finish their queued work. ``cudaFreeHost(0)`` does nothing."""
    address = _address(ptr, "ptr")
    if address == 0:
        return
    _check_may_block("cudaFreeHost")
    alloc = retire(address, ("host",))
    _synchronize_devices("cudaFreeHost")
    release(alloc)


@api(1)
def cudaMallocManaged(size, flags):
    """Allocate ``size`` bytes of managed memory on the current device's NUMA node;
    ``flags`` must be cudaMemAttachGlobal or cudaMemAttachHost; size 0 is an error."""
    size = _size(size, "size")
    flags = operator.index(flags)
    if flags not in (cudaMemAttachGlobal, cudaMemAttachHost):
        raise CudaError(_INVALID, f"flags must be cudaMemAttachGlobal or cudaMemAttachHost, got {flags}")
    if size == 0:
        raise CudaError(_INVALID, "cudaMallocManaged: size must be > 0")
    dev = current_device()
    dev.check()
    alloc = pool(dev.index, "managed").allocate(size)
    alloc.flags = flags
    return alloc.base


@api(2)
def cudaMallocPitch(width, height):
    """Allocate ``height`` rows of ``width`` bytes; returns (devPtr, pitch) with pitch
    ``width`` rounded up to a multiple of 256 bytes."""
    width = _size(width, "width")
    height = _size(height, "height")
    pitch = -(-width // PITCH_ALIGN) * PITCH_ALIGN
    dev = current_device()
    dev.check()
    if pitch * height == 0:
        return 0, pitch
    return pool(dev.index).allocate(pitch * height).base, pitch


@api()
def cudaHostRegister(ptr, size, flags):
    """Make ``size`` bytes of host memory at ``ptr`` (an array, or an int address)
    pinned: copies from it need no staging and run fully asynchronously. The
    array is kept alive until cudaHostUnregister. Read-only memory needs
    cudaHostRegisterReadOnly."""
    size = _size(size, "size")
    flags = _flags(flags, _HOST_REGISTER_FLAGS, "flags")
    if size == 0:
        raise CudaError(_INVALID, "cudaHostRegister: size must be > 0")
    span = resolve(ptr, size, writable=not flags & cudaHostRegisterReadOnly, what="ptr")
    if span.alloc is not None:
        code = (cudaError_t.cudaErrorHostMemoryAlreadyRegistered if span.alloc.memory in ("host", "registered")
                else _INVALID)
        raise CudaError(code, f"ptr {span.address:#x} is already {span.alloc.memory} facade memory")
    alloc = Allocation(span.address, size, size, current_device().index, "registered", span.view)
    alloc.flags = flags
    with _register_lock:
        if table.overlapping(span.address, size) is not None:
            raise CudaError(cudaError_t.cudaErrorHostMemoryAlreadyRegistered,
                            f"[{span.address:#x}, +{size}) overlaps registered or facade memory")
        table.add(alloc)


_register_lock = threading.Lock()


@api()
def cudaHostUnregister(ptr):
    """Undo cudaHostRegister for the range starting at ``ptr`` (after queued work finishes)."""
    address = _registered_address(ptr)
    alloc = table.get(address)
    if alloc is None or alloc.memory != "registered":
        raise CudaError(cudaError_t.cudaErrorHostMemoryNotRegistered,
                        f"{address:#x} is not the start of a cudaHostRegister range")
    _check_may_block("cudaHostUnregister")
    _synchronize_devices("cudaHostUnregister")
    table.remove(address)


def _registered_address(ptr) -> int:
    if isinstance(ptr, np.ndarray) or hasattr(ptr, "__array_interface__"):
        return np.asarray(ptr).__array_interface__["data"][0]
    address = _address(ptr, "ptr")
    if address == 0:
        raise CudaError(_INVALID, "ptr is a null pointer")
    return address


@api(1)
def cudaHostGetDevicePointer(pHost, flags):
    """The device address of pinned, registered or managed memory (the same address:
    host and device share one address space). ``flags`` must be 0."""
    if operator.index(flags) != 0:
        raise CudaError(_INVALID, "flags must be 0")
    span = _host_side_block(pHost)
    return span.address


@api(1)
def cudaHostGetFlags(pHost):
    """The flags pinned or registered host memory was allocated with."""
    span = _host_side_block(pHost)
    if span.memory not in ("host", "registered"):
        raise CudaError(_INVALID, f"{span.address:#x} is {span.memory} memory, not pinned host memory")
    return span.alloc.flags


def _host_side_block(ptr) -> Span:
    span = resolve(ptr, 0, writable=False, what="pHost")
    if span.alloc is None or span.memory == "device":
        raise CudaError(_INVALID, f"{span.address:#x} is not pinned, registered or managed memory")
    return span


# -- information -----------------------------------------------------------------------------

@api(2)
def cudaMemGetInfo():
    """(free, total) bytes of the current device's memory: its NUMA node's MemFree and
    MemTotal (``/proc/meminfo``'s MemAvailable and MemTotal without NUMA), capped by
    the cgroup's limit. Bytes the pools cache stay counted as used."""
    dev = current_device()
    dev.check()
    node = dev.cmg.numa_node
    path = f"/sys/devices/system/node/node{node}/meminfo"
    try:
        if node is not None and os.path.exists(path):
            info = meminfo(path)
            free, total = info["MemFree"], info["MemTotal"]
        else:
            info = meminfo("/proc/meminfo")
            free, total = info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError) as exc:
        raise CudaError(cudaError_t.cudaErrorNotSupported, f"cannot read the memory size: {exc}") from exc
    room = cgroup_room()
    return (free, total) if room is None else (min(free, room), total)


_TYPE_OF = {"device": cudaMemoryType.cudaMemoryTypeDevice, "host": cudaMemoryType.cudaMemoryTypeHost,
            "registered": cudaMemoryType.cudaMemoryTypeHost, "managed": cudaMemoryType.cudaMemoryTypeManaged}


@api(1)
def cudaPointerGetAttributes(ptr):
    """What ``ptr`` points to: device, pinned host, managed, or unregistered (any other
    address, freed facade memory included: device ``cudaInvalidDeviceId``)."""
    if isinstance(ptr, np.ndarray) or hasattr(ptr, "__array_interface__"):
        address = np.asarray(ptr).__array_interface__["data"][0]
    else:
        address = _address(ptr, "ptr")
    if address == 0:
        raise CudaError(_INVALID, "ptr is a null pointer")
    found = table.find(address)
    if found is None:
        return cudaPointerAttributes(cudaMemoryType.cudaMemoryTypeUnregistered, cudaInvalidDeviceId, 0, address)
    alloc = found[0]
    host = 0 if alloc.memory == "device" else address
    return cudaPointerAttributes(_TYPE_OF[alloc.memory], alloc.device, address, host)


# -- memory pools ----------------------------------------------------------------------------

_POOL_HANDLE_BASE = 0x6D50_0000


def _pool_of_handle(memPool) -> Pool:
    try:
        value = int(memPool)
    except (TypeError, ValueError):
        raise CudaError(_INVALID, f"not a memory pool handle: {memPool!r}") from None
    index = value - _POOL_HANDLE_BASE
    if not 0 <= index < _context.device_count():
        raise CudaError(_INVALID, f"unknown memory pool handle {value:#x}")
    return pool(index)


@api(1)
def cudaDeviceGetDefaultMemPool(device):
    """The default memory pool of ``device`` (the one cudaMallocAsync and, in the
    facade, cudaMalloc draw from)."""
    return cudaMemPool_t(_POOL_HANDLE_BASE + _device(device).index)


@api(1)
def cudaDeviceGetMemPool(device):
    """The current memory pool of ``device`` (always its default pool)."""
    return cudaMemPool_t(_POOL_HANDLE_BASE + _device(device).index)


@api()
def cudaMemPoolTrimTo(memPool, minBytesToKeep):
    """Return cached blocks to the OS until the pool reserves at most ``minBytesToKeep``
    bytes (live blocks are never released)."""
    target = _pool_of_handle(memPool)
    keep = _size(minBytesToKeep, "minBytesToKeep")
    target.trim(max(0, keep - target.used))


_A = cudaMemPoolAttr
#: Reuse policies the pool implements: it reuses blocks whose free has completed (opportunistic),
#: never a block whose free is still queued (so it follows no events and adds no dependencies).
_REUSE = {_A.cudaMemPoolReuseFollowEventDependencies: 0, _A.cudaMemPoolReuseAllowOpportunistic: 1,
          _A.cudaMemPoolReuseAllowInternalDependencies: 0}


def _attr(attr) -> cudaMemPoolAttr:
    try:
        return cudaMemPoolAttr(operator.index(attr))
    except (TypeError, ValueError):
        raise CudaError(_INVALID, f"attr must be a cudaMemPoolAttr, got {attr!r}") from None


@api(1)
def cudaMemPoolGetAttribute(memPool, attr):
    """An attribute of the pool, as it really is: reuse policies (int), release
    threshold and reserved/used bytes and their high watermarks (cuuint64_t)."""
    target = _pool_of_handle(memPool)
    attr = _attr(attr)
    if attr in _REUSE:
        return _REUSE[attr]
    value = {_A.cudaMemPoolAttrReleaseThreshold: target.release_threshold,
             _A.cudaMemPoolAttrReservedMemCurrent: target.reserved,
             _A.cudaMemPoolAttrReservedMemHigh: target.reserved_high,
             _A.cudaMemPoolAttrUsedMemCurrent: target.used,
             _A.cudaMemPoolAttrUsedMemHigh: target.used_high}[attr]
    return cuuint64_t(value)


@api()
def cudaMemPoolSetAttribute(memPool, attr, value):
    """Set the release threshold (cached bytes beyond it go back to the OS at once),
    reset a high watermark (value must be 0), or confirm a reuse policy (other
    values: cudaErrorNotSupported). The current-usage attributes are read-only."""
    target = _pool_of_handle(memPool)
    attr = _attr(attr)
    number = _size(value, "value")
    if attr in _REUSE:
        if number != _REUSE[attr]:
            raise CudaError(cudaError_t.cudaErrorNotSupported,
                            f"the facade's pool cannot change {attr.name} (it is {_REUSE[attr]})")
    elif attr == _A.cudaMemPoolAttrReleaseThreshold:
        if number >= 1 << 64:
            raise CudaError(_INVALID, "the release threshold is a 64-bit value")
        target.release_threshold = number
        if target.reserved > number:
            target.trim(max(0, number - target.used))
    elif attr in (_A.cudaMemPoolAttrReservedMemHigh, _A.cudaMemPoolAttrUsedMemHigh):
        if number != 0:
            raise CudaError(_INVALID, f"{attr.name} can only be reset (value 0)")
        if attr == _A.cudaMemPoolAttrReservedMemHigh:
            target.reserved_high = target.reserved
        else:
            target.used_high = target.used
    else:
        raise CudaError(_INVALID, f"{attr.name} is read-only")
