"""CUDA runtime memory API: copies and sets, and the ops they run on streams (the
synchronicity rules they follow are in ``_rt_memory.py``'s docstring)."""

from __future__ import annotations

import operator
import os
import threading

import numpy as np

import streamq

from ._context import resolve_stream
from ._context import device as _device
from ._errors import CudaError, api, cudaError_t
from ._memory import PAGEABLE, Span, note_host_read, resolve, resolve_fast, size_class
from ._rt_memory_types import _INVALID, _K, MAX_PITCH, _check_may_block, _kind, _size, _wait, cudaMemcpyKind

__all__ = [
    # copies and sets
    "cudaMemcpy", "cudaMemcpyAsync", "cudaMemcpy2D", "cudaMemcpy2DAsync", "cudaMemcpyPeer",
    "cudaMemcpyPeerAsync", "cudaMemset", "cudaMemsetAsync", "cudaMemset2D", "cudaMemset2DAsync",
]

#: Copies and sets of at least this many bytes are split across the cores of the stream's CMG
#: (``STREAMQ_COPY_SPLIT_BYTES``), in parts of at least ``_MIN_PART`` bytes ...
COPY_SPLIT_BYTES = int(os.environ.get("STREAMQ_COPY_SPLIT_BYTES", 64 << 20))
_MIN_PART = 8 << 20
#: ... when the CMG has at least this many cores: below that one core already saturates the
#: memory bus (on the 2-core development machine two threads copy 0.9x as fast as one).
COPY_SPLIT_MIN_CORES = 4


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
