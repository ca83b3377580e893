"""Two CUDA streams on two CMGs overlapping copies and GEMMs, through the CUDA facade.

Run:  python examples/streams_overlap.py [--n 384] [--batches 6]

Each device (= CMG) gets a non-blocking stream, pinned host buffers and device
buffers. Per batch a stream copies A and B host->device, multiplies them
(cublasSgemm when the cuBLAS facade is present, else cudaLaunchKernel of the
registry's ``aten::mm``) and copies C back. The same work is then run one
stream after the other. The queue log supplies a text timeline (``c`` copy, ``G`` GEMM)
and the overlap: the share of the busier stream's time during which the other
stream was busy too, and the speed-up over running the streams one after the other.

On a machine whose topology has one CMG, the script re-runs itself with
``STREAMQ_TOPOLOGY=2x1`` (two one-core CMGs) when the machine has two CPUs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import streamq  # noqa: E402
from streamq.cuda_facade import runtime as rt  # noqa: E402

try:
    from streamq.cuda_facade import cublas
except ImportError:  # the cuBLAS facade is optional here
    cublas = None

H2D = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
D2H = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost


def check(result):
    """The results of a facade call, or an exception naming its status."""
    if int(result[0]) != 0:
        raise RuntimeError(f"CUDA facade call failed: {result[0]!r}")
    return result[1] if len(result) == 2 else result[1:]


def pinned_array(n_floats: int):
    """(pointer, float32 view) of freshly allocated pinned host memory."""
    ptr = check(rt.cudaMallocHost(n_floats * 4))
    return ptr, np.ctypeslib.as_array((ctypes.c_float * n_floats).from_address(ptr))


class Lane:
    """One device's stream, buffers and GEMM engine."""

    def __init__(self, device: int, n: int, batches: int, rng):
        check(rt.cudaSetDevice(device))
        self.device, self.n = device, n
        self.stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        nbytes = n * n * 4
        self.dA, self.dB, self.dC = (check(rt.cudaMalloc(nbytes)) for _ in range(3))
        self.host = []
        for _ in range(batches):
            a_ptr, a = pinned_array(n * n)
            b_ptr, b = pinned_array(n * n)
            c_ptr, c = pinned_array(n * n)
            a[:] = rng.standard_normal(n * n, dtype=np.float32)
            b[:] = rng.standard_normal(n * n, dtype=np.float32)
            self.host.append((a_ptr, a, b_ptr, b, c_ptr, c))
        self.blas = None
        if cublas is not None:
            self.blas = check(cublas.cublasCreate())
            check(cublas.cublasSetStream(self.blas, self.stream))
        if self.blas is None:
            from streamq.cuda_facade._memory import typed_view
            self.views = [typed_view(p, np.float32, (n, n)) for p in (self.dA, self.dB, self.dC)]

    def enqueue(self) -> None:
        """Queue every batch on the lane's stream: copies in, GEMM, copy out."""
        stream = self.stream
        n, nbytes = self.n, self.n * self.n * 4
        for a_ptr, _, b_ptr, _, c_ptr, _ in self.host:
            check(rt.cudaMemcpyAsync(self.dA, a_ptr, nbytes, H2D, stream))
            check(rt.cudaMemcpyAsync(self.dB, b_ptr, nbytes, H2D, stream))
            if self.blas is not None:
                # Row-major C = A @ B is column-major C^T = B^T @ A^T.
                check(cublas.cublasSgemm(self.blas, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, n, n, 1.0,
                                         self.dB, n, self.dA, n, 0.0, self.dC, n))
            else:
                a, b, c = self.views
                check(rt.cudaLaunchKernel("aten::mm", (n // 32, n // 32), (32, 32), (a, b, {"out": c}), 0, stream))
            check(rt.cudaMemcpyAsync(c_ptr, self.dC, nbytes, D2H, stream))

    def verify(self) -> float:
        """Largest relative error of the results against float64 numpy."""
        worst = 0.0
        for _, a, _, b, _, c in self.host:
            n = self.n
            want = a.reshape(n, n).astype(np.float64) @ b.reshape(n, n).astype(np.float64)
            worst = max(worst, float(np.max(np.abs(c.reshape(n, n) - want)) / np.max(np.abs(want))))
        return worst


def busy_intervals(records, label_prefix: str):
    return sorted((r["start_us"], r["end_us"], r["kind"]) for r in records
                  if r.get("type") == "task" and r.get("label", "").startswith(label_prefix)
                  and r["kind"] in ("kernel", "memcpy"))


def merged(intervals):
    out = []
    for start, end, _ in intervals:
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def intersection(a, b) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def timeline(rows: dict, t0: float, t1: float, width: int = 72) -> str:
    lines = []
    scale = (t1 - t0) / width or 1.0
    for name, intervals in rows.items():
        cells = [" "] * width
        for start, end, kind in intervals:
            mark = "G" if kind == "kernel" else "c"
            for x in range(int((start - t0) / scale), min(width, int((end - t0) / scale) + 1)):
                if cells[x] != "G":
                    cells[x] = mark
        lines.append(f"{name:>10} |{''.join(cells)}|")
    lines.append(f"{'':>10}  0 ms{' ' * (width - 12)}{(t1 - t0) / 1000:7.1f} ms")
    return "\n".join(lines)


def run(n: int, batches: int) -> None:
    cmgs = streamq.topology()
    for c in cmgs:
        print(f"device {c.index}: {check(rt.cudaGetDeviceProperties(c.index)).name.decode()}")
    rng = np.random.default_rng(0)
    lanes = [Lane(d, n, batches, rng) for d in range(min(2, len(cmgs)))]
    engine = "cublasSgemm" if lanes[0].blas is not None else "cudaLaunchKernel('aten::mm')"
    print(f"{len(lanes)} stream(s), {batches} batches of {n}x{n} float32 each, GEMM via {engine}")
    for lane in lanes:   # warm up (kernel loading, page faults)
        check(rt.cudaSetDevice(lane.device))
        lane.enqueue()
        check(rt.cudaStreamSynchronize(lane.stream))

    log = os.path.join(tempfile.mkdtemp(), "overlap.jsonl")
    streamq.trace.enable(log)
    t_start = time.perf_counter()
    for lane in lanes:
        check(rt.cudaSetDevice(lane.device))
        lane.enqueue()
    for lane in lanes:
        check(rt.cudaStreamSynchronize(lane.stream))
    two = time.perf_counter() - t_start
    streamq.trace.flush()
    streamq.trace.disable()
    # The same work one stream after the other (no overlap).
    t_start = time.perf_counter()
    for lane in lanes:
        check(rt.cudaSetDevice(lane.device))
        lane.enqueue()
        check(rt.cudaStreamSynchronize(lane.stream))
    one = time.perf_counter() - t_start

    with open(log) as f:
        records = [json.loads(line) for line in f]
    rows = {f"device {lane.device}": busy_intervals(records, f"dev{lane.device}.stream") for lane in lanes}
    starts = [iv[0] for ivs in rows.values() for iv in ivs]
    ends = [iv[1] for ivs in rows.values() for iv in ivs]
    print("\ntimeline (c = copy, G = GEMM):")
    print(timeline(rows, min(starts), max(ends)))
    if len(lanes) == 2:
        busy = [merged(ivs) for ivs in rows.values()]
        both = intersection(*busy)
        longest = max(sum(e - s for s, e in b) for b in busy)
        print(f"\noverlap: both streams busy for {both / 1000:.1f} ms = {100 * both / longest:.0f}% "
              f"of the busier stream's {longest / 1000:.1f} ms")
    print(f"wall time: two streams {two * 1000:.1f} ms, one after the other {one * 1000:.1f} ms "
          f"-> speed-up {one / two:.2f}x")
    print(f"largest relative error vs float64 numpy: {max(lane.verify() for lane in lanes):.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=384, help="matrix size (default 384)")
    ap.add_argument("--batches", type=int, default=6, help="batches per stream (default 6)")
    args = ap.parse_args()
    if (len(streamq.topology()) < 2 and "STREAMQ_TOPOLOGY" not in os.environ
            and len(os.sched_getaffinity(0)) >= 2):
        env = dict(os.environ, STREAMQ_TOPOLOGY="2x1")
        print("one CMG here: re-running with STREAMQ_TOPOLOGY=2x1 (two one-core CMGs)")
        sys.exit(subprocess.call([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env))
    run(args.n, args.batches)


if __name__ == "__main__":
    main()
