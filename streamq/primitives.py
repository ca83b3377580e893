"""GCD's dispatch groups and counting semaphores."""

from __future__ import annotations

import threading
import time

from . import _blocking

__all__ = ["Group", "Semaphore"]


def _wait_for(cond: threading.Condition, predicate, timeout: float | None) -> bool:
    """cond.wait_for with a deadline; the caller holds ``cond``."""
    if timeout is None:
        while not predicate():
            cond.wait()
        return True
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        cond.wait(remaining)
    return True


class Group:
    """dispatch_group: counts outstanding work; wait or be notified when it reaches zero.

    Tasks submitted with ``group=g`` enter it at submission and leave it when
    they finish (successfully or not) or are cancelled; :meth:`enter` and
    :meth:`leave` count work the runtime does not see.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._count = 0
        self._notify: list = []

    def enter(self) -> None:
        """Count one more piece of outstanding work."""
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        """Count one piece of work done; raises ValueError if none was outstanding."""
        with self._cond:
            if self._count == 0:
                raise ValueError("Group.leave() without a matching enter()")
            self._count -= 1
            if self._count:
                return
            notify, self._notify = self._notify, []
            self._cond.notify_all()
        for queue, fn, args, kwargs in notify:
            queue.submit(fn, *args, **kwargs)

    @property
    def count(self) -> int:
        """Outstanding work right now."""
        return self._count

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no work is outstanding; False if ``timeout`` passed first."""
        with self._cond:
            if self._count == 0:
                return True
        with _blocking.blocked():
            with self._cond:
                return _wait_for(self._cond, lambda: self._count == 0, timeout)

    def notify(self, queue, fn, /, *args, **kwargs) -> None:
        """Submit ``fn(*args, **kwargs)`` to ``queue`` once no work is outstanding (now, if none is)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        with self._cond:
            if self._count:
                self._notify.append((queue, fn, args, kwargs))
                return
        queue.submit(fn, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<Group outstanding={self._count}>"


class Semaphore:
    """dispatch_semaphore: a counting semaphore starting at ``value`` (>= 0)."""

    def __init__(self, value: int = 0):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"value must be a non-negative int, got {value!r}")
        self._cond = threading.Condition(threading.Lock())
        self._value = value
        self._waiting = 0

    @property
    def value(self) -> int:
        """Signals available right now."""
        return self._value

    def wait(self, timeout: float | None = None) -> bool:
        """Take one signal, blocking while none is available; False if ``timeout`` passed first."""
        with self._cond:
            if self._value > 0:
                self._value -= 1
                return True
            if timeout is not None and timeout <= 0:
                return False
        with _blocking.blocked():
            with self._cond:
                self._waiting += 1
                try:
                    ok = _wait_for(self._cond, lambda: self._value > 0, timeout)
                finally:
                    self._waiting -= 1
                if ok:
                    self._value -= 1
                return ok

    def signal(self) -> bool:
        """Add one signal; True if a waiting thread is woken by it (as dispatch_semaphore_signal)."""
        with self._cond:
            self._value += 1
            woke = self._waiting > 0
            if woke:
                self._cond.notify()
            return woke

    def __repr__(self) -> str:
        return f"<Semaphore value={self._value} waiting={self._waiting}>"
