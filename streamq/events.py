"""Events: points in a queue's work that other queues and the host can wait for.

An Event follows CUDA's rules (see ``cudaEventRecord``): recording captures the
work submitted to the queue so far; recording again replaces that capture; a
wait (``Queue.wait_event``, ``after=``) binds to the capture current at the time
of the wait and is not affected by later records; an event never recorded stands
for no work and counts as complete.

Each record is a *marker*: an internal Task that completes when the captured
work has finished, and whose completion time is the event's timestamp.
"""

from __future__ import annotations

import itertools
import time

from .errors import InvalidEventError, NotReadyError

__all__ = ["Event"]

_ids = itertools.count(1)


class Event:
    """A recordable, waitable point in a queue's work (CUDA event semantics).

    ``timing=False`` makes an event that cannot measure time (like
    ``cudaEventDisableTiming``): :meth:`elapsed_time` then refuses it.
    """

    __slots__ = ("id", "label", "timing", "_record", "__weakref__")

    def __init__(self, label: str | None = None, *, timing: bool = True):
        self.id = next(_ids)
        self.label = label if label is not None else f"event-{self.id}"
        self.timing = bool(timing)
        self._record = None  # the marker Task of the latest record, None if never recorded

    def record(self, queue) -> "Event":
        """Capture ``queue``'s work submitted so far (replacing any earlier capture)."""
        queue.record_event(self)
        return self

    @property
    def recorded(self) -> bool:
        """True once the event has been recorded at least once."""
        return self._record is not None

    def query(self) -> bool:
        """True if the captured work has finished (or the event was never recorded)."""
        marker = self._record
        return marker is None or marker.done()

    def synchronize(self, timeout: float | None = None) -> bool:
        """Block until the captured work has finished; False if ``timeout`` passed first."""
        from . import trace
        marker = self._record
        if marker is None or marker.done():
            return True
        start = time.perf_counter_ns() if trace._sink is not None else 0
        ok = marker._wait(timeout)
        if start:
            trace._emit_host_sync("event.synchronize", start, event=self)
        return ok

    def wait(self, timeout: float | None = None) -> bool:
        """Alias of :meth:`synchronize`, for ``threading.Event``-minded readers."""
        return self.synchronize(timeout)

    def timestamp_ns(self) -> int:
        """perf_counter_ns at which the captured work finished (raises if unknown)."""
        marker = self._record
        if marker is None:
            raise InvalidEventError(f"{self.label} was never recorded")
        if not self.timing:
            raise InvalidEventError(f"{self.label} was created with timing=False")
        if not marker.done():
            raise NotReadyError(f"{self.label}: the recorded work has not finished")
        return marker._result

    def elapsed_time(self, end: "Event") -> float:
        """Milliseconds from this event's completion to ``end``'s. Never blocks.

        Raises :class:`~streamq.InvalidEventError` if either event was never
        recorded or has timing disabled, and :class:`~streamq.NotReadyError` if
        either has not completed yet (CUDA's ``cudaErrorNotReady``).
        """
        if not isinstance(end, Event):
            raise TypeError(f"end must be an Event, got {type(end).__name__}")
        for ev in (self, end):
            if ev._record is None:
                raise InvalidEventError(f"{ev.label} was never recorded")
            if not ev.timing:
                raise InvalidEventError(f"{ev.label} was created with timing=False")
        return (end.timestamp_ns() - self.timestamp_ns()) / 1e6

    def __repr__(self) -> str:
        state = "unrecorded" if self._record is None else ("complete" if self.query() else "pending")
        return f"<Event {self.label} {state}>"


def _marker_dependency(event: Event):
    """The marker a wait on ``event`` binds to now, or None if there is nothing to wait for."""
    marker = event._record
    if marker is None or marker.done():
        return None
    return marker

