"""Worker: stream semantics of NCCL calls. ``mpiexec -n N python mpi_streams.py`` (N >= 2).

Checks, each against the documented rule (Aluminum's stream-aware collectives,
NCCL's and CUDA's stream order):

- a collective starts only after the stream's earlier work and later work on
  the stream waits for it, while the host thread is not blocked;
- other streams go on while a collective waits for a late peer, even with
  more waiting streams than the CMG has cores;
- the non-blocking variant blocks no stream and completes by ncclWait;
- a group spanning two streams orders both;
- many communicators and streams at once, issued in different orders by
  different ranks and from several host threads;
- ncclCommSplit, the legacy default stream (handle 0), ncclCommFinalize;
- collectives back to back on two streams and two communicators (the first on
  an idle stream, the next ones right behind it, some reading the previous
  one's result, a host function between them), checked against numpy sums.
"""

import threading
import time

import numpy as np
from mpi_common import download, init_world_comm, report, upload

from streamq.cuda_facade import nccl
from streamq.cuda_facade import runtime as rt
from streamq.cuda_facade._memory import typed_view

T = nccl.ncclDataType_t
R = nccl.ncclRedOp_t
OK = nccl.ncclResult_t.ncclSuccess
NOT_READY = rt.cudaError_t.cudaErrorNotReady

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def stream():
    err, s = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
    assert err == 0
    return s


def ordering(comm, rank, size):
    """Producer -> allreduce -> consumer on one stream; the host returns at once."""
    s = stream()
    n = 1000
    buf, out = upload(rt, np.zeros(n, np.float32)), upload(rt, np.zeros(n, np.float32))
    seen = {}

    def produce(_):
        time.sleep(0.3)
        typed_view(buf, np.float32, (n,))[:] = rank + 1     # written by stream work, not by the host

    def consume(_):
        seen["out"] = typed_view(out, np.float32, (n,)).copy()

    rt.cudaLaunchHostFunc(s, produce, None)
    check(nccl.ncclAllReduce(buf, out, n, T.ncclFloat32, R.ncclSum, comm, s)[0] == OK, "ordering: allreduce call")
    rt.cudaLaunchHostFunc(s, consume, None)
    # The host was not blocked: the producer still sleeps, so the stream cannot be done.
    check(rt.cudaStreamQuery(s)[0] == NOT_READY, "ordering: host blocked until the stream's work finished")
    check(rt.cudaStreamSynchronize(s)[0] == 0, "ordering: stream failed")
    expected = size * (size + 1) / 2
    check("out" in seen and np.all(seen["out"] == expected),
          f"ordering: consumer saw {seen.get('out', [None])[:3]} instead of {expected} (collective did not "
          "wait for the producer, or the consumer did not wait for the collective)")


def other_streams_go_on(comm, rank, size, world):
    """While collectives on several streams wait for a late peer, another stream's work runs."""
    late = 1.0
    waiting = [stream() for _ in range(4)]       # more waiting streams than the CMG's 2 cores
    bufs = [upload(rt, np.full(8, rank, np.float32)) for _ in waiting]
    free = stream()
    ran = threading.Event()
    world.Barrier()
    if rank == 1:
        time.sleep(late)   # rank 1 joins late: rank 0's collectives must wait for it
    for s, b in zip(waiting, bufs):
        nccl.ncclAllReduce(b, b, 8, T.ncclFloat32, R.ncclSum, comm, s)
    rt.cudaLaunchHostFunc(free, lambda _: ran.set(), None)
    if rank == 0:
        check(ran.wait(late * 0.8), "other streams: a free stream's work did not run while collectives waited")
        check(all(rt.cudaStreamQuery(s)[0] == NOT_READY for s in waiting),
              "other streams: a collective finished before its late peer joined")
    for s, b in zip(waiting, bufs):
        check(rt.cudaStreamSynchronize(s)[0] == 0, "other streams: stream failed")
        check(np.all(download(rt, b, 8, np.float32) == sum(range(size))), "other streams: wrong sum")


def nonblocking(comm, rank, size, world):
    """ncclIAllReduce blocks no stream; ncclWait orders later work after it."""
    s = stream()
    b = upload(rt, np.full(16, rank + 1, np.float64))
    order = []
    world.Barrier()
    if rank == 1:
        time.sleep(0.5)
    status, req = nccl.ncclIAllReduce(b, b, 16, T.ncclFloat64, R.ncclSum, comm, s)
    check(status == OK, f"nonblocking: {status}")
    # Work after a non-blocking collective does not wait for it.
    rt.cudaLaunchHostFunc(s, lambda _: order.append(("after", nccl.ncclTest(req)[1])), None)
    check(nccl.ncclWait(req, s)[0] == OK, "nonblocking: ncclWait on a stream")
    rt.cudaLaunchHostFunc(s, lambda _: order.append(("waited", nccl.ncclTest(req)[1])), None)
    check(rt.cudaStreamSynchronize(s)[0] == 0, "nonblocking: stream failed")
    if rank == 0:
        check(order[:1] == [("after", False)], f"nonblocking: later stream work waited: {order}")
    check(order[-1:] == [("waited", True)], f"nonblocking: ncclWait did not order later work: {order}")
    check(np.all(download(rt, b, 16, np.float64) == size * (size + 1) / 2), "nonblocking: wrong sum")
    # Host-side completion
    status, req = nccl.ncclIAllReduce(b, b, 16, T.ncclFloat64, R.ncclMax, comm, s)
    check(nccl.ncclWait(req)[0] == OK and nccl.ncclTest(req) == (OK, True), "nonblocking: host ncclWait")


def group_two_streams(comm, rank, size):
    """A group on two streams starts after both streams' work; both wait for it."""
    s1, s2 = stream(), stream()
    a, b = upload(rt, np.zeros(4, np.int32)), upload(rt, np.zeros(4, np.int32))
    seen = {}

    def slow_fill(_):
        time.sleep(0.2)
        typed_view(b, np.int32, (4,))[:] = rank + 1

    typed_view(a, np.int32, (4,))[:] = rank + 1
    rt.cudaLaunchHostFunc(s2, slow_fill, None)
    nccl.ncclGroupStart()
    nccl.ncclAllReduce(a, a, 4, T.ncclInt32, R.ncclSum, comm, s1)
    nccl.ncclAllReduce(b, b, 4, T.ncclInt32, R.ncclSum, comm, s2)
    check(nccl.ncclGroupEnd()[0] == OK, "group: ncclGroupEnd")
    rt.cudaLaunchHostFunc(s2, lambda _: seen.update(b=typed_view(b, np.int32, (4,)).copy()), None)
    rt.cudaStreamSynchronize(s1)
    rt.cudaStreamSynchronize(s2)
    total = size * (size + 1) // 2
    check(np.all(download(rt, a, 4, np.int32) == total), "group: stream 1's allreduce")
    check("b" in seen and np.all(seen["b"] == total), f"group: stream 2 saw {seen.get('b')} (the group did "
          "not wait for stream 2's earlier work, or stream 2 did not wait for the group)")


def many(world, comm, rank, size):
    """8 communicators x 8 streams, issued in a different order on each rank, from 2 host threads.

    NCCL orders the operations of one communicator by host call order, which must be the
    same on every rank; across communicators the order is free: here odd ranks issue
    them in reverse, and a late stream on rank 1 shuffles when they reach MPI."""
    comms = []
    for i in range(8):
        status, child = nccl.ncclCommSplit(comm, 0, rank)
        check(status == OK, f"many: ncclCommSplit {status}")
        comms.append(child)
    streams = [stream() for _ in range(8)]
    rounds = 5
    bufs = [[upload(rt, np.full(100, rank + k, np.int64)) for _ in range(rounds)] for k in range(8)]
    plan = list(range(8)) if rank % 2 == 0 else list(reversed(range(8)))

    def issue(ks):
        for k in ks:
            if rank == 1 and k % 3 == 0:
                rt.cudaLaunchHostFunc(streams[k], lambda _: time.sleep(0.05), None)
            for r in range(rounds):
                nccl.ncclAllReduce(bufs[k][r], bufs[k][r], 100, T.ncclInt64, R.ncclSum, comms[k], streams[k])

    threads = [threading.Thread(target=issue, args=([k for k in plan if k % 2 == part],)) for part in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k, s in enumerate(streams):
        check(rt.cudaStreamSynchronize(s)[0] == 0, f"many: stream {k} failed")
        for r in range(rounds):
            got = download(rt, bufs[k][r], 100, np.int64)
            check(np.all(got == sum(q + k for q in range(size))), f"many: stream {k} round {r} got {got[:2]}")
    # Split by parity: each half reduces only among itself.
    status, half = nccl.ncclCommSplit(comm, rank % 2, rank)
    check(status == OK and nccl.ncclCommCount(half) == (OK, len(range(rank % 2, size, 2))), "split: count")
    hb = upload(rt, np.full(3, rank, np.int32))
    nccl.ncclAllReduce(hb, hb, 3, T.ncclInt32, R.ncclSum, half, 0)    # the legacy default stream
    rt.cudaStreamSynchronize(0)
    check(np.all(download(rt, hb, 3, np.int32) == sum(range(rank % 2, size, 2))), "split: sum by parity")
    status, none = nccl.ncclCommSplit(comm, nccl.NCCL_SPLIT_NOCOLOR, 0)
    check(status == OK and none is None, "split: NCCL_SPLIT_NOCOLOR gives no communicator")
    for c in comms + [half]:
        check(nccl.ncclCommFinalize(c)[0] == OK and nccl.ncclCommDestroy(c)[0] == OK, "many: destroy")


def chained(comm, rank, size):
    """Back to back on two streams and two communicators, issued alternately from one thread.

    The first call of each stream finds it idle and the next ones follow the previous call
    of their communicator directly: each must start after the stream's earlier work (a
    call that reads the previous call's result, a host function writing a buffer between
    two calls), and the stream's later work must see every result."""
    status, other = nccl.ncclCommSplit(comm, 0, rank)
    check(status == OK, f"chained: ncclCommSplit {status}")
    pairs = [(comm, stream()), (other, stream())]
    counts = [3, 1000, 1 << 18, 7]          # float64 elements: 24 B .. 2 MiB
    ranks_total = size * (size + 1) / 2     # the sum over ranks of (rank + 1)
    plan = []                               # (stream index, pointer, count, expected)
    for i in range(12):
        for j, (c, s) in enumerate(pairs):
            n = counts[(i + j) % len(counts)]
            base = np.arange(n, dtype=np.float64) % 97 + i + 10 * j
            if i == 6:
                # stream work between two calls: the next call must read what it wrote
                x = upload(rt, np.zeros(n))
                rt.cudaLaunchHostFunc(s, lambda _, x=x, n=n, v=base * (rank + 1): typed_view(
                    x, np.float64, (n,)).__setitem__(slice(None), v), None)
            else:
                x = upload(rt, base * (rank + 1))
            ok = nccl.ncclAllReduce(x, x, n, T.ncclFloat64, R.ncclSum, c, s)[0] == OK
            expected = base * ranks_total
            if i % 3 == 0:   # a second in-place all-reduce of the result, right behind the first
                ok = ok and nccl.ncclAllReduce(x, x, n, T.ncclFloat64, R.ncclSum, c, s)[0] == OK
                expected = expected * size
            check(ok, f"chained: call {i} on stream {j}")
            plan.append((j, x, n, expected))
    seen = {}
    for j, (c, s) in enumerate(pairs):
        mine = [(x, n) for jj, x, n, _ in plan if jj == j]
        rt.cudaLaunchHostFunc(s, lambda _, j=j, mine=mine: seen.__setitem__(
            j, [typed_view(x, np.float64, (n,)).copy() for x, n in mine]), None)
    for j, (c, s) in enumerate(pairs):
        check(rt.cudaStreamSynchronize(s)[0] == 0, f"chained: stream {j} failed: {rt.last_exception()}")
    for j in range(len(pairs)):
        wanted = [e for jj, _, _, e in plan if jj == j]
        got = seen.get(j, [])
        check(len(got) == len(wanted), f"chained: stream {j}'s later work did not run")
        for k, (g, e) in enumerate(zip(got, wanted)):
            check(np.array_equal(g, e), f"chained: stream {j} call {k}: got {g[:3]} expected {e[:3]}")
    check(nccl.ncclCommDestroy(other)[0] == OK, "chained: destroy")


def main():
    world, comm = init_world_comm()
    rank, size = world.Get_rank(), world.Get_size()
    ordering(comm, rank, size)
    chained(comm, rank, size)
    other_streams_go_on(comm, rank, size, world)
    nonblocking(comm, rank, size, world)
    group_two_streams(comm, rank, size)
    many(world, comm, rank, size)
    check(nccl.ncclCommGetAsyncError(comm) == (OK, OK), "async error set")
    check(nccl.ncclCommDestroy(comm)[0] == OK, "destroy")
    report(rank, failures=failures)


if __name__ == "__main__":
    main()
