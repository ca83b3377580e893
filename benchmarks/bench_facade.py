"""CUDA runtime facade benchmarks: launch latency, launch throughput, per-launch host cost.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_facade.py [--write]

Rows (each the best of several repeats, its peer measured in the same run):
- latency: cudaLaunchHostFunc(no-op) + cudaStreamSynchronize, and a 1-byte
  cudaMemsetAsync + cudaStreamSynchronize, vs ThreadPoolExecutor.submit(f).result()
  (target: >= 3x faster);
- throughput: 100k back-to-back 1-byte cudaMemsetAsync on one stream then one
  synchronize, vs 100k no-ops submitted to ThreadPoolExecutor(1) (target: >= 2x);
  the same with cudaLaunchHostFunc(no-op);
- host cost of one launch: the calling thread's time per cudaLaunchHostFunc /
  cudaMemsetAsync / cudaLaunchKernel while the stream's queue is suspended (nothing runs, so no
  worker competes for the GIL), vs the core's own Queue.enqueue of a no-op.

``--write`` also writes the table to benchmarks/results/facade.md (keeping its "## Notes" section).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import streamq  # noqa: E402
from streamq.cuda_facade import runtime as rt  # noqa: E402
from streamq.cuda_facade import _context  # noqa: E402

N_LATENCY = 2000
N_THROUGHPUT = 100_000
REPEATS = 5


def noop(_data=None):
    pass


def check(result):
    if result[0] != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"facade call failed: {result}")
    return result[1] if len(result) > 1 else None


def best(fn, repeats=REPEATS):
    return min(fn() for _ in range(repeats))


def per_call_us(body, n):
    def once():
        t0 = time.perf_counter()
        body(n)
        return (time.perf_counter() - t0) / n * 1e6
    return once


def has_memset() -> bool:
    return hasattr(rt, "cudaMemsetAsync") and hasattr(rt, "cudaMalloc")


def measure(repeats: int) -> list[tuple[str, float, str, float, str]]:
    rows = []
    stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    launch, sync = rt.cudaLaunchHostFunc, rt.cudaStreamSynchronize
    tpe = cf.ThreadPoolExecutor(1)
    ptr = check(rt.cudaMalloc(256)) if has_memset() else None
    memset = getattr(rt, "cudaMemsetAsync", None)

    # -- latency -------------------------------------------------------------------------
    def tpe_latency(n):
        for _ in range(n):
            tpe.submit(noop).result()

    def hostfunc_latency(n):
        for _ in range(n):
            launch(stream, noop, None)
            sync(stream)

    def memset_latency(n):
        for _ in range(n):
            memset(ptr, 0, 1, stream)
            sync(stream)
    peer = best(per_call_us(tpe_latency, N_LATENCY), repeats)
    ours = best(per_call_us(hostfunc_latency, N_LATENCY), repeats)
    rows.append(("cudaLaunchHostFunc(no-op) + cudaStreamSynchronize", ours,
                 "TPE submit(f).result()", peer, ">= 3x"))
    if ptr is not None:
        ours = best(per_call_us(memset_latency, N_LATENCY), repeats)
        rows.append(("cudaMemsetAsync(1 byte) + cudaStreamSynchronize", ours,
                     "TPE submit(f).result()", peer, ">= 3x"))

    # -- throughput ----------------------------------------------------------------------
    def tpe_throughput(n):
        futures = [tpe.submit(noop) for _ in range(n)]
        futures[-1].result()

    def hostfunc_throughput(n):
        for _ in range(n):
            launch(stream, noop, None)
        sync(stream)

    def memset_throughput(n):
        for _ in range(n):
            memset(ptr, 0, 1, stream)
        sync(stream)
    few = max(2, repeats // 2)
    peer = best(per_call_us(tpe_throughput, N_THROUGHPUT), few)
    if ptr is not None:
        ours = best(per_call_us(memset_throughput, N_THROUGHPUT), few)
        rows.append((f"{N_THROUGHPUT // 1000}k cudaMemsetAsync(1 byte), one sync", ours,
                     f"{N_THROUGHPUT // 1000}k no-ops to TPE(1)", peer, ">= 2x"))
    ours = best(per_call_us(hostfunc_throughput, N_THROUGHPUT), few)
    rows.append((f"{N_THROUGHPUT // 1000}k cudaLaunchHostFunc(no-op), one sync", ours,
                 f"{N_THROUGHPUT // 1000}k no-ops to TPE(1)", peer, "(info)"))

    # -- host cost of one launch (nothing runs meanwhile) ----------------------------------
    s = _context.resolve_stream(stream)
    core_q = streamq.Queue("bench.core")

    def suspended(body, n):
        """µs per call of ``body``'s loop alone, while nothing runs (the ops run afterwards, untimed)."""
        def once():
            s.queue.suspend()
            core_q.suspend()
            try:
                t0 = time.perf_counter()
                body(n)
                elapsed = time.perf_counter() - t0
            finally:
                s.queue.resume()
                core_q.resume()
            s.queue.synchronize()
            core_q.synchronize()
            return elapsed / n * 1e6
        return once

    def core_enqueue(n):
        enqueue = core_q.enqueue
        for _ in range(n):
            enqueue(noop)

    def facade_launch(n):
        for _ in range(n):
            launch(stream, noop, None)

    def facade_memset(n):
        for _ in range(n):
            memset(ptr, 0, 1, stream)
    batch, many = 500, 20 * repeats  # small batches: a suspended queue piling up tasks skews GC
    core = best(suspended(core_enqueue, batch), many)
    ours = best(suspended(facade_launch, batch), many)
    rows.append(("host cost: cudaLaunchHostFunc (queue suspended)", ours, "core Queue.enqueue(noop)", core,
                 "(info)"))
    if ptr is not None:
        ours = best(suspended(facade_memset, batch), many)
        rows.append(("host cost: cudaMemsetAsync (queue suspended)", ours, "core Queue.enqueue(noop)", core,
                     "(info)"))
    from streamq.cuda_facade import device_array
    x, y, z = (device_array(4, "float32") for _ in range(3))
    kernel_args = (x, y, {"out": z})
    kernel = rt.cudaLaunchKernel
    check(kernel("aten::add", 1, 4, kernel_args, 0, stream))   # loads the kernel

    def facade_kernel(n):
        for _ in range(n):
            kernel("aten::add", 1, 4, kernel_args, 0, stream)
    ours = best(suspended(facade_kernel, batch), many)
    rows.append(("host cost: cudaLaunchKernel('aten::add', 3 arrays) (queue suspended)", ours,
                 "core Queue.enqueue(noop)", core, "(info)"))
    tpe.shutdown()
    if ptr is not None:
        check(rt.cudaFree(ptr))
    check(rt.cudaStreamDestroy(stream))
    return rows


def blas_description() -> str:
    try:
        import numpy  # noqa: F401 - loads the BLAS threadpoolctl reports
        from threadpoolctl import threadpool_info
        infos = [i for i in threadpool_info() if i["user_api"] == "blas"]
    except Exception as exc:  # noqa: BLE001
        return f"threadpoolctl unavailable ({exc})"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}, "
                     f"{i.get('num_threads')} threads" for i in infos) or "no BLAS reported"


def table(rows) -> str:
    lines = ["| benchmark | streamq facade | peer | peer/facade (target) |", "|---|---|---|---|"]
    for name, ours, peer_name, peer, target in rows:
        if name.startswith("host cost"):
            verdict = f"+{ours - peer:.2f} µs over the core"
        else:
            verdict = f"{peer / ours:.2f}x {target}" if ours else "n/a"
        lines.append(f"| {name} | {ours:.2f} µs | {peer_name}: {peer:.2f} µs | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/facade.md")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"BLAS: {blas_description()}")
    print(f"topology: {[str(c) for c in streamq.topology()]}; load average before: {load[0]:.2f}")
    rows = measure(args.repeats)
    text = table(rows)
    print(text)
    if args.write:
        header = (f"# CUDA runtime facade benchmarks\n\n"
                  f"Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_facade.py "
                  f"{' '.join(sys.argv[1:])}` ({datetime.date.today()}, load average {load[0]:.2f} "
                  f"before the run).\n"
                  f"BLAS (threadpoolctl): {blas_description()}. Topology: "
                  f"{'; '.join(str(c) for c in streamq.topology())}.\n"
                  f"peer/facade = peer time / facade time (higher is better); best of {args.repeats} "
                  f"repeats (throughput rows: of {max(2, args.repeats // 2)}; host-cost rows: of "
                  f"{20 * args.repeats} batches of 500).\n\n")
        path = os.path.join(ROOT, "benchmarks", "results", "facade.md")
        notes = ""
        if os.path.exists(path):  # keep the hand-written analysis below the table
            with open(path) as f:
                old = f.read()
            if "\n## Notes" in old:
                notes = "\n" + old[old.index("\n## Notes") + 1:]
        with open(path, "w") as f:
            f.write(header + text + "\n" + notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
