"""NCCL operations as MPI operations, and the job that runs a batch of them.

An :class:`Op` is one NCCL call with its buffers already checked and viewed
(numpy views of facade memory made on the host thread, so a later free cannot
pull memory from under MPI). A :class:`BatchJob` runs the operations one
communicator got from one call or one ncclGroupStart/End on the progress
thread, in two rounds:

1. *check*: one small ``MPI_Iallreduce(MAX)`` of each rank's description of
   its collectives (kind, count, type, operation, root — and their negatives,
   so the maximum also yields the minimum), and for each send/receive an
   exchange of headers with the peer. Ranks that disagree (a different count
   or type, a different operation) all learn it from the same numbers and all
   fail the batch with ncclInvalidUsage naming the difference — no rank posts
   mismatched MPI operations, which MPI would answer with a hang, a truncation
   or silent garbage. ``STREAMQ_NCCL_CHECK=0`` skips this round.
2. *data*: the nonblocking MPI operations themselves, then the finishing
   touches NCCL's semantics need beyond MPI's: ncclAvg divides the sum by the
   number of ranks, bfloat16 (which MPI cannot reduce) and float16 averages
   are reduced through float32 copies.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from streamq import trace

from ._nccl_engine import Job
from ._nccl_mpi import (
    DATA_TAG,
    HEADER_RECV_TAG,
    HEADER_SEND_TAG,
    MPI,
    bf16_to_f32,
    f32_to_bf16,
    mpi_op,
    mpi_type,
    needs_staging,
)
from ._nccl_types import DTYPES, NcclError, ncclDataType_t, ncclRedOp_t, ncclResult_t

__all__ = ["AllGather", "AllReduce", "BatchJob", "Broadcast", "Op", "Recv", "Reduce", "ReduceScatter", "Send"]

_CHECK = os.environ.get("STREAMQ_NCCL_CHECK", "1") not in ("0", "false", "no")
_FIELDS = ("operation", "count", "datatype", "reduction op", "root", "tag")


def _mismatch(kind: str, field: str, low, high) -> NcclError:
    err = NcclError(ncclResult_t.ncclInvalidUsage, f"{kind}: ranks disagree on the {field} "
                                                   f"(smallest {low}, largest {high})")
    err.consistent = True   # every rank sees the same numbers: the communicator stays usable
    return err


class Op:
    """One NCCL call: its name, what it reads and writes, and how MPI runs it."""

    kind = 0                 # collective kind (1..5); 0 for send/receive
    collective = True

    def __init__(self, name: str, comm, stream, datatype: ncclDataType_t, count: int, *,
                 op: ncclRedOp_t | None = None, root: int = -1, peer: int = -1):
        self.name = name
        self.comm = comm
        self.stream = stream
        self.datatype = datatype
        self.count = count
        self.op = op
        self.root = root
        self.peer = peer
        self.reads: list = []
        self.writes: list = []

    def signature(self) -> tuple:
        """What every rank must agree on."""
        return (self.kind, self.count, int(self.datatype), -1 if self.op is None else int(self.op), self.root)

    @property
    def nbytes(self) -> int:
        """Bytes of one rank's buffer of ``count`` elements."""
        return self.count * DTYPES[self.datatype].itemsize

    def post(self, mpi, rank: int, nranks: int) -> list:
        """Start the MPI operations; return their requests."""
        raise NotImplementedError

    def finish(self, nranks: int) -> None:
        """After the MPI operations completed: what NCCL's semantics add."""

    def _spec(self, array):
        return [array, mpi_type(self.datatype)]


def _divide(array: np.ndarray, n: int) -> None:
    """ncclAvg's division by the number of ranks: true division for floats, C's
    truncating division for integers."""
    if n == 1:
        return
    if array.dtype.kind == "f":
        np.divide(array, array.dtype.type(n), out=array)
    elif array.dtype.kind == "u":
        np.floor_divide(array, array.dtype.type(n), out=array)
    else:
        negative = array < 0
        np.floor_divide(np.abs(array), array.dtype.type(n), out=array, casting="unsafe")
        np.negative(array, out=array, where=negative)


class _Reduction(Op):
    """Shared by the reducing collectives: float32 staging and the ncclAvg division."""

    def _stage_in(self, source: np.ndarray) -> np.ndarray:
        if self.datatype == ncclDataType_t.ncclBfloat16:
            return bf16_to_f32(source).copy()
        return source.astype(np.float32)

    def _stage_out(self, work: np.ndarray, target: np.ndarray, nranks: int) -> None:
        if self.op == ncclRedOp_t.ncclAvg:
            _divide(work, nranks)
        if self.datatype == ncclDataType_t.ncclBfloat16:
            f32_to_bf16(work, target)
        else:
            target[...] = work.astype(target.dtype)

    @property
    def staged(self) -> bool:
        return needs_staging(self.datatype, self.op)


class AllReduce(_Reduction):
    """ncclAllReduce: every rank's recv = op over every rank's send."""

    kind = 1

    def __init__(self, comm, stream, send, recv, count, datatype, op):
        super().__init__("ncclAllReduce", comm, stream, datatype, count, op=op)
        self.send, self.recv = send, recv
        self.in_place = send.ctypes.data == recv.ctypes.data
        self.reads, self.writes = [send], [recv]

    def post(self, mpi, rank, nranks):
        if self.staged:
            self.work = self._stage_in(self.send)
            return [mpi.Iallreduce(MPI.IN_PLACE, [self.work, MPI.FLOAT], mpi_op(self.op))]
        source = MPI.IN_PLACE if self.in_place else self._spec(self.send)
        return [mpi.Iallreduce(source, self._spec(self.recv), mpi_op(self.op))]

    def finish(self, nranks):
        if self.staged:
            self._stage_out(self.work, self.recv, nranks)
        elif self.op == ncclRedOp_t.ncclAvg:
            _divide(self.recv, nranks)


class Broadcast(Op):
    """ncclBroadcast: root's send lands in every rank's recv."""

    kind = 2

    def __init__(self, comm, stream, send, recv, count, datatype, root):
        super().__init__("ncclBroadcast", comm, stream, datatype, count, root=root)
        self.send, self.recv = send, recv
        self.reads = [] if send is None else [send]
        self.writes = [recv]

    def post(self, mpi, rank, nranks):
        if rank == self.root and self.send.ctypes.data != self.recv.ctypes.data:
            self.recv[...] = self.send
        return [mpi.Ibcast(self._spec(self.recv), self.root)]


class Reduce(_Reduction):
    """ncclReduce: root's recv = op over every rank's send."""

    kind = 3

    def __init__(self, comm, stream, send, recv, count, datatype, op, root):
        super().__init__("ncclReduce", comm, stream, datatype, count, op=op, root=root)
        self.send, self.recv = send, recv
        self.reads = [send]
        self.writes = [] if recv is None else [recv]

    def post(self, mpi, rank, nranks):
        at_root = rank == self.root
        if self.staged:
            self.work = self._stage_in(self.send)
            if at_root:
                return [mpi.Ireduce(MPI.IN_PLACE, [self.work, MPI.FLOAT], mpi_op(self.op), self.root)]
            return [mpi.Ireduce([self.work, MPI.FLOAT], None, mpi_op(self.op), self.root)]
        if not at_root:
            return [mpi.Ireduce(self._spec(self.send), None, mpi_op(self.op), self.root)]
        source = MPI.IN_PLACE if self.send.ctypes.data == self.recv.ctypes.data else self._spec(self.send)
        return [mpi.Ireduce(source, self._spec(self.recv), mpi_op(self.op), self.root)]

    def finish(self, nranks):
        if self.recv is None:
            return
        if self.staged:
            self._stage_out(self.work, self.recv, nranks)
        elif self.op == ncclRedOp_t.ncclAvg:
            _divide(self.recv, nranks)


class AllGather(Op):
    """ncclAllGather: rank r's send lands at recv[r*count:(r+1)*count] of every rank."""

    kind = 4

    def __init__(self, comm, stream, send, recv, count, datatype):
        super().__init__("ncclAllGather", comm, stream, datatype, count)
        self.send, self.recv = send, recv
        self.reads, self.writes = [send], [recv]

    def post(self, mpi, rank, nranks):
        mine = self.recv[rank * self.count:(rank + 1) * self.count]
        in_place = self.count == 0 or self.send.ctypes.data == mine.ctypes.data
        source = MPI.IN_PLACE if in_place else self._spec(self.send)
        return [mpi.Iallgather(source, self._spec(self.recv))]


class ReduceScatter(_Reduction):
    """ncclReduceScatter: rank r's recv = op over every rank's send[r*count:(r+1)*count]."""

    kind = 5

    def __init__(self, comm, stream, send, recv, count, datatype, op):
        super().__init__("ncclReduceScatter", comm, stream, datatype, count, op=op)
        self.send, self.recv = send, recv
        self.reads, self.writes = [send], [recv]

    def post(self, mpi, rank, nranks):
        if self.staged:
            self.work = self._stage_in(self.send)
            self.out = np.empty(self.count, np.float32)
            return [mpi.Ireduce_scatter_block([self.work, MPI.FLOAT], [self.out, MPI.FLOAT], mpi_op(self.op))]
        # In place (recv inside send) MPI's IN_PLACE puts the result at the start of the
        # buffer, NCCL at the rank's block: go through a separate result buffer instead.
        send_start = self.send.ctypes.data
        recv_start = self.recv.ctypes.data
        overlaps = send_start <= recv_start < send_start + self.send.nbytes
        self.out = np.empty_like(self.recv) if overlaps else self.recv
        return [mpi.Ireduce_scatter_block(self._spec(self.send), self._spec(self.out), mpi_op(self.op))]

    def finish(self, nranks):
        if self.staged:
            self._stage_out(self.out, self.recv, nranks)
            return
        if self.op == ncclRedOp_t.ncclAvg:
            _divide(self.out, nranks)
        if self.out is not self.recv:
            self.recv[...] = self.out


class _PointToPoint(Op):
    """Shared by send and receive: the header exchange with the peer."""

    collective = False

    def headers(self, mpi) -> list:
        """Post this side's header and the receive of the peer's."""
        self.mine = np.array([self.count, int(self.datatype)], np.int64)
        self.theirs = np.zeros(2, np.int64)
        out_tag, in_tag = (HEADER_SEND_TAG, HEADER_RECV_TAG) if self.kind_name == "send" else \
            (HEADER_RECV_TAG, HEADER_SEND_TAG)
        return [mpi.Isend(self.mine, self.peer, out_tag), mpi.Irecv(self.theirs, self.peer, in_tag)]

    def verify(self, rank: int) -> None:
        """Raise ncclInvalidUsage if the peer's matching call differs."""
        if (self.mine == self.theirs).all():
            return
        other = "ncclRecv" if self.kind_name == "send" else "ncclSend"
        theirs = f"{int(self.theirs[0])} x {ncclDataType_t(int(self.theirs[1])).name}" \
            if 0 <= self.theirs[1] < ncclDataType_t.ncclNumTypes else "an unknown type"
        err = NcclError(ncclResult_t.ncclInvalidUsage,
                        f"{self.name} between ranks {rank} and {self.peer}: this rank has {self.count} x "
                        f"{self.datatype.name}, the peer's matching {other} has {theirs}")
        err.consistent = True
        raise err


class Send(_PointToPoint):
    """ncclSend: count elements to ``peer``."""

    kind_name = "send"

    def __init__(self, comm, stream, send, count, datatype, peer):
        super().__init__("ncclSend", comm, stream, datatype, count, peer=peer)
        self.send = send
        self.reads = [send]

    def post(self, mpi, rank, nranks):
        return [mpi.Isend(self._spec(self.send), self.peer, DATA_TAG)]


class Recv(_PointToPoint):
    """ncclRecv: count elements from ``peer``."""

    kind_name = "recv"

    def __init__(self, comm, stream, recv, count, datatype, peer):
        super().__init__("ncclRecv", comm, stream, datatype, count, peer=peer)
        self.recv = recv
        self.writes = [recv]

    def post(self, mpi, rank, nranks):
        return [mpi.Irecv(self._spec(self.recv), self.peer, DATA_TAG)]


def _field(values: list[int]) -> int:
    """One number standing for ``values``: the value itself if there is one, else a 62-bit hash."""
    if len(values) == 1:
        return int(values[0])
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class BatchJob(Job):
    """The operations of one communicator from one call or one group, run as one unit."""

    def __init__(self, comm, ops: list[Op], tag: int = 0):
        names = sorted({op.name for op in ops})
        name = names[0] if len(ops) == 1 else f"ncclGroup[{len(ops)}: {', '.join(names)}]"
        super().__init__(name)
        self.ops = ops
        self.tag = tag
        self.collectives = [op for op in ops if op.collective]
        self.p2p = [op for op in ops if not op.collective]
        self.peers = [op.peer for op in self.p2p]
        self.abort: NcclError | None = None    # set when this rank will not run it (device failed)
        self.nbytes = sum(op.nbytes for op in ops)

    def describe(self) -> str:
        c = self.comm
        where = f" on communicator {c.id} (rank {c.rank} of {c.nranks}, op #{self.seq})" if c is not None else ""
        return f"{self.name}{where}"

    def _check_vector(self) -> np.ndarray:
        sigs = [op.signature() for op in self.collectives]
        fields = [len(sigs)] + [_field([s[i] for s in sigs]) for i in range(5)] + [self.tag]
        vec = np.array(fields, np.int64)
        return np.concatenate([vec, -vec])

    def _verify(self, result: np.ndarray) -> None:
        n = result.size // 2
        high, low = result[:n], -result[n:]
        if (high == low).all():
            return
        kind = self.name if len(self.collectives) == 1 else f"{self.name} (group)"
        names = ("number of collectives",) + _FIELDS
        for i in range(n):
            if high[i] != low[i]:
                field = names[i]
                if field in ("operation", "datatype", "reduction op") and len(self.collectives) == 1:
                    decode = {"operation": lambda v: _KINDS.get(int(v), str(v)),
                              "datatype": lambda v: ncclDataType_t(int(v)).name
                              if 0 <= v < ncclDataType_t.ncclNumTypes else str(v),
                              "reduction op": lambda v: ncclRedOp_t(int(v)).name
                              if 0 <= v < ncclRedOp_t.ncclNumOps else "none"}[field]
                    raise _mismatch(kind, field, decode(low[i]), decode(high[i]))
                if len(self.collectives) == 1 or i == 0:
                    raise _mismatch(kind, field, int(low[i]), int(high[i]))
                raise _mismatch(kind, f"{field}s of the grouped collectives", "hash " + hex(int(low[i])),
                                "hash " + hex(int(high[i])))

    def body(self):
        comm = self.comm
        mpi, rank, nranks = comm.mpi, comm.rank, comm.nranks
        trace_start = time.perf_counter_ns()
        if _CHECK:
            waits = []
            if self.collectives:
                vector = self._check_vector()
                result = np.empty_like(vector)
                waits.append(mpi.Iallreduce(vector, result, MPI.MAX))
            for op in self.p2p:
                waits.extend(op.headers(mpi))
            if waits:
                yield waits
            if self.collectives:
                self._verify(result)
            for op in self.p2p:
                op.verify(rank)
        data_start = time.perf_counter_ns()
        requests = []
        for op in self.ops:
            requests.extend(op.post(mpi, rank, nranks))
        if requests:
            yield requests
        for op in self.ops:
            op.finish(nranks)
        if trace.enabled():
            trace.emit({"type": "nccl", "name": self.name, "comm": comm.id, "rank": rank, "nranks": nranks,
                        "seq": self.seq, "bytes": self.nbytes, "start_ns": trace_start,
                        "data_ns": data_start, "end_ns": time.perf_counter_ns()})


_KINDS = {1: "ncclAllReduce", 2: "ncclBroadcast", 3: "ncclReduce", 4: "ncclAllGather", 5: "ncclReduceScatter"}
