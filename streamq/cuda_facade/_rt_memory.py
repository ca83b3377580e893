"""CUDA runtime memory API: allocation, copies, sets, pools and pointer attributes.

cuda-python's names, argument order and return tuples (``(cudaError_t, *results)``);
``runtime.py`` re-exports everything in ``__all__``.

Pointers are ints (addresses of facade memory, or of host memory) or host
objects with the buffer protocol / ``__array_interface__`` (numpy arrays, which
are pageable host memory unless they lie in a cudaMallocHost block or were
passed to cudaHostRegister). A raw int that is not facade memory is taken as a
host address only if it lies in a mapped region of this process (``/proc/self/maps``)
that is readable (a source) or writable (a destination), outside device files
and freed facade memory — pass ``arr.ctypes.data`` only while ``arr`` is alive;
passing the array itself is safer. Every pointer and size is checked before a
byte moves; bad input returns an error code, never crashes. (A raw address into
live memory the process uses for something else, such as Python's own heap, is
memory like any other: the facade cannot tell.)

Synchronicity follows CUDA's "API synchronization behavior" page:

- ``cudaMemcpy`` runs on the default stream (so after the legacy stream's prior
  work) and returns when the copy is done, except device-to-device copies,
  which the page says perform no host-side synchronization (they return once
  queued); those touching managed memory wait too (Unified Memory transfers are
  fully synchronous).
- ``cudaMemcpyAsync``: from pageable host memory the source is staged (copied
  into a facade buffer) before the call returns, and the device write happens
  in stream order; into pageable memory the copy completes in stream order (the
  host must synchronize before reading); host-to-host copies are fully
  synchronous; everything else is fully asynchronous. (The queue log shows a
  staged copy reading the user's source, the data it carries.)
- ``cudaMemset`` is asynchronous unless the target is pinned host or managed
  memory; ``cudaMemsetAsync`` always is.
- ``cudaFree``/``cudaFreeHost``/``cudaHostUnregister`` synchronize (as CUDA's
  implicit synchronization does) before the memory can be reused;
  ``cudaFreeAsync`` returns the block to the pool when the stream reaches it.

Choices where CUDA leaves things open (documented deviations):

- A pointer that contradicts the copy kind (a device pointer where the kind
  says host, or vice versa; CUDA calls this undefined) returns
  ``cudaErrorInvalidMemcpyDirection``, as does a kind that is not a
  ``cudaMemcpyKind``. Pinned host memory is host memory for explicit kinds;
  managed memory is both; ``cudaMemcpyDefault`` infers the direction.
- Overlapping copies (CUDA: undefined) behave like ``memmove``.
- cudaMalloc and cudaMallocAsync share one caching pool per device, the one
  ``cudaDeviceGetDefaultMemPool`` returns, so its attributes count both. Its
  release threshold defaults to UINT64_MAX (keep freed blocks: the point of the
  cache) and is applied when a block is freed rather than at the next
  synchronization.
- cudaMallocAsync/cudaFreeAsync and copies that involve pageable memory are
  refused while the stream is capturing (``cudaErrorStreamCaptureUnsupported``).
- A synchronizing call made from work running on a facade stream (a host
  function) returns ``cudaErrorNotPermitted`` instead of deadlocking.
"""

from __future__ import annotations

import enum
import operator
import os
import threading
import time

import numpy as np

import streamq
from streamq import trace

from . import _context
from ._context import current_device, resolve_stream
from ._context import device as _device
from ._errors import CudaError, api, cudaError_t
from ._memory import (PAGEABLE, Allocation, Pool, Span, as_address, cgroup_room, meminfo, note_host_read, pool,
                      release, resolve, resolve_fast, retire, size_class, table)

__all__ = [
    # types, enums and constants
    "cudaMemcpyKind", "cudaMemoryType", "cudaMemPoolAttr", "cudaPointerAttributes", "cudaMemPool_t",
    "cuuint64_t", "cudaHostAllocDefault", "cudaHostAllocPortable", "cudaHostAllocMapped",
    "cudaHostAllocWriteCombined", "cudaHostRegisterDefault", "cudaHostRegisterPortable",
    "cudaHostRegisterMapped", "cudaHostRegisterIoMemory", "cudaHostRegisterReadOnly", "cudaMemAttachGlobal",
    "cudaMemAttachHost", "cudaMemAttachSingle", "cudaInvalidDeviceId",
    # allocation
    "cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cudaMallocFromPoolAsync", "cudaMallocHost",
    "cudaHostAlloc", "cudaFreeHost", "cudaMallocManaged", "cudaMallocPitch", "cudaHostRegister",
    "cudaHostUnregister", "cudaHostGetDevicePointer", "cudaHostGetFlags",
    # copies and sets
    "cudaMemcpy", "cudaMemcpyAsync", "cudaMemcpy2D", "cudaMemcpy2DAsync", "cudaMemcpyPeer",
    "cudaMemcpyPeerAsync", "cudaMemset", "cudaMemsetAsync", "cudaMemset2D", "cudaMemset2DAsync",
    # information and pools
    "cudaMemGetInfo", "cudaPointerGetAttributes", "cudaDeviceGetDefaultMemPool", "cudaDeviceGetMemPool",
    "cudaMemPoolTrimTo", "cudaMemPoolGetAttribute", "cudaMemPoolSetAttribute",
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
#: Copies and sets of at least this many bytes are split across the cores of the stream's CMG
#: (``STREAMQ_COPY_SPLIT_BYTES``), in parts of at least ``_MIN_PART`` bytes ...
COPY_SPLIT_BYTES = int(os.environ.get("STREAMQ_COPY_SPLIT_BYTES", 64 << 20))
_MIN_PART = 8 << 20
#: ... when the CMG has at least this many cores: below that one core already saturates the
#: memory bus (on the 2-core development machine two threads copy 0.9x as fast as one).
COPY_SPLIT_MIN_CORES = 4

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


class cudaMemPool_t:
    """A memory pool handle (cuda-python's ``cudaMemPool_t``): ``int(handle)`` is its value."""

    __slots__ = ("_value",)

    def __init__(self, init_value: int = 0):
        self._value = int(init_value)

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        """The handle's value."""
        return self._value

    def __eq__(self, other) -> bool:
        try:
            return self._value == int(other)
        except (TypeError, ValueError):
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<cudaMemPool_t {self._value:#x}>"


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


# -- the ops that run on streams -------------------------------------------------------------

def _parts(nbytes: int) -> int:
    """How many cores of the running worker's CMG a copy or set of ``nbytes`` should use."""
    if nbytes < COPY_SPLIT_BYTES:
        return 1
    cmg = streamq.current_cmg()
    if cmg is None or cmg.ncores < COPY_SPLIT_MIN_CORES:
        return 1
    return max(1, min(cmg.ncores, nbytes // _MIN_PART))


def _copy_bytes(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src, like memmove when they overlap; big copies use the CMG's cores."""
    parts = _parts(dst.nbytes) if dst.ndim == 1 else 1
    if parts == 1 or np.may_share_memory(dst, src):
        np.copyto(dst, src)
        return
    step = -(-dst.nbytes // parts)
    step += -step % 4096
    streamq.global_queue(streamq.current_cmg()).apply(
        -(-dst.nbytes // step), lambda i: np.copyto(dst[i * step:(i + 1) * step], src[i * step:(i + 1) * step]))


def _fill_bytes(dst: np.ndarray, value: int) -> None:
    """Set every byte of ``dst`` to ``value``; big sets use the CMG's cores."""
    parts = _parts(dst.nbytes) if dst.ndim == 1 else 1
    if parts == 1:
        dst.fill(value)
        return
    step = -(-dst.nbytes // parts)
    step += -step % 4096
    streamq.global_queue(streamq.current_cmg()).apply(
        -(-dst.nbytes // step), lambda i: dst[i * step:(i + 1) * step].fill(value))


class _Staging:
    """Host buffers that pageable sources are staged into, kept for reuse (no page faults)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._free: dict[int, list[np.ndarray]] = {}
        self.held = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of at least ``nbytes``."""
        cls = size_class(nbytes)
        with self._lock:
            blocks = self._free.get(cls)
            if blocks:
                self.held -= cls
                return blocks.pop()
        return np.empty(cls, np.uint8)

    def give(self, buffer: np.ndarray) -> None:
        """Keep ``buffer`` for a later copy, if the cache has room."""
        with self._lock:
            if self.held + buffer.nbytes <= self.limit:
                self._free.setdefault(buffer.nbytes, []).append(buffer)
                self.held += buffer.nbytes


_staging = _Staging(256 << 20)


def _copy_staged(dst: np.ndarray, stage: np.ndarray, buffer: np.ndarray) -> None:
    _copy_bytes(dst, stage)
    _staging.give(buffer)


# -- copies ----------------------------------------------------------------------------------

_SIDE = {_K.cudaMemcpyHostToHost: ("H", "H"), _K.cudaMemcpyHostToDevice: ("H", "D"),
         _K.cudaMemcpyDeviceToHost: ("D", "H"), _K.cudaMemcpyDeviceToDevice: ("D", "D")}


def _direction(kind: cudaMemcpyKind, dst: Span, src: Span) -> str:
    """'HtoD' etc. for the copy, after checking the pointers agree with ``kind``."""
    if kind == _K.cudaMemcpyDefault:
        return ("D" if src.on_device else "H") + "to" + ("D" if dst.on_device else "H")
    src_side, dst_side = _SIDE[kind]
    for span, side, name in ((src, src_side, "src"), (dst, dst_side, "dst")):
        if not (span.on_device if side == "D" else span.on_host):
            raise CudaError(cudaError_t.cudaErrorInvalidMemcpyDirection,
                            f"{kind.name}: {name} {span.address:#x} is {span.memory} memory, "
                            f"not {'device' if side == 'D' else 'host'} memory")
    return f"{src_side}to{dst_side}"


def _memcpy(dst: Span, src: Span, dview: np.ndarray, sview: np.ndarray, kind: cudaMemcpyKind, stream,
            synchronous: bool, api_name: str) -> None:
    """Run one checked copy on ``stream`` with CUDA's host synchronization rules."""
    direction = _direction(kind, dst, src)
    managed = dst.memory == "managed" or src.memory == "managed"
    pageable = not (dst.pinned and src.pinned)
    if synchronous:
        wait = managed or direction != "DtoD"
        stage = False
    else:
        wait = direction == "HtoH"
        stage = src.memory == PAGEABLE and not wait
    if wait:
        _check_may_block(api_name)
    if stream.capture is not None and (pageable or wait):
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                        f"{api_name}: copies involving pageable memory or waiting for the host cannot be "
                        "captured")
    reads, writes = (src.ref(sview),), (dst.ref(dview),)
    if stage:
        buffer = _staging.take(sview.nbytes)
        staged = buffer[:sview.size].reshape(sview.shape)
        np.copyto(staged, sview)    # the source is read before the call returns
        task = stream.launch(_copy_staged, (dview, staged, buffer), name=f"memcpy.{direction}", kind="memcpy",
                             reads=reads, writes=writes)
    else:
        task = stream.launch(_copy_bytes, (dview, sview), name=f"memcpy.{direction}", kind="memcpy",
                             reads=reads, writes=writes)
    if wait:
        _wait(task, stream, api_name)
        if src.alloc is not None and not dst.on_device:
            note_host_read(src.address, sview.nbytes)


def _copy_1d(dst, src, count, kind, stream, synchronous: bool, api_name: str) -> None:
    kind = _kind(kind)
    count = _size(count, "count")
    stream = resolve_stream(stream)
    stream.device.check()
    if count == 0:
        return
    d = resolve(dst, count, writable=True, what="dst")
    s = resolve(src, count, writable=False, what="src")
    _memcpy(d, s, d.view, s.view, kind, stream, synchronous, api_name)


@api()
def cudaMemcpy(dst, src, count, kind):
    """Copy ``count`` bytes from ``src`` to ``dst`` on the default stream; returns when
    done (device-to-device copies return once queued, as CUDA documents)."""
    _copy_1d(dst, src, count, kind, 0, True, "cudaMemcpy")


@api()
def cudaMemcpyAsync(dst, src, count, kind, stream):
    """Copy ``count`` bytes in stream order (pageable sources are staged before return)."""
    _copy_1d(dst, src, count, kind, stream, False, "cudaMemcpyAsync")


def _copy_2d(dst, dpitch, src, spitch, width, height, kind, stream, synchronous, api_name) -> None:
    kind = _kind(kind)
    dpitch, spitch = _size(dpitch, "dpitch"), _size(spitch, "spitch")
    width, height = _size(width, "width"), _size(height, "height")
    stream = resolve_stream(stream)
    stream.device.check()
    if dpitch > MAX_PITCH or spitch > MAX_PITCH:
        raise CudaError(cudaError_t.cudaErrorInvalidPitchValue, f"pitch above the maximum {MAX_PITCH}")
    if width > dpitch or width > spitch:
        raise CudaError(cudaError_t.cudaErrorInvalidPitchValue,
                        f"width {width} exceeds dpitch {dpitch} or spitch {spitch}")
    if width == 0 or height == 0:
        return
    d = resolve(dst, (height - 1) * dpitch + width, writable=True, what="dst")
    s = resolve(src, (height - 1) * spitch + width, writable=False, what="src")
    if dpitch == spitch == width:
        _memcpy(d, s, d.view, s.view, kind, stream, synchronous, api_name)
        return
    dview = np.lib.stride_tricks.as_strided(d.view, (height, width), (dpitch, 1))
    sview = np.lib.stride_tricks.as_strided(s.view, (height, width), (spitch, 1), writeable=False)
    _memcpy(d, s, dview, sview, kind, stream, synchronous, api_name)


@api()
def cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind):
    """Copy ``height`` rows of ``width`` bytes between pitched buffers (as cudaMemcpy)."""
    _copy_2d(dst, dpitch, src, spitch, width, height, kind, 0, True, "cudaMemcpy2D")


@api()
def cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream):
    """Copy ``height`` rows of ``width`` bytes between pitched buffers (as cudaMemcpyAsync)."""
    _copy_2d(dst, dpitch, src, spitch, width, height, kind, stream, False, "cudaMemcpy2DAsync")


def _copy_peer(dst, dstDevice, src, srcDevice, count, stream, synchronous, api_name) -> None:
    count = _size(count, "count")
    _device(dstDevice), _device(srcDevice)
    stream = resolve_stream(stream)
    stream.device.check()
    if count == 0:
        return
    d = resolve(dst, count, writable=True, what="dst", allow_host=False)
    s = resolve(src, count, writable=False, what="src", allow_host=False)
    for span, dev, name in ((d, dstDevice, "dst"), (s, srcDevice, "src")):
        if not span.on_device or span.alloc.device != dev:
            raise CudaError(_INVALID, f"{name} {span.address:#x} is not device memory of device {dev}")
    _memcpy(d, s, d.view, s.view, _K.cudaMemcpyDeviceToDevice, stream, synchronous, api_name)


@api()
def cudaMemcpyPeer(dst, dstDevice, src, srcDevice, count):
    """Copy ``count`` bytes from device ``srcDevice``'s memory to ``dstDevice``'s."""
    _copy_peer(dst, dstDevice, src, srcDevice, count, 0, True, "cudaMemcpyPeer")


@api()
def cudaMemcpyPeerAsync(dst, dstDevice, src, srcDevice, count, stream):
    """cudaMemcpyPeer in stream order."""
    _copy_peer(dst, dstDevice, src, srcDevice, count, stream, False, "cudaMemcpyPeerAsync")


# -- sets ------------------------------------------------------------------------------------

def _memset(devPtr, value, count, stream, synchronous: bool, api_name: str) -> None:
    value = operator.index(value) & 0xFF          # C converts the int to unsigned char
    if type(count) is not int or count < 0:
        count = _size(count, "count")
    stream = resolve_stream(stream)
    if count == 0:
        stream.device.check()
        return
    span = resolve_fast(devPtr, count) if type(devPtr) is int else None
    if span is None:
        span = resolve(devPtr, count, writable=True, what="devPtr", allow_host=False)
    view = span.view
    if count < COPY_SPLIT_BYTES:
        fn, args = view.fill, (value,)
    else:
        fn, args = _fill_bytes, (view, value)
    task = stream.launch(fn, args, name="memset", kind="memset", writes=(span.ref(),))
    if synchronous and span.memory != "device":   # pinned host or managed: fully synchronous
        _check_may_block(api_name)
        _wait(task, stream, api_name)


@api()
def cudaMemset(devPtr, value, count):
    """Set ``count`` bytes at ``devPtr`` to ``value`` (its low byte) on the default stream."""
    _memset(devPtr, value, count, 0, True, "cudaMemset")


@api()
def cudaMemsetAsync(devPtr, value, count, stream):
    """Set ``count`` bytes at ``devPtr`` to ``value`` (its low byte) in stream order."""
    _memset(devPtr, value, count, stream, False, "cudaMemsetAsync")


def _memset_2d(devPtr, pitch, value, width, height, stream, synchronous, api_name) -> None:
    value = operator.index(value) & 0xFF
    pitch, width, height = _size(pitch, "pitch"), _size(width, "width"), _size(height, "height")
    stream = resolve_stream(stream)
    stream.device.check()
    if width > pitch:
        raise CudaError(_INVALID, f"width {width} exceeds pitch {pitch}")
    if width == 0 or height == 0:
        return
    span = resolve(devPtr, (height - 1) * pitch + width, writable=True, what="devPtr", allow_host=False)
    view = np.lib.stride_tricks.as_strided(span.view, (height, width), (pitch, 1))
    task = stream.launch(view.fill, (value,), name="memset", kind="memset", writes=(span.ref(view),))
    if synchronous and span.memory != "device":
        _check_may_block(api_name)
        _wait(task, stream, api_name)


@api()
def cudaMemset2D(devPtr, pitch, value, width, height):
    """Set ``height`` rows of ``width`` bytes (rows ``pitch`` apart) to ``value``."""
    _memset_2d(devPtr, pitch, value, width, height, 0, True, "cudaMemset2D")


@api()
def cudaMemset2DAsync(devPtr, pitch, value, width, height, stream):
    """cudaMemset2D in stream order."""
    _memset_2d(devPtr, pitch, value, width, height, stream, False, "cudaMemset2DAsync")


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
