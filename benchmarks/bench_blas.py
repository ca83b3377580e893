"""Benchmark: cublas.gemm (blas provider) vs numpy and torch on ResNet-50 conv GEMMs.

Each distinct ResNet-50 convolution (the 23 shapes of bench_conv.py), lowered
to a GEMM (im2col), multiplies the weights W (M = out channels, K = in
channels * kh * kw) by the column matrix (K, N = batch * P * Q). Row-major
out = W @ cols is, in cuBLAS's column-major terms, gemm('N', 'N', m=N, n=M,
k=K, 1, cols, N, W, K, 0, out, N): exactly the call the CUDA facade makes for
a row-major framework. float32 throughout, batch 8 and 32.

Peers, measured in the same run on the same arrays:
  numpy out=   ``np.matmul(W, cols, out=out)`` (writes into an existing array,
               like the kernel does; the project's target is blas >= 0.95x
               of numpy, held to this, the faster form)
  numpy @      ``W @ cols`` (allocates its result every call)
  torch        ``torch.mm(W, cols, out=out)`` on the same memory (if torch is
               importable), with as many threads as numpy's BLAS

With --optim (on by default) it also times one optimizer step over ResNet-50's
161 parameter tensors (25.6 M float32 elements): aten::_fused_adam_ and
aten::_foreach_sgd_ (numba and reference providers) vs torch.optim.Adam /
SGD (fused / foreach implementations) on the same sizes.

Every timing is the best of --repeat rounds; in each round every contender
runs twice and the second call is timed, and contenders are interleaved (in a
rotating order) so machine noise hits them alike. Ratios > 1 mean the kernel is
faster than the peer. Run as:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_blas.py
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time

import numpy as np
from threadpoolctl import threadpool_info

# The blas provider's function itself (what kernels.get("cublas.gemm", "blas")
# returns), imported directly so the benchmark does not depend on every other
# kernel module importing cleanly.
from streamq.kernels.blas_ops import gemm_blas
from streamq.kernels.aten_linear import (foreach_sgd_numba, foreach_sgd_reference,
                                         fused_adam_numba, fused_adam_reference)

# Every distinct conv shape of ResNet-50, shared with bench_conv.py:
# (C, K, H=W, R=S, stride, pad). As an im2col GEMM: M = K, K_gemm = C*R*S,
# N = batch * P * Q.
from bench_conv import LAYERS  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)


def conv_gemm_shape(layer, batch: int) -> tuple[int, int, int]:
    """(M, K, N) of a conv layer's whole-batch im2col GEMM."""
    C, K, H, R, s, p = layer
    P = (H + 2 * p - R) // s + 1
    return K, C * R * R, batch * P * P


PAUSE_S = 0.15


def best_of(fns: dict, repeat: int) -> dict:
    """Best wall time per contender over ``repeat`` rounds.

    In each round every contender runs twice back to back and only the second
    call is timed: the untimed call absorbs the cost of switching libraries
    (page faults of a fresh result, cold caches). Before it, a pause of
    ``PAUSE_S`` lets the previous library's worker threads stop spinning
    (OpenBLAS's spin for about 2**28 cycles, ~0.1 s, after each call). The
    order of contenders rotates from round to round.
    """
    best = {name: math.inf for name in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(PAUSE_S)
            fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def resnet50_param_shapes() -> list[tuple[int, ...]]:
    """Shapes of torchvision's resnet50 parameters (conv, batch-norm, fc), in order."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for blocks, width in zip([3, 4, 6, 3], [64, 128, 256, 512]):
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, in_ch, 1, 1), (4 * width,), (4 * width,)]
            in_ch = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def bench_optimizers(repeat: int, torch) -> None:
    shapes = resnet50_param_shapes()
    total = sum(math.prod(s) for s in shapes)
    rng = np.random.default_rng(1)

    def arrays(scale=1.0):
        return [(rng.standard_normal(s, dtype=np.float32) * scale) for s in shapes]

    params, grads = arrays(), arrays(1e-2)
    m, bufs = arrays(1e-3), arrays(1e-3)
    v = [np.abs(a) for a in arrays(1e-4)]
    steps = [np.zeros(1, np.float32) for _ in shapes]
    adam_kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=1e-4, eps=1e-8, amsgrad=False,
                   maximize=False)
    sgd_kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, first_step=False)
    fns = {
        ("adam", "numba"): lambda: fused_adam_numba(params, grads, m, v, None, steps, **adam_kw),
        ("adam", "reference"): lambda: fused_adam_reference(params, grads, m, v, None, steps,
                                                            **adam_kw),
        ("sgd", "numba"): lambda: foreach_sgd_numba(params, grads, bufs, **sgd_kw),
        ("sgd", "reference"): lambda: foreach_sgd_reference(params, grads, bufs, **sgd_kw),
    }
    if torch is not None:
        tparams = [torch.from_numpy(a.copy()).requires_grad_() for a in params]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        opts = {
            ("adam", "torch fused"): torch.optim.Adam(tparams, lr=1e-3, weight_decay=1e-4, fused=True),
            ("adam", "torch foreach"): torch.optim.Adam(tparams, lr=1e-3, weight_decay=1e-4,
                                                        foreach=True),
            ("sgd", "torch fused"): torch.optim.SGD(tparams, lr=0.1, momentum=0.9,
                                                    weight_decay=1e-4, fused=True),
            ("sgd", "torch foreach"): torch.optim.SGD(tparams, lr=0.1, momentum=0.9,
                                                      weight_decay=1e-4, foreach=True),
        }
        for key, opt in opts.items():
            fns[key] = opt.step
    fused_adam_numba(params, grads, m, v, None, steps, **adam_kw)  # compile outside the timing
    foreach_sgd_numba(params, grads, bufs, **sgd_kw)
    best = best_of(fns, repeat)
    print(f"\n# One optimizer step over ResNet-50's parameters "
          f"({len(shapes)} tensors, {total / 1e6:.1f} M float32 elements)\n")
    print("| op | implementation | ms | GB/s moved | numba speed-up vs this |")
    print("|---|---|---:|---:|---:|")
    for (op, impl), t in best.items():
        moved = total * 4 * (7 if op == "adam" else 5)  # bytes read + written per step
        ratio = t / best[(op, "numba")]
        name = {"adam": "aten::_fused_adam_", "sgd": "aten::_foreach_sgd_"}[op]
        print(f"| {name} | {impl} | {t * 1e3:.1f} | {moved / t / 1e9:.1f} | {ratio:.2f}x |")


def blas_description() -> str:
    rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel, "
            f"{i.get('num_threads')} threads)" for i in threadpool_info() if i["user_api"] == "blas"]
    return "; ".join(rows) or "no BLAS found by threadpoolctl"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(open("/proc/loadavg").read().split()[:3])


def bench_gemm(batches: list[int], repeat: int, torch) -> None:
    rng = np.random.default_rng(0)
    print("# cublas.gemm (blas provider) vs peers, ResNet-50 conv GEMMs, float32\n")
    print("Each row: the whole-batch im2col GEMM of one conv layer, Y (M, N) = W (M, K) @ "
          "cols (K, N), called as the CUDA facade calls it for a row-major framework: "
          "`gemm('N', 'N', N, M, K, 1, cols, N, W, K, 0, Y, N)`. Ratios = peer time / blas "
          "time (> 1: blas faster).\n")
    print(f"Load before: `{uptime()}`\n")
    head = ("| batch | layer C->K HxW RxS/s | M | K | N | GFLOP | blas ms | GFLOP/s | numpy out= ms "
            "| vs numpy out= | numpy @ ms | vs numpy @ |")
    sep = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if torch is not None:
        head += " torch ms | vs torch |"
        sep += "---:|---:|"
    print(head)
    print(sep)
    ratios: dict[tuple, list] = {}
    for batch in batches:
        for layer in LAYERS:
            M, K, N = conv_gemm_shape(layer, batch)
            W = rng.standard_normal((M, K), dtype=np.float32)
            cols = rng.standard_normal((K, N), dtype=np.float32)
            out = np.empty((M, N), np.float32)
            out2 = np.empty((M, N), np.float32)
            w_flat, c_flat, o_flat = W.reshape(-1), cols.reshape(-1), out.reshape(-1)
            fns = {
                "blas": lambda: gemm_blas("N", "N", N, M, K, 1.0, c_flat, N, w_flat, K, 0.0,
                                          o_flat, N),
                "numpy out=": lambda: np.matmul(W, cols, out=out2),
                "numpy @": lambda: W @ cols,
            }
            if torch is not None:
                tw, tc, to = (torch.from_numpy(a) for a in (W, cols, out2))
                fns["torch"] = lambda: torch.mm(tw, tc, out=to)
            best = best_of(fns, repeat)
            check = np.matmul(W[:64], cols)
            np.testing.assert_allclose(out[:64], check, rtol=1e-4, atol=1e-3 * math.sqrt(K))
            gflop = 2.0 * M * N * K / 1e9
            C, Ko, H, R, s, p = layer
            row = (f"| {batch} | {C}->{Ko} {H}x{H} {R}x{R}/s{s} | {M} | {K} | {N} | {gflop:.2f} "
                   f"| {best['blas'] * 1e3:.2f} | {gflop / best['blas']:.0f} |")
            for peer in ("numpy out=", "numpy @", "torch"):
                if peer in best:
                    r = best[peer] / best["blas"]
                    ratios.setdefault((batch, peer), []).append(r)
                    ratios.setdefault(("all", peer), []).append(r)
                    row += f" {best[peer] * 1e3:.2f} | {r:.3f} |"
            print(row, flush=True)
            del W, cols, out, out2, fns
    print(f"\nLoad after: `{uptime()}`\n")
    print("| batch | peer | geometric mean (peer / blas) | min | max | shapes |")
    print("|---|---|---:|---:|---:|---:|")
    for (batch, peer), rs in ratios.items():
        geo = math.exp(sum(math.log(r) for r in rs) / len(rs))
        target = " (target >= 0.95)" if peer == "numpy out=" else ""
        print(f"| {batch} | {peer}{target} | **{geo:.3f}** | {min(rs):.3f} | {max(rs):.3f} | {len(rs)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM table")
    ap.add_argument("--no-optim", action="store_true", help="skip the optimizer table")
    args = ap.parse_args()

    torch = None
    if not args.no_torch:
        try:
            import torch
            blas_threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            torch.set_num_threads(blas_threads[0] if blas_threads else os.cpu_count())
        except ImportError:
            torch = None

    print("# bench_blas\n")
    print(f"- BLAS (threadpoolctl): {blas_description()}")
    print(f"- numpy {np.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}")
    if torch is not None:
        print(f"- torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"- best of {args.repeat} interleaved rounds per contender "
          f"(second of two back-to-back calls timed)\n")
    if not args.no_gemm:
        bench_gemm(args.batches, args.repeat, torch)
    if not args.no_optim:
        bench_optimizers(args.repeat, torch)


if __name__ == "__main__":
    main()
