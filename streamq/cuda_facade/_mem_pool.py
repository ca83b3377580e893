"""The caching pools (one per device and memory kind) and freeing: retire, release, free."""

from __future__ import annotations

import threading
import time

import numpy as np

import streamq
from streamq import trace

from ._errors import CudaError, cudaError_t
from ._mem_os import _SMALL, _raw_block, available_bytes
from ._mem_table import Allocation, table

_MIN_BLOCK = 512
UINT64_MAX = (1 << 64) - 1

_INVALID = cudaError_t.cudaErrorInvalidValue


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
