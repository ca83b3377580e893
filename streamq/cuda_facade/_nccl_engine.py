"""The rank's progress thread: every MPI call of the NCCL module runs on it.

Work reaches the thread as :class:`Job` objects. A job is a generator that
starts nonblocking MPI operations and yields what it waits for (MPI requests,
or objects with a ``test()`` method); the thread resumes it when all of them
are complete. Jobs of one communicator run one at a time in the order their
host calls were made (their ``seq``), as NCCL orders the operations of a
communicator; jobs of different communicators progress together.

While a job waits on MPI the thread polls (MPI progresses nonblocking
collectives only inside MPI calls, and MPI's own blocking calls spin too):
back to back for 200 µs after anything progressed, then yielding the CPU between
polls, and after ``STREAMQ_NCCL_SPIN_S`` seconds (default 1) without progress
every 200 µs. With no operation running it sleeps on a condition variable at
once (a submit wakes it): spinning then would hold the GIL that the threads
woken by a completion need. Threads that wait for a job (stream workers, the
host) sleep on a lock, never spin, and a stream worker that waits is counted
as blocked so its CMG may start another.

A communicator's jobs that arrive before their turn are parked by sequence
number, so starting the next one costs the same however many wait (a stream
of back-to-back collectives parks them all at once).

Every running job has a deadline (``STREAMQ_NCCL_TIMEOUT`` seconds, default
300): a job still waiting then fails with ncclRemoteError, so that no fault
(a peer that never comes) ends in a hang.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

from streamq import _blocking

from ._nccl_mpi import MPI
from ._nccl_types import NcclError, ncclResult_t

__all__ = ["Completion", "Engine", "Job", "engine", "stop_engine", "timeout_s"]

_logger = logging.getLogger("streamq.nccl")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {raw!r}")
    return value


def timeout_s() -> float:
    """How long a posted NCCL operation may wait before it fails (``STREAMQ_NCCL_TIMEOUT``)."""
    return _env_seconds("STREAMQ_NCCL_TIMEOUT", 300.0)


_SPIN_S = _env_seconds("STREAMQ_NCCL_SPIN_S", 1.0)
_BUSY_S = 200e-6           # poll without yielding this long after progress
_SLOW_POLL_S = 200e-6
_SERVICE_S = 1e-3          # how often listeners (notices, set-up messages) are polled while busy
_IDLE_SERVICE_MAX_S = 0.02


class Completion:
    """Set once by the progress thread; waited for by any number of threads without spinning."""

    __slots__ = ("_lock", "done", "error")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self.done = False
        self.error: BaseException | None = None

    def set(self, error: BaseException | None = None) -> None:
        """Mark complete (with ``error`` if it failed) and wake every waiter. Only once."""
        self.error = error
        self.done = True
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until complete; False if ``timeout`` seconds passed first.

        A streamq worker waiting here counts as blocked, so its CMG may start
        another worker (other streams go on)."""
        if self.done:
            return True
        with _blocking.blocked():
            got = self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        if got:
            self._lock.release()  # let the next waiter through
        return got


class Job:
    """Work for the progress thread. Subclasses implement :meth:`body`.

    ``comm``/``seq``: set for the operations of a communicator, which run in
    ``seq`` order. ``done`` completes when the body returns or fails.
    """

    comm = None
    seq = -1

    def __init__(self, name: str):
        self.name = name
        self.done = Completion()
        self.result = None
        self.deadline = float("inf")
        self._gen = None
        self._requests: list = []
        self._others: list = []

    def body(self):
        """A generator: start MPI operations, ``yield`` what to wait for, return the result."""
        raise NotImplementedError

    def describe(self) -> str:
        """The job in words, for error messages."""
        return self.name

    # -- run by the progress thread ----------------------------------------------------------
    def _advance(self, engine: Engine) -> None:
        try:
            waits = next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            engine._finish(self, None)
            return
        except BaseException as exc:
            engine._finish(self, exc)
            return
        self._requests = [w for w in waits if isinstance(w, MPI.Request)]
        self._others = [w for w in waits if not isinstance(w, MPI.Request)]
        engine._posted()

    def _ready(self) -> bool:
        if self._requests and not MPI.Request.Testall(self._requests):
            return False
        return all(w.test() for w in self._others)


class Engine:
    """One progress thread per process (per MPI rank)."""

    def __init__(self):
        self._cv = threading.Condition(threading.Lock())
        self._inbox: deque = deque()
        self._running: list[Job] = []
        self._parked: dict = {}          # comm -> {seq: job}: jobs waiting for their turn
        self._listeners: list = []       # objects with active() -> bool and poll() (progress thread)
        self._sends: list = []           # fire-and-forget requests still in flight
        self._abandoned: list = []       # jobs given up with MPI operations still posted
        self._spin_until = 0.0
        self._busy_until = 0.0
        self._next_service = 0.0
        self._idle_service = _SERVICE_S
        self.dead: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="streamq-nccl-progress", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Hand ``job`` to the progress thread; returns it (wait on ``job.done``)."""
        with self._cv:
            if self.dead is not None or self._stopping:
                why = f"died: {self.dead}" if self.dead is not None else "stopped (the process is exiting)"
                job.done.set(NcclError(ncclResult_t.ncclInternalError,
                                       f"{job.describe()}: the NCCL progress thread {why}"))
                return job
            self._inbox.append(job)
            self._cv.notify()
        return job

    def wait(self, job: Job) -> None:
        """Block until ``job`` completes; raise its error."""
        while not job.done.wait(1.0):
            if self.dead is not None and not job.done.done:
                raise NcclError(ncclResult_t.ncclInternalError,
                                f"{job.describe()}: the NCCL progress thread died: {self.dead}")
        if job.done.error is not None:
            raise job.done.error

    def add_listener(self, listener) -> None:
        """Poll ``listener.poll()`` on the progress thread while ``listener.active()``."""
        with self._cv:
            self._listeners.append(listener)
            self._cv.notify()

    def remove_listener(self, listener) -> None:
        """Stop polling ``listener``."""
        with self._cv:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def wake(self) -> None:
        """Make the progress thread look at its work now (after a listener became active)."""
        with self._cv:
            self._cv.notify()

    def stop(self, timeout: float = 2.0) -> None:
        """End the progress thread (at exit, before MPI is finalized): it finishes the sends in
        flight (for up to ``timeout`` seconds) and makes no MPI call after that."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- progress thread only -----------------------------------------------------------------
    def send(self, request) -> None:
        """Keep a fire-and-forget send's request until it completes."""
        self._sends.append(request)

    def fail(self, job: Job, error: BaseException) -> None:
        """Fail ``job`` now, wherever it is; MPI operations it posted are abandoned."""
        if job.done.done:
            return
        if job in self._running:
            self._running.remove(job)
            if job._requests:
                self._abandoned.append(job)
        else:
            self._unpark_one(job)
        self._complete(job, error)

    def jobs_of(self, comm) -> list[Job]:
        """The running and parked jobs of ``comm``."""
        return [j for j in self._running if j.comm is comm] + list(self._parked.get(comm, {}).values())

    def _posted(self) -> None:
        now = time.monotonic()
        self._spin_until = now + _SPIN_S
        self._busy_until = now + _BUSY_S

    def _finish(self, job: Job, error: BaseException | None) -> None:
        if job in self._running:
            self._running.remove(job)
        self._complete(job, error)

    def _complete(self, job: Job, error: BaseException | None) -> None:
        comm = job.comm
        if comm is not None:
            comm.job_done(job, error)
        job.done.set(error)
        if comm is not None:
            self._unpark()

    def _start(self, job: Job) -> None:
        if job.comm is not None:
            refusal = job.comm.refusal(job)
            if refusal is not None:
                self._complete(job, refusal)
                return
        job.deadline = time.monotonic() + (job.comm.timeout if job.comm is not None else timeout_s())
        self._running.append(job)
        job._gen = job.body()
        job._advance(self)

    def _admit(self, job: Job) -> None:
        if job.comm is not None:
            job.comm.admitted()
            if not job.comm.may_start(job) and job.comm.refusal(job) is None:
                self._parked.setdefault(job.comm, {})[job.seq] = job
                return
        self._start(job)

    def _unpark_one(self, job: Job) -> None:
        waiting = self._parked.get(job.comm)
        if waiting is not None and waiting.get(job.seq) is job:
            del waiting[job.seq]
            if not waiting:
                del self._parked[job.comm]

    def _unpark(self) -> None:
        # Only a communicator's next job in order may start. (Parked jobs that can never run
        # - the communicator failed, a peer left - are failed through jobs_of when that happens.)
        for comm in list(self._parked):
            while True:
                job = self._parked.get(comm, {}).get(comm.next_run)
                if job is None:
                    break
                self._unpark_one(job)
                if not job.done.done:
                    self._start(job)

    def _poll_jobs(self) -> bool:
        progressed = False
        for job in list(self._running):
            if job in self._running and job._ready():
                job._advance(self)
                progressed = True
        return progressed

    def _service(self, now: float) -> None:
        for listener in list(self._listeners):
            if listener.active():
                listener.poll()
        self._sends = [r for r in self._sends if not r.Test()]
        for job in list(self._running):
            if now > job.deadline:
                waited = now - job.deadline + (job.comm.timeout if job.comm is not None else timeout_s())
                error = NcclError(ncclResult_t.ncclRemoteError,
                                  f"{job.describe()}: no completion after {waited:.1f} s "
                                  "(STREAMQ_NCCL_TIMEOUT); a peer rank did not take part")
                if job.comm is not None:
                    job.comm.fail(error, culprit=job)
                self.fail(job, error)

    def _listening(self) -> bool:
        return any(listener.active() for listener in self._listeners) or bool(self._sends)

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            _logger.exception("the NCCL progress thread died")
            with self._cv:
                self.dead = exc
                pending = list(self._inbox) + self._running + [
                    job for waiting in self._parked.values() for job in waiting.values()]
                self._inbox.clear()
            error = NcclError(ncclResult_t.ncclInternalError, f"the NCCL progress thread died: {exc}")
            for job in pending:
                if not job.done.done:
                    job.done.set(error)

    def _loop(self) -> None:
        while True:
            if self._stopping:
                end = time.monotonic() + 1.0
                while self._sends and time.monotonic() < end:
                    self._sends = [r for r in self._sends if not r.Test()]
                return
            with self._cv:
                if not self._inbox and not self._running:
                    if self._parked or self._listening():
                        self._cv.wait(self._idle_service)
                        self._idle_service = min(self._idle_service * 2, _IDLE_SERVICE_MAX_S)
                    elif not self._stopping:
                        self._cv.wait()
                items = list(self._inbox)
                self._inbox.clear()
            if items:
                self._idle_service = _SERVICE_S
            for job in items:
                self._admit(job)
            progressed = self._poll_jobs()
            now = time.monotonic()
            if now >= self._next_service or not self._running:
                self._service(now)
                self._next_service = now + _SERVICE_S
            if self._running and not progressed:
                if now < self._busy_until:
                    continue
                if now < self._spin_until:
                    os.sched_yield()
                else:
                    with self._cv:
                        if not self._inbox:
                            self._cv.wait(_SLOW_POLL_S)


_engine: Engine | None = None
_engine_lock = threading.Lock()


def stop_engine() -> None:
    """Stop the progress thread if it was started (at exit)."""
    if _engine is not None:
        _engine.stop()


def engine() -> Engine:
    """The process's progress thread (started on first use)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
                    raise NcclError(ncclResult_t.ncclSystemError,
                                    "MPI was initialized without thread support (needs MPI_THREAD_SERIALIZED "
                                    "or better: leave mpi4py.rc.thread_level at its default 'multiple')")
                _engine = Engine()
    return _engine
