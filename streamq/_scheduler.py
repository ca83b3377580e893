"""Worker pools: one per CMG, threads pinned to the CMG's CPUs.

What runs on a pool is a *runnable*: an object with a ``_drain(worker)`` method
(a queue with work ready, or one participant of an ``apply``). Runnables wait in
priority-ordered FIFO lists: one per CMG, and one for the whole machine that the
workers of every CMG serve once their own list is empty.

Invariants (all under the scheduler's single lock):
- a CMG has at most ``ncores`` *active* workers: taking work, running it, not
  parked and not blocked in a streamq wait;
- a worker that blocks in a streamq wait stops being active, so another worker
  of its CMG may start (spawned if none is idle): waits never starve the pool;
- a worker that unblocks while its CMG is full parks again at its next pick.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from . import _blocking, _limits
from .topology import CMG, _set_current_cmg, _thread_state, topology

_logger = logging.getLogger("streamq")

#: Extra threads a CMG may start to replace workers blocked in streamq waits.
MAX_EXTRA_THREADS = 64
#: Seconds an extra (above ncores) idle worker lingers before it exits.
EXTRA_IDLE_SECONDS = 5.0


class _ReadyList:
    """Runnables by priority (higher first), FIFO within one priority."""

    __slots__ = ("levels", "priorities", "count")

    def __init__(self):
        self.levels: dict[int, list] = {}
        self.priorities: list[int] = []  # descending
        self.count = 0

    def push(self, runnable, priority: int) -> None:
        level = self.levels.get(priority)
        if level is None:
            from collections import deque
            level = self.levels[priority] = deque()
            self.priorities.append(priority)
            self.priorities.sort(reverse=True)
        level.append(runnable)
        self.count += 1

    def top(self) -> int | None:
        if self.count:
            for p in self.priorities:
                if self.levels[p]:
                    return p
        return None

    def pop(self, priority: int):
        self.count -= 1
        return self.levels[priority].popleft()

    def drain_all(self) -> list:
        out = []
        for p in self.priorities:
            out.extend(self.levels[p])
            self.levels[p].clear()
        self.count = 0
        return out


class Worker(threading.Thread):
    """One pinned worker thread of a CMG pool."""

    def __init__(self, pool: "CMGPool", number: int, extra: bool):
        super().__init__(name=f"streamq-cmg{pool.cmg.index}-w{number}", daemon=True)
        self.pool = pool
        self.extra = extra
        self.park = threading.Lock()
        self.park.acquire()
        self.numba_threads = 0
        self.draining = None  # the queue whose items this worker is running

    def run(self) -> None:
        pool = self.pool
        cmg = pool.cmg
        try:
            os.sched_setaffinity(0, cmg.cpus)
        except OSError as exc:  # e.g. CPUs outside a container's cpuset
            _logger.warning("streamq: cannot pin %s to CPUs %s: %s", self.name, cmg.cpus, exc)
        _blocking._state.worker = self
        _set_current_cmg(cmg)
        _limits.configure_worker_thread(cmg)
        sched = pool.sched
        while True:
            runnable = sched._take(self)
            if runnable is None:
                return
            if "numba" in sys.modules:
                self._limit_numba()
            try:
                runnable._drain(self)
            except BaseException:  # a runnable must never kill its worker
                _logger.exception("streamq: internal error in %s draining %r", self.name, runnable)
            runnable = None  # a parked worker must not keep a queue (and its last task) alive

    def _limit_numba(self) -> None:
        """Hold numba's threads in this worker to its share of the CMG's cores."""
        pool = self.pool
        want = max(1, pool.cmg.ncores // max(1, pool.nactive))
        if want != self.numba_threads:
            self.numba_threads = want
            _limits.set_numba_threads(want)


class _LendState(threading.local):
    inside = None    # {CMG index: True} where the thread's whole affinity is inside the CMG
    settled = None   # {CMG index: the numba module or None} where a lend needs no pin and no cap


_lend_state = _LendState()
_UNSET = object()


def _inside_cache() -> dict:
    """Per thread: CMG indices whose CPUs already contain the thread's whole affinity."""
    cache = _lend_state.inside
    if cache is None:
        cache = _lend_state.inside = {}
    return cache


def lend_caller_to(cmg: CMG):
    """Make the calling (non-worker) thread run as one of ``cmg``'s workers for a while.

    Pins it to the CMG's CPUs, makes :func:`streamq.current_cmg` report the CMG and
    caps numba's threads to the CMG's cores; returns a callable that undoes all of
    it, or None when only the current CMG changed (the caller then restores the
    CMG it read before, which saves the common case a closure and a call). Used
    when a waiting host thread runs a queue's items itself.
    """
    old_cmg = _thread_state.cmg
    _thread_state.cmg = cmg
    numba = sys.modules.get("numba")
    settled = _lend_state.settled
    if settled is not None and settled.get(cmg.index, _UNSET) is numba:
        return None    # the common case, on every synchronize that runs work
    old_cpus = None
    if not _inside_cache().get(cmg.index, False):
        old_cpus = _pin_to(cmg)
    old_numba = None
    # (numba.get_num_threads costs over 1 µs: skip it when the pool cannot exceed the CMG)
    if numba is not None and numba.config.NUMBA_NUM_THREADS > len(cmg.cpus):
        old_numba = numba.get_num_threads()
        if old_numba > len(cmg.cpus):
            _limits.set_numba_threads(len(cmg.cpus))
        else:
            old_numba = None
    elif old_cpus is None and _inside_cache().get(cmg.index, False):
        if settled is None:
            settled = _lend_state.settled = {}
        settled[cmg.index] = numba
    if old_cpus is None and old_numba is None:
        return None

    def undo() -> None:
        if old_numba is not None:
            _limits.set_numba_threads(old_numba)
        _set_current_cmg(old_cmg)
        if old_cpus is not None:
            os.sched_setaffinity(0, old_cpus)
    return undo


def _pin_to(cmg: CMG):
    """Confine the calling thread to ``cmg``'s CPUs; its old affinity, or None if unchanged."""
    try:
        old_cpus = os.sched_getaffinity(0)
    except OSError:
        return None
    if old_cpus <= set(cmg.cpus):
        _inside_cache()[cmg.index] = True   # already confined to the CMG: nothing to pin
        return None
    try:
        os.sched_setaffinity(0, cmg.cpus)
    except OSError:
        return None
    return old_cpus


class CMGPool:
    """The workers of one CMG and the runnables waiting for them."""

    def __init__(self, sched: "Scheduler", cmg: CMG):
        self.sched = sched
        self.cmg = cmg
        self.ncores = cmg.ncores
        self.ready = _ReadyList()
        self.idle: list[Worker] = []
        self.nactive = 0
        self.nthreads = 0
        self.nextra = 0
        self._numbers = 0

    def _spawn_locked(self) -> Worker | None:
        extra = self.nthreads >= self.ncores
        if extra and self.nextra >= MAX_EXTRA_THREADS:
            return None
        self._numbers += 1
        worker = Worker(self, self._numbers, extra)
        self.nthreads += 1
        self.nextra += extra
        self.nactive += 1  # it starts active, straight into its first pick
        worker.start()
        return worker

    def _wake_locked(self) -> bool:
        """Make one more worker active if the CMG has room; True if one was."""
        if self.nactive >= self.ncores:
            return False
        if self.idle:
            worker = self.idle.pop()
            self.nactive += 1
            worker.park.release()
            return True
        return self._spawn_locked() is not None

    # Blocking accounting, called through streamq._blocking.blocked().
    def _worker_blocked(self, worker: Worker) -> None:
        sched = self.sched
        with sched.lock:
            self.nactive -= 1
            if self.ready.count or sched.machine_ready.count:
                self._wake_locked()

    def _worker_unblocked(self, worker: Worker) -> None:
        with self.sched.lock:
            self.nactive += 1


class Scheduler:
    """All CMG pools and the machine-wide ready list."""

    def __init__(self, cmgs: tuple[CMG, ...]):
        self.lock = threading.Lock()
        self.pools = [CMGPool(self, cmg) for cmg in cmgs]
        self.machine_ready = _ReadyList()
        self.stopping = False
        _limits.configure_process(cmgs)

    def post(self, runnable, pool: CMGPool | None, priority: int) -> None:
        """Make ``runnable`` ready on ``pool`` (or on any CMG if None) and wake a worker."""
        with self.lock:
            if pool is not None:
                pool.ready.push(runnable, priority)
                pool._wake_locked()
            else:
                self.machine_ready.push(runnable, priority)
                # Prefer the CMG with the most room.
                best = None
                for p in self.pools:
                    if p.nactive < p.ncores and (best is None or p.nactive - p.ncores < best.nactive - best.ncores):
                        best = p
                if best is not None:
                    best._wake_locked()

    def has_waiting(self, pool: CMGPool, priority: int) -> bool:
        """True if work of at least ``priority`` waits for ``pool``'s workers (racy hint)."""
        if not (pool.ready.count or self.machine_ready.count):
            return False
        top = pool.ready.top()
        mtop = self.machine_ready.top()
        return (top is not None and top >= priority) or (mtop is not None and mtop >= priority)

    def _take(self, worker: Worker):
        """The next runnable for ``worker``; parks it while there is none. None: exit."""
        pool = worker.pool
        while True:
            with self.lock:
                if pool.nactive <= pool.ncores:
                    own = pool.ready.top()
                    machine = self.machine_ready.top()
                    if own is not None and (machine is None or own >= machine):
                        return pool.ready.pop(own)
                    if machine is not None:
                        return self.machine_ready.pop(machine)
                if self.stopping:
                    pool.nactive -= 1
                    pool.nthreads -= 1
                    return None
                pool.nactive -= 1
                pool.idle.append(worker)
            if worker.extra:
                if not worker.park.acquire(timeout=EXTRA_IDLE_SECONDS):
                    with self.lock:
                        if worker in pool.idle:
                            pool.idle.remove(worker)
                            pool.nthreads -= 1
                            pool.nextra -= 1
                            return None
                    worker.park.acquire()  # woken just as we timed out: take the wake-up
            else:
                worker.park.acquire()

    def stop(self) -> None:
        """Let idle workers exit (used at interpreter exit, after the work is done)."""
        with self.lock:
            self.stopping = True
            for pool in self.pools:
                while pool.idle:
                    worker = pool.idle.pop()
                    pool.nactive += 1
                    worker.park.release()


_scheduler: Scheduler | None = None
_scheduler_lock = threading.Lock()


def scheduler() -> Scheduler:
    """The process's scheduler, started on first use from :func:`streamq.topology`."""
    global _scheduler
    sched = _scheduler
    if sched is None:
        with _scheduler_lock:
            sched = _scheduler
            if sched is None:
                sched = _scheduler = Scheduler(topology())
    return sched


def pool_for(cmg: int | CMG | None) -> CMGPool | None:
    """The pool of CMG ``cmg`` (an index or a CMG), or None for the whole machine."""
    if cmg is None:
        return None
    index = cmg.index if isinstance(cmg, CMG) else cmg
    pools = scheduler().pools
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(pools):
        raise ValueError(f"cmg must be an index in range({len(pools)}) or None, got {cmg!r}")
    return pools[index]
