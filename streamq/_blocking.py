"""Per-thread runtime state, and telling the scheduler when a worker blocks.

A worker that blocks inside a streamq wait (``Task.result``, ``sync``,
``Group.wait``, ...) is not busy: its CMG may start another worker so the
machine stays busy and waits on work that still needs a worker never deadlock.
"""

from __future__ import annotations

import contextlib
import threading

class _ThreadState(threading.local):
    # Class-level defaults: reading an attribute a thread never set costs no AttributeError
    # (getattr with a default on a bare threading.local is ~5x slower, on every launch/sync).
    worker = None
    stack = None


_state = _ThreadState()


def current_worker():
    """The streamq worker running on this thread, or None."""
    return _state.worker


def queue_stack() -> list:
    """Queues whose work this thread is executing right now, innermost last."""
    stack = _state.stack
    if stack is None:
        stack = _state.stack = []
    return stack


@contextlib.contextmanager
def blocked():
    """Mark the calling worker (if any) as blocked for the duration of the block."""
    worker = _state.worker
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
