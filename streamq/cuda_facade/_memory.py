"""Facade memory: the allocation table, the caching pool per device, pointer checks.

Every pointer the facade hands out is the real address of a numpy-backed block
(256-byte aligned, like cudaMalloc's; big blocks start half a page into their
mapping, see :func:`_raw_block`). The :class:`AllocationTable` knows every
live block, so each pointer an API call receives is checked — unknown address,
freed block, or a range running past the block's end — before a byte is touched.

Device blocks come from a :class:`Pool` per device, placed on the device's NUMA
node. A freed block goes back to the pool, not to the OS, and is handed out
again for a request of similar size, as PyTorch's caching allocator and CUDA's
stream-ordered pools do; :meth:`Pool.trim` returns cached blocks to the OS.
While a freed block sits in a pool the table remembers its range as *held*, so
a stale pointer into it is refused rather than taken for host memory.

Memory the facade does not own (host arrays, raw host addresses) is checked by
:func:`resolve`: objects with the buffer protocol or ``__array_interface__``
describe their own extent; a raw int address is accepted only if it lies in a
mapped region of the process with the needed permissions (``/proc/self/maps``,
cached and re-read on a miss, each hit re-confirmed with ``msync`` so that an
unmapped range is never touched).
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import mmap
import operator
import os
import threading
import time

import numpy as np

import streamq
from streamq import trace
from streamq.memory import _numa, _touch

from ._errors import CudaError, cudaError_t

__all__ = ["Allocation", "AllocationTable", "table", "Pool", "pool", "pools", "free", "retire", "release",
           "release_device", "BufferRef", "ALIGN", "Span", "resolve", "resolve_fast", "device_view", "typed_view",
           "note_host_read", "note_host_write", "host_maps", "HostMaps", "meminfo", "available_bytes",
           "cgroup_room", "as_address", "size_class",
           "MEMORY_KINDS", "PAGEABLE"]

ALIGN = 256
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SMALL = 64 * 1024           # below this, blocks come from numpy's allocator (no NUMA placement)
_MIN_BLOCK = 512
_BLOCK_OFFSET = 2048         # where a big block starts in its first page (see _raw_block)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)   # Linux >= 5.14
UINT64_MAX = (1 << 64) - 1

#: What a pointer can point to: facade blocks ("device", "host" = pinned, "managed",
#: "registered" = host memory made pinned by cudaHostRegister) or plain host memory.
MEMORY_KINDS = ("device", "host", "managed", "registered")
PAGEABLE = "pageable"

_INVALID = cudaError_t.cudaErrorInvalidValue


class Allocation:
    """One block of facade memory: [base, base + size) backed by ``array`` (uint8)."""

    __slots__ = ("base", "size", "capacity", "device", "memory", "array", "stream", "id", "flags", "spans")

    def __init__(self, base: int, size: int, capacity: int, device: int | None, memory: str,
                 array: np.ndarray):
        self.base = base
        self.size = size            # bytes the user asked for (the checked extent)
        self.capacity = capacity    # bytes the block really has (pool size class)
        self.device = device        # device index (for host memory: the device current at allocation)
        self.memory = memory        # "device", "host" (pinned), "managed" or "registered"
        self.array = array          # uint8 view of exactly ``capacity`` bytes at ``base``
        self.stream = None          # for cudaMallocAsync blocks: the stream they were allocated on
        self.id = next(_alloc_ids)
        self.flags = 0              # cudaHostAlloc / cudaHostRegister / cudaMallocManaged flags
        self.spans = None           # {nbytes: Span} of whole-prefix spans, built by resolve_fast

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        """uint8 view of ``nbytes`` at ``offset`` (already range-checked by the caller)."""
        return self.array[offset:offset + nbytes]

    def __repr__(self) -> str:
        return f"<Allocation {self.memory} {self.base:#x}+{self.size} device={self.device}>"


_alloc_ids = itertools.count(1)


def _raw_block(nbytes: int, cmg) -> np.ndarray:
    """A fresh, 256-byte aligned uint8 array of ``nbytes`` (pages on ``cmg``'s node if big).

    Big blocks are fresh anonymous mappings advised to use transparent huge pages
    (as numpy's own allocator does: 512x fewer page faults on first touch) and
    made resident at once, as device and pinned memory are: bound to the CMG's
    NUMA node with libnuma, then populated by the kernel (MADV_POPULATE_WRITE);
    without libnuma a worker pinned to the CMG touches every page (streamq's
    first-touch placement). They start half a page into their mapping: host
    arrays from malloc start a few bytes past a page boundary, and copies whose
    destination sits just past the source modulo 4 KiB run up to 3x slower on
    some CPUs (4K aliasing), so a half-page offset keeps copies in both
    directions away from it."""
    if nbytes < _SMALL:
        raw = np.empty(nbytes + ALIGN, np.uint8)
        shift = (-raw.ctypes.data) % ALIGN
        return raw[shift:shift + nbytes]
    buf = mmap.mmap(-1, -(-(nbytes + _BLOCK_OFFSET) // _PAGE) * _PAGE,
                    flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    array = np.frombuffer(buf, np.uint8, count=nbytes, offset=_BLOCK_OFFSET)
    numa = _numa() if cmg is not None and cmg.numa_node is not None else None
    if numa is not None:
        ffi, lib = numa
        lib.numa_tonode_memory(ffi.cast("void *", array.ctypes.data - _BLOCK_OFFSET), len(buf), cmg.numa_node)
    if cmg is not None and numa is None:
        _touch(array, cmg, 0)
        return array
    try:
        buf.madvise(_MADV_POPULATE_WRITE)
    except OSError:                     # kernels before 5.14
        array.fill(0)
    return array


class AllocationTable:
    """Every live facade block, searchable by any address inside it, plus the
    ranges of freed blocks still held by a pool (see :meth:`held`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bases: list[int] = []
        self._blocks: dict[int, Allocation] = {}
        self._held_bases: list[int] = []
        self._held: dict[int, int] = {}      # base -> capacity of freed blocks a pool keeps

    def add(self, alloc: Allocation) -> None:
        """Register a live block (a held range at the same base stops being held)."""
        with self._lock:
            self._unhold_locked(alloc.base)
            bisect.insort(self._bases, alloc.base)
            self._blocks[alloc.base] = alloc

    def remove(self, base: int) -> Allocation:
        """Unregister the block starting at ``base``; raises CudaError if there is none."""
        with self._lock:
            alloc = self._blocks.pop(base, None)
            if alloc is None:
                raise CudaError(_INVALID, f"{base:#x} is not the start of a live allocation (double free?)")
            del self._bases[bisect.bisect_left(self._bases, base)]
            return alloc

    def get(self, base: int) -> Allocation | None:
        """The block starting exactly at ``base``, or None."""
        return self._blocks.get(base)

    def find(self, address: int) -> tuple[Allocation, int] | None:
        """(block, offset) of the live block containing ``address``, or None."""
        alloc = self._blocks.get(address)      # the common case: a block's own pointer
        if alloc is not None:
            return alloc, 0
        with self._lock:
            i = bisect.bisect_right(self._bases, address) - 1
            if i < 0:
                return None
            alloc = self._blocks[self._bases[i]]
        offset = address - alloc.base
        return (alloc, offset) if offset < max(alloc.size, 1) else None

    def overlapping(self, address: int, nbytes: int) -> Allocation | None:
        """A live block sharing at least one byte with [address, address + nbytes), or None."""
        with self._lock:
            i = bisect.bisect_left(self._bases, address + max(nbytes, 1)) - 1
            if i < 0:
                return None
            alloc = self._blocks[self._bases[i]]
        return alloc if alloc.base + max(alloc.size, 1) > address else None

    def blocks(self) -> list[Allocation]:
        """A snapshot of every live block."""
        with self._lock:
            return list(self._blocks.values())

    # -- freed blocks a pool still holds -------------------------------------------------
    def hold(self, base: int, capacity: int) -> None:
        """Remember that [base, base + capacity) is a freed block kept by a pool."""
        with self._lock:
            if base not in self._held:
                bisect.insort(self._held_bases, base)
            self._held[base] = capacity

    def unhold(self, base: int) -> None:
        """Forget a held range (its block was handed out again or returned to the OS)."""
        with self._lock:
            self._unhold_locked(base)

    def _unhold_locked(self, base: int) -> None:
        if self._held.pop(base, None) is not None:
            del self._held_bases[bisect.bisect_left(self._held_bases, base)]

    def held(self, address: int, nbytes: int = 1) -> bool:
        """True if [address, address + nbytes) touches a freed block that a pool still
        holds (a stale pointer)."""
        with self._lock:
            i = bisect.bisect_left(self._held_bases, address + max(nbytes, 1)) - 1
            if i < 0:
                return False
            base = self._held_bases[i]
            return address < base + self._held[base]


table = AllocationTable()


def size_class(nbytes: int) -> int:
    """Round up to 4 classes per power of two (at most 25% slack), at least 512 bytes."""
    if nbytes <= _MIN_BLOCK:
        return _MIN_BLOCK
    top = 1 << (nbytes - 1).bit_length()
    step = top // 8
    return (nbytes + step - 1) // step * step


class Pool:
    """A caching allocator for one device's memory (or for pinned host memory).

    ``reserved`` is every byte the pool holds (live blocks plus cached free ones);
    ``used`` the bytes of live blocks; ``reserved_high``/``used_high`` their high
    watermarks. Freed blocks are kept, keyed by size class, until the pool holds
    more than ``release_threshold`` bytes or :meth:`trim` is called.
    """

    def __init__(self, device: int | None, memory: str, cmg):
        self.device = device
        self.memory = memory
        self.cmg = cmg
        self._lock = threading.Lock()
        self._free: dict[int, list[np.ndarray]] = {}
        self.reserved = 0
        self.used = 0
        self.reserved_high = 0
        self.used_high = 0
        self.release_threshold = UINT64_MAX   # cudaMemPoolAttrReleaseThreshold: keep everything

    def allocate(self, nbytes: int, *, device: int | None = None) -> Allocation:
        """A live block of at least ``nbytes`` (a cached one if any fits), registered in the table.

        ``device`` overrides the device recorded on the block (host pools record
        the device current at allocation, as CUDA does). Raises
        cudaErrorMemoryAllocation when the OS cannot provide the bytes, after
        returning this pool's cached blocks to it."""
        if nbytes < 0:
            raise CudaError(_INVALID, f"size must be >= 0, got {nbytes}")
        cls = size_class(nbytes)
        with self._lock:
            cached = self._free.get(cls)
            array = cached.pop() if cached else None
        if array is None:
            array = self._fresh(cls)
        with self._lock:
            self.used += cls
            self.used_high = max(self.used_high, self.used)
        alloc = Allocation(array.ctypes.data, nbytes, cls, self.device if device is None else device,
                           self.memory, array)
        table.add(alloc)
        if trace._sink is not None:
            trace.emit({"type": "alloc", "buffer": alloc.base, "bytes": nbytes, "device": alloc.device,
                        "memory": self.memory, "t_ns": time.perf_counter_ns()})
        return alloc

    def _fresh(self, cls: int) -> np.ndarray:
        if cls >= _SMALL and cls > available_bytes():
            self.trim(0)
            if cls > available_bytes():
                raise CudaError(cudaError_t.cudaErrorMemoryAllocation,
                                f"cannot allocate {cls} bytes: only {available_bytes()} available")
        try:
            array = _raw_block(cls, self.cmg)
        except (MemoryError, OSError) as exc:
            raise CudaError(cudaError_t.cudaErrorMemoryAllocation, f"cannot allocate {cls} bytes: {exc}") from exc
        with self._lock:
            self.reserved += cls
            self.reserved_high = max(self.reserved_high, self.reserved)
        return array

    def release(self, alloc: Allocation) -> None:
        """Take back a block already removed from the table: cache it for reuse.

        If the pool then holds more than ``release_threshold`` bytes, cached
        blocks go back to the OS until it holds at most that many (or none is
        cached)."""
        if trace._sink is not None:
            trace.emit({"type": "free", "buffer": alloc.base, "t_ns": time.perf_counter_ns()})
        table.hold(alloc.base, alloc.capacity)
        with self._lock:
            self.used -= alloc.capacity
            self._free.setdefault(alloc.capacity, []).append(alloc.array)
            over = self.reserved > self.release_threshold
        if over:
            self.trim(max(0, self.release_threshold - self.used))

    def trim(self, keep_bytes: int = 0) -> int:
        """Return cached free blocks to the OS until at most ``keep_bytes`` stay cached.

        Returns the bytes released. (``cudaMemPoolTrimTo(pool, n)``, which counts
        live bytes too, is ``trim(max(0, n - used))``.)"""
        released = 0
        dropped = []
        with self._lock:
            for cls in sorted(self._free, reverse=True):
                blocks = self._free[cls]
                while blocks and self.reserved - self.used > keep_bytes:
                    dropped.append(blocks.pop())
                    self.reserved -= cls
                    released += cls
            self._free = {k: v for k, v in self._free.items() if v}
        for array in dropped:
            table.unhold(array.ctypes.data)
        return released

    @property
    def cached(self) -> int:
        """Bytes held in free blocks, ready for reuse."""
        return self.reserved - self.used


_pools: dict[tuple, Pool] = {}
_pools_lock = threading.Lock()


def pool(device: int | None, memory: str = "device") -> Pool:
    """The pool for ``device``'s memory of kind ``memory`` ("device", "managed"; None: pinned host)."""
    key = (device, memory)
    found = _pools.get(key)
    if found is None:
        with _pools_lock:
            found = _pools.get(key)
            if found is None:
                cmg = None if device is None else streamq.topology()[device]
                found = _pools[key] = Pool(device, memory, cmg)
    return found


def pools() -> list[Pool]:
    """Every pool created so far."""
    with _pools_lock:
        return list(_pools.values())


def _pool_of(alloc: Allocation) -> Pool:
    return pool(None, "host") if alloc.memory == "host" else pool(alloc.device, alloc.memory)


def retire(base: int, expect: tuple[str, ...]) -> Allocation:
    """Remove the block starting at ``base`` from the table, without giving it back yet.

    The caller returns it with ``_pool_of(alloc).release(alloc)`` (see :func:`free`)
    once no queued work can touch it; meanwhile its range counts as held, so a
    stale pointer to it is refused. ``expect``: the memory kinds the calling API
    may free (cudaFree frees device and managed memory, cudaFreeHost pinned host
    memory). Raises cudaErrorInvalidValue for anything else, a double free
    included."""
    alloc = table.get(base)
    if alloc is None:
        inside = table.find(base) is not None
        raise CudaError(_INVALID, f"cannot free {base:#x}: " + (
            "it points inside a block, not at its start" if inside else
            "not a live allocation (already freed, or never allocated here)"))
    if alloc.memory not in expect:
        raise CudaError(_INVALID, f"cannot free {base:#x} here: it is {alloc.memory} memory")
    table.remove(base)
    table.hold(alloc.base, alloc.capacity)
    return alloc


def release(alloc: Allocation) -> None:
    """Give a retired block back to its pool."""
    _pool_of(alloc).release(alloc)


def free(base: int, expect: tuple[str, ...]) -> Allocation:
    """Remove the block starting at ``base`` from the table and return it to its pool
    (:func:`retire` then :func:`release`)."""
    alloc = retire(base, expect)
    release(alloc)
    return alloc


def release_device(index: int) -> int:
    """Free every device and managed block of device ``index`` and return its pools'
    memory to the OS (what cudaDeviceReset does to allocations). Returns the
    number of blocks freed; their pointers become invalid."""
    freed = 0
    for alloc in table.blocks():
        if alloc.device == index and alloc.memory in ("device", "managed"):
            try:
                free(alloc.base, ("device", "managed"))
            except CudaError:      # freed concurrently by another thread
                continue
            freed += 1
    for memory in ("device", "managed"):
        if (index, memory) in _pools:
            pool(index, memory).trim(0)
    return freed


class BufferRef:
    """A view of facade memory as the queue log describes it (``__streamq_buffer__``)."""

    __slots__ = ("base", "offset", "dtype", "shape", "strides", "nbytes")

    def __init__(self, base: int, offset: int, dtype: str, shape, strides, nbytes: int):
        self.base = base
        self.offset = offset
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
        self.nbytes = nbytes

    @classmethod
    def of(cls, array: np.ndarray, alloc: Allocation | None = None) -> "BufferRef | np.ndarray":
        """The reference for ``array``; plain arrays (host memory) describe themselves."""
        if alloc is None:
            found = table.find(array.__array_interface__["data"][0])
            if found is None:
                return array
            alloc = found[0]
        addr = array.__array_interface__["data"][0]
        return cls(alloc.base, addr - alloc.base, array.dtype.str, list(array.shape), list(array.strides),
                   int(array.nbytes))

    def __streamq_buffer__(self) -> dict:
        return {"buffer": self.base, "offset": self.offset, "dtype": self.dtype, "shape": self.shape,
                "strides": self.strides, "bytes": self.nbytes}

    def __repr__(self) -> str:
        return f"<BufferRef {self.base:#x}+{self.offset} {self.dtype}{self.shape}>"


# -- pointers: facade blocks, host objects, raw host addresses -------------------------------

class Span:
    """A checked byte range an API call may touch.

    ``view`` is a uint8 array of exactly those bytes; ``memory`` one of
    :data:`MEMORY_KINDS` or ``"pageable"``; ``alloc``/``offset`` locate it in its
    facade block (None/0 for pageable memory); ``address`` is its first byte.
    """

    __slots__ = ("view", "alloc", "offset", "memory", "address", "_ref")

    def __init__(self, view: np.ndarray, alloc: Allocation | None, offset: int, memory: str, address: int):
        self.view = view
        self.alloc = alloc
        self.offset = offset
        self.memory = memory
        self.address = address
        self._ref = None

    @property
    def on_device(self) -> bool:
        """True if a device may address it as device memory (device or managed blocks)."""
        return self.memory in ("device", "managed")

    @property
    def on_host(self) -> bool:
        """True if the host addresses it directly (pinned, registered, managed or pageable)."""
        return self.memory != "device"

    @property
    def pinned(self) -> bool:
        """True unless it is pageable host memory (so copies need no staging)."""
        return self.memory != PAGEABLE

    def ref(self, view: np.ndarray | None = None):
        """What the queue log records for ``view`` (default: the whole span)."""
        if self.alloc is None:
            return self.view if view is None else view
        if view is None:
            ref = self._ref
            if ref is None:
                n = self.view.shape[0]
                ref = self._ref = BufferRef(self.alloc.base, self.offset, "|u1", [n], [1], n)
            return ref
        addr = view.__array_interface__["data"][0]
        return BufferRef(self.alloc.base, addr - self.alloc.base, view.dtype.str, list(view.shape),
                         list(view.strides), int(view.nbytes))


def _facade_span(alloc: Allocation, offset: int, nbytes: int, what: str, writable: bool) -> Span:
    if writable and not alloc.array.flags.writeable:
        raise CudaError(_INVALID, f"{what} {alloc.base + offset:#x} is read-only ({alloc.memory} memory)")
    if offset + nbytes > alloc.size:
        raise CudaError(_INVALID, f"{what} {alloc.base + offset:#x}: {nbytes} bytes run past the end of "
                                  f"its {alloc.size}-byte allocation (offset {offset})")
    return Span(alloc.array[offset:offset + nbytes], alloc, offset, alloc.memory, alloc.base + offset)


_SPAN_CACHE = 8


def resolve_fast(address: int, nbytes: int) -> Span | None:
    """The writable Span of the first ``nbytes`` of the block starting exactly at int
    ``address``, from a small per-block cache; None when that is not the case (use
    :func:`resolve`). Lets back-to-back ops on one buffer skip re-checking it."""
    alloc = table._blocks.get(address)
    if alloc is None:
        return None
    spans = alloc.spans
    if spans is not None:
        span = spans.get(nbytes)
        if span is not None:
            return span
    if nbytes > alloc.size or not alloc.array.flags.writeable:
        return None
    span = Span(alloc.array[:nbytes], alloc, 0, alloc.memory, address)
    if spans is None:
        spans = alloc.spans = {}
    if len(spans) < _SPAN_CACHE:
        spans[nbytes] = span
    return span


def as_address(ptr) -> int | None:
    """The int a pointer-like value stands for, or None if it is not int-like (arrays
    are never int-like here: their value is not an address)."""
    if type(ptr) is int:
        return ptr
    if isinstance(ptr, np.ndarray) or hasattr(ptr, "__array_interface__"):
        return None
    try:
        return operator.index(ptr)
    except TypeError:
        pass
    to_int = getattr(type(ptr), "__int__", None)
    if to_int is not None and not isinstance(ptr, (float, complex, str, bytes)):
        return int(ptr)           # cuda-python pointer types (CUdeviceptr, ...) have __int__
    return None


def _host_bytes(obj, what: str) -> np.ndarray | None:
    """A flat uint8 view of a host object's memory, or None if it has no buffer."""
    if isinstance(obj, np.ndarray):
        arr = obj
    elif hasattr(obj, "__array_interface__"):
        arr = np.asarray(obj)
    else:
        try:
            mv = memoryview(obj)
        except TypeError:
            return None
        if not mv.contiguous:
            raise CudaError(_INVALID, f"{what}: the buffer is not contiguous")
        return np.frombuffer(mv, np.uint8) if mv.nbytes else np.empty(0, np.uint8)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise CudaError(_INVALID, f"{what}: a non-contiguous array view has no single address range; "
                                  "pass a contiguous array")
    if arr.dtype.hasobject:
        raise CudaError(_INVALID, f"{what}: arrays of Python objects cannot be copied as bytes")
    return arr.ravel(order="K").view(np.uint8)


def resolve(ptr, nbytes: int, *, writable: bool, what: str = "pointer", allow_host: bool = True) -> Span:
    """Check that ``nbytes`` at ``ptr`` may be touched and return them as a :class:`Span`.

    ``ptr``: an int address (facade block, or host memory if ``allow_host``), an
    object with ``__cuda_array_interface__`` (facade memory), or a host object
    with the buffer protocol / ``__array_interface__`` (a numpy array: its own
    memory, or the facade block it views). ``writable``: the bytes will be
    written. Raises cudaErrorInvalidValue naming ``what`` for a null, unknown,
    freed, read-only or too short pointer — before any byte is touched.
    """
    if nbytes < 0:
        raise CudaError(_INVALID, f"{what}: negative size {nbytes}")
    if ptr is None:
        raise CudaError(_INVALID, f"{what} is a null pointer")
    if type(ptr) is int:
        address = ptr
    elif isinstance(ptr, np.ndarray) or hasattr(ptr, "__array_interface__"):
        return _resolve_object(ptr, nbytes, writable, what, allow_host)
    elif isinstance(ptr, ctypes.c_void_p):
        address = ptr.value or 0
    else:
        cai = getattr(ptr, "__cuda_array_interface__", None)
        address = int(cai["data"][0]) if cai is not None else as_address(ptr)
        if address is None:
            return _resolve_object(ptr, nbytes, writable, what, allow_host)
    if address == 0:
        raise CudaError(_INVALID, f"{what} is a null pointer")
    if address < 0:
        raise CudaError(_INVALID, f"{what}: negative address {address}")
    found = table.find(address)
    if found is not None:
        return _facade_span(found[0], found[1], nbytes, what, writable)
    if table.held(address):
        raise CudaError(_INVALID, f"{what} {address:#x} points into freed facade memory")
    if not allow_host:
        raise CudaError(_INVALID, f"{what} {address:#x} is not in any live facade allocation")
    if table.held(address, nbytes) or table.overlapping(address, nbytes) is not None:
        raise CudaError(_INVALID, f"{what} {address:#x}: {nbytes} bytes of host memory run into "
                                  "facade memory")
    if not host_maps.covers(address, nbytes, writable):
        raise CudaError(_INVALID, f"{what} {address:#x}: {nbytes} bytes are not in "
                                  f"{'writable' if writable else 'readable'} memory of this process")
    return Span(np.asarray(_RawMemory(address, nbytes, not writable)), None, 0, PAGEABLE, address)


class _RawMemory:
    """``nbytes`` of host memory at a raw address, as numpy sees it (checked by the caller)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, address: int, nbytes: int, readonly: bool):
        self.__array_interface__ = {"data": (address, readonly), "shape": (nbytes,), "typestr": "|u1",
                                    "version": 3}


def _resolve_object(obj, nbytes: int, writable: bool, what: str, allow_host: bool) -> Span:
    flat = _host_bytes(obj, what)
    if flat is None:
        raise CudaError(_INVALID, f"{what}: {type(obj).__name__} is not a pointer (expected an int address, "
                                  "or an object with the buffer protocol or __array_interface__)")
    address = flat.__array_interface__["data"][0]
    if nbytes > flat.nbytes:
        raise CudaError(_INVALID, f"{what}: {nbytes} bytes requested but the "
                                  f"{type(obj).__name__} holds only {flat.nbytes}")
    found = table.find(address) if flat.nbytes else None
    if found is not None:
        return _facade_span(found[0], found[1], nbytes, what, writable)
    if not allow_host:
        raise CudaError(_INVALID, f"{what}: a host {type(obj).__name__} is not facade memory")
    if writable and not flat.flags.writeable:
        raise CudaError(_INVALID, f"{what}: the {type(obj).__name__} is read-only")
    return Span(flat[:nbytes], None, 0, PAGEABLE, address)


def device_view(address: int, nbytes: int, *, what: str = "pointer") -> tuple[np.ndarray, Allocation]:
    """uint8 view of ``nbytes`` of facade memory at ``address``, checked against the table.

    Raises CudaError(cudaErrorInvalidValue) naming ``what`` if the address is
    unknown, freed, or the range runs past the end of its block."""
    if nbytes < 0:
        raise CudaError(_INVALID, f"{what}: negative size {nbytes}")
    found = table.find(address)
    if found is None:
        raise CudaError(_INVALID, f"{what} {address:#x} is not in any live facade allocation")
    alloc, offset = found
    if offset + nbytes > alloc.size:
        raise CudaError(_INVALID, f"{what} {address:#x}: {nbytes} bytes run past the end of its "
                                  f"{alloc.size}-byte allocation (offset {offset})")
    return alloc.view(offset, nbytes), alloc


def typed_view(address: int, dtype, shape, strides=None, *, what: str = "pointer") -> np.ndarray:
    """An ndarray of ``dtype``/``shape``/``strides`` (bytes) over facade memory at
    ``address``, after checking every element it can reach lies in one block."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if strides is None:
        strides = []
        step = dtype.itemsize
        for dim in reversed(shape):
            strides.append(step)
            step *= max(dim, 1)
        strides = tuple(reversed(strides))
    strides = tuple(int(s) for s in strides)
    if any(s < 0 for s in shape):
        raise CudaError(_INVALID, f"{what}: negative dimension in {shape}")
    if any(s < 0 for s in strides):
        raise CudaError(_INVALID, f"{what}: negative stride in {strides}")
    if address % dtype.alignment:
        raise CudaError(_INVALID, f"{what} {address:#x} is not aligned to {dtype.alignment} bytes for {dtype}")
    empty = any(s == 0 for s in shape)
    extent = 0 if empty else sum((n - 1) * st for n, st in zip(shape, strides)) + dtype.itemsize
    raw, _ = device_view(address, extent, what=what)
    if empty:
        return np.empty(shape, dtype)
    return np.ndarray(shape, dtype, buffer=raw, offset=0, strides=strides)


def note_host_read(address: int, nbytes: int) -> None:
    """Log that the host observed ``nbytes`` of facade memory at ``address`` (``host_read``)."""
    _note_host("host_read", address, nbytes)


def note_host_write(address: int, nbytes: int) -> None:
    """Log that the host wrote ``nbytes`` of facade memory at ``address`` (``host_write``)."""
    _note_host("host_write", address, nbytes)


def _note_host(kind: str, address: int, nbytes: int) -> None:
    if trace._sink is None:
        return
    found = table.find(address)
    if found is not None:
        trace.emit({"type": kind, "buffer": found[0].base, "offset": found[1], "bytes": nbytes,
                    "t_ns": time.perf_counter_ns()})


# -- raw host addresses: the process's mappings ---------------------------------------------

_MS_ASYNC = 1
_SPECIAL = (b"[vvar]", b"[vvar_vclock]", b"[vsyscall]", b"[vdso]")
_DEV_MEMORY = (b"/dev/zero", b"/dev/shm/")   # shared anonymous and POSIX shared memory: plain RAM


class HostMaps:
    """The process's memory mappings (``/proc/self/maps``), read on demand.

    :meth:`covers` answers from a cached copy and re-reads the file on a miss (a
    read costs about a millisecond); a hit is re-confirmed with ``msync``, which
    fails on any unmapped page, so a range unmapped since the last read is never
    touched. Device files (other than /dev/zero and /dev/shm, which are plain memory)
    and the kernel's special mappings never count.
    """

    def __init__(self, path: str = "/proc/self/maps"):
        self._path = path
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._regions: list[tuple[int, int, bool, bool]] = []   # (start, end, readable, writable)
        self._libc = None

    def reload(self) -> None:
        """Re-read the mappings."""
        regions = []
        with open(self._path, "rb") as f:
            for line in f.read().splitlines():
                parts = line.split(None, 5)
                if len(parts) < 5:
                    continue
                path = parts[5].strip() if len(parts) > 5 else b""
                if path in _SPECIAL or (path.startswith(b"/dev/") and not path.startswith(_DEV_MEMORY)):
                    continue
                lo, hi = parts[0].split(b"-")
                perms = parts[1]
                regions.append((int(lo, 16), int(hi, 16), perms[:1] == b"r", perms[1:2] == b"w"))
        regions.sort()
        with self._lock:
            self._regions = regions
            self._starts = [r[0] for r in regions]

    def _lookup(self, address: int, nbytes: int, writable: bool) -> bool:
        with self._lock:
            regions, starts = self._regions, self._starts
        i = bisect.bisect_right(starts, address) - 1
        end = address + max(nbytes, 1)
        pos = address
        while 0 <= i < len(regions):
            lo, hi, readable, can_write = regions[i]
            if not (lo <= pos < hi) or not readable or (writable and not can_write):
                return False
            if hi >= end:
                return True
            pos = hi
            i += 1
        return False

    def _mapped_now(self, address: int, nbytes: int) -> bool:
        libc = self._libc
        if libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.msync.restype = ctypes.c_int
            self._libc = libc
        page = _PAGE
        start = address - address % page
        return libc.msync(start, address + max(nbytes, 1) - start, _MS_ASYNC) == 0

    def covers(self, address: int, nbytes: int, writable: bool) -> bool:
        """True if [address, address + nbytes) is mapped, readable (and writable if asked) now.

        False wherever the mappings cannot be read (no ``/proc``)."""
        try:
            if not self._lookup(address, nbytes, writable):
                self.reload()
                if not self._lookup(address, nbytes, writable):
                    return False
            if self._mapped_now(address, nbytes):
                return True
            self.reload()     # unmapped since the last read: the cache was stale
            return self._lookup(address, nbytes, writable) and self._mapped_now(address, nbytes)
        except OSError:
            return False


host_maps = HostMaps()


# -- what the OS has -------------------------------------------------------------------------

def meminfo(path: str) -> dict[str, int]:
    """A ``meminfo`` file (``/proc/meminfo`` or a NUMA node's) as {field: bytes}."""
    out = {}
    with open(path) as f:
        for line in f:
            head, _, rest = line.partition(":")
            fields = rest.split()
            if not fields:
                continue
            key = head.split()[-1]            # node files prefix the field with "Node N"
            value = int(fields[0])
            out[key] = value * 1024 if len(fields) > 1 and fields[1] == "kB" else value
    return out


def cgroup_room() -> int | None:
    """Bytes this process's cgroup (v2) may still allocate, or None if unlimited/unknown."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(0, int(limit) - int(f.read()))
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Bytes the OS can still give this process (MemAvailable, capped by the cgroup limit;
    unbounded where ``/proc/meminfo`` cannot be read)."""
    try:
        room = meminfo("/proc/meminfo").get("MemAvailable", 1 << 63)
    except OSError:
        room = 1 << 63
    cap = cgroup_room()
    return room if cap is None else min(room, cap)
