"""NCCL over MPI: all-reduce bandwidth against plain mpi4py, and DDP's overlap.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nccl.py [--ranks 2] [--max-mb 64]

Starts itself under ``mpiexec -n RANKS`` (one CMG per rank: each rank gets its
share of the CPUs). For each size from 1 KiB to ``--max-mb`` MiB (float32, x4),
on the same facade buffers, it times ``iters`` calls per run (``--iters``;
default 16 MiB worth, between 4 and 50 calls), every method once per repeat,
the methods interleaved, best of ``--repeats``:

- ``mpi4py``: ``iters`` ``COMM_WORLD.Allreduce`` back to back on the host (the peer);
- ``nccl``: nccl-tests' protocol, the one whose "algbw" everyone quotes: ``iters``
  ``ncclAllReduce`` back to back on one stream, one ``cudaStreamSynchronize``;
  time per operation;
- ``1 op + sync``: ``ncclAllReduce`` then ``cudaStreamSynchronize``, ``iters``
  times: the latency a loop that waits for every call sees.

Each run starts with a barrier and takes the slowest rank's time. It also
prints the facade's floor for any stream op the host waits for (a no-op
``cudaLaunchHostFunc`` plus ``cudaStreamSynchronize``), measured in the same
run: a waited-for all-reduce cannot be faster than that plus MPI's latency.

algbw is bytes reduced per second (nccl-tests' "algorithm bandwidth"; its
"bus bandwidth" is algbw x 2(n-1)/n); ratios are against mpi4py in the same
run. Then it runs ``examples/ddp_resnet.py`` and reports the share of
gradient all-reduce time hidden behind backward, read from the queue log,
with the timeline (``--no-overlap`` skips it).
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

METHODS = ("mpi4py", "nccl", "1 op + sync")


def _sizes(max_mb: float) -> list[int]:
    sizes, n = [], 1024
    while n <= max_mb * (1 << 20):
        sizes.append(n)
        n *= 4
    return sizes


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

    cpu_used = []    # CPU seconds of this process (all its threads) per timed run: steadier under load

    def timed(fn) -> float:
        """Seconds ``fn`` took on the slowest rank, started together."""
        world.Barrier()
        cpu = time.process_time()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        cpu_used.append(time.process_time() - cpu)
        return world.allreduce(elapsed, op=MPI.MAX)

    def floor(reps=200):
        for _ in range(reps):
            rt.cudaLaunchHostFunc(stream, _noop, None)
            rt.cudaStreamSynchronize(stream)

    # The facade's own floor for any stream op the host waits for: a no-op host function + synchronize.
    launch_sync = min(timed(floor) for _ in range(args.repeats)) / 200
    rows = []
    for nbytes in _sizes(args.max_mb):
        n = nbytes // 4
        send = device_array(n, "float32")
        recv = device_array(n, "float32")
        send[:] = group.rank + 1
        # warm-up (nccl-tests runs a few too); the same number of calls per run on every rank
        timed(lambda: world.Allreduce(send, recv))
        timed(lambda: (nccl.ncclAllReduce(send, recv, n, f32, total, group.comm, stream),
                       rt.cudaStreamSynchronize(stream)))
        iters = args.iters or max(4, min(50, (16 << 20) // nbytes))

        def peer(iters=iters, send=send, recv=recv):
            for _ in range(iters):
                world.Allreduce(send, recv)

        def back_to_back(iters=iters, send=send, recv=recv, n=n):
            for _ in range(iters):
                nccl.ncclAllReduce(send, recv, n, f32, total, group.comm, stream)
            rt.cudaStreamSynchronize(stream)

        def one_at_a_time(iters=iters, send=send, recv=recv, n=n):
            for _ in range(iters):
                nccl.ncclAllReduce(send, recv, n, f32, total, group.comm, stream)
                rt.cudaStreamSynchronize(stream)

        runs = {name: [] for name in METHODS}
        cpu = {name: [] for name in METHODS}
        for _ in range(args.repeats):
            for name, fn in zip(METHODS, (peer, back_to_back, one_at_a_time)):
                runs[name].append(timed(fn) / iters)
                cpu[name].append(cpu_used[-1] / iters)
        expected = group.size * (group.size + 1) / 2
        assert float(recv[0]) == expected and float(recv[-1]) == expected, "wrong all-reduce result"
        rows.append({"bytes": nbytes, "iters": iters, "runs": runs, "cpu": cpu})
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
    parser.add_argument("--max-mb", type=float, default=64, help="largest size in MiB (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per method and size; the best counts")
    parser.add_argument("--iters", type=int, default=0, help="calls per run (default: 16 MiB worth, 4..50)")
    parser.add_argument("--json", default="", help="also write the raw per-run times here")
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
               "--out", out, "--max-mb", str(args.max_mb), "--repeats", str(args.repeats),
               "--iters", str(args.iters)]
        subprocess.run(cmd, env=env, check=True, timeout=1800)
        with open(out) as f:
            figures = json.load(f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f)
    print(f"all-reduce, float32, {args.ranks} ranks (rank 0 on CPUs {figures['cpus']}), best of {args.repeats} "
          "interleaved runs per method; algbw = bytes / time per operation")
    print(f"facade floor per waited-for stream op (no-op cudaLaunchHostFunc + cudaStreamSynchronize): "
          f"{figures['launch_sync'] * 1e6:.0f} us")
    print(f"{'':>9} {'':>5} {'time per op (us)':^24} {'algbw (GB/s)':^17} {'nccl':>6}   "
          f"{'1 op + sync':^16}")
    print(f"{'size':>9} {'iters':>5} {'mpi4py':>11} {'nccl':>12} {'mpi4py':>8} {'nccl':>8} {'ratio':>6}   "
          f"{'us':>8} {'ratio':>7}")
    for row in figures["rows"]:
        best = {name: min(row["runs"][name]) for name in METHODS}
        peer_bw, bw = row["bytes"] / best["mpi4py"] / 1e9, row["bytes"] / best["nccl"] / 1e9
        print(f"{_human(row['bytes']):>9} {row['iters']:>5} {best['mpi4py'] * 1e6:11.1f} {best['nccl'] * 1e6:12.1f} "
              f"{peer_bw:8.3f} {bw:8.3f} {bw / peer_bw:5.2f}x   {best['1 op + sync'] * 1e6:8.1f} "
              f"{best['mpi4py'] / best['1 op + sync']:6.2f}x")
    if not args.no_overlap:
        print(f"\nDDP overlap: examples/ddp_resnet.py on {args.ranks} ranks")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [_mpiexec(), "-n", str(args.ranks), sys.executable, os.path.join(ROOT, "examples", "ddp_resnet.py"),
                   "--steps", "10", "--log", os.path.join(tmp, "ddp")]
            subprocess.run(cmd, env=env, check=True, timeout=1800)
    return 0


if __name__ == "__main__":
    sys.exit(main())
