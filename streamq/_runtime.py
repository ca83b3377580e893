"""Orderly shutdown at interpreter exit.

Before Python tears down threads, streamq:
1. fires delayed (``after``) work whose deadline has not come, so nothing
   waiting on a timer is lost, and warns about it;
2. cancels, with a warning naming each queue, the work of suspended queues,
   which would otherwise never run (its waiters see CancelledError);
3. waits for every queue to finish the rest, like ThreadPoolExecutor does;
4. logs task failures nobody retrieved (the tasks may outlive the exit hook);
5. flushes and closes the queue log, and lets idle workers exit.
"""

from __future__ import annotations

import logging
import threading

from . import _scheduler, _timer, trace
from .task import report_unretrieved

_logger = logging.getLogger("streamq")


def _at_exit() -> None:
    from .queue import _INTERNAL_KINDS, _live_queues, _suspended_queues
    fired = _timer.fire_all_now()
    if fired:
        _logger.warning("streamq: at exit, ran %d delayed task(s) before their deadline", fired)
    for queue in list(_suspended_queues):
        with queue._lock:
            stuck = [t for t in queue._items if t.kind not in _INTERNAL_KINDS]
        if stuck:
            _logger.warning("streamq: at exit, %r is suspended; cancelling its %d queued task(s)",
                            queue, len(stuck))
        for task in stuck:
            task.cancel()
    for queue in list(_live_queues):
        if not queue.suspended:
            queue.synchronize()
    report_unretrieved()
    trace.disable()
    if _scheduler._scheduler is not None:
        _scheduler._scheduler.stop()


def install() -> None:
    """Register the exit hook (runs before non-daemon threads are joined)."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_at_exit)
    else:  # pragma: no cover - very old Pythons
        import atexit
        atexit.register(_at_exit)
