"""A small Pythonic layer over the runtime facade, for code that is not a CUDA port.

Objects instead of handles, exceptions (:class:`CudaError`) instead of status
codes, context managers, and numpy arrays that live in facade device memory::

    from streamq.cuda_facade import Stream, Event, device_array, to_device

    x = to_device(np.arange(6, dtype=np.float32))
    y = device_array(6, np.float32)
    with Stream() as s:                      # synchronized and destroyed on exit
        s.launch_kernel("aten::mul", x, 2.0, out=y)
        done = s.record_event()
    done.synchronize()

A ``device_array`` is an ordinary numpy array whose memory is a facade
allocation (so kernels and the queue log see it as device memory); the
allocation returns to the device's pool when the last view of it is gone.
"""

from __future__ import annotations

import functools
import operator
import weakref

import numpy as np

from streamq import trace

from . import _context, _graphs, _launch, _memory, _rt_event, _rt_stream
from ._errors import CudaError, cudaError_t
from ._rt_types import cudaEvent_t, cudaEventBlockingSync, cudaEventDisableTiming, cudaStream_t

__all__ = ["Stream", "Event", "device_array", "to_device", "to_host", "synchronize"]


def _impl(api_function):
    """The raising implementation behind a status-returning runtime function."""
    return api_function.__wrapped_impl__


def _device(device) -> _context.Device:
    if device is None:
        return _context.current_device()
    if isinstance(device, bool):
        raise CudaError(cudaError_t.cudaErrorInvalidDevice, f"device must be an int, got {device!r}")
    try:
        return _context.device(operator.index(device))
    except TypeError:
        raise CudaError(cudaError_t.cudaErrorInvalidDevice, f"device must be an int, got {device!r}") from None


def _forget(stream: _context.Stream) -> None:
    if not stream.destroyed:
        _context.forget_stream(stream)


class Stream:
    """A stream on ``device`` (the current one if None); ``non_blocking=True`` exempts it from
    the legacy stream's implicit synchronization; lower ``priority`` numbers run first
    (clamped to [-5, 0]). ``with Stream() as s:`` synchronizes and destroys it on exit; it is
    also destroyed (its pending work still completing) when garbage collected."""

    def __init__(self, *, non_blocking: bool = False, priority: int = 0, device: int | None = None):
        dev = _device(device)
        dev.check()
        priority = operator.index(priority)
        priority = min(max(priority, _context.PRIORITY_GREATEST), _context.PRIORITY_LEAST)
        self._stream = _context.Stream(dev, flags=_context.FLAG_NON_BLOCKING if non_blocking else 0,
                                       priority=priority)
        self.handle = cudaStream_t(self._stream.handle)
        self._finalizer = weakref.finalize(self, _forget, self._stream)

    @property
    def device(self) -> int:
        """The stream's device index."""
        return self._stream.device.index

    @property
    def priority(self) -> int:
        """The stream's (clamped) priority."""
        return self._stream.priority

    def __cuda_stream__(self) -> tuple[int, int]:
        """The CUDA stream protocol: ``(version, handle)``; the facade's runtime accepts it."""
        return (0, self._stream.handle)

    def __repr__(self) -> str:
        return f"<streamq.cuda_facade.Stream {self._stream.label}>"

    def synchronize(self) -> None:
        """Block until the stream's work is done; raises the device's sticky error."""
        _impl(_rt_stream.cudaStreamSynchronize)(self._stream)

    def query(self) -> bool:
        """True if the stream's work is done (never blocks)."""
        try:
            _impl(_rt_stream.cudaStreamQuery)(self._stream)
        except CudaError as err:
            if err.code == cudaError_t.cudaErrorNotReady:
                return False
            raise
        return True

    def wait_event(self, event: "Event") -> None:
        """Make the stream's later work wait for ``event``'s current record."""
        _impl(_rt_event.cudaStreamWaitEvent)(self._stream, _event_handle(event), 0)

    def record_event(self, event: "Event | None" = None) -> "Event":
        """Record ``event`` (a new timing event if None) here and return it."""
        if event is None:
            event = Event(device=self.device)
        event.record(self)
        return event

    def launch_host_func(self, fn, *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` in stream order on a worker thread."""
        if not callable(fn):
            raise CudaError(cudaError_t.cudaErrorInvalidValue, f"fn must be callable, got {type(fn).__name__}")
        call = functools.partial(fn, *args, **kwargs) if kwargs else fn
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self._stream.launch(call, () if kwargs else args, name=name, kind="host")

    def launch_kernel(self, func, *args, grid=1, block=1, shared_mem: int = 0, **kwargs) -> None:
        """cudaLaunchKernel of ``func`` (a kernel-registry op name or a callable) with
        ``args`` and keyword arguments (``out=``, ``alpha=``)."""
        packed = args + (kwargs,) if kwargs else args
        _impl(_launch.cudaLaunchKernel)(func, grid, block, packed, shared_mem, self._stream)

    def destroy(self) -> None:
        """Destroy the stream now (work already submitted still completes)."""
        self._finalizer()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if not self._stream.destroyed and exc[0] is None:
                self.synchronize()
        finally:
            self.destroy()


def _event_handle(event) -> cudaEvent_t:
    if not isinstance(event, Event):
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"not an Event: {event!r}")
    return event.handle


def _destroy_event(handle: int) -> None:
    try:
        _impl(_rt_event.cudaEventDestroy)(handle)
    except CudaError:
        pass  # already gone (device reset)


class Event:
    """An event on ``device``: ``timing=False`` is cudaEventDisableTiming,
    ``blocking_sync=True`` cudaEventBlockingSync. Destroyed when garbage collected."""

    def __init__(self, *, timing: bool = True, blocking_sync: bool = False, device: int | None = None):
        flags = (0 if timing else cudaEventDisableTiming) | (cudaEventBlockingSync if blocking_sync else 0)
        self.handle = _rt_event.create(flags, _device(device))
        self._finalizer = weakref.finalize(self, _destroy_event, int(self.handle))

    def __repr__(self) -> str:
        return f"<streamq.cuda_facade.Event {int(self.handle):#x}>"

    def record(self, stream: "Stream | None" = None) -> "Event":
        """Capture the work submitted to ``stream`` (the default stream if None) so far."""
        target = stream._stream if isinstance(stream, Stream) else stream
        _impl(_rt_event.cudaEventRecord)(self.handle, target)
        return self

    def query(self) -> bool:
        """True if the recorded work is done (or the event was never recorded)."""
        try:
            _impl(_rt_event.cudaEventQuery)(self.handle)
        except CudaError as err:
            if err.code == cudaError_t.cudaErrorNotReady:
                return False
            raise
        return True

    def synchronize(self) -> None:
        """Block until the recorded work is done; raises the device's sticky error."""
        _impl(_rt_event.cudaEventSynchronize)(self.handle)

    def elapsed_time(self, end: "Event") -> float:
        """Milliseconds from this event to ``end`` (both complete; never blocks)."""
        return _impl(_rt_event.cudaEventElapsedTime)(self.handle, _event_handle(end))

    def destroy(self) -> None:
        """Destroy the event now."""
        self._finalizer()

    def __enter__(self) -> "Event":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


class _DeviceBuffer:
    """Owns one device allocation; numpy arrays view it through ``__array_interface__``.
    When the last view is gone, the block returns to its pool."""

    def __init__(self, alloc: _memory.Allocation):
        self.alloc = alloc
        self.__array_interface__ = {"shape": (max(alloc.size, 0),), "typestr": "|u1",
                                    "data": (alloc.base, False), "version": 3}

    def __del__(self):
        alloc = self.alloc
        if _memory.table.get(alloc.base) is alloc:  # not freed by hand (cudaFree) meanwhile
            try:
                _memory.free(alloc.base, ("device", "managed"))
            except CudaError:
                pass


def device_array(shape, dtype=np.float32, device: int | None = None) -> np.ndarray:
    """A C-contiguous numpy array of ``shape``/``dtype`` in ``device``'s memory (the current
    device's if None): uninitialized, 256-byte aligned, on the CMG's NUMA node when large."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"dtype: {exc}") from None
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"shape must be integers, got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"shape: negative dimension in {shape}")
    dev = _device(device)
    dev.check()
    _graphs.check_unsafe_call("device_array")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    alloc = _memory.pool(dev.index, "device").allocate(nbytes)
    raw = np.asarray(_DeviceBuffer(alloc))
    return raw[:nbytes].view(dt).reshape(shape)


def to_device(array, device: int | None = None) -> np.ndarray:
    """A device_array holding a copy of ``array`` (copied now, on the calling thread)."""
    host = np.asarray(array)
    out = device_array(host.shape, host.dtype, device)
    np.copyto(out, host)
    if trace.enabled():
        trace.emit({"type": "host_write", "buffer": out.__array_interface__["data"][0], "offset": 0,
                    "bytes": int(out.nbytes)})
    return out


def to_host(array: np.ndarray, stream: "Stream | None" = None) -> np.ndarray:
    """A plain numpy copy of ``array`` (after synchronizing ``stream``, if given)."""
    if stream is not None:
        stream.synchronize()
    host = np.array(array, copy=True)
    if trace.enabled():
        found = _memory.table.find(np.asarray(array).__array_interface__["data"][0])
        if found is not None:
            trace.emit({"type": "host_read", "buffer": found[0].base, "offset": found[1],
                        "bytes": int(host.nbytes)})
    return host


def synchronize(device: int | None = None) -> None:
    """cudaDeviceSynchronize for ``device`` (the current one if None); raises its sticky error."""
    dev = _device(device)
    _context.check_host_sync("synchronize")
    _graphs.refuse_during_capture(dev, "synchronize")
    dev.synchronize()
    dev.check()
