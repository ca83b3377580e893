"""Core runtime benchmarks: task throughput, sync latency, CMG scaling, logging cost.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_core.py
Each figure is the best of several repeats, with its peer measured in the same run.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time

N_TASKS = 100_000
REPEATS = 5


def noop():
    pass


def best(fn, repeats=REPEATS):
    return min(fn() for _ in range(repeats))


def serial_throughput_streamq():
    import streamq
    q = streamq.Queue("bench")

    def once():
        t0 = time.perf_counter()
        tasks = [q.submit(noop) for _ in range(N_TASKS)]
        for t in tasks:
            t.result()
        return (time.perf_counter() - t0) / N_TASKS * 1e6

    return best(once)


def serial_throughput_tpe():
    def once():
        with cf.ThreadPoolExecutor(max_workers=1) as ex:
            t0 = time.perf_counter()
            futures = [ex.submit(noop) for _ in range(N_TASKS)]
            for f in futures:
                f.result()
            return (time.perf_counter() - t0) / N_TASKS * 1e6

    return best(once)


def sync_latency_streamq(n=100_000):
    import streamq
    q = streamq.Queue("sync")

    def once():
        t0 = time.perf_counter()
        for _ in range(n):
            q.sync(noop)
        return (time.perf_counter() - t0) / n * 1e6

    return best(once)


def sync_latency_tpe(n=20_000):
    with cf.ThreadPoolExecutor(max_workers=1) as ex:
        def once():
            t0 = time.perf_counter()
            for _ in range(n):
                ex.submit(noop).result()
            return (time.perf_counter() - t0) / n * 1e6

        return best(once)


def logging_cost():
    import streamq
    q = streamq.Queue("logged")

    def once():
        t0 = time.perf_counter()
        for _ in range(N_TASKS):
            q.submit(noop)
        q.synchronize()
        return (time.perf_counter() - t0) / N_TASKS * 1e6

    off = best(once, 3)
    with tempfile.TemporaryDirectory() as d:
        streamq.trace.enable(os.path.join(d, "log.jsonl"))
        on = best(once, 3)
        streamq.trace.disable()
    return off, on


CMG_SCALING = r"""
import json, sys, time, numpy as np, streamq
from threadpoolctl import threadpool_info
n, count, nqueues = 384, 400, int(sys.argv[1])
cmgs = streamq.topology()
queues = [streamq.Queue(f"q{i}", cmg=i) for i in range(nqueues)]
mats = [(np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32),
         np.empty((n, n), np.float32)) for _ in queues]
for q, (a, b, c) in zip(queues, mats):       # warm up each worker
    q.submit(np.matmul, a, b, out=c).result()
best = None
for _ in range(3):
    t0 = time.perf_counter()
    for i in range(count):
        q = queues[i % nqueues]
        a, b, c = mats[i % nqueues]
        q.submit(np.matmul, a, b, out=c)
    for q in queues:
        q.synchronize()
    rate = count / (time.perf_counter() - t0)
    best = rate if best is None else max(best, rate)
blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
        if i["user_api"] == "blas"]
print(json.dumps({"rate": best, "blas": blas, "cmgs": [list(c.cpus) for c in cmgs]}))
"""


def cmg_scaling():
    env = dict(os.environ, STREAMQ_TOPOLOGY="2x1")
    out = {}
    for nq in (1, 2):
        res = subprocess.run([sys.executable, "-c", CMG_SCALING, str(nq)], env=env,
                             capture_output=True, text=True, check=True)
        out[nq] = json.loads(res.stdout)
    return out


def main() -> None:
    import numpy  # noqa: F401 - load numpy's BLAS so threadpoolctl can see it
    from threadpoolctl import threadpool_info
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"BLAS (threadpoolctl): {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    sq = serial_throughput_streamq()
    tp = serial_throughput_tpe()
    ss = sync_latency_streamq()
    ts = sync_latency_tpe()
    off, on = logging_cost()
    scaling = cmg_scaling()
    r1, r2 = scaling[1]["rate"], scaling[2]["rate"]
    print()
    print("| benchmark | streamq | peer | ratio (target) |")
    print("|---|---|---|---|")
    print(f"| 100k no-op tasks, serial queue, submit then await | {sq:.2f} µs/task | "
          f"ThreadPoolExecutor(1): {tp:.2f} µs/task | {tp / sq:.1f}x (>= 3x) |")
    print(f"| sync of a no-op on an idle serial queue | {ss:.2f} µs | "
          f"TPE submit().result(): {ts:.2f} µs | {ts / ss:.1f}x (>= 10x) |")
    print(f"| 384² float32 matmuls, STREAMQ_TOPOLOGY=2x1 | 2 queues on 2 CMGs: {r2:.0f}/s | "
          f"1 queue on 1 CMG: {r1:.0f}/s | {r2 / r1:.2f}x (>= 1.8x) |")
    print(f"| queue log on vs off (100k no-ops) | on: {on:.2f} µs/task | off: {off:.2f} µs/task | "
          f"+{on - off:.2f} µs/task |")
    print(f"\nBLAS in the 2x1 runs: {scaling[2]['blas']}; CMGs {scaling[2]['cmgs']}")


if __name__ == "__main__":
    main()
