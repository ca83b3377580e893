"""The allocation table: every live facade block (:class:`Allocation`), searchable by any
address inside it, and the ranges of freed blocks that a pool still holds."""

from __future__ import annotations

import bisect
import itertools
import threading

import numpy as np

from ._errors import CudaError, cudaError_t

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
