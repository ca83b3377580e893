"""NCCL's C API over MPI, stream-aware: ``from streamq.cuda_facade import nccl``.

Functions keep NCCL's names and argument order; output parameters become
results, and every call returns a tuple whose first item is an
``ncclResult_t`` (``(ncclResult_t.ncclSuccess, comm)`` for
``ncclCommInitRank``), as the facade's runtime returns ``cudaError_t`` first.
Buffers are facade memory (``cudaMalloc``'s int pointers, or arrays /
``__cuda_array_interface__`` objects that view it); streams are facade stream
handles. Every process is one rank, started by ``mpiexec``; the MPI library
comes from mpi4py (the ``mpi`` extra).

Semantics (Aluminum's stream-aware collectives): an operation enqueued on a
stream starts when the stream's earlier work is done, and later work on the
stream waits for it, while the host thread and other streams go on. All MPI
calls run on one progress thread per rank, never on the host thread. The
``ncclI*`` variants (a streamq extension, after MPI's ``MPI_I*``) block no
stream: they return an :class:`ncclRequest` completed by ``ncclWait`` or
polled by ``ncclTest``.

Beyond NCCL: ranks that disagree on an operation (count, type, reduction,
root, or which operation) fail it with ``ncclInvalidUsage`` on every rank
instead of hanging, and a rank that exits, raises, or stops answering makes
its peers' operations fail with ``ncclRemoteError`` within
``STREAMQ_NCCL_TIMEOUT`` seconds at most (see ``docs/distributed.md``).
"""

from __future__ import annotations

import numpy as np

from . import _context, _nccl_comm, _nccl_group
from ._errors import CudaError
from ._memory import typed_view
from ._nccl_comm import InitJob, ncclComm, ncclUniqueId
from ._nccl_engine import engine
from ._nccl_mpi import MPI
from ._nccl_ops import AllGather, AllReduce, Broadcast, Recv, Reduce, ReduceScatter, Send
from ._nccl_types import (
    DTYPES,
    NCCL_UNIQUE_ID_BYTES,
    NCCL_VERSION_CODE,
    NcclError,
    as_datatype,
    as_int,
    as_redop,
    description,
    last_error_string,
    nccl_api,
    ncclDataType_t,
    ncclRedOp_t,
    ncclResult_t,
)

__all__ = [
    "NCCL_SPLIT_NOCOLOR",
    "NCCL_UNIQUE_ID_BYTES",
    "NcclError",
    "ncclAllGather",
    "ncclAllReduce",
    "ncclBcast",
    "ncclBroadcast",
    "ncclComm",
    "ncclCommAbort",
    "ncclCommCount",
    "ncclCommCuDevice",
    "ncclCommDestroy",
    "ncclCommFinalize",
    "ncclCommGetAsyncError",
    "ncclCommInitRank",
    "ncclCommSplit",
    "ncclCommUserRank",
    "ncclComm_t",
    "ncclDataType_t",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclGetUniqueId",
    "ncclGetVersion",
    "ncclGroupEnd",
    "ncclGroupStart",
    "ncclIAllGather",
    "ncclIAllReduce",
    "ncclIBroadcast",
    "ncclIRecv",
    "ncclIReduce",
    "ncclIReduceScatter",
    "ncclISend",
    "ncclRecv",
    "ncclRedOp_t",
    "ncclReduce",
    "ncclReduceScatter",
    "ncclRequest",
    "ncclResult_t",
    "ncclSend",
    "ncclTest",
    "ncclUniqueId",
    "ncclWait",
]

ncclComm_t = ncclComm
NCCL_SPLIT_NOCOLOR = -1

_INVALID = ncclResult_t.ncclInvalidArgument


# -- argument checks ---------------------------------------------------------------------------

def _comm(comm) -> ncclComm:
    if comm is None:
        raise NcclError(_INVALID, "comm is NULL")
    if not isinstance(comm, ncclComm):
        raise NcclError(_INVALID, f"comm must be an ncclComm_t, got {type(comm).__name__}")
    comm.usable()
    return comm


def _address(ptr, what: str) -> int:
    if ptr is None:
        raise NcclError(_INVALID, f"{what} is NULL")
    if isinstance(ptr, (bool, float, str, bytes)):
        raise NcclError(_INVALID, f"{what} must be a device pointer, got {type(ptr).__name__}")
    if isinstance(ptr, int):
        address = ptr
    elif hasattr(ptr, "__cuda_array_interface__"):
        address = int(ptr.__cuda_array_interface__["data"][0])
    elif hasattr(ptr, "__array_interface__"):
        address = int(ptr.__array_interface__["data"][0])
    elif hasattr(type(ptr), "__int__"):
        address = int(ptr)     # cuda-python pointer types
    else:
        raise NcclError(_INVALID, f"{what} must be a device pointer, got {type(ptr).__name__}")
    if address == 0:
        raise NcclError(_INVALID, f"{what} is NULL")
    return address


def _buffer(ptr, count: int, datatype: ncclDataType_t, what: str) -> np.ndarray:
    """A view of ``count`` elements of facade memory at ``ptr`` (checked: live, in range, aligned)."""
    address = _address(ptr, what)
    try:
        return typed_view(address, DTYPES[datatype], (count,), what=what)
    except CudaError as err:
        raise NcclError(_INVALID, err.detail or str(err)) from None


def _count(value, what: str) -> int:
    n = as_int(value, what)
    if n < 0:
        raise NcclError(_INVALID, f"{what} must be >= 0, got {n}")
    return n


def _rank_arg(value, comm: ncclComm, what: str) -> int:
    r = as_int(value, what)
    if not 0 <= r < comm.nranks:
        raise NcclError(_INVALID, f"{what} {r} is not a rank of the communicator (0..{comm.nranks - 1})")
    return r


def _disjoint_or_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    lo_a, lo_b = a.ctypes.data, b.ctypes.data
    if lo_a == lo_b or not a.nbytes or not b.nbytes:
        return
    if lo_a < lo_b + b.nbytes and lo_b < lo_a + a.nbytes:
        raise NcclError(_INVALID, f"{what}: sendbuff and recvbuff overlap without being the same buffer")


def _run(build, nonblocking: bool):
    """Issue the op ``build()`` makes (or keep it for the group); None or an ncclRequest.
    A call that fails inside a group fails the group (ncclGroupEnd reports it)."""
    try:
        op = build()
        if nonblocking and _nccl_group.depth():
            raise NcclError(ncclResult_t.ncclInvalidUsage,
                            f"{op.name}: the non-blocking variants cannot be used inside a group")
    except NcclError as err:
        _nccl_group.note_error(err)
        raise
    if nonblocking:
        return ncclRequest(_nccl_group.issue([op], blocking=False), op.stream)
    _nccl_group.submit(op)
    return None


# -- version, ids, communicators ---------------------------------------------------------------

@nccl_api(1)
def ncclGetVersion():
    """The NCCL version whose API this module follows (NCCL's code, 21903 for 2.19.3)."""
    return NCCL_VERSION_CODE


@nccl_api(1)
def ncclGetUniqueId():
    """A new id for ncclCommInitRank; this process (rank of MPI's world) is its root."""
    _nccl_comm.install_exit_hooks()
    return _nccl_comm.new_unique_id()


@nccl_api(1)
def ncclCommInitRank(nranks, commId, rank):
    """Join the communicator of ``nranks`` ranks named by ``commId`` as ``rank``; blocks
    until every rank joined (inside a group: until ncclGroupEnd). Bound to the calling
    thread's current device."""
    n = as_int(nranks, "nranks")
    r = as_int(rank, "rank")
    if n < 1:
        raise NcclError(_INVALID, f"nranks must be >= 1, got {n}")
    if not 0 <= r < n:
        raise NcclError(_INVALID, f"rank {r} is outside 0..{n - 1}")
    if n > MPI.COMM_WORLD.Get_size():
        raise NcclError(_INVALID, f"nranks {n} exceeds the {MPI.COMM_WORLD.Get_size()} MPI processes; "
                                  "each rank is a process")
    key = _nccl_comm._parse(commId)
    _nccl_comm.install_exit_hooks()
    comm = ncclComm(n, r, _context.current_device().index)
    job = InitJob(comm, key)
    comm.init_job = job
    engine().submit(job)
    if _nccl_group.depth():
        _nccl_group.add_init(comm, job)
    else:
        _nccl_group.finish_init(comm, job)
    return comm


@nccl_api(1)
def ncclCommSplit(comm, color, key, config=None):
    """A new communicator of the ranks that pass the same ``color``, ordered by ``key``
    (then by rank); ``NCCL_SPLIT_NOCOLOR`` gives None. Collective over ``comm``."""
    from ._nccl_split import split
    c = _comm(comm)
    return split(c, as_int(color, "color"), as_int(key, "key"))


@nccl_api()
def ncclCommFinalize(comm):
    """Wait until every operation issued on ``comm`` has finished (bounded by the timeout)."""
    c = _comm(comm)
    if not c.drain(c.timeout):
        raise NcclError(ncclResult_t.ncclRemoteError,
                        f"ncclCommFinalize: communicator {c.id} still has operations after {c.timeout:.0f} s")


@nccl_api()
def ncclCommDestroy(comm):
    """Finish ``comm``'s operations, tell the peers, free it; the handle becomes invalid."""
    c = _comm(comm)
    if c.state == "init":
        _nccl_group.finish_init(c, c.init_job)
    drained = c.drain(c.timeout)
    job = engine().submit(_nccl_comm.CloseJob(c, "destroyed the communicator", abort=not drained))
    c.state = "destroyed"
    engine().wait(job)


@nccl_api()
def ncclCommAbort(comm):
    """Fail ``comm``'s pending operations now, tell the peers, and invalidate the handle."""
    c = _comm(comm)
    job = engine().submit(_nccl_comm.CloseJob(c, "aborted the communicator", abort=True))
    c.state = "destroyed"
    engine().wait(job)


@nccl_api(1)
def ncclCommGetAsyncError(comm):
    """The communicator's asynchronous error: ncclInProgress while it is being set up,
    the code of a failed operation or of a peer's departure, else ncclSuccess."""
    if isinstance(comm, ncclComm) and comm.state == "init":
        return ncclResult_t.ncclInProgress
    c = _comm(comm)
    return ncclResult_t.ncclSuccess if c.error is None else c.error.code


@nccl_api(1)
def ncclCommCount(comm):
    """Number of ranks of ``comm``."""
    return _comm(comm).nranks


@nccl_api(1)
def ncclCommCuDevice(comm):
    """The device (CMG) ``comm`` is bound to."""
    return _comm(comm).device


@nccl_api(1)
def ncclCommUserRank(comm):
    """This process's rank in ``comm``."""
    return _comm(comm).rank


def ncclGetErrorString(result):
    """``(ncclSuccess, description)``: NCCL's text for a status code, as bytes."""
    return (ncclResult_t.ncclSuccess, description(result).encode())


def ncclGetLastError(comm=None):
    """``(ncclSuccess, text)``: why the calling thread's last failed call failed, and the
    communicator's asynchronous error or latest failed operation, as bytes."""
    texts = [last_error_string()]
    if isinstance(comm, ncclComm):
        failure = comm.error or comm.last_failure
        if failure is not None:
            texts.append(str(failure))
    return (ncclResult_t.ncclSuccess, "; ".join(t for t in texts if t).encode())


# -- collectives -----------------------------------------------------------------------------

def _allreduce(sendbuff, recvbuff, count, datatype, op, comm, stream):
    c = _comm(comm)
    dt, red, n = as_datatype(datatype), as_redop(op), _count(count, "count")
    s = _nccl_group.stream_of(stream, c)
    send = _buffer(sendbuff, n, dt, "sendbuff")
    recv = _buffer(recvbuff, n, dt, "recvbuff")
    _disjoint_or_same(send, recv, "ncclAllReduce")
    return AllReduce(c, s, send, recv, n, dt, red)


def _broadcast(sendbuff, recvbuff, count, datatype, root, comm, stream):
    c = _comm(comm)
    dt, n = as_datatype(datatype), _count(count, "count")
    r = _rank_arg(root, c, "root")
    s = _nccl_group.stream_of(stream, c)
    recv = _buffer(recvbuff, n, dt, "recvbuff")
    send = _buffer(sendbuff, n, dt, "sendbuff") if c.rank == r else None
    if send is not None:
        _disjoint_or_same(send, recv, "ncclBroadcast")
    return Broadcast(c, s, send, recv, n, dt, r)


def _reduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream):
    c = _comm(comm)
    dt, red, n = as_datatype(datatype), as_redop(op), _count(count, "count")
    r = _rank_arg(root, c, "root")
    s = _nccl_group.stream_of(stream, c)
    send = _buffer(sendbuff, n, dt, "sendbuff")
    recv = _buffer(recvbuff, n, dt, "recvbuff") if c.rank == r else None
    if recv is not None:
        _disjoint_or_same(send, recv, "ncclReduce")
    return Reduce(c, s, send, recv, n, dt, red, r)


def _allgather(sendbuff, recvbuff, sendcount, datatype, comm, stream):
    c = _comm(comm)
    dt, n = as_datatype(datatype), _count(sendcount, "sendcount")
    s = _nccl_group.stream_of(stream, c)
    send = _buffer(sendbuff, n, dt, "sendbuff")
    recv = _buffer(recvbuff, n * c.nranks, dt, "recvbuff")
    mine = recv[c.rank * n:(c.rank + 1) * n]
    if send.ctypes.data != mine.ctypes.data:
        _disjoint_or_same(send, recv, "ncclAllGather (in place only at recvbuff + rank*sendcount)")
    return AllGather(c, s, send, recv, n, dt)


def _reducescatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream):
    c = _comm(comm)
    dt, red, n = as_datatype(datatype), as_redop(op), _count(recvcount, "recvcount")
    s = _nccl_group.stream_of(stream, c)
    send = _buffer(sendbuff, n * c.nranks, dt, "sendbuff")
    recv = _buffer(recvbuff, n, dt, "recvbuff")
    mine = send[c.rank * n:(c.rank + 1) * n]
    if recv.ctypes.data != mine.ctypes.data:
        _disjoint_or_same(send, recv, "ncclReduceScatter (in place only at sendbuff + rank*recvcount)")
    return ReduceScatter(c, s, send, recv, n, dt, red)


def _send(sendbuff, count, datatype, peer, comm, stream):
    c = _comm(comm)
    dt, n = as_datatype(datatype), _count(count, "count")
    p = _rank_arg(peer, c, "peer")
    s = _nccl_group.stream_of(stream, c)
    return Send(c, s, _buffer(sendbuff, n, dt, "sendbuff"), n, dt, p)


def _recv(recvbuff, count, datatype, peer, comm, stream):
    c = _comm(comm)
    dt, n = as_datatype(datatype), _count(count, "count")
    p = _rank_arg(peer, c, "peer")
    s = _nccl_group.stream_of(stream, c)
    return Recv(c, s, _buffer(recvbuff, n, dt, "recvbuff"), n, dt, p)


@nccl_api()
def ncclAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream):
    """recvbuff = ``op`` over every rank's sendbuff (``count`` elements); in place if equal."""
    _run(lambda: _allreduce(sendbuff, recvbuff, count, datatype, op, comm, stream), False)


@nccl_api()
def ncclBroadcast(sendbuff, recvbuff, count, datatype, root, comm, stream):
    """Copy ``count`` elements of ``root``'s sendbuff to every rank's recvbuff (sendbuff is
    read on the root only)."""
    _run(lambda: _broadcast(sendbuff, recvbuff, count, datatype, root, comm, stream), False)


@nccl_api()
def ncclBcast(buff, count, datatype, root, comm, stream):
    """In-place broadcast: ``ncclBroadcast(buff, buff, ...)``."""
    _run(lambda: _broadcast(buff, buff, count, datatype, root, comm, stream), False)


@nccl_api()
def ncclReduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream):
    """``root``'s recvbuff = ``op`` over every rank's sendbuff (recvbuff used on the root only)."""
    _run(lambda: _reduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream), False)


@nccl_api()
def ncclAllGather(sendbuff, recvbuff, sendcount, datatype, comm, stream):
    """Rank r's ``sendcount`` elements land at recvbuff[r*sendcount] on every rank."""
    _run(lambda: _allgather(sendbuff, recvbuff, sendcount, datatype, comm, stream), False)


@nccl_api()
def ncclReduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream):
    """Rank r's recvbuff = ``op`` over every rank's sendbuff[r*recvcount:(r+1)*recvcount]."""
    _run(lambda: _reducescatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream), False)


@nccl_api()
def ncclSend(sendbuff, count, datatype, peer, comm, stream):
    """Send ``count`` elements to ``peer``, which posts the matching ncclRecv."""
    _run(lambda: _send(sendbuff, count, datatype, peer, comm, stream), False)


@nccl_api()
def ncclRecv(recvbuff, count, datatype, peer, comm, stream):
    """Receive ``count`` elements from ``peer``, which posts the matching ncclSend."""
    _run(lambda: _recv(recvbuff, count, datatype, peer, comm, stream), False)


@nccl_api()
def ncclGroupStart():
    """Start a group: the calling thread's NCCL calls are issued together at ncclGroupEnd
    (needed for send/receive pairs that would otherwise wait for each other)."""
    _nccl_group.group_start()


@nccl_api()
def ncclGroupEnd():
    """End a group; at the outermost level issue its operations (and finish the
    communicator set-ups started in it). Reports a call of the group that failed."""
    _nccl_group.group_end()


# -- non-blocking variants (streamq extension) -------------------------------------------------

class ncclRequest:
    """A non-blocking NCCL operation in flight (``ncclI*``): complete it with ncclWait."""

    __slots__ = ("jobs", "stream")

    def __init__(self, jobs, stream):
        self.jobs = jobs
        self.stream = stream

    def __repr__(self) -> str:
        state = "done" if all(j.done.done for j in self.jobs) else "pending"
        return f"<ncclRequest {self.jobs[0].describe()} {state}>"


@nccl_api(1)
def ncclIAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream):
    """ncclAllReduce that blocks no stream: starts after the stream's earlier work; returns a request."""
    return _run(lambda: _allreduce(sendbuff, recvbuff, count, datatype, op, comm, stream), True)


@nccl_api(1)
def ncclIBroadcast(sendbuff, recvbuff, count, datatype, root, comm, stream):
    """ncclBroadcast that blocks no stream; returns a request."""
    return _run(lambda: _broadcast(sendbuff, recvbuff, count, datatype, root, comm, stream), True)


@nccl_api(1)
def ncclIReduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream):
    """ncclReduce that blocks no stream; returns a request."""
    return _run(lambda: _reduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream), True)


@nccl_api(1)
def ncclIAllGather(sendbuff, recvbuff, sendcount, datatype, comm, stream):
    """ncclAllGather that blocks no stream; returns a request."""
    return _run(lambda: _allgather(sendbuff, recvbuff, sendcount, datatype, comm, stream), True)


@nccl_api(1)
def ncclIReduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream):
    """ncclReduceScatter that blocks no stream; returns a request."""
    return _run(lambda: _reducescatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream), True)


@nccl_api(1)
def ncclISend(sendbuff, count, datatype, peer, comm, stream):
    """ncclSend that blocks no stream; returns a request."""
    return _run(lambda: _send(sendbuff, count, datatype, peer, comm, stream), True)


@nccl_api(1)
def ncclIRecv(recvbuff, count, datatype, peer, comm, stream):
    """ncclRecv that blocks no stream; returns a request."""
    return _run(lambda: _recv(recvbuff, count, datatype, peer, comm, stream), True)


def _request(request) -> ncclRequest:
    if not isinstance(request, ncclRequest):
        raise NcclError(_INVALID, f"request must be an ncclRequest, got {type(request).__name__}")
    return request


def _wait_jobs(jobs) -> None:
    eng = engine()
    first = None
    for job in jobs:
        try:
            eng.wait(job)
        except NcclError as exc:
            first = first or exc
    if first is not None:
        raise first


@nccl_api()
def ncclWait(request, stream=None):
    """Complete a non-blocking operation. ``stream=None``: the host blocks until it is done
    and gets its status. A stream handle: the stream's later work waits for it (the host
    does not); its failure becomes the stream's device error."""
    req = _request(request)
    if stream is None:
        _wait_jobs(req.jobs)
        return
    s = _context.resolve_stream(stream)
    s.launch(_wait_jobs, (req.jobs,), name="ncclWait", kind="event_wait")


@nccl_api(1)
def ncclTest(request):
    """True if the non-blocking operation finished (its status is the call's on failure)."""
    req = _request(request)
    if not all(job.done.done for job in req.jobs):
        return False
    for job in req.jobs:
        if job.done.error is not None:
            raise job.done.error
    return True
