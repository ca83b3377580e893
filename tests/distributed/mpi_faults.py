"""Worker: faults between ranks. ``mpiexec -n N python mpi_faults.py SCENARIO``.

Each surviving rank reports what its NCCL calls and stream said, and how long
it took to learn it. Scenarios:

- ``count``: rank 0 passes count 64, the others 32 (ncclAllReduce).
- ``dtype``: rank 0 passes ncclFloat32, the others ncclInt32.
- ``collective``: rank 0 calls ncclBroadcast, the others ncclAllReduce.
- ``sendrecv``: rank 0 sends 10 elements, rank 1 posts a receive of 20.
- ``raise``: the last rank raises ValueError in host code instead of joining.
- ``kernel``: the last rank's stream op raises before its ncclAllReduce (a device fault).
- ``exit``: the last rank finishes one allreduce, then exits early (status 0).
- ``hang``: the last rank sleeps past STREAMQ_NCCL_TIMEOUT, then tries to join.
- ``chain``: a mismatched ncclAllReduce (as ``count``), then a matching one right
  behind it on the same stream, which must fail without running, as a stream op
  after a failed op.
"""

import sys
import time

import numpy as np
from mpi_common import init_world_comm, report, upload

from streamq.cuda_facade import nccl
from streamq.cuda_facade import runtime as rt

T = nccl.ncclDataType_t
R = nccl.ncclRedOp_t


def outcome(comm, stream, started):
    """Synchronize the stream; return what this rank learned."""
    sync = rt.cudaStreamSynchronize(stream)[0]
    cause = rt.last_exception()
    return {"sync": sync.name, "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
            "async": nccl.ncclCommGetAsyncError(comm)[1].name, "last": nccl.ncclGetLastError(comm)[1].decode(),
            "seconds": time.monotonic() - started}


def main():
    scenario = sys.argv[1]
    world, comm = init_world_comm()
    rank, size = world.Get_rank(), world.Get_size()
    last = rank == size - 1
    err, stream = rt.cudaStreamCreate()
    buf = upload(rt, np.ones(64, np.float32))
    out = upload(rt, np.zeros(64 * size, np.float32))
    world.Barrier()
    started = time.monotonic()
    status = None
    if scenario == "count":
        status = nccl.ncclAllReduce(buf, out, 64 if rank == 0 else 32, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "dtype":
        status = nccl.ncclAllReduce(buf, out, 16, T.ncclFloat32 if rank == 0 else T.ncclInt32, R.ncclSum,
                                    comm, stream)
    elif scenario == "collective":
        if rank == 0:
            status = nccl.ncclBroadcast(buf, out, 16, T.ncclFloat32, 0, comm, stream)
        else:
            status = nccl.ncclAllReduce(buf, out, 16, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "sendrecv":
        if rank == 0:
            status = nccl.ncclSend(buf, 10, T.ncclFloat32, 1, comm, stream)
        elif rank == 1:
            status = nccl.ncclRecv(out, 20, T.ncclFloat32, 0, comm, stream)
    elif scenario == "raise":
        if last:
            raise ValueError(f"boom on rank {rank}")
        status = nccl.ncclAllReduce(buf, out, 64, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "kernel":
        if last:
            def fail(_):
                raise ZeroDivisionError("kernel fault on the last rank")
            rt.cudaLaunchHostFunc(stream, fail, None)
        status = nccl.ncclAllReduce(buf, out, 64, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "exit":
        nccl.ncclAllReduce(buf, out, 64, T.ncclFloat32, R.ncclSum, comm, stream)
        rt.cudaStreamSynchronize(stream)
        if last:
            sys.exit(0)
        status = nccl.ncclAllReduce(buf, out, 64, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "chain":
        nccl.ncclAllReduce(buf, out, 64 if rank == 0 else 32, T.ncclFloat32, R.ncclSum, comm, stream)
        status = nccl.ncclAllReduce(buf, out, 16, T.ncclFloat32, R.ncclSum, comm, stream)
    elif scenario == "hang":
        if last:
            time.sleep(float(sys.argv[2]))
        status = nccl.ncclAllReduce(buf, out, 64, T.ncclFloat32, R.ncclSum, comm, stream)
    result = outcome(comm, stream, started)
    result["status"] = None if status is None else status[0].name
    report(rank, **result)


if __name__ == "__main__":
    main()
