"""Dispatch queues: GCD's serial and concurrent queues, as ``concurrent.futures`` executors.

A queue holds *items* (Tasks: user work, barriers, event markers and event
waits) in submission order. Items start in that order. A serial queue runs one
item at a time; a concurrent queue runs as many as its CMG has cores, except
that a barrier waits for everything before it and runs alone.

A queue with work it can start asks to be *drained*: it posts itself to its
CMG's pool (or, with a ``target``, posts a drain item to the target queue, which
is how GCD's queue hierarchy serialises child queues through a serial target).
A worker draining a queue runs items until the queue is empty, blocked (head
item waiting on a dependency, a barrier waiting for running work, suspension),
or has had its fair share while other work of equal or higher priority waits.

Locking: every field below that changes after construction is guarded by the
queue's ``_lock``; the drain and the submit paths take it once per item.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures._base import FINISHED, PENDING, RUNNING

from . import _blocking, _scheduler, _timer, trace
from .errors import DeadlockError
from .events import Event, _marker_dependency
from .task import Task
from .topology import CMG, _thread_state, topology

__all__ = ["Queue", "global_queue", "current_queue"]

_logger = logging.getLogger("streamq")
_queue_ids = itertools.count(1)

#: Items a worker runs from one queue before it lets equal-priority work go first.
DRAIN_QUANTUM = 64
#: Times an emptied drain yields the GIL and looks again before it ends.
IDLE_CHECKS = 2

_live_queues: "weakref.WeakSet[Queue]" = weakref.WeakSet()
_suspended_queues: set = set()  # strong refs: a suspended queue's work must not vanish with it
_INTERNAL_KINDS = ("event_record", "event_wait", "drain")


class _Epoch:
    """Tasks of a concurrent queue submitted between two event records."""

    __slots__ = ("count", "markers")

    def __init__(self):
        self.count = 0
        self.markers: list = []


class Queue(Executor):
    """A dispatch queue (GCD's ``dispatch_queue_t``), usable as a ``concurrent.futures.Executor``.

    - ``concurrent=False`` (serial): one task at a time, in submission order.
    - ``concurrent=True``: tasks start in submission order and run in parallel on
      the CMG's workers; :meth:`barrier` runs alone.
    - ``cmg``: the CMG whose pinned workers run the queue (None: any CMG).
    - ``target``: run through another queue, as GCD's target queues do; the
      queue then runs on the target's CMG at the target's priority.
    - ``priority``: when workers are contended, higher priority starts first.
    """

    def __init__(self, label: str | None = None, *, concurrent: bool = False,
                 cmg: int | CMG | None = None, target: "Queue | None" = None, priority: int = 0):
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string or None, got {type(label).__name__}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, got {priority!r}")
        if target is not None:
            if not isinstance(target, Queue):
                raise TypeError(f"target must be a Queue or None, got {type(target).__name__}")
            if cmg is not None and _cmg_index(cmg) != target._cmg_index:
                raise ValueError(f"cmg={cmg!r} conflicts with target {target.label!r}, which runs on "
                                 f"CMG {target._cmg_index}")
            self._pool = target._pool
            self._cmg_index = target._cmg_index
        else:
            self._pool = _scheduler.pool_for(cmg)
            self._cmg_index = None if cmg is None else self._pool.cmg.index
        self.id = next(_queue_ids)
        self.label = label if label is not None else f"queue-{self.id}"
        self.concurrent = bool(concurrent)
        self.target = target
        self.priority = priority
        self._lock = threading.Lock()
        self._items: deque[Task] = deque()
        self._running = 0           # items started and not yet accounted as finished
        self._running_inline = 0    # of which sync calls running on their caller's thread
        self._drainers = 0          # drains posted or in progress
        self._suspended = 0
        self._barrier_running = False
        self._closed = False
        self._global = False
        self._timers: set[Task] = set()
        self._last: Task | None = None  # serial queues: the latest item, done once all are
        if self.concurrent:
            width = self._pool.ncores if self._pool is not None else sum(c.ncores for c in topology())
            self._width = 1 << 30
            self._max_drainers = width
            self._epochs: deque[_Epoch] | None = deque([_Epoch()])
        else:
            self._width = 1
            self._max_drainers = 1
            self._epochs = None
        self._sched = _scheduler.scheduler()
        _live_queues.add(self)
        if trace._sink is not None:
            trace._sink.note_queue(self)

    # -- properties ------------------------------------------------------------------------
    @property
    def cmg(self) -> CMG | None:
        """The CMG this queue runs on, or None if any CMG's workers may run it."""
        return None if self._cmg_index is None else topology()[self._cmg_index]

    @property
    def effective_priority(self) -> int:
        """The priority the queue is scheduled at (its root target's)."""
        q = self
        while q.target is not None:
            q = q.target
        return q.priority

    def __repr__(self) -> str:
        kind = "concurrent" if self.concurrent else "serial"
        where = "any CMG" if self._cmg_index is None else f"CMG {self._cmg_index}"
        return f"<Queue {self.label!r} {kind} on {where}>"

    # -- submitting ------------------------------------------------------------------------
    def submit(self, fn, /, *args, after=(), group=None, reads=(), writes=(), **kwargs) -> Task:
        """dispatch_async: run ``fn(*args, **kwargs)`` on the queue; returns its Task.

        ``after``: Tasks, Events or Futures (from any queue) that must complete
        first; if one fails or is cancelled, this task does not run and fails with
        :class:`~streamq.DependencyError`. ``group``: a :class:`~streamq.Group`
        the task belongs to until it finishes. ``reads``/``writes``: buffers
        (numpy arrays or objects with ``__array_interface__``) recorded in the
        queue log for the fusion analyzer.
        """
        return self.enqueue(fn, args, kwargs, after=after, group=group, reads=reads, writes=writes)

    def enqueue(self, fn, args=(), kwargs=None, *, after=(), group=None, name: str | None = None,
                kind: str = "host", reads=(), writes=(), barrier: bool = False) -> Task:
        """The general form of :meth:`submit` for libraries built on queues.

        ``name`` and ``kind`` (``kernel``, ``memcpy``, ``memset``, ``host``, ...)
        label the task in the queue log; ``barrier=True`` makes it a barrier.
        Arguments are passed as a tuple and a dict, so none are reserved.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if self._closed:
            raise RuntimeError(f"cannot schedule new futures after shutdown of {self!r}")
        task = Task(self, fn, args, kwargs)
        if name is not None:
            task.name = name
        if kind != "host":
            task.kind = kind
        if reads:
            task.reads = reads
        if writes:
            task.writes = writes
        if barrier and self.concurrent:
            task._barrier = True
        if after:
            _bind_dependencies(task, after)
        if group is not None:
            group.enter()
            task._group = group
        if trace._sink is not None:
            task._tsub = time.perf_counter_ns()
        try:
            self._enqueue(task, check_closed=True)
        except RuntimeError:
            if group is not None:
                group.leave()
            raise
        return task

    def barrier(self, fn, /, *args, **kwargs) -> Task:
        """dispatch_barrier_async: on a concurrent queue, run alone after all earlier tasks.

        On a serial queue a barrier is an ordinary task.
        """
        return self.enqueue(fn, args, kwargs, barrier=True, kind="barrier")

    def _enqueue(self, task: Task, check_closed: bool = False) -> None:
        with self._lock:
            if check_closed and self._closed:
                raise RuntimeError(f"cannot schedule new futures after shutdown of {self!r}")
            self._items.append(task)
            epochs = self._epochs
            if epochs is not None:
                epoch = epochs[-1]
                epoch.count += 1
                task._epoch = epoch
            else:
                self._last = task
            post = self._kick_locked()
        if post:
            self._post()

    def _dispatchable_locked(self, head: Task) -> bool:
        if head._state is not PENDING:
            return True  # cancelled: the drain discards it
        if head._ndeps or self._barrier_running or self._running >= self._width:
            return False
        return not (head._barrier and self._running)

    def _kick_locked(self) -> bool:
        """Count one more drain if the queue can start its head item; True: post it."""
        if (self._suspended or self._drainers >= self._max_drainers or not self._items
                or not self._dispatchable_locked(self._items[0])):
            return False
        self._drainers += 1
        return True

    def _post(self) -> None:
        target = self.target
        if target is None:
            self._sched.post(self, self._pool, self.priority)
        else:
            item = Task(target, self._drain, (), None)
            item.kind = "drain"
            target._enqueue(item)

    # -- running ---------------------------------------------------------------------------
    def _drain(self, worker=None) -> None:
        """Run items until the queue is empty, blocked, or should yield to other work."""
        if worker is None:
            worker = _blocking.current_worker()
        stack = _blocking.queue_stack()
        stack.append(self)
        if worker is not None:
            outer_draining, worker.draining = worker.draining, self
        pool = worker.pool if worker is not None else None
        sched = self._sched
        priority = self.effective_priority
        finished = None
        budget = DRAIN_QUANTUM
        idle_checks = IDLE_CHECKS
        retry = False
        try:
            while True:
                fired = None
                with self._lock:
                    if finished is not None:
                        fired = self._account_finished_locked(finished)
                        finished = None
                    task = self._pick_locked()
                    repost = spawn = False
                    if task is None and not self._items and idle_checks:
                        # Caught up with the submitter: let it run a moment before we give up
                        # the drain, so a stream of submissions costs no wake-up per task.
                        idle_checks -= 1
                        retry = True
                    elif task is None:
                        self._drainers -= 1
                    elif pool is not None and (sched.has_waiting(pool, priority + 1)
                                               or (budget <= 0 and sched.has_waiting(pool, priority))):
                        # Higher-priority work waits, or our fair share is used: put the item
                        # back and let the pool choose again.
                        self._unpick_locked(task)
                        task = None
                        repost = True
                    else:
                        spawn = (self._width > 1 and self._items and self._drainers < self._max_drainers
                                 and not self._suspended and self._dispatchable_locked(self._items[0]))
                        if spawn:
                            self._drainers += 1
                if fired:
                    _complete_markers(fired)
                if retry:
                    retry = False
                    time.sleep(0)
                    continue
                if task is None:
                    if repost:
                        self._post()
                    return
                if spawn:
                    self._post()
                self._run(task, worker)
                finished = task
                budget -= 1
                idle_checks = IDLE_CHECKS
        finally:
            stack.pop()
            if worker is not None:
                worker.draining = outer_draining

    def _drainer_blocked(self) -> None:
        """A worker draining this queue blocks in a wait: let another drain start meanwhile."""
        if self._width == 1:
            return  # a serial queue cannot start anything while its task waits
        with self._lock:
            self._drainers -= 1
            post = self._kick_locked()
        if post:
            self._post()

    def _drainer_unblocked(self) -> None:
        if self._width > 1:
            with self._lock:
                self._drainers += 1

    def _pick_locked(self) -> Task | None:
        items = self._items
        while items and not self._suspended:
            head = items[0]
            if head._state is not PENDING:  # cancelled while it waited
                items.popleft()
                continue
            # _dispatchable_locked(head), inlined: this runs once per item
            if (head._ndeps or self._barrier_running or self._running >= self._width
                    or (head._barrier and self._running)):
                return None
            items.popleft()
            head._state = RUNNING
            self._running += 1
            if head._barrier:
                self._barrier_running = True
            return head
        return None

    def _unpick_locked(self, task: Task) -> None:
        task._state = PENDING
        self._running -= 1
        if task._barrier:
            self._barrier_running = False
        self._items.appendleft(task)

    def _account_finished_locked(self, task: Task):
        self._running -= 1
        if task._barrier:
            self._barrier_running = False
        epoch = task._epoch
        if epoch is not None:
            epoch.count -= 1
            return self._fire_epochs_locked()
        return None

    def _fire_epochs_locked(self):
        """Markers whose every earlier task has finished: (marker, fired) to complete outside the lock."""
        epochs = self._epochs
        fired = None
        while len(epochs) > 1 and epochs[0].count == 0:
            done = epochs.popleft()
            if done.markers:
                fired = (fired or []) + done.markers
        return fired

    def _run(self, task: Task, worker) -> None:
        """Run one started item and publish its outcome (never raises)."""
        sink = trace._sink
        start = time.perf_counter_ns() if sink is not None else 0
        fn = task.fn
        if task._deps and (err := task._dependency_failure()) is not None:
            task._finish(None, err)
        elif fn is None:
            task._finish(time.perf_counter_ns(), None)  # marker or event wait: its time is its result
        else:
            try:
                kwargs = task.kwargs
                result = fn(*task.args, **kwargs) if kwargs else fn(*task.args)
            except BaseException as exc:  # delivered to whoever waits, as Future does
                task._finish(None, exc)
            else:
                task._result = result         # task._finish(result, None), minus a call
                task._publish(FINISHED)
            task.args = task.kwargs = None  # don't keep inputs alive through a held Task
        if task._group is not None:
            task._group.leave()
        if sink is not None and task.kind != "drain":
            sink.task(task, start, time.perf_counter_ns(), worker)

    # -- dispatch_sync ---------------------------------------------------------------------
    def sync(self, fn, /, *args, **kwargs):
        """dispatch_sync: run ``fn`` on the queue, wait, and return its result (or raise).

        On an idle queue without a target it runs on the calling thread, as GCD
        does. Raises :class:`~streamq.DeadlockError` where GCD would deadlock:
        called from work running on this serial queue or on a serial queue it
        targets, or from inside this concurrent queue with a barrier pending.
        """
        return self._sync(fn, args, kwargs, barrier=False)

    def barrier_sync(self, fn, /, *args, **kwargs):
        """dispatch_barrier_sync: :meth:`barrier`, then wait for it and return its result."""
        return self._sync(fn, args, kwargs, barrier=True)

    def _sync(self, fn, args, kwargs, barrier: bool):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._check_sync_deadlock(barrier)
        if self._closed:
            raise RuntimeError(f"cannot schedule new futures after shutdown of {self!r}")
        if self.target is None:
            with self._lock:
                inline = self._begin_inline_locked(barrier)
            if inline:
                return self._run_inline(fn, args, kwargs, barrier)
        task = self.enqueue(fn, args, kwargs, barrier=barrier, kind="barrier" if barrier else "host")
        return task.result()

    def _begin_inline_locked(self, barrier: bool) -> bool:
        if self._suspended or self._items or self._barrier_running or self._closed:
            return False
        if not self.concurrent or barrier:
            if self._running or self._drainers:
                return False
            self._drainers += 1
            self._barrier_running = barrier
        self._running += 1
        self._running_inline += 1
        if self._epochs is not None:
            self._epochs[-1].count += 1
        return True

    def _run_inline(self, fn, args, kwargs, barrier: bool):
        sink = trace._sink
        start = time.perf_counter_ns() if sink is not None else 0
        stack = _blocking.queue_stack()
        stack.append(self)
        epoch = self._epochs[-1] if self._epochs is not None else None
        status_exc = None
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            status_exc = exc
            raise
        finally:
            stack.pop()
            with self._lock:
                self._running -= 1
                self._running_inline -= 1
                fired = None
                if epoch is not None:
                    epoch.count -= 1
                    fired = self._fire_epochs_locked()
                if not self.concurrent or barrier:
                    self._drainers -= 1
                    self._barrier_running = False
                post = self._kick_locked()
            if fired:
                _complete_markers(fired)
            if post:
                self._post()
            if sink is not None:
                sink.inline(self, fn, start, time.perf_counter_ns(), "barrier" if barrier else "host",
                            status_exc)

    def _check_sync_deadlock(self, barrier: bool) -> None:
        stack = _blocking.queue_stack()
        if not stack:
            return
        chain = []
        q = self
        while q is not None:
            chain.append(q)
            q = q.target
        for running in stack:
            if running in chain and (not running.concurrent or (running is self and barrier)):
                raise DeadlockError(
                    f"{'barrier_sync' if barrier else 'sync'} on {self!r} from work running on "
                    f"{running!r} would wait for itself forever")
        if self.concurrent and self in stack:
            with self._lock:
                barrier_ahead = any(item._barrier for item in self._items)
            if barrier_ahead:
                raise DeadlockError(f"sync on {self!r} from inside it would wait behind a barrier "
                                    "that waits for the caller")

    # -- dispatch_apply --------------------------------------------------------------------
    def apply(self, n: int, fn) -> None:
        """dispatch_apply: call ``fn(i)`` for i in range(n); return when all are done.

        On a concurrent queue the calls run in parallel on the queue's CMG
        workers, the calling thread taking part (so nested ``apply`` never
        deadlocks); on a serial queue they run in order, synchronously with the
        queue, as GCD does. The first exception is raised once every call
        already started has stopped; calls not yet started are skipped.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if n == 0:
            return
        if not self.concurrent:
            self.sync(_apply_in_order, n, fn)
            return
        width = self._pool.ncores if self._pool is not None else sum(c.ncores for c in topology())
        state = _Apply(n, fn)
        for _ in range(min(n, width) - 1):
            self._sched.post(state, self._pool, self.effective_priority + 1)
        state.participate()
        state.close_and_wait()
        if state.error is not None:
            raise state.error

    # -- dispatch_after --------------------------------------------------------------------
    def after(self, delay_s: float, fn, /, *args, **kwargs) -> Task:
        """dispatch_after: submit ``fn`` once ``delay_s`` seconds have passed; returns its Task.

        Until then the task is not in the queue (work submitted meanwhile runs
        first, as in GCD) but it can be cancelled, and ``shutdown(wait=True)``
        waits for it.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        try:
            delay = float(delay_s)
        except (TypeError, ValueError):
            raise TypeError(f"delay_s must be a number of seconds, got {delay_s!r}") from None
        if not delay >= 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s!r}")
        if self._closed:
            raise RuntimeError(f"cannot schedule new futures after shutdown of {self!r}")
        task = Task(self, fn, args, kwargs)
        with self._lock:
            self._timers.add(task)
        _timer.call_at(time.monotonic() + delay, self._fire_timer, task)
        return task

    def _fire_timer(self, task: Task) -> None:
        with self._lock:
            self._timers.discard(task)
            if task._state is not PENDING:
                return  # cancelled while waiting
        if trace._sink is not None:
            task._tsub = time.perf_counter_ns()
        self._enqueue(task)

    # -- suspension ------------------------------------------------------------------------
    def suspend(self) -> None:
        """dispatch_suspend: start no new task until a matching :meth:`resume` (counted)."""
        if self._global:
            raise RuntimeError("global queues cannot be suspended")
        with self._lock:
            self._suspended += 1
            _suspended_queues.add(self)

    def resume(self) -> None:
        """dispatch_resume: undo one :meth:`suspend`; at zero the queue runs again."""
        if self._global:
            raise RuntimeError("global queues cannot be suspended or resumed")
        with self._lock:
            if self._suspended == 0:
                raise ValueError(f"resume() of {self!r} without a matching suspend()")
            self._suspended -= 1
            post = False
            if self._suspended == 0:
                _suspended_queues.discard(self)
                post = self._kick_locked()  # the drain spawns further drains as needed
        if post:
            self._post()

    @property
    def suspended(self) -> bool:
        """True while the queue is suspended."""
        return self._suspended > 0

    # -- events and synchronization ---------------------------------------------------------
    def record_event(self, event: Event | None = None) -> Event:
        """Record ``event`` (a new one if None) here: it completes when every task
        submitted before it has finished. Returns the event."""
        if event is None:
            event = Event()
        elif not isinstance(event, Event):
            raise TypeError(f"event must be an Event or None, got {type(event).__name__}")
        marker = Task(self, None, (), None)
        marker.kind = "event_record"
        marker.name = event.label
        done_now = False
        post = False
        with self._lock:
            if self._epochs is not None:
                epochs = self._epochs
                if len(epochs) == 1 and epochs[0].count == 0:
                    done_now = True
                else:
                    epochs[-1].markers.append(marker)
                    epochs.append(_Epoch())
            elif self._serial_idle_locked():
                done_now = True
            else:
                self._items.append(marker)
                post = self._kick_locked()
            event._record = marker
        if trace._sink is not None:
            marker._tsub = time.perf_counter_ns()
        if done_now:
            marker._state = RUNNING
            _complete_markers([marker])
        if post:
            self._post()
        return event

    def wait_event(self, event: Event) -> None:
        """Make tasks submitted after this call wait for ``event``'s current record.

        The caller is not blocked. An event never recorded, or already complete,
        adds no wait.
        """
        if not isinstance(event, Event):
            raise TypeError(f"event must be an Event, got {type(event).__name__}")
        marker = _marker_dependency(event)
        if marker is None:
            if trace._sink is not None:   # the record it found complete, if any: still an edge
                trace._emit_event_wait(self, event, event._record)
            return
        gate = Task(self, None, (), None)
        gate.kind = "event_wait"
        gate.name = event.label
        _bind_dependencies(gate, (marker,))
        if trace._sink is not None:
            gate._tsub = time.perf_counter_ns()
        self._enqueue(gate)

    def synchronize(self, timeout: float | None = None) -> bool:
        """Block until all work submitted so far is done; False if ``timeout`` passed first.

        On a serial queue with nothing running, the calling (non-worker) thread
        runs the pending items itself, up to this call's point in the queue, as
        GCD's ``dispatch_sync`` runs its block on the caller: a short wait then
        costs no thread hop. Meanwhile the thread is pinned to the queue's CMG
        and counts as one of its workers (``current_cmg()``), so placement holds.
        Items it cannot start (waiting for dependencies) are left to the workers.
        """
        start = time.perf_counter_ns() if trace._sink is not None else 0
        ok = (timeout is None and self._width == 1 and self.target is None
              and _blocking._state.worker is None and self._sync_serial_here())
        if not ok:
            event = self.record_event(Event(f"{self.label}.synchronize"))
            ok = event._record._wait(timeout)
        if start:
            trace._emit_host_sync("queue.synchronize", start, queue=self)
        return ok

    def _sync_serial_here(self) -> bool:
        """synchronize()'s fast path on a serial queue: True once everything submitted so
        far has finished; False if the caller must fall back to waiting for a marker.

        The last item submitted stands in for a marker (a serial queue finishes items in
        order), so no marker is queued; the caller runs pending items itself unless
        higher-priority work waits for the CMG's workers.
        """
        post = False
        with self._lock:
            last = self._last
            if self._serial_idle_locked():
                return True
            if last is None or self._epochs is not None or self._running_inline:
                return False
            pool, sched = self._pool, self._sched
            # (the counts first: has_waiting's priority scan is rarely needed)
            outranked = (pool is not None and (pool.ready.count or sched.machine_ready.count)
                         and sched.has_waiting(pool, self.priority + 1))
            first = None
            if not outranked:
                first = self._pick_locked()
                if first is None:
                    post = self._kick_locked()
        if first is not None:
            self._run_here(first, until=last)
        elif post:
            self._post()
        last._wait(None)
        # Cancelled before it started: earlier items may still run - wait with a marker.
        return last._state is FINISHED

    def _run_here(self, task: Task, until: Task) -> None:
        """Run ``task`` (already picked) and this serial queue's next startable items on the
        calling thread, up to ``until``.

        Serial order and exclusion hold as for any drain: items are taken from
        the head under the lock, and none is taken while another one runs.
        """
        pool = self._pool
        old_cmg = _thread_state.cmg
        undo = _scheduler.lend_caller_to(pool.cmg) if pool is not None else None
        stack = _blocking.queue_stack()
        stack.append(self)
        try:
            while True:
                self._run(task, None)
                post = False
                with self._lock:
                    self._account_finished_locked(task)
                    task = None if task is until else self._pick_locked()
                    if task is None and self._items:
                        post = self._kick_locked()  # what follows ``until`` goes to the workers
                if task is None:
                    if post:
                        self._post()
                    return
        finally:
            stack.pop()
            if undo is not None:
                undo()
            else:
                _thread_state.cmg = old_cmg

    def query(self) -> bool:
        """True if every task submitted so far has finished (never blocks)."""
        with self._lock:
            if self._epochs is not None:
                return len(self._epochs) == 1 and self._epochs[0].count == 0
            return self._serial_idle_locked()

    def _serial_idle_locked(self) -> bool:
        last = self._last
        if self._items or self._running_inline:
            return False
        if last is None:
            return True
        if last.cancelled():
            return not self._running    # an item before the cancelled last one may still run
        return last.done()

    # -- Executor protocol -----------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not started; optionally wait.

        ``wait=True`` waits for queued and delayed (``after``) work to finish;
        on a suspended queue that would never happen, so it raises RuntimeError
        unless ``cancel_futures=True`` removed the work. Global queues stay open.
        """
        with self._lock:
            if not self._global:
                self._closed = True
            pending = [t for t in self._items if t.kind not in _INTERNAL_KINDS] + list(self._timers)
        if cancel_futures:
            for task in pending:
                task.cancel()
        if wait:
            for task in list(self._timers):
                task._wait(None)
            with self._lock:
                stuck = self._suspended and any(
                    t._state is PENDING and t.kind not in _INTERNAL_KINDS for t in self._items)
            if stuck:
                raise RuntimeError(f"shutdown(wait=True) of suspended {self!r} would never finish: "
                                   "resume() it first or pass cancel_futures=True")
            self.synchronize()

    # -- cancellation hooks (Task.cancel calls these) ----------------------------------------
    def _on_cancel_locked(self, task: Task):
        self._timers.discard(task)
        epoch = task._epoch
        if epoch is not None:
            task._epoch = None
            epoch.count -= 1
            return self._fire_epochs_locked()
        return None

    def _after_cancel(self, task: Task, fired) -> None:
        if fired:
            _complete_markers(fired)
        if task._group is not None:
            task._group.leave()
        with self._lock:
            post = self._kick_locked()  # a cancelled head no longer blocks what follows
        if post:
            self._post()
        if trace._sink is not None:
            trace._sink.cancelled(task)

    def _dependency_done(self, task: Task) -> None:
        with self._lock:
            task._ndeps -= 1
            post = task._ndeps == 0 and self._kick_locked()
        if post:
            self._post()


def _cmg_index(cmg) -> int:
    return cmg.index if isinstance(cmg, CMG) else cmg


def _complete_markers(markers) -> None:
    now = time.perf_counter_ns()
    sink = trace._sink
    for marker in markers:
        marker._finish(now, None)
        if sink is not None:
            sink.task(marker, now, now, None)


def _bind_dependencies(task: Task, after) -> None:
    """Record ``after`` on ``task`` and count the ones not yet complete."""
    if isinstance(after, (Task, Event, Future)):
        after = (after,)
    deps = []
    try:
        iterator = iter(after)
    except TypeError:
        raise TypeError(f"after must be a Task, Event, Future or an iterable of them, got {after!r}") from None
    for dep in iterator:
        if isinstance(dep, Event):
            dep = dep._record
            if dep is None:
                continue  # never recorded: stands for no work
        elif not isinstance(dep, Future):
            raise TypeError(f"after must hold Tasks, Events or Futures, got {type(dep).__name__}")
        deps.append(dep)
    if not deps:
        return
    task._deps = tuple(deps)
    pending = [d for d in deps if not d.done()]
    task._ndeps = len(pending)
    queue = task.queue
    for dep in pending:
        dep.add_done_callback(lambda _dep, task=task: queue._dependency_done(task))


def _apply_in_order(n, fn) -> None:
    for i in range(n):
        fn(i)


class _Apply:
    """One dispatch_apply: a shared index counter its participants pull from."""

    def __init__(self, n: int, fn):
        self.n = n
        self.fn = fn
        self.next_index = itertools.count().__next__  # atomic under the GIL
        self.failed = False
        self.error: BaseException | None = None
        self.active = 0
        self.closed = False
        self.cond = threading.Condition(threading.Lock())

    def participate(self) -> None:
        n, fn, take = self.n, self.fn, self.next_index
        while not self.failed:
            i = take()
            if i >= n:
                return
            try:
                fn(i)
            except BaseException as exc:
                with self.cond:
                    if self.error is None:
                        self.error = exc
                    self.failed = True

    def _drain(self, worker) -> None:  # runnable protocol: a helper worker joins in
        with self.cond:
            if self.closed:
                return
            self.active += 1
        try:
            self.participate()
        finally:
            with self.cond:
                self.active -= 1
                if self.active == 0:
                    self.cond.notify_all()

    def close_and_wait(self) -> None:
        with self.cond:
            self.closed = True  # helpers not yet started will find nothing to do
            if self.active == 0:
                return
        with _blocking.blocked():
            with self.cond:
                while self.active:
                    self.cond.wait()


_global_queues: dict = {}
_global_lock = threading.Lock()


def global_queue(cmg: int | CMG | None = None) -> Queue:
    """The shared concurrent queue of CMG ``cmg``, or of the whole machine if None.

    Global queues cannot be suspended or shut down (``shutdown`` only waits).
    """
    key = None if cmg is None else _cmg_index(cmg)
    q = _global_queues.get(key)
    if q is None:
        with _global_lock:
            q = _global_queues.get(key)
            if q is None:
                label = "streamq.global" if key is None else f"streamq.global.cmg{key}"
                q = Queue(label, concurrent=True, cmg=key)
                q._global = True
                _global_queues[key] = q
    return q


def current_queue() -> Queue | None:
    """The queue whose work the calling thread is running, or None."""
    stack = _blocking.queue_stack()
    return stack[-1] if stack else None
