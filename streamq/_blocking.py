"""Per-thread runtime state, and telling the scheduler when a worker blocks.

A worker that blocks inside a streamq wait (``Task.result``, ``sync``,
``Group.wait``, ...) is not busy: its CMG may start another worker so the
machine stays busy and waits on work that still needs a worker never deadlock.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def current_worker():
    """The streamq worker running on this thread, or None."""
    return getattr(_state, "worker", None)


def queue_stack() -> list:
    """Queues whose work this thread is executing right now, innermost last."""
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    return stack


@contextlib.contextmanager
def blocked():
    """Mark the calling worker (if any) as blocked for the duration of the block."""
    worker = getattr(_state, "worker", None)
    if worker is None:
        yield
        return
    queue = worker.draining
    if queue is not None:
        queue._drainer_blocked()
    worker.pool._worker_blocked(worker)
    try:
        yield
    finally:
        worker.pool._worker_unblocked(worker)
        if queue is not None:
            queue._drainer_unblocked()
