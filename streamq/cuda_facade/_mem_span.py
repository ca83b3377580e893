"""Pointer checks: :func:`resolve` turns a pointer (facade block, host object, raw host
address) into a checked :class:`Span`; typed views of facade memory; host-access notes
for the queue log."""

from __future__ import annotations

import ctypes
import operator
import time

import numpy as np

from streamq import trace

from ._errors import CudaError, cudaError_t
from ._mem_hostmaps import host_maps
from ._mem_ref import BufferRef
from ._mem_table import PAGEABLE, Allocation, table

_INVALID = cudaError_t.cudaErrorInvalidValue


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
