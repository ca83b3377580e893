"""Benchmark: a 4-op elementwise chain on 64 MiB float32 tensors through the CUDA facade, fused vs unfused.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fusion.py
        [--mib 64] [--repeats 7] [--no-torch]

Every chain is a CUDA program: facade memory, ``cudaLaunchKernel`` of ATen ops
on one non-blocking stream, ``cudaMallocAsync``/``cudaFreeAsync`` for
temporaries (what PyTorch's caching allocator does for eager code), then
``cudaStreamSynchronize``. The same program runs with ``streamq.fusion``
disabled (``unfused``: one registry kernel per launch) and enabled in
automatic mode (``fused``: the stream's window enqueues one generated kernel),
interleaved, best of ``--repeats`` (the machine is shared and noisy). Also:

* ``torch``: the same ops in torch eager (2 threads), as a yardstick;
* ``copy``: one parallel copy of a tensor, the memory-bandwidth yardstick;
* ``predicted``: what ``streamq fusion`` predicts fusing saves, from a queue
  log of the unfused program (3 iterations; estimate per iteration), beside
  ``saved`` = unfused - fused measured here.

Chains (each 4 ops; x, w, b and the output are 64 MiB unless broadcast):

* ``epilogue``: ``y = x * w; y += b; relu_(y); y *= 0.5`` with per-channel
  ``w``, ``b`` of shape (C,) over x of shape (N, C): the tail after a GEMM;
* ``eager``: ``y = relu(x * w + b) * 0.5`` as PyTorch eager runs it: each op
  writes a fresh temporary from the pool, freed (stream-ordered) once used.
  The window learns of each free before its kernel runs, so the fused kernel
  never writes the temporaries (read x, w, b, write y);
* ``inplace``: the epilogue with full-size ``w`` and ``b``;
* ``kept``: out of place, every intermediate a buffer the caller keeps (may
  read later): fusion must still write all of them and saves only re-reads.

"traffic ratio" is the bytes the unfused ops stream over the bytes the fused
kernel streams (each array read or written once per pass, write-allocate not
counted): the speedup a purely memory-bound chain can reach.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import streamq
import streamq.cuda_facade as cf
from streamq import fusion
from streamq.analysis import analyze
from streamq.cuda_facade import runtime as rt
from streamq.cuda_facade._memory import typed_view

C = 1024


def check(result):
    if result[0] != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA call failed: {result}")
    return result[1] if len(result) == 2 else result[1:]


def launch(stream, op, *args, **kwargs):
    check(rt.cudaLaunchKernel(op, (1, 1, 1), (1, 1, 1), args + (kwargs,), 0, stream))


def temp(stream, n):
    ptr = check(rt.cudaMallocAsync(4 * n, stream))
    return ptr, typed_view(ptr, np.float32, (n,))


def make_chains(n):
    """name -> (program(stream), torch-equivalent ops, unfused bytes, fused bytes)."""
    rng = np.random.default_rng(0)
    full = [cf.to_device(rng.standard_normal(n, dtype=np.float32)) for _ in range(3)]
    x, wf, bf = full
    wc, bc = (cf.to_device(rng.standard_normal(C, dtype=np.float32)) for _ in range(2))
    y = cf.device_array((n,), np.float32)
    kept = [cf.device_array((n,), np.float32) for _ in range(3)]
    x2, y2 = x.reshape(-1, C), y.reshape(-1, C)
    nb = 4 * n

    def epilogue(s, x=x2, w=wc, b=bc, y=y2):
        launch(s, "aten::mul", x, w, out=y)
        launch(s, "aten::add_", y, b)
        launch(s, "aten::relu_", y)
        launch(s, "aten::mul_", y, 0.5)

    def eager(s):
        p1, t1 = temp(s, n)
        launch(s, "aten::mul", x, wf, out=t1)
        p2, t2 = temp(s, n)
        launch(s, "aten::add", t1, bf, out=t2)
        check(rt.cudaFreeAsync(p1, s))
        p3, t3 = temp(s, n)
        launch(s, "aten::relu", t2, out=t3)
        check(rt.cudaFreeAsync(p2, s))
        launch(s, "aten::mul", t3, 0.5, out=y)
        check(rt.cudaFreeAsync(p3, s))

    def kept_chain(s):
        launch(s, "aten::mul", x, wf, out=kept[0])
        launch(s, "aten::add", kept[0], bf, out=kept[1])
        launch(s, "aten::relu", kept[1], out=kept[2])
        launch(s, "aten::mul", kept[2], 0.5, out=y)

    def torch_eager(torch):
        tx, tw, tb = (torch.from_numpy(np.asarray(a)) for a in full)
        return lambda: torch.relu(tx * tw + tb) * 0.5

    def torch_epilogue(torch, x, w, b, y):
        tx, tw, tb, ty = (torch.from_numpy(np.asarray(a)) for a in (x, w, b, y))
        return lambda: torch.mul(tx, tw, out=ty).add_(tb).relu_().mul_(0.5)

    # Full-tensor passes. epilogue: x->y, then y->y three times (8 unfused), x in y out (2).
    # eager: 3 + 3 + 2 + 2 = 10 unfused; fused x, w, b in, y out (4). inplace: the same.
    # kept: 10 unfused; fused x, w, b in, three intermediates and y out (7).
    return {
        "epilogue: y = x(N,C) * w[C]; += b[C]; relu_; *= 0.5": (
            epilogue, lambda t: torch_epilogue(t, x2, wc, bc, y2), 8 * nb, 2 * nb),
        "eager: y = relu(x * w + b) * 0.5, temporaries freed": (
            eager, torch_eager, 10 * nb, 4 * nb),
        "inplace: the epilogue with full-size w, b": (
            lambda s: epilogue(s, x, wf, bf, y), lambda t: torch_epilogue(t, x, wf, bf, y), 10 * nb, 4 * nb),
        "kept: out of place, intermediates kept (still written)": (
            kept_chain, None, 10 * nb, 7 * nb),
    }


def run(program, stream):
    program(stream)
    check(rt.cudaStreamSynchronize(stream))


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def predicted_saving_ms(program, stream, iterations=3):
    """What the analyzer predicts fusing saves per iteration, from a log of the unfused program."""
    fusion.disable()
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "unfused.jsonl")
        streamq.trace.enable(log)
        try:
            for _ in range(iterations):
                run(program, stream)
        finally:
            streamq.trace.disable()
        found = analyze(log).findings
    return sum(f.estimated_us for f in found if f.kind in ("vertical", "epilogue")) / iterations / 1e3


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
            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            torch = None
    stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    print(f"BLAS (threadpoolctl): {blas_info()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (the machine is shared)")
    print(f"cores: {os.cpu_count()}, numba threads: {__import__('numba').get_num_threads()}, "
          f"torch: {torch.__version__ if torch else 'not used'}, fused kernels in {fusion.cache_dir()}")
    src = cf.to_device(np.random.default_rng(1).standard_normal(n, dtype=np.float32))
    dst = cf.device_array((n,), np.float32)

    def copy():     # a device-to-device cudaMemcpy may return before the copy is done (CUDA)
        check(rt.cudaMemcpy(dst, src, 4 * n, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice))
        check(rt.cudaDeviceSynchronize())

    copy_ms = min(timed(copy) for _ in range(args.repeats))
    print(f"\n{args.mib} MiB float32 per tensor ({n} elements); cudaMemcpy of one tensor: "
          f"{copy_ms:.2f} ms ({2 * 4 * n / copy_ms / 1e6:.1f} GB/s read+write)\n")
    print("| chain | unfused ms | fused ms | unfused / fused | traffic ratio | saved ms "
          "| analyzer predicted ms | torch ms | torch / fused | fused GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (program, torch_fn, bytes_unfused, bytes_fused) in make_chains(n).items():
        fusion.enable()
        run(program, stream)                         # warm-up: compile or load the kernel
        predicted = predicted_saving_ms(program, stream)
        peer_fn = torch_fn(torch) if (torch and torch_fn) else None
        if peer_fn:
            peer_fn()
        fused, unfused, peer = [], [], []
        for _ in range(args.repeats):               # interleaved, best of each
            fusion.enable()
            fused.append(timed(lambda: run(program, stream)))
            fusion.disable()
            unfused.append(timed(lambda: run(program, stream)))
            if peer_fn:
                peer.append(timed(peer_fn))
        f, u = min(fused), min(unfused)
        p = f"{min(peer):.2f}" if peer else "-"
        pr = f"{min(peer) / f:.2f}" if peer else "-"
        print(f"| {name} | {u:.2f} | {f:.2f} | **{u / f:.2f}** | {bytes_unfused / bytes_fused:.2f} "
              f"| {u - f:.2f} | {predicted:.2f} | {p} | {pr} | {bytes_fused / f / 1e6:.1f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    check(rt.cudaStreamDestroy(stream))


if __name__ == "__main__":
    main()
