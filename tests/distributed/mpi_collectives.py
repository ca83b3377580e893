"""Worker: every NCCL collective x datatype x reduction op, checked against numpy (float64) sums.

Every rank builds every rank's input from (rank, index), so each computes the
expected result independently of the code under test. Inputs are multiples of
1/4 small enough that every sum, product and average (over 2 or 4 ranks) is
exact in every type, bfloat16 and float16 included: results must be equal, not
close. Run: ``mpiexec -n N python mpi_collectives.py``.
"""

import numpy as np
from mpi_common import download, init_world_comm, report, upload

from streamq.cuda_facade import nccl
from streamq.cuda_facade import runtime as rt

T = nccl.ncclDataType_t
R = nccl.ncclRedOp_t
TYPES = [T.ncclInt8, T.ncclUint8, T.ncclInt32, T.ncclUint32, T.ncclInt64, T.ncclUint64, T.ncclFloat16,
         T.ncclFloat32, T.ncclFloat64, T.ncclBfloat16]
OPS = [R.ncclSum, R.ncclProd, R.ncclMax, R.ncclMin, R.ncclAvg]
HOLD = {T.ncclInt8: np.int8, T.ncclUint8: np.uint8, T.ncclInt32: np.int32, T.ncclUint32: np.uint32,
        T.ncclInt64: np.int64, T.ncclUint64: np.uint64, T.ncclFloat16: np.float16, T.ncclFloat32: np.float32,
        T.ncclFloat64: np.float64, T.ncclBfloat16: np.uint16}
OK = nccl.ncclResult_t.ncclSuccess


def is_float(dt):
    return dt in (T.ncclFloat16, T.ncclFloat32, T.ncclFloat64, T.ncclBfloat16)


def values(rank, n, dt, op):
    """Rank ``rank``'s input as float64 (exactly representable in ``dt``)."""
    i = np.arange(n)
    signed = is_float(dt) or dt in (T.ncclInt8, T.ncclInt32, T.ncclInt64)
    if op == R.ncclProd:
        v = 1 + (i + rank) % 2
    elif op in (R.ncclSum, R.ncclAvg):
        v = (i * 3 + rank * 5) % 9 - (4 if signed else 0)
    else:
        v = (i * 7 + rank * 3) % 11 - (5 if signed else 0)
    return v * (0.25 if is_float(dt) else 1.0)


def encode(v, dt):
    if dt == T.ncclBfloat16:
        return (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return v.astype(HOLD[dt])


def decode(a, dt):
    if dt == T.ncclBfloat16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def reference(inputs, op, dt, nranks):
    stack = np.stack(inputs)
    if op == R.ncclSum:
        return stack.sum(0)
    if op == R.ncclProd:
        return stack.prod(0)
    if op == R.ncclMax:
        return stack.max(0)
    if op == R.ncclMin:
        return stack.min(0)
    total = stack.sum(0) / nranks        # ncclAvg: the sum divided by the number of ranks
    return total if is_float(dt) else np.trunc(total)   # C's integer division truncates


class Checks:
    def __init__(self, rank):
        self.rank = rank
        self.pending = []      # (label, ptr, count, dt, expected)
        self.failures = []
        self.count = 0

    def call(self, label, status):
        if status[0] != OK:
            self.failures.append(f"{label}: returned {status[0].name}: {nccl.ncclGetLastError(None)[1]}")
            return False
        return True

    def expect(self, label, ptr, count, dt, expected):
        self.pending.append((label, ptr, count, dt, expected))

    def verify(self):
        for label, ptr, count, dt, expected in self.pending:
            got = decode(download(rt, ptr, count, HOLD[dt]), dt)
            self.count += 1
            if got.shape != expected.shape or not np.array_equal(got, expected):
                bad = np.flatnonzero(got != expected)[:3]
                self.failures.append(f"{label}: at {bad.tolist()} got {got[bad].tolist()} "
                                     f"expected {expected[bad].tolist()}")
        self.pending = []


def main():
    world, comm = init_world_comm()
    rank, size = world.Get_rank(), world.Get_size()
    err, stream = rt.cudaStreamCreate()
    checks = Checks(rank)
    n, part = 37, 13
    for dt in TYPES:
        for op in OPS:
            tag = f"{dt.name}/{op.name}"
            inputs = [values(r, n, dt, op) for r in range(size)]
            expected = reference(inputs, op, dt, size)
            # AllReduce, out of place and in place (sendbuff == recvbuff)
            send, recv = upload(rt, encode(inputs[rank], dt)), upload(rt, np.zeros(n, HOLD[dt]))
            if checks.call(f"ncclAllReduce {tag}", nccl.ncclAllReduce(send, recv, n, dt, op, comm, stream)):
                checks.expect(f"ncclAllReduce {tag}", recv, n, dt, expected)
            both = upload(rt, encode(inputs[rank], dt))
            if checks.call(f"in-place ncclAllReduce {tag}", nccl.ncclAllReduce(both, both, n, dt, op, comm, stream)):
                checks.expect(f"in-place ncclAllReduce {tag}", both, n, dt, expected)
            # Reduce: recvbuff is ignored off the root (NCCL's contract), so pass None there
            root = (int(dt) + int(op)) % size
            rsend = upload(rt, encode(inputs[rank], dt))
            rrecv = upload(rt, np.zeros(n, HOLD[dt])) if rank == root else None
            if checks.call(f"ncclReduce {tag}", nccl.ncclReduce(rsend, rrecv, n, dt, op, root, comm, stream)) \
                    and rank == root:
                checks.expect(f"ncclReduce {tag} root {root}", rrecv, n, dt, expected)
            # ReduceScatter: rank r gets block r of the reduction
            big = [values(r, part * size, dt, op) for r in range(size)]
            block = reference(big, op, dt, size)[rank * part:(rank + 1) * part]
            ssend, srecv = upload(rt, encode(big[rank], dt)), upload(rt, np.zeros(part, HOLD[dt]))
            if checks.call(f"ncclReduceScatter {tag}",
                           nccl.ncclReduceScatter(ssend, srecv, part, dt, op, comm, stream)):
                checks.expect(f"ncclReduceScatter {tag}", srecv, part, dt, block)
        tag = dt.name
        data = [values(r, n, dt, R.ncclMax) for r in range(size)]
        # Broadcast (root varies with the type) and the legacy in-place ncclBcast
        root = int(dt) % size
        bsend = upload(rt, encode(data[rank], dt))
        brecv = upload(rt, np.zeros(n, HOLD[dt]))
        if checks.call(f"ncclBroadcast {tag}", nccl.ncclBroadcast(bsend, brecv, n, dt, root, comm, stream)):
            checks.expect(f"ncclBroadcast {tag} root {root}", brecv, n, dt, data[root])
        inplace = upload(rt, encode(data[rank], dt))
        if checks.call(f"ncclBcast {tag}", nccl.ncclBcast(inplace, n, dt, (root + 1) % size, comm, stream)):
            checks.expect(f"ncclBcast {tag}", inplace, n, dt, data[(root + 1) % size])
        # AllGather, out of place and in place (sendbuff = recvbuff + rank*sendcount)
        gathered = np.concatenate([d[:part] for d in data])
        gsend, grecv = upload(rt, encode(data[rank][:part], dt)), upload(rt, np.zeros(part * size, HOLD[dt]))
        if checks.call(f"ncclAllGather {tag}", nccl.ncclAllGather(gsend, grecv, part, dt, comm, stream)):
            checks.expect(f"ncclAllGather {tag}", grecv, part * size, dt, gathered)
        whole = np.zeros(part * size)
        whole[rank * part:(rank + 1) * part] = data[rank][:part]
        gboth = upload(rt, encode(whole, dt))
        itemsize = np.dtype(HOLD[dt]).itemsize
        if checks.call(f"in-place ncclAllGather {tag}",
                       nccl.ncclAllGather(gboth + rank * part * itemsize, gboth, part, dt, comm, stream)):
            checks.expect(f"in-place ncclAllGather {tag}", gboth, part * size, dt, gathered)
        # Send/Recv around a ring, as one group (each rank sends right, receives from the left)
        right, left = (rank + 1) % size, (rank - 1) % size
        psend, precv = upload(rt, encode(data[rank], dt)), upload(rt, np.zeros(n, HOLD[dt]))
        nccl.ncclGroupStart()
        nccl.ncclSend(psend, n, dt, right, comm, stream)
        nccl.ncclRecv(precv, n, dt, left, comm, stream)
        if checks.call(f"ncclSend/ncclRecv ring {tag}", nccl.ncclGroupEnd()):
            checks.expect(f"ncclSend/ncclRecv ring {tag}", precv, n, dt, data[left])
    # A large allreduce (4 MiB of float32) and a zero-count one
    big_n = 1 << 20
    x = (np.arange(big_n) % 1000 + rank).astype(np.float32)
    bx, by = upload(rt, x), upload(rt, np.zeros(big_n, np.float32))
    if checks.call("ncclAllReduce 4 MiB", nccl.ncclAllReduce(bx, by, big_n, T.ncclFloat32, R.ncclSum, comm, stream)):
        checks.expect("ncclAllReduce 4 MiB", by, big_n, T.ncclFloat32,
                      (np.arange(big_n) % 1000) * float(size) + sum(range(size)))
    checks.call("ncclAllReduce count 0", nccl.ncclAllReduce(bx, by, 0, T.ncclFloat32, R.ncclSum, comm, stream))
    sync = rt.cudaStreamSynchronize(stream)
    if sync[0] != 0:
        checks.failures.append(f"cudaStreamSynchronize: {sync[0].name}: {rt.last_exception()}")
    else:
        checks.verify()
    async_error = nccl.ncclCommGetAsyncError(comm)
    if async_error != (OK, OK):
        checks.failures.append(f"ncclCommGetAsyncError: {async_error}")
    status = nccl.ncclCommDestroy(comm)
    if status[0] != OK:
        checks.failures.append(f"ncclCommDestroy: {status[0].name}")
    report(rank, checked=checks.count, failures=checks.failures)


if __name__ == "__main__":
    main()
