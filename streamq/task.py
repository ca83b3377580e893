"""Task: a unit of work on a queue, and a ``concurrent.futures.Future``.

A Future costs a ``threading.Condition`` (and so a lock or two) at construction.
A queue creates millions of tasks and most are never waited on one by one, so a
Task builds its condition only when a thread actually blocks on it; everything
else (``done()``, ``result()`` of a finished task, callbacks, ``asyncio``'s
``wrap_future`` and ``concurrent.futures.wait``) works as for any Future.

State changes follow Future's: PENDING -> RUNNING -> FINISHED, or PENDING ->
CANCELLED_AND_NOTIFIED. The owning queue moves a task out of PENDING under its
own lock, so ``cancel()`` and the start of a task never race.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)

from . import _blocking
from .errors import DependencyError

__all__ = ["Task"]

_logger = logging.getLogger("streamq")
_DONE_STATES = (CANCELLED_AND_NOTIFIED, FINISHED, CANCELLED)
_ids = itertools.count(1)
_lazy_lock = threading.Lock()


class _UnretrievedError:
    """Logs a task's exception if the task is dropped before anyone looked at it."""

    __slots__ = ("label", "exc", "__weakref__")

    def __init__(self, label: str, exc: BaseException):
        self.label = label  # a string, not the task: no reference cycle, prompt __del__
        self.exc = exc
        _unretrieved.add(self)

    def report(self) -> None:
        if self.label is not None:
            exc = self.exc
            _logger.error("streamq: exception in %s was never retrieved", self.label,
                          exc_info=(type(exc), exc, exc.__traceback__))
            self.label = None

    __del__ = report


_unretrieved: "weakref.WeakSet[_UnretrievedError]" = weakref.WeakSet()


def report_unretrieved() -> None:
    """Log every failure nobody has looked at yet (called at interpreter exit)."""
    for reporter in list(_unretrieved):
        reporter.report()


class _Waiters(list):
    """Future._waiters stand-in; only created when concurrent.futures.wait needs it."""

    __slots__ = ()


class Task(Future):
    """A function call dispatched to a :class:`~streamq.Queue`; a Future of its result.

    Promises: ``result()`` returns the function's value or raises its exception
    (or :class:`~streamq.DependencyError` if an ``after=`` dependency failed);
    ``cancel()`` succeeds while the task has not started; callbacks run exactly
    once, on the thread that completes the task or on the adding thread if the
    task is already done.
    """

    # Class-level defaults keep construction to the few fields every task needs.
    _result = None
    _exception = None
    _callbacks = None
    _cond = None
    _waiter_list = None
    _reporter = None
    _deps = ()
    _ndeps = 0
    _group = None
    _epoch = None
    _barrier = False
    _tsub = 0              # perf_counter_ns at submission, set only while tracing
    name = None
    kind = "host"
    reads = ()
    writes = ()

    def __init__(self, queue, fn, args, kwargs):  # noqa: D107 - see class docstring
        self._state = PENDING
        self.queue = queue
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.id = next(_ids)

    # -- the lazily built parts of Future -------------------------------------------------
    @property
    def _condition(self):
        cond = self._cond
        if cond is None:
            with _lazy_lock:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @property
    def _waiters(self):
        waiters = self._waiter_list
        if waiters is None:
            with _lazy_lock:
                waiters = self._waiter_list
                if waiters is None:
                    waiters = self._waiter_list = _Waiters()
        return waiters

    # -- queries ---------------------------------------------------------------------------
    def done(self) -> bool:
        """True once the task finished, failed or was cancelled."""
        return self._state in _DONE_STATES

    def cancelled(self) -> bool:
        """True if the task was cancelled before it started."""
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        """True while the task's function runs."""
        return self._state == RUNNING

    def _describe(self) -> str:
        label = self.name or getattr(self.fn, "__qualname__", None) or self.kind
        return f"Task {self.id} {label!s} on {getattr(self.queue, 'label', None)!r}"

    def __repr__(self) -> str:
        return f"<{self._describe()} state={self._state.lower()}>"

    # -- waiting ---------------------------------------------------------------------------
    def _wait(self, timeout) -> bool:
        if self._state in _DONE_STATES:
            return True
        cond = self._condition
        with _blocking.blocked():
            with cond:
                if timeout is None:
                    while self._state not in _DONE_STATES:
                        cond.wait()
                    return True
                deadline = time.monotonic() + timeout
                while self._state not in _DONE_STATES:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    cond.wait(remaining)
                return True

    def result(self, timeout=None):
        """The function's return value; raises its exception, CancelledError or TimeoutError."""
        if not self._wait(timeout):
            raise FutureTimeoutError()
        if self._state != FINISHED:
            raise CancelledError()
        exc = self._exception
        if exc is not None:
            self._mark_retrieved()
            try:
                raise exc
            finally:
                exc = None  # break the frame <-> traceback cycle, as Future does
        return self._result

    def exception(self, timeout=None):
        """The function's exception, or None; raises CancelledError or TimeoutError."""
        if not self._wait(timeout):
            raise FutureTimeoutError()
        if self._state != FINISHED:
            raise CancelledError()
        self._mark_retrieved()
        return self._exception

    def _mark_retrieved(self) -> None:
        reporter = self._reporter
        if reporter is not None:
            reporter.label = None
            self._reporter = None

    # -- callbacks -------------------------------------------------------------------------
    def add_done_callback(self, fn) -> None:
        """Call ``fn(task)`` once the task is done (now, if it already is)."""
        if self._state not in _DONE_STATES:
            with _lazy_lock:
                callbacks = self._callbacks
                if callbacks is None:
                    callbacks = self._callbacks = []
                callbacks.append(fn)
            if self._state not in _DONE_STATES:
                return
            # Completed while we were adding: whoever pops a callback first runs it.
            self._run_callbacks()
            return
        try:
            fn(self)
        except Exception:
            _logger.exception("exception calling callback for %r", self)

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:
                return
            try:
                fn(self)
            except Exception:
                _logger.exception("exception calling callback for %r", self)

    # -- completion (the queue and runtime call these) -------------------------------------
    def _finish(self, result, exc) -> None:
        """Publish the outcome, wake waiters, run callbacks. Called once, by the runner."""
        if exc is not None:
            self._exception = exc
            self._reporter = _UnretrievedError(self._describe(), exc)
        else:
            self._result = result
        self._publish(FINISHED)

    def _publish(self, state) -> None:
        cond = self._cond
        if cond is None:
            self._state = state
            cond = self._cond  # a waiter may have built one meanwhile
        if cond is not None:
            with cond:
                self._state = state
                waiters = self._waiter_list
                if waiters:
                    for waiter in waiters:
                        if state == FINISHED:
                            if self._exception is None:
                                waiter.add_result(self)
                            else:
                                waiter.add_exception(self)
                        else:
                            waiter.add_cancelled(self)
                cond.notify_all()
        if self._callbacks is not None:
            self._run_callbacks()

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if it is (now) cancelled."""
        queue = self.queue
        lock = queue._lock if queue is not None else _lazy_lock
        with lock:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            if self._state != PENDING:
                return False
            self._state = CANCELLED
            fired = queue._on_cancel_locked(self) if queue is not None else None
        self._publish(CANCELLED_AND_NOTIFIED)
        if queue is not None:
            queue._after_cancel(self, fired)
        return True

    def set_running_or_notify_cancel(self) -> bool:  # Executor-protocol compatibility
        """Future protocol: False if cancelled, else mark running (used by foreign executors)."""
        if self.cancelled():
            return False
        self._state = RUNNING
        return True

    def set_result(self, result) -> None:
        """Complete the task with ``result`` (for tasks driven outside a queue)."""
        self._finish(result, None)

    def set_exception(self, exception) -> None:
        """Complete the task with ``exception`` (for tasks driven outside a queue)."""
        self._finish(None, exception)

    # -- dependencies ----------------------------------------------------------------------
    def _dependency_failure(self):
        """The DependencyError to fail with, if any ``after=`` dependency did not succeed."""
        for dep in self._deps:
            if dep._state != FINISHED:
                err = DependencyError(f"{self!r} did not run: dependency {dep!r} was cancelled", dep)
                err.__cause__ = CancelledError()
                return err
            exc = dep._exception
            if exc is not None:
                dep._mark_retrieved()  # reported through this task's own error instead
                err = DependencyError(f"{self!r} did not run: dependency {dep!r} failed: {exc!r}", dep)
                err.__cause__ = exc
                return err
        return None
