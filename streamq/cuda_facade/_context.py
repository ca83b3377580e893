"""Devices (= CMGs) and streams (= serial dispatch queues), the facade's execution model.

A :class:`Device` is one CMG of :func:`streamq.topology`: its streams run on that
CMG's pinned workers. A :class:`Stream` is a serial :class:`streamq.Queue`; every
operation the facade runs goes through :meth:`Stream.launch`, which implements
what CUDA adds on top of a queue:

- the legacy default stream is a two-way fence: an op on it first waits for the
  work already submitted to every *blocking* stream of the device, and the next
  op of every blocking stream waits for it; non-blocking streams are exempt;
- an exception in an op poisons the device (a sticky ``cudaErrorLaunchFailure``):
  later ops are skipped, and every later call on the device returns the error
  until ``cudaDeviceReset``, with the Python exception kept as ``__cause__``;
- while a stream is capturing, ops are recorded into a graph instead of run
  (``stream.capture`` is the capture sequence, see ``_graphs``); an op on the
  legacy stream while a blocking stream of its device captures fails with
  ``cudaErrorStreamCaptureImplicit`` and invalidates that capture.

Host threads must not wait for stream work from inside stream work (CUDA: a host
function "must not make any CUDA API calls"); :func:`check_host_sync` turns such
a wait, which would deadlock, into ``cudaErrorNotPermitted``.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref

import streamq
from streamq import _blocking, trace

from ._errors import CudaError, cudaError_t

__all__ = ["Device", "Stream", "cudaStream_t", "device", "current_device", "set_current_device",
           "device_count", "resolve_stream", "forget_stream", "check_host_sync",
           "register_queue", "reset_hooks", "PRIORITY_LEAST", "PRIORITY_GREATEST"]

# cudaDeviceGetStreamPriorityRange: lower numbers are higher priorities, as on recent GPUs.
PRIORITY_LEAST = 0
PRIORITY_GREATEST = -5

STREAM_LEGACY = 1       # cudaStreamLegacy
STREAM_PER_THREAD = 2   # cudaStreamPerThread
FLAG_NON_BLOCKING = 1   # cudaStreamNonBlocking

_handles = itertools.count(0x5100)  # stream handles: opaque ints, never 0, 1 or 2

#: Callables ``hook(device)`` run by :meth:`Device.reset` after the device's work has
#: finished (the memory layer registers one to release the device's allocations).
reset_hooks: list = []


class IntHandle:
    """A handle equal to any int of its value, as cuda-python's stream and pool handles:
    ``int(handle)`` is its value. Subclasses set ``_kind`` (their name in the repr)."""

    __slots__ = ("_value",)
    _kind = "handle"

    def __init__(self, init_value: int = 0):
        self._value = int(init_value)

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        """The handle's value (cuda-python returns the address of the handle)."""
        return self._value

    def __eq__(self, other) -> bool:
        try:
            return self._value == int(other)
        except (TypeError, ValueError):
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{self._kind} {self._value:#x}>"


class cudaStream_t(IntHandle):
    """A stream handle, as cuda-python's ``cudaStream_t``: ``int(handle)`` is its value."""

    __slots__ = ()
    _kind = "cudaStream_t"


class Device:
    """One CMG seen as a CUDA device: its streams, memory pool and error state."""

    def __init__(self, index: int):
        self.index = index
        self.cmg = streamq.topology()[index]
        self.lock = threading.Lock()
        self._streams_lock = threading.Lock()  # guards the stream sets (iterated by other threads)
        self.sticky: CudaError | None = None   # set by a failed op; cleared by reset()
        self.streams: "weakref.WeakSet[Stream]" = weakref.WeakSet()
        self.blocking: "weakref.WeakSet[Stream]" = weakref.WeakSet()
        self.retired: list[Stream] = []        # destroyed streams whose work may still be pending
        self.captures: set = set()             # active capture sequences on this device (_graphs)
        self.legacy_tail = None                # the Task of the latest legacy-stream op
        # Blocking streams launched onto (or holding fusion-window launches) since the last
        # legacy-stream op: only their work is new to the next legacy op; older work is
        # behind the previous legacy op already.
        self.touched: set = set()
        self._legacy: Stream | None = None
        self._per_thread = threading.local()
        self.generation = 0                    # bumped by reset(): old handles become invalid

    def __repr__(self) -> str:
        return f"<Device {self.index} cpus={list(self.cmg.cpus)}>"

    # -- the implicit streams --------------------------------------------------------------
    @property
    def legacy(self) -> "Stream":
        """The legacy default stream (handle 0 / cudaStreamLegacy)."""
        stream = self._legacy
        if stream is None:
            with self.lock:
                if self._legacy is None:
                    self._legacy = Stream(self, flags=0, priority=0, legacy=True)
                stream = self._legacy
        return stream

    def per_thread(self) -> "Stream":
        """The calling host thread's default stream on this device (cudaStreamPerThread)."""
        stream = getattr(self._per_thread, "stream", None)
        if stream is None or stream.destroyed:
            stream = Stream(self, flags=0, priority=0, label=f"dev{self.index}.per-thread."
                            f"{threading.current_thread().name}")
            self._per_thread.stream = stream
        return stream

    def snapshot(self, blocking_only: bool = False) -> list["Stream"]:
        """The device's live streams (or its blocking streams), safe to iterate."""
        with self._streams_lock:
            return list(self.blocking if blocking_only else self.streams)

    # -- errors ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the device's sticky error, if an earlier op failed."""
        if self.sticky is not None:
            raise self.sticky

    def poison(self, exc: BaseException, op: str) -> None:
        """Record that ``op`` failed with ``exc``: the device's sticky error (first one wins)."""
        with self.lock:
            if self.sticky is None:
                err = CudaError(cudaError_t.cudaErrorLaunchFailure,
                                f"{op} raised {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                self.sticky = err
        trace.emit({"type": "error", "device": self.index, "op": op,
                    "error": f"{type(exc).__name__}: {exc}"})

    # -- capture ---------------------------------------------------------------------------
    def check_legacy_use(self) -> None:
        """Refuse a use of the legacy stream while a blocking stream of the device captures.

        CUDA: the legacy stream would implicitly depend on the capturing stream, so the
        call fails with cudaErrorStreamCaptureImplicit and the capture is invalidated.
        """
        if not self.captures:
            return
        for capture in list(self.captures):
            if capture.has_blocking_stream():
                capture.invalidate("the legacy stream was used while it captured")
                raise CudaError(cudaError_t.cudaErrorStreamCaptureImplicit,
                                "the legacy stream cannot be used while a blocking stream of "
                                f"device {self.index} is capturing")

    # -- synchronization -------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for all work of every stream of this device (destroyed ones included)."""
        for stream in self.snapshot() + list(self.retired):
            stream.flush_fusion()
            stream.queue.synchronize()
        with self._streams_lock:
            self.retired = [s for s in self.retired if not s.queue.query()]

    def reset(self) -> None:
        """cudaDeviceReset: finish all work, invalidate every stream, clear the sticky error."""
        self.synchronize()
        for hook in list(reset_hooks):
            hook(self)
        with self.lock:
            for capture in list(self.captures):
                capture.invalidate("cudaDeviceReset", end=True)
            self.captures.clear()
            with self._streams_lock:
                for stream in list(self.streams):
                    if not stream.legacy:
                        stream.destroyed = True
                        _live_streams.pop(stream.handle, None)
                    stream.capture = None
                self.streams = weakref.WeakSet(s for s in self.streams if s.legacy)
                self.blocking = weakref.WeakSet()
                self.touched = set()
                self.retired = []
            self._per_thread = threading.local()
            self.legacy_tail = None
            self.sticky = None
            self.generation += 1


class Stream:
    """A CUDA stream: a serial queue on its device's CMG plus CUDA's ordering rules."""

    def __init__(self, device: Device, *, flags: int = 0, priority: int = 0, legacy: bool = False,
                 label: str | None = None):
        self.device = device
        self.flags = flags
        self.priority = priority
        self.legacy = legacy
        self.blocking = legacy or not (flags & FLAG_NON_BLOCKING)
        self.handle = 0 if legacy else next(_handles)
        self.label = label or (f"dev{device.index}.legacy" if legacy else f"dev{device.index}.stream-{self.handle:#x}")
        # CUDA: a lower number is a higher priority; the core starts higher numbers first.
        self.queue = streamq.Queue(self.label, cmg=device.cmg, priority=-priority)
        register_queue(self.queue)
        self.destroyed = False
        self.capture = None            # the Capture recording this stream's ops, if any
        self.window = None             # the streamq.fusion window holding elementwise launches
        self._seen_legacy = None       # the legacy op this stream last fenced on
        with device._streams_lock:
            device.streams.add(self)
            if self.blocking and not legacy:
                device.blocking.add(self)
        if not legacy:
            _live_streams[self.handle] = self

    def __repr__(self) -> str:
        return f"<Stream {self.label} device={self.device.index}>"

    # -- the one way work enters a stream ---------------------------------------------------
    def launch(self, fn, args=(), *, name: str, kind: str = "kernel", reads=(), writes=(),
               on_error=None, after=()):
        """Run ``fn(*args)`` in stream order; returns the core Task (None when captured).

        ``reads``/``writes`` go to the queue log. If ``fn`` raises, the device is
        poisoned (see :meth:`Device.poison`); ops launched after a failure are
        skipped. ``on_error`` (a callable taking the device's sticky CudaError or
        None) replaces fn for a failed device instead of skipping: the contract of
        cudaStreamAddCallback, whose callback always runs with the status.
        ``after``: extra core Tasks/Events the op waits for (not allowed while capturing).
        Launches held by the stream's fusion window are enqueued first.
        """
        window = self.window
        if window is not None and window.pending:
            window.flush()
        return self._launch(fn, args, name=name, kind=kind, reads=reads, writes=writes, on_error=on_error,
                            after=after)

    def _launch(self, fn, args=(), *, name: str, kind: str = "kernel", reads=(), writes=(),
                on_error=None, after=()):
        if self.destroyed:
            raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"{self.label} was destroyed")
        capture = self.capture
        if capture is not None:
            if after:
                raise CudaError(cudaError_t.cudaErrorStreamCaptureIsolation,
                                f"{name} depends on uncaptured work")
            capture.add(self, fn, args, name=name, kind=kind, reads=reads, writes=writes, on_error=on_error)
            return None
        device = self.device
        if device.sticky is not None:      # device.check(), inlined: every launch passes here
            raise device.sticky
        if self.blocking:
            if self.legacy:
                device.check_legacy_use()
            fences = self._fences()
            if fences:
                after = tuple(after) + fences
        runner = _Runner(device, fn, args, name, on_error)
        task = self.queue.enqueue(runner, after=after, name=name, kind=kind, reads=reads, writes=writes)
        if self.blocking and not self.legacy:
            device.touched.add(self)
        if self.legacy:
            device.legacy_tail = task
            self._seen_legacy = task
        return task

    def _fences(self) -> tuple:
        """The legacy-stream dependencies of the next op on this stream."""
        if not self.blocking:
            return ()
        device = self.device
        if self.legacy:
            # Wait for the work already submitted to every blocking stream: what they got since
            # the last legacy op (older work is behind that op, which this one follows).
            touched, device.touched = device.touched, set()
            streams = [s for s in touched if not s.destroyed and s.capture is None]
            for s in streams:
                s.flush_fusion()
            return tuple(s.queue.record_event() for s in streams if not s.queue.query())
        tail = device.legacy_tail
        if tail is None or tail is self._seen_legacy:
            return ()
        self._seen_legacy = tail
        return () if tail.done() else (tail,)

    def fence(self) -> None:
        """Apply pending legacy-stream ordering now (before recording or waiting for an event)."""
        after = self._fences()
        if after:
            task = self.queue.enqueue(_noop, after=after, name="legacy-fence", kind="event_wait")
            if self.legacy:
                self.device.legacy_tail = task
                self._seen_legacy = task

    def flush_fusion(self) -> None:
        """Enqueue the launches the fusion window holds (before anything observes the stream)."""
        window = self.window
        if window is not None and window.pending:
            window.flush()

    def fusion_window(self):
        """The stream's fusion window, created on first use (fusion must be enabled)."""
        window = self.window
        if window is None:
            from streamq.fusion import FusionWindow

            from ._memory import BufferRef
            window = self.window = FusionWindow(_WindowTarget(self), describe=BufferRef.of)
        return window

    def record(self, event: "streamq.Event") -> None:
        """Capture the stream's work submitted so far in the core ``event`` (cudaEventRecord)."""
        self.flush_fusion()
        if self.legacy:
            self.device.check_legacy_use()
        self.fence()
        self.queue.record_event(event)

    def wait(self, event: "streamq.Event") -> None:
        """Make the stream's later work wait for ``event``'s current record (cudaStreamWaitEvent).

        On the legacy stream the wait is an op like any other: blocking streams' later
        work waits for it too."""
        self.flush_fusion()
        if self.legacy:
            marker = event._record
            if marker is not None and not marker.done():
                self.launch(_noop, name="cudaStreamWaitEvent", kind="event_wait", after=(marker,))
            else:
                self.device.check_legacy_use()
            return
        self.fence()
        self.queue.wait_event(event)

    # -- queries ---------------------------------------------------------------------------
    def query(self) -> bool:
        """True if every op submitted to the stream has finished. For the legacy stream this
        includes the work already submitted to blocking streams, which its next op would
        wait for."""
        self.flush_fusion()
        if self.legacy:
            return self.queue.query() and all(s.queue.query() for s in self.device.snapshot(blocking_only=True)
                                              if s.capture is None)
        if self.blocking:
            tail = self.device.legacy_tail
            if tail is not None and tail is not self._seen_legacy and not tail.done():
                return False
        return self.queue.query()

    def synchronize(self) -> None:
        """Block until every op submitted to the stream has finished (for the legacy stream:
        also the work already submitted to blocking streams, as its next op would wait for)."""
        if self.blocking:
            if self.query():
                return
            self.fence()
        else:
            window = self.window
            if window is not None and window.pending:
                window.flush()
        self.queue.synchronize()


def _noop() -> None:
    pass


class _WindowTarget:
    """What a fusion window enqueues onto: the stream, through its checks (not the bare queue)."""

    __slots__ = ("stream", "label", "concurrent")

    def __init__(self, stream: Stream):
        self.stream = stream
        self.label = stream.label
        self.concurrent = False

    def enqueue(self, fn, args=(), kwargs=None, *, name: str, kind: str = "kernel", reads=(), writes=()):
        call = _Call(fn, args, kwargs or {})
        return self.stream._launch(call, name=name, kind=kind, reads=reads, writes=writes)


class _Call:
    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


class _Runner:
    """The callable a stream's queue runs: the op, unless the device already failed."""

    __slots__ = ("device", "fn", "args", "name", "on_error")

    def __init__(self, device, fn, args, name, on_error):
        self.device = device
        self.fn = fn
        self.args = args
        self.name = name
        self.on_error = on_error

    def __call__(self):
        device = self.device
        if device.sticky is not None:
            if self.on_error is not None:
                self.on_error(device.sticky)
            return None
        try:
            self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - any failure in an op is a device fault
            device.poison(exc, self.name)
        return None


# -- work running inside streams ----------------------------------------------------------
_facade_queues: "weakref.WeakSet" = weakref.WeakSet()


def register_queue(queue) -> None:
    """Mark ``queue`` as one that runs facade work (a stream's, or a graph's lane)."""
    _facade_queues.add(queue)


def check_host_sync(what: str) -> None:
    """Raise cudaErrorNotPermitted if a facade op (host function, callback, kernel)
    calls the synchronizing API ``what``: waiting for stream work from inside stream
    work can deadlock, and CUDA forbids API calls there."""
    stack = _blocking._state.stack   # (None on a thread that never ran queue work)
    if stack and any(q in _facade_queues for q in stack):
        raise CudaError(cudaError_t.cudaErrorNotPermitted,
                        f"{what} called from inside stream work (a host function or callback)")


# -- registry of devices and streams -----------------------------------------------------
_devices: list[Device] = []
_devices_lock = threading.Lock()
_live_streams: dict[int, Stream] = {}
_thread = threading.local()
_PER_THREAD_DEFAULT = os.environ.get("STREAMQ_DEFAULT_STREAM", "legacy") == "per-thread"


def device_count() -> int:
    """Number of devices: the CMGs of the topology."""
    return len(streamq.topology())


def device(index: int) -> Device:
    """The Device for CMG ``index`` (raises cudaErrorInvalidDevice)."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise CudaError(cudaError_t.cudaErrorInvalidDevice, f"device must be an int, got {index!r}")
    if not _devices:
        with _devices_lock:
            if not _devices:
                _devices.extend(Device(i) for i in range(device_count()))
    if not 0 <= index < len(_devices):
        raise CudaError(cudaError_t.cudaErrorInvalidDevice,
                        f"device {index} out of range: {len(_devices)} device(s)")
    return _devices[index]


def current_device() -> Device:
    """The calling host thread's current device (device 0 until cudaSetDevice)."""
    return device(getattr(_thread, "device", 0))


def set_current_device(index: int) -> None:
    """Make device ``index`` the calling host thread's current device."""
    device(index)
    _thread.device = index


def resolve_stream(stream) -> Stream:
    """The Stream a handle names: 0/None (default stream), cudaStreamLegacy,
    cudaStreamPerThread, a cudaStream_t, its int value, or an object with
    ``__cuda_stream__``. Unknown or destroyed handles raise
    cudaErrorInvalidResourceHandle."""
    kind = type(stream)
    if kind is cudaStream_t or kind is int:  # the common case, kept short
        found = _live_streams.get(stream._value if kind is cudaStream_t else stream)
        if found is not None and not found.destroyed:
            return found
    if stream is None:
        value = 0
    elif kind is Stream:
        if stream.destroyed:
            raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"{stream.label} was destroyed")
        return stream
    elif hasattr(stream, "__cuda_stream__"):
        value = int(stream.__cuda_stream__()[1])
    else:
        try:
            value = int(stream)
        except (TypeError, ValueError):
            raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle,
                            f"not a stream handle: {stream!r}") from None
    found = _live_streams.get(value)
    if found is not None and not found.destroyed:
        return found
    if value == 0:
        dev = current_device()
        return dev.per_thread() if _PER_THREAD_DEFAULT else dev.legacy
    if value == STREAM_LEGACY:
        return current_device().legacy
    if value == STREAM_PER_THREAD:
        return current_device().per_thread()
    raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"unknown or destroyed stream {value:#x}")


def forget_stream(stream: Stream) -> None:
    """Drop a destroyed stream from the handle table (its pending work still completes,
    and cudaDeviceSynchronize still waits for it)."""
    stream.flush_fusion()
    stream.destroyed = True
    stream.device.touched.discard(stream)
    _live_streams.pop(stream.handle, None)
    device = stream.device
    with device._streams_lock:
        device.blocking.discard(stream)
        device.streams.discard(stream)
        device.retired = [s for s in device.retired if not s.queue.query()]
        if not stream.queue.query():
            device.retired.append(stream)
