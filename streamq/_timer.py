"""One background thread that runs callbacks at deadlines (for ``Queue.after``)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

_logger = logging.getLogger("streamq")
_cond = threading.Condition()
_heap: list = []
_seq = itertools.count()
_thread: threading.Thread | None = None


def call_at(deadline: float, fn, arg) -> None:
    """Call ``fn(arg)`` on the timer thread once ``time.monotonic()`` reaches ``deadline``."""
    global _thread
    with _cond:
        heapq.heappush(_heap, (deadline, next(_seq), fn, arg))
        if _thread is None:
            _thread = threading.Thread(target=_loop, name="streamq-timer", daemon=True)
            _thread.start()
        _cond.notify()


def fire_all_now() -> int:
    """Run every pending callback immediately (used at interpreter exit); returns how many."""
    with _cond:
        due = [heapq.heappop(_heap) for _ in range(len(_heap))]
    for _, _, fn, arg in due:
        _call(fn, arg)
    return len(due)


def pending() -> int:
    """How many callbacks wait for their deadline."""
    with _cond:
        return len(_heap)


def _call(fn, arg) -> None:
    try:
        fn(arg)
    except Exception:
        _logger.exception("streamq: timer callback %r failed", fn)


def _loop() -> None:
    while True:
        with _cond:
            while True:
                if _heap:
                    wait = _heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, fn, arg = heapq.heappop(_heap)
                        break
                    _cond.wait(wait)
                else:
                    _cond.wait()
        _call(fn, arg)
