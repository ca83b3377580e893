"""Event management: CUDA events over the core's :class:`streamq.Event`.

An event handle names an :class:`EventState`: the core event (record
generations, non-blocking elapsed time), its flags, its device, and — while it
was last recorded in a capturing stream — the capture frontier it stands for.
Recording and waiting apply the legacy-stream fences first (``Stream.record`` /
``Stream.wait``), so an event recorded on a blocking stream also captures the
legacy work that stream must follow.
"""

from __future__ import annotations

import itertools
import operator
import threading
import time

import streamq
from streamq import trace
from streamq.errors import InvalidEventError, NotReadyError

from . import _context
from ._errors import CudaError, api, cudaError_t
from ._rt_types import (
    cudaEvent_t, cudaEventBlockingSync, cudaEventDisableTiming, cudaEventInterprocess,
    cudaEventRecordExternal, cudaEventWaitExternal,
)

__all__ = ["EventState", "resolve_event", "create", "cudaEventCreate", "cudaEventCreateWithFlags", "cudaEventRecord",
           "cudaEventRecordWithFlags", "cudaEventQuery", "cudaEventSynchronize", "cudaEventElapsedTime",
           "cudaEventDestroy", "cudaStreamWaitEvent"]

_VALID_FLAGS = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess
_handles = itertools.count(0xE000)
_events: dict[int, "EventState"] = {}
_lock = threading.Lock()


class EventState:
    """What an event handle names: a core event plus CUDA's flags and capture state."""

    __slots__ = ("handle", "flags", "device", "generation", "core", "captured")

    def __init__(self, flags: int, device: _context.Device):
        self.handle = next(_handles)
        self.flags = flags
        self.device = device
        self.generation = device.generation
        self.core = streamq.Event(f"cudaEvent-{self.handle:#x}", timing=not flags & cudaEventDisableTiming)
        self.captured = None     # (Capture, frontier) while last recorded in a capturing stream

    def check_not_captured(self) -> None:
        """Raise cudaErrorCapturedEvent if the event was last recorded in an ongoing capture."""
        captured = self.captured
        if captured is not None:
            if captured[0].origin.capture is captured[0]:
                raise CudaError(cudaError_t.cudaErrorCapturedEvent,
                                "the event was last recorded in a capturing stream")
            self.captured = None  # that capture has ended: the event is an ordinary one again


def resolve_event(event) -> EventState:
    """The EventState a handle (cudaEvent_t or int) names; cudaErrorInvalidResourceHandle
    for NULL, unknown, destroyed or reset-invalidated handles."""
    try:
        key = int(event) if event is not None else 0
    except (TypeError, ValueError):
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"not an event handle: {event!r}") from None
    state = _events.get(key)
    if state is None or state.generation != state.device.generation:
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle,
                        f"event {key:#x} is NULL, destroyed or from before cudaDeviceReset")
    return state


def create(flags, device: _context.Device | None = None) -> cudaEvent_t:
    """A new event handle with ``flags`` on ``device`` (the current device if None)."""
    flags = operator.index(flags)
    if flags < 0 or flags & ~_VALID_FLAGS:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags: unknown event flags {flags:#x}")
    if flags & cudaEventInterprocess and not flags & cudaEventDisableTiming:
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        "flags: cudaEventInterprocess must be combined with cudaEventDisableTiming")
    device = _context.current_device() if device is None else device
    device.check()
    state = EventState(flags, device)
    with _lock:
        _events[state.handle] = state
    return cudaEvent_t(state.handle)


@api(1)
def cudaEventCreate():
    """A new event on the current device (cudaEventDefault: timing enabled)."""
    return create(0)


@api(1)
def cudaEventCreateWithFlags(flags):
    """A new event with ``flags`` (cudaEventDefault, BlockingSync, DisableTiming, Interprocess)."""
    return create(flags)


def _record(event, stream, flags: int) -> None:
    state = resolve_event(event)
    s = _context.resolve_stream(stream)
    if s.device is not state.device:
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle,
                        f"the event belongs to device {state.device.index}, the stream to {s.device.index}")
    s.device.check()
    capture = s.capture
    if capture is not None:
        if flags & cudaEventRecordExternal:
            capture.add(s, _context._noop, (), name=state.core.label, kind="event_record", reads=(),
                        writes=(), on_error=None, event=state.core)
        state.captured = (capture, capture.record_point(s))
        return
    state.captured = None
    s.record(state.core)


@api()
def cudaEventRecord(event, stream=0):
    """Capture in ``event`` the work submitted to ``stream`` so far (replacing any earlier
    capture; waits already made keep the record they saw)."""
    _record(event, stream, 0)


@api()
def cudaEventRecordWithFlags(event, stream=0, flags=0):
    """:func:`cudaEventRecord` with ``flags``: cudaEventRecordExternal puts an event-record
    node in a graph being captured."""
    flags = operator.index(flags)
    if flags not in (0, cudaEventRecordExternal):
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags: unknown event record flags {flags:#x}")
    _record(event, stream, flags)


@api()
def cudaEventQuery(event):
    """cudaSuccess if the recorded work has finished (or the event was never recorded),
    cudaErrorNotReady otherwise."""
    state = resolve_event(event)
    state.check_not_captured()
    state.device.check()
    if not state.core.query():
        raise CudaError(cudaError_t.cudaErrorNotReady)


@api()
def cudaEventSynchronize(event):
    """Block until the recorded work has finished (at once if never recorded); returns the
    device's sticky error if an op failed."""
    state = resolve_event(event)
    state.check_not_captured()
    _context.check_host_sync("cudaEventSynchronize")
    core = state.core
    if not core.query():
        start = time.perf_counter_ns() if trace._sink is not None else 0
        core.synchronize()
        if start:
            trace.emit({"type": "host_sync", "what": "cudaEventSynchronize", "event": core.label,
                        "device": state.device.index, "start_ns": start, "end_ns": time.perf_counter_ns()})
    state.device.check()


@api(1)
def cudaEventElapsedTime(start, end):
    """Milliseconds between two completed events. Never blocks: cudaErrorNotReady while
    either is pending; cudaErrorInvalidResourceHandle if either was never recorded or
    was created with cudaEventDisableTiming."""
    first = resolve_event(start)
    last = resolve_event(end)
    for state in (first, last):
        state.check_not_captured()
    first.device.check()
    try:
        return first.core.elapsed_time(last.core)
    except InvalidEventError as exc:
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, str(exc)) from None
    except NotReadyError:
        raise CudaError(cudaError_t.cudaErrorNotReady) from None


@api()
def cudaEventDestroy(event):
    """Destroy ``event``; work waiting for it keeps waiting for the record it saw."""
    state = resolve_event(event)
    with _lock:
        _events.pop(state.handle, None)


@api()
def cudaStreamWaitEvent(stream, event, flags=0):
    """Make ``stream``'s later work wait for the work captured in ``event`` (any device's).
    The host is not blocked. During capture, an event recorded in the capture forks or
    joins streams; waiting for uncaptured work needs cudaEventWaitExternal, else
    cudaErrorStreamCaptureIsolation."""
    flags = operator.index(flags)
    if flags not in (0, cudaEventWaitExternal):
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags: unknown event wait flags {flags:#x}")
    s = _context.resolve_stream(stream)
    state = resolve_event(event)
    s.device.check()
    captured = state.captured
    if captured is not None and captured[0].origin.capture is captured[0]:
        captured[0].wait(s, captured[1])
        return
    capture = s.capture
    if capture is not None:
        if not state.core.recorded:
            return  # an event never recorded stands for no work
        if flags & cudaEventWaitExternal:
            capture.add(s, _context._noop, (), name=state.core.label, kind="event_wait", reads=(),
                        writes=(), on_error=None, event=state.core)
            return
        capture.invalidate("a captured stream waited for uncaptured work")
        raise CudaError(cudaError_t.cudaErrorStreamCaptureIsolation,
                        "the event was recorded outside the capture (use cudaEventWaitExternal)")
    s.wait(state.core)


def _forget_device_events(device: _context.Device) -> None:
    """Drop the events of a reset device from the handle table."""
    with _lock:
        for key in [k for k, v in _events.items() if v.device is device]:
            del _events[key]


_context.reset_hooks.append(_forget_device_events)
