"""Issuing NCCL operations onto streams: one call, or a ncclGroupStart/End group.

An issued batch becomes one stream op (``Stream.launch``), so it starts only
when the stream's earlier work is done. The op hands the batch's jobs to the
progress thread and — for the blocking calls — waits for them, so later work
on the stream waits too; the host thread returns at once. The non-blocking
variants' op returns after handing the jobs over: the stream goes on, and
``ncclWait`` orders later work (or the host) after completion.

A group whose operations use several streams runs on the first one; it
starts after the work already submitted to the others, and their later work
waits for it (NCCL's rule for groups spanning streams).
"""

from __future__ import annotations

import threading

import streamq

from . import _context
from ._errors import CudaError
from ._memory import BufferRef
from ._nccl_engine import engine
from ._nccl_ops import BatchJob, Op
from ._nccl_types import NcclError, ncclResult_t

__all__ = ["add_init", "depth", "group_end", "group_start", "issue", "note_error", "submit"]

_tls = threading.local()


def depth() -> int:
    """How deep the calling thread is in ncclGroupStart calls."""
    return getattr(_tls, "depth", 0)


def group_start() -> None:
    """ncclGroupStart: defer the calling thread's operations until the matching ncclGroupEnd."""
    if depth() == 0:
        _tls.ops, _tls.inits, _tls.error = [], [], None
    _tls.depth = depth() + 1


def note_error(error: NcclError) -> None:
    """A call inside the group failed: ncclGroupEnd will report it and issue nothing."""
    if depth() and _tls.error is None:
        _tls.error = error


def add_init(comm, job) -> None:
    """A communicator set-up started inside the group: ncclGroupEnd waits for it."""
    _tls.inits.append((comm, job))


def group_end() -> None:
    """ncclGroupEnd: at the outermost level, finish the group's set-ups and issue its operations."""
    if depth() == 0:
        raise NcclError(ncclResult_t.ncclInvalidUsage, "ncclGroupEnd without a matching ncclGroupStart")
    _tls.depth -= 1
    if _tls.depth:
        return
    ops, inits, error = _tls.ops, _tls.inits, _tls.error
    _tls.ops, _tls.inits, _tls.error = [], [], None
    init_error = None
    for comm, job in inits:
        try:
            finish_init(comm, job)
        except NcclError as exc:
            init_error = init_error or exc
    if error is not None:
        raise NcclError(error.code, f"a call in the group failed, so none of its operations was issued: "
                                    f"{error.detail}")
    if init_error is not None:
        raise init_error
    if ops:
        issue(ops, blocking=True)


def finish_init(comm, job) -> None:
    """Wait for a communicator's set-up; on failure the communicator is unusable."""
    try:
        engine().wait(job)
    except NcclError as exc:
        comm.state = "invalid"
        comm.error = exc
        raise


def submit(op: Op) -> None:
    """Issue ``op`` now, or keep it for ncclGroupEnd inside a group."""
    if depth():
        _tls.ops.append(op)
    else:
        issue([op], blocking=True)


def issue(ops: list[Op], *, blocking: bool) -> list[BatchJob]:
    """Put ``ops`` on their streams as one batch per communicator; returns the jobs."""
    streams: list = []
    for op in ops:
        if op.stream not in streams:
            streams.append(op.stream)
        if op.stream.capture is not None:
            raise NcclError(ncclResult_t.ncclInvalidUsage,
                            f"{op.name}: NCCL calls cannot be captured into a graph by this facade")
    by_comm: dict = {}
    for op in ops:
        op.comm.usable()
        by_comm.setdefault(op.comm, []).append(op)
    jobs = []
    for comm, comm_ops in by_comm.items():
        job = BatchJob(comm, comm_ops)
        comm.issue(job, job.peers, bool(job.collectives))
        jobs.append(job)
    runner = _Runner(jobs, blocking)
    main = streams[0]
    name = jobs[0].name if len(jobs) == 1 else f"ncclGroupEnd[{len(ops)} ops]"
    reads = [BufferRef.of(a) for op in ops for a in op.reads]
    writes = [BufferRef.of(a) for op in ops for a in op.writes]
    try:
        after = []
        for stream in streams[1:]:
            event = streamq.Event(f"{name}.fork", timing=False)
            stream.record(event)
            after.append(event)
        task = main.launch(runner, name=name, kind="collective", reads=reads, writes=writes,
                           on_error=runner.device_failed, after=tuple(after))
    except CudaError as err:
        runner.device_failed(err)   # numbered but never run here: the peers must learn it
        raise
    for stream in streams[1:]:
        stream.launch(_noop, name=f"{name}.join", kind="event_wait", after=(task,))
    return jobs


def _noop() -> None:
    pass


class _Runner:
    """The stream op of a batch: hand the jobs to the progress thread, wait if blocking."""

    __slots__ = ("blocking", "jobs")

    def __init__(self, jobs: list[BatchJob], blocking: bool):
        self.jobs = jobs
        self.blocking = blocking

    def __call__(self) -> None:
        eng = engine()
        for job in self.jobs:
            eng.submit(job)
        if not self.blocking:
            return
        first = None
        for job in self.jobs:
            try:
                eng.wait(job)
            except NcclError as exc:
                first = first or exc
        if first is not None:
            raise first

    def device_failed(self, sticky: CudaError | None) -> None:
        """The device failed before the batch ran: fail it here and tell the peers."""
        eng = engine()
        for job in self.jobs:
            job.abort = NcclError(ncclResult_t.ncclUnhandledCudaError,
                                  f"{job.describe()}: this rank's device failed before the operation "
                                  f"could run ({sticky})")
            eng.submit(job)
        for job in self.jobs:     # the communicator has failed once the stream op is over
            job.done.wait()


def stream_of(handle, comm):
    """The Stream for ``handle``, which must be on the communicator's device."""
    stream = _context.resolve_stream(handle)
    if stream.device.index != comm.device:
        raise NcclError(ncclResult_t.ncclInvalidArgument,
                        f"stream {stream.label} is on device {stream.device.index}, the communicator "
                        f"on device {comm.device}")
    return stream
