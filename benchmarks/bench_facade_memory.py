"""CUDA facade memory benchmarks: big copies, the caching pool, back-to-back memsets.

Run:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_facade_memory.py [--mib 256]

Every figure is the best of several repeats; each facade figure is printed with
its peer measured in the same run, interleaved with it (the machine is noisy):

1. cudaMemcpy of N MiB (H2D from a numpy array, D2H into one, D2D) vs numpy's own
   ``np.copyto`` of the same bytes between pre-touched arrays (target >= 0.9x).
   The facade rows include the stream hop and, for D2D (which returns before the
   copy is done, as CUDA documents), the synchronize that waits for it. A first
   row runs numpy's copy itself on a CMG worker: the cost of the hop and of a
   pinned thread, which a loaded machine exaggerates.
2. The caching pool: cudaMalloc + cudaMemset of N MiB on fresh pages (the pool
   trimmed before each round: the OS must first-touch every page) vs reused
   (the block comes back from the pool), beside numpy (and torch, when
   installed) allocating a fresh buffer vs filling one they keep.
3. 1-element cudaMemsetAsync: 100k back-to-back on one stream then one
   synchronize, vs 100k no-ops submitted to ThreadPoolExecutor(1) (target >= 2x);
   and one memset + stream synchronize vs ThreadPoolExecutor.submit(f).result().
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import time

import numpy as np

REPEATS = 7


def best_pair(a, b, repeats=None):
    """Best-of-``repeats`` (default REPEATS) seconds of ``a`` and ``b``, measured alternately."""
    ta, tb = [], []
    for _ in range(repeats or REPEATS):
        ta.append(a())
        tb.append(b())
    return min(ta), min(tb)


def timed(fn):
    def run():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def blas_line() -> str:
    from threadpoolctl import threadpool_info
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
             f"threads={i.get('num_threads')}" for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(parts) or "none reported"


def check(err):
    from streamq.cuda_facade._errors import cudaError_t, last_error_detail
    code = err[0] if isinstance(err, tuple) else err
    if code != cudaError_t.cudaSuccess:
        raise RuntimeError(f"{code!r}: {last_error_detail()}")
    return err[1] if isinstance(err, tuple) and len(err) == 2 else err


def bench_copies(nbytes: int, rt, legacy) -> list[tuple]:
    K = rt.cudaMemcpyKind
    host_src = np.full(nbytes, 3, np.uint8)
    host_dst = np.zeros(nbytes, np.uint8)
    peer_dst = np.zeros(nbytes, np.uint8)
    d1 = check(rt.cudaMalloc(nbytes))
    d2 = check(rt.cudaMalloc(nbytes))
    check(rt.cudaMemcpy(d1, host_src, nbytes, K.cudaMemcpyHostToDevice))
    numpy_copy = timed(lambda: np.copyto(peer_dst, host_src))

    def d2d():
        check(rt.cudaMemcpy(d2, d1, nbytes, K.cudaMemcpyDeviceToDevice))
        legacy.synchronize()

    import streamq
    worker = streamq.global_queue(0)
    worker_copy = timed(lambda: worker.submit(np.copyto, peer_dst, host_src).result())
    rows = [("(peer) np.copyto run on a CMG worker: hop + pinned thread", *best_pair(worker_copy, numpy_copy))]
    for label, fn in [("H2D cudaMemcpy (pageable src)",
                       lambda: check(rt.cudaMemcpy(d1, host_src, nbytes, K.cudaMemcpyHostToDevice))),
                      ("D2H cudaMemcpy (pageable dst)",
                       lambda: check(rt.cudaMemcpy(host_dst, d1, nbytes, K.cudaMemcpyDeviceToHost))),
                      ("D2D cudaMemcpy + synchronize", d2d)]:
        ours, peer = best_pair(timed(fn), numpy_copy)
        rows.append((label, ours, peer))
    check(rt.cudaFree(d1))
    check(rt.cudaFree(d2))
    return rows


def bench_pool(nbytes: int, rt, legacy) -> list[tuple]:
    pool = check(rt.cudaDeviceGetDefaultMemPool(0))

    def facade(fresh: bool):
        def run():
            if fresh:
                check(rt.cudaMemPoolTrimTo(pool, 0))
            t0 = time.perf_counter()
            ptr = check(rt.cudaMalloc(nbytes))
            check(rt.cudaMemset(ptr, 1, nbytes))
            legacy.synchronize()
            elapsed = time.perf_counter() - t0
            check(rt.cudaFree(ptr))
            return elapsed
        return run

    kept = np.empty(nbytes, np.uint8)
    kept.fill(0)

    def numpy_fresh():
        t0 = time.perf_counter()
        a = np.empty(nbytes, np.uint8)
        a.fill(1)
        elapsed = time.perf_counter() - t0
        del a
        return elapsed

    rows = []
    ours, peer = best_pair(facade(True), numpy_fresh)
    rows.append(("fresh pages: cudaMalloc+cudaMemset vs np.empty+fill", ours, peer))
    ours, peer = best_pair(facade(False), timed(lambda: kept.fill(1)))
    rows.append(("reused: cudaMalloc (pool hit)+cudaMemset vs fill of a kept array", ours, peer))
    try:
        import torch
    except ImportError:
        return rows
    torch.set_num_threads(os.cpu_count() or 1)
    keep_t = torch.empty(nbytes, dtype=torch.uint8)
    keep_t.fill_(0)

    def torch_fresh():
        t0 = time.perf_counter()
        t = torch.empty(nbytes, dtype=torch.uint8)
        t.fill_(1)
        elapsed = time.perf_counter() - t0
        del t
        return elapsed

    ours, peer = best_pair(facade(True), torch_fresh)
    rows.append((f"fresh pages vs torch {torch.__version__} empty+fill_", ours, peer))
    ours, peer = best_pair(facade(False), timed(lambda: keep_t.fill_(1)))
    rows.append(("reused vs torch fill_ of a kept tensor", ours, peer))
    return rows


def bench_memset_launch(rt, Stream, device, n: int = 100_000) -> list[tuple]:
    try:    # the public runtime module (streams, synchronize), if it is there
        from streamq.cuda_facade import runtime
        s = check(runtime.cudaStreamCreateWithFlags(runtime.cudaStreamNonBlocking))
        sync = runtime.cudaStreamSynchronize
    except ImportError:
        s = Stream(device(0), flags=1)
        sync = Stream.synchronize
    ptr = check(rt.cudaMalloc(4))
    memset_async = rt.cudaMemsetAsync

    def burst():
        t0 = time.perf_counter()
        for _ in range(n):
            memset_async(ptr, 1, 1, s)
        sync(s)
        return (time.perf_counter() - t0) / n

    def noop():
        pass

    ex = cf.ThreadPoolExecutor(max_workers=1)

    def tpe_burst():
        t0 = time.perf_counter()
        for _ in range(n):
            f = ex.submit(noop)
        f.result()
        return (time.perf_counter() - t0) / n

    def latency(m=20_000):
        t0 = time.perf_counter()
        for _ in range(m):
            memset_async(ptr, 1, 1, s)
            sync(s)
        return (time.perf_counter() - t0) / m

    def tpe_latency(m=20_000):
        t0 = time.perf_counter()
        for _ in range(m):
            ex.submit(noop).result()
        return (time.perf_counter() - t0) / m

    rows = [("100k back-to-back 1-byte cudaMemsetAsync, one sync (per op)", *best_pair(burst, tpe_burst)),
            ("1-byte cudaMemsetAsync + stream synchronize", *best_pair(latency, tpe_latency))]
    ex.shutdown()
    check(rt.cudaFree(ptr))
    return rows


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="buffer size for copies and the pool (MiB)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="repeats per figure (best is kept)")
    args = parser.parse_args()
    REPEATS = args.repeats
    nbytes = args.mib << 20

    import streamq
    from streamq.cuda_facade import _rt_memory as rt
    from streamq.cuda_facade._context import Stream, device

    legacy = device(0).legacy
    print(f"# CUDA facade memory benchmark ({args.mib} MiB buffers)\n")
    print(f"machine: {os.cpu_count()} CPUs; CMGs: {'; '.join(str(c) for c in streamq.topology())}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"BLAS (threadpoolctl): {blas_line()}")
    cores = device(0).cmg.ncores
    split = (f"copies of >= {rt.COPY_SPLIT_BYTES >> 20} MiB use the CMG's {cores} cores"
             if cores >= rt.COPY_SPLIT_MIN_CORES else
             f"copies run on one core (CMG of {cores} < {rt.COPY_SPLIT_MIN_CORES} cores)")
    print(f"copy split: {split}\n")

    gb = nbytes / 1e9
    print("| copy | facade ms | numpy copyto ms | facade GB/s | ratio numpy/facade (target >= 0.9) |")
    print("|---|---|---|---|---|")
    for label, ours, peer in bench_copies(nbytes, rt, legacy):
        print(f"| {label} | {ours * 1e3:.2f} | {peer * 1e3:.2f} | {gb / ours:.1f} | {peer / ours:.2f} |")

    print("\n| allocate + fill | facade ms | peer ms | facade GB/s | peer GB/s |")
    print("|---|---|---|---|---|")
    for label, ours, peer in bench_pool(nbytes, rt, legacy):
        print(f"| {label} | {ours * 1e3:.1f} | {peer * 1e3:.1f} | {gb / ours:.1f} | {gb / peer:.1f} |")

    print("\n| launch | facade µs | ThreadPoolExecutor µs | ratio TPE/facade |")
    print("|---|---|---|---|")
    for label, ours, peer in bench_memset_launch(rt, Stream, device):
        print(f"| {label} | {ours * 1e6:.2f} | {peer * 1e6:.2f} | {peer / ours:.2f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
