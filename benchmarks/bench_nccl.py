"""NCCL over MPI: all-reduce bandwidth against plain mpi4py, and DDP's overlap.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nccl.py [--ranks 2] [--max-mb 256]

Starts itself under ``mpiexec -n RANKS`` (one CMG per rank: each rank gets its
share of the CPUs). For each size from 1 KiB to ``--max-mb`` MiB (float32), on
the same facade buffers, it times, best of ``--repeats``:

- ``mpi4py``: ``COMM_WORLD.Allreduce`` called on the host (the peer);
- ``nccl``: ``ncclAllReduce`` on a stream, then ``cudaStreamSynchronize`` — one
  operation at a time, the latency a training loop sees per call;
- ``nccl x k``: k ``ncclAllReduce`` back to back on the stream, one synchronize
  (the throughput of a stream of collectives).

It also prints the facade's floor for any stream op the host waits for (a
no-op ``cudaLaunchHostFunc`` plus ``cudaStreamSynchronize``), measured in the
same run: small all-reduces cannot be faster than that plus MPI's own latency.

Bandwidth is bytes reduced per second (NCCL's "algorithm bandwidth"); ratios
are against mpi4py measured in the same run. Then it runs
``examples/ddp_resnet.py`` and reports the share of gradient all-reduce time
hidden behind backward, read from the queue log, with the timeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _sizes(max_mb: float) -> list[int]:
    sizes, n = [], 1024
    while n <= max_mb * (1 << 20):
        sizes.append(n)
        n *= 4
    return sizes


def _best(fn, repeats: int, barrier) -> float:
    times = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def worker(args) -> None:
    """One rank: measure every size, rank 0 writes the figures to ``args.out``."""
    from streamq.distributed import bind_local_rank
    cpus = bind_local_rank()
    from mpi4py import MPI

    from streamq.cuda_facade import device_array, nccl
    from streamq.cuda_facade import runtime as rt
    from streamq.distributed import ProcessGroup

    world = MPI.COMM_WORLD
    group = ProcessGroup.world()
    err, stream = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
    f32, total = nccl.ncclDataType_t.ncclFloat32, nccl.ncclRedOp_t.ncclSum

    def floor(reps=200):
        for _ in range(reps):
            rt.cudaLaunchHostFunc(stream, _noop, None)
            rt.cudaStreamSynchronize(stream)

    # The facade's own floor for any stream op the host waits for: a no-op host function + synchronize.
    launch_sync = world.allreduce(_best(floor, args.repeats, world.Barrier) / 200, op=MPI.MAX)
    rows = []
    for nbytes in _sizes(args.max_mb):
        n = nbytes // 4
        send = device_array(n, "float32")
        recv = device_array(n, "float32")
        send[:] = group.rank + 1
        # calls per timed run: about 0.1 s of work, at least 2
        world.Barrier()
        t = time.perf_counter()
        world.Allreduce(send, recv)
        once = world.allreduce(time.perf_counter() - t, op=MPI.MAX)
        reps = max(2, min(200, int(0.1 / max(once, 1e-6))))

        def peer(reps=reps, send=send, recv=recv):
            for _ in range(reps):
                world.Allreduce(send, recv)

        def one_at_a_time(reps=reps, send=send, recv=recv, n=n):
            for _ in range(reps):
                nccl.ncclAllReduce(send, recv, n, f32, total, group.comm, stream)
                rt.cudaStreamSynchronize(stream)

        def back_to_back(reps=reps, send=send, recv=recv, n=n):
            for _ in range(reps):
                nccl.ncclAllReduce(send, recv, n, f32, total, group.comm, stream)
            rt.cudaStreamSynchronize(stream)

        timings = {}
        for name, fn in (("mpi4py", peer), ("nccl", one_at_a_time), ("nccl x k", back_to_back)):
            best = _best(fn, args.repeats, world.Barrier) / reps
            timings[name] = world.allreduce(best, op=MPI.MAX)
        expected = group.size * (group.size + 1) / 2
        assert float(recv[0]) == expected and float(recv[-1]) == expected, "wrong all-reduce result"
        rows.append({"bytes": nbytes, "reps": reps, **{k: v for k, v in timings.items()}})
    group.destroy()
    if group.rank == 0:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "cpus": cpus, "launch_sync": launch_sync}, f)


def _noop(_) -> None:
    pass


def _human(nbytes: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes // size} {unit}"
    return f"{nbytes} B"


def _mpiexec() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else "mpiexec"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--max-mb", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-overlap", action="store_true", help="skip the DDP overlap run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    import numpy  # noqa: F401 - loads the BLAS that threadpoolctl reports
    from threadpoolctl import threadpool_info
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, {i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"BLAS: {'; '.join(blas) or 'none found'}")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("STREAMQ_LOG", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figures.json")
        cmd = [_mpiexec(), "-n", str(args.ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--out", out, "--max-mb", str(args.max_mb), "--repeats", str(args.repeats)]
        subprocess.run(cmd, env=env, check=True, timeout=1800)
        with open(out) as f:
            figures = json.load(f)
    print(f"all-reduce, float32, {args.ranks} ranks (rank 0 on CPUs {figures['cpus']}), best of {args.repeats}; "
          "bandwidth = bytes / time")
    print(f"facade floor per waited-for stream op (no-op cudaLaunchHostFunc + cudaStreamSynchronize): "
          f"{figures['launch_sync'] * 1e6:.0f} us")
    print(f"{'size':>9} {'mpi4py':>14} {'nccl (1 op + sync)':>24} {'nccl x k (1 sync)':>24}")
    for row in figures["rows"]:
        peer = row["bytes"] / row["mpi4py"] / 1e9
        cells = [f"{peer:8.3f} GB/s"]
        for name in ("nccl", "nccl x k"):
            bw = row["bytes"] / row[name] / 1e9
            cells.append(f"{bw:8.3f} GB/s {bw / peer:5.2f}x")
        print(f"{_human(row['bytes']):>9} {cells[0]:>14} {cells[1]:>24} {cells[2]:>24}   "
              f"({row['mpi4py'] * 1e6:.0f} / {row['nccl'] * 1e6:.0f} / {row['nccl x k'] * 1e6:.0f} us)")
    if not args.no_overlap:
        print(f"\nDDP overlap: examples/ddp_resnet.py on {args.ranks} ranks")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [_mpiexec(), "-n", str(args.ranks), sys.executable, os.path.join(ROOT, "examples", "ddp_resnet.py"),
                   "--steps", "10", "--log", os.path.join(tmp, "ddp")]
            subprocess.run(cmd, env=env, check=True, timeout=1800)
    return 0


if __name__ == "__main__":
    sys.exit(main())
