"""Benchmark: a 4-op elementwise chain on 64 MiB float32 tensors, fused vs unfused.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fusion.py
        [--mib 64] [--repeats 7] [--no-torch]

Every chain is launched through a :class:`streamq.fusion.FusionWindow` on one
serial ``streamq.Queue`` (what the CUDA facade does per stream), then the
queue is synchronized. Measured in the same run, interleaved, best of
``--repeats`` (the machine is shared and noisy):

* ``unfused``: fusion off; each op is its own queue task running the registry
  kernel (numba provider), exactly as the facade launches ops without fusion;
* ``fused``: fusion on (automatic mode); the window enqueues one generated
  kernel per chain;
* ``torch``: the same ops in torch eager (2 threads), as a yardstick;
* ``copy``: one pass of the numba provider's parallel copy kernel over a
  tensor, as the memory-bandwidth yardstick (GB/s counted read + write).

Chains (each 4 ops, 64 MiB per full tensor):

* ``epilogue``: ``y = x * w; y += b; relu_(y); y *= 0.5`` with per-channel
  ``w``, ``b`` of shape (C,) broadcast over x of shape (N, C) - the bias /
  scale / activation tail after a GEMM or convolution;
* ``inplace``: the same with ``w``, ``b`` full 64 MiB tensors;
* ``out-of-place``: ``t1 = x * w; t2 = t1 + b; t3 = relu(t2); t4 = t3 * 0.5``,
  full tensors, every intermediate a separate array - fusion must still write
  t1..t3 (the caller may read them), so it saves only the re-reads.

Prints a markdown table (ms, ratios > 1 mean fused is faster) and the BLAS
that threadpoolctl reports (no BLAS call is involved; printed for the record).
"traffic ratio" is the bytes the unfused ops must stream over the bytes the
fused kernel must stream (each array read or written once per pass,
write-allocate not counted): the speedup a purely memory-bound chain can reach.
"fused GB/s" is the fused kernel's bytes over its time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import streamq
from streamq import (
    fusion,
    kernels,
)

C = 1024


def make_chains(n):
    """name -> (calls as (op, args, kwargs), bytes the unfused ops stream, bytes the fused kernel streams)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    wf = rng.standard_normal(n, dtype=np.float32)
    bf = rng.standard_normal(n, dtype=np.float32)
    wc = rng.standard_normal(C, dtype=np.float32)
    bc = rng.standard_normal(C, dtype=np.float32)
    y = np.empty(n, np.float32)
    t = [np.empty(n, np.float32) for _ in range(4)]
    x2, y2 = x.reshape(-1, C), y.reshape(-1, C)
    nb = 4 * n
    return {
        # Full-tensor passes. Epilogue: unfused x->y, then y->y three times (8); fused x in,
        # y out (2). In place: 3 + 3 + 2 + 2 = 10; fused x, w, b in, y out (4). Out of
        # place: 3 + 3 + 2 + 2 = 10; fused x, w, b in, t0..t3 out (7).
        "epilogue (N,C) * w[C] + b[C], relu, * 0.5": (
            [("aten::mul", (x2, wc), {"out": y2}), ("aten::add_", (y2, bc), {}),
             ("aten::relu_", (y2,), {}), ("aten::mul_", (y2, 0.5), {})], 8 * nb, 2 * nb),
        "inplace x * w + b, relu, * 0.5 (full w, b)": (
            [("aten::mul", (x, wf), {"out": y}), ("aten::add_", (y, bf), {}),
             ("aten::relu_", (y,), {}), ("aten::mul_", (y, 0.5), {})], 10 * nb, 4 * nb),
        "out-of-place, intermediates kept": (
            [("aten::mul", (x, wf), {"out": t[0]}), ("aten::add", (t[0], bf), {"out": t[1]}),
             ("aten::relu", (t[1],), {"out": t[2]}), ("aten::mul", (t[2], 0.5), {"out": t[3]})],
            10 * nb, 7 * nb),
    }


def launch(window, queue, calls):
    for op, args, kwargs in calls:
        if not window.offer(op, args, kwargs):
            window.flush()
            queue.enqueue(kernels.get(op), args, kwargs, name=op, kind="kernel")
    window.flush()
    queue.synchronize()


def torch_chain(calls):
    """The chain as torch eager calls on tensors sharing the numpy arrays' memory."""
    import torch
    tensors = {}

    def t(v):
        if isinstance(v, np.ndarray):
            return tensors.setdefault(id(v), torch.from_numpy(v))
        return v

    table = {
        "aten::mul": lambda a, b, out: torch.mul(a, b, out=out),
        "aten::add": lambda a, b, out, alpha=1: torch.add(a, b, alpha=alpha, out=out),
        "aten::relu": lambda a, out: torch.clamp_min(a, 0, out=out),
        "aten::mul_": lambda a, b: a.mul_(b),
        "aten::add_": lambda a, b, alpha=1: a.add_(b, alpha=alpha),
        "aten::relu_": lambda a: a.relu_(),
    }
    steps = [(table[op], tuple(t(a) for a in args), {k: t(v) for k, v in kwargs.items()})
             for op, args, kwargs in calls]
    return lambda: [fn(*a, **k) for fn, a, k in steps]


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def blas_info():
    try:
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel "
                         f"{i.get('architecture')} {i.get('num_threads')} threads" for i in info) or "none"
    except (ImportError, RuntimeError, OSError) as exc:  # pragma: no cover
        return f"unknown ({exc})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB per full tensor (default 64)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    n = args.mib * (1 << 20) // 4
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(2)
        except ImportError:
            torch = None
    queue = streamq.Queue("bench-stream")
    window = fusion.FusionWindow(queue)
    print(f"BLAS (threadpoolctl): {blas_info()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (the machine is shared)")
    print(f"cores: {os.cpu_count()}, numba threads: {__import__('numba').get_num_threads()}, "
          f"torch: {torch.__version__ if torch else 'not used'}, fused kernels in {fusion.cache_dir()}")
    from streamq.kernels import _aten_jit
    src = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    copy_ms = best_of(lambda: queue.sync(_aten_jit.copy_cast, src, dst), args.repeats)
    print(f"\n{args.mib} MiB float32 per tensor ({n} elements); parallel copy of one tensor: "
          f"{copy_ms:.2f} ms ({2 * 4 * n / copy_ms / 1e6:.1f} GB/s read+write)\n")
    print("| chain | unfused ms | fused ms | unfused / fused | traffic ratio | torch ms "
          "| torch / fused | fused GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (calls, bytes_unfused, bytes_fused) in make_chains(n).items():
        fusion.enable()
        launch(window, queue, calls)                 # warm-up: compile or load the kernel
        fusion.disable()
        launch(window, queue, calls)
        tc = torch_chain(calls) if torch else None
        if tc:
            tc()
        fused, unfused, peer = [], [], []
        for _ in range(args.repeats):               # interleaved, best of each
            fusion.enable()
            fused.append(best_of(lambda c=calls: launch(window, queue, c), 1))
            fusion.disable()
            unfused.append(best_of(lambda c=calls: launch(window, queue, c), 1))
            if tc:
                peer.append(best_of(tc, 1))
        f, u = min(fused), min(unfused)
        p = f"{min(peer):.2f}" if peer else "-"
        pr = f"{min(peer) / f:.2f}" if peer else "-"
        print(f"| {name} | {u:.2f} | {f:.2f} | **{u / f:.2f}** | {bytes_unfused / bytes_fused:.2f} "
              f"| {p} | {pr} | {bytes_fused / f / 1e6:.1f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    queue.shutdown()


if __name__ == "__main__":
    main()
