"""Benchmark: streamq's non-conv DNN kernels vs memory bandwidth and vs PyTorch CPU.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dnn.py
        [--batch 8 32] [--repeats 5] [--big-batch 96] [--only elementwise|peer]
        [--threads N] [--clock wall|thread] [--filter LABEL_PART ...]

Float32, 2 threads, ResNet-50-shaped tensors. Every figure is the fastest
single call among ``--repeats`` x (20 ms worth of calls, at most 2000 calls),
for streamq and torch alike; outputs are preallocated, as the CUDA facade
passes them in.

1. Elementwise / activation ops against the machine's memory bandwidth,
   measured in the same run by a STREAM-like triad ``a = b + s*c`` (numba
   ``prange`` and numpy) on arrays of 294 MiB (L3 is 32 MiB). GB/s count the
   bytes of the full-size tensors read plus written (a broadcast bias is not
   counted; write-allocate traffic is not counted, as in STREAM). Target:
   >= 0.8x the triad on the >= 256 MiB tensors ((96, 256, 56, 56)).
2. Batch norm, pooling, softmax, NLL loss against torch.nn.functional / the
   matching torch.ops.aten op at ``torch.set_num_threads(2)``, run in child
   processes: plain (the environment this script started with), with glibc
   malloc tuned to keep big blocks
   (MALLOC_MMAP_THRESHOLD_ ...), and a third time with that malloc tuning
   plus the GOMP_SPINCOUNT streamq's kernels set for themselves (torch's
   bundled libgomp reads it too). Ours is held to the fastest torch run;
   ratio = torch time / our time (> 1: we are faster). Target: >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

THREADS = [2]          # --threads
# The environment as the user gave it, before streamq's kernels set GOMP_SPINCOUNT
# (see streamq/kernels/_dnn_common.py): the torch peers run with their own defaults.
ORIGINAL_ENV = dict(os.environ)
SPIN = "30000"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
              "MALLOC_TOP_PAD_": "1073741824"}
F32 = np.float32


def best(fn, repeats: int, min_sample: float = 0.02) -> float:
    """Fastest single call among ``repeats`` samples' worth of calls (>= min_sample s each).

    Every call is timed on its own and the minimum is kept: on this shared
    2-core machine a parallel call now and then waits milliseconds for a
    descheduled worker thread, and a minimum over single calls filters those
    stalls out, for streamq and the torch peers alike.
    """
    clock = CLOCK[0]
    fn()                                    # warm-up: JIT, caches, allocator
    t0 = clock()
    fn()
    est = clock() - t0
    calls = min(2000, repeats * max(1, int(min_sample / max(est, 1e-7))))
    fastest = est
    for _ in range(calls):
        t0 = clock()
        fn()
        fastest = min(fastest, clock() - t0)
    return fastest


# perf_counter (wall time), or with --clock thread the calling thread's CPU time
# (only meaningful with --threads 1: then it ignores time spent descheduled).
CLOCK = [time.perf_counter]
CLOCK_NAME = ["wall"]


def randn(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=F32)


# --------------------------------------------------------------------------
# 1. elementwise ops vs the triad
# --------------------------------------------------------------------------

def triad_numba():
    from numba import njit, prange

    @njit(parallel=True, nogil=True, cache=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]
    return triad


def elementwise_cases(shape):
    """(label, tensors counted, zero-arg callable) for one activation shape."""
    import streamq.kernels as K
    x, y, z = randn(shape, 1), randn(shape, 2), np.empty(shape, F32)
    s = np.abs(x) + F32(0.1)           # sigmoid-like "output" for the backward ops
    s /= s.max()
    bias = randn((1, shape[1], 1, 1), 3)
    get = K.get
    af, ab = get("cudnn.activation_forward"), get("cudnn.activation_backward")
    opt, addt = get("cudnn.op_tensor"), get("cudnn.add_tensor")
    a_add, a_mul, a_relu = get("aten::add"), get("aten::mul"), get("aten::relu")
    a_tb, a_sig, a_sigb = get("aten::threshold_backward"), get("aten::sigmoid"), \
        get("aten::sigmoid_backward")
    a_tanh, a_tanhb = get("aten::tanh"), get("aten::tanh_backward")
    return [
        ("cudnn.activation_forward relu", 2, lambda: af(x, z, mode="relu")),
        ("cudnn.activation_forward sigmoid", 2, lambda: af(x, z, mode="sigmoid")),
        ("cudnn.activation_forward tanh", 2, lambda: af(x, z, mode="tanh")),
        ("cudnn.activation_backward relu", 3, lambda: ab(s, y, x, z, mode="relu")),
        ("cudnn.activation_backward sigmoid", 3, lambda: ab(s, y, x, z, mode="sigmoid")),
        ("cudnn.op_tensor add", 3, lambda: opt("add", x, y, z, alpha1=1.0, alpha2=1.0, beta=0.0)),
        ("cudnn.op_tensor mul", 3, lambda: opt("mul", x, y, z, alpha1=1.0, alpha2=1.0, beta=0.0)),
        ("cudnn.add_tensor (bias, beta=1)", 2, lambda: addt(bias, z, alpha=1.0, beta=1.0)),
        ("aten::add", 3, lambda: a_add(x, y, out=z)),
        ("aten::mul", 3, lambda: a_mul(x, y, out=z)),
        ("aten::relu", 2, lambda: a_relu(x, out=z)),
        ("aten::threshold_backward", 3, lambda: a_tb(y, x, 0.0, out=z)),
        ("aten::sigmoid", 2, lambda: a_sig(x, out=z)),
        ("aten::sigmoid_backward", 3, lambda: a_sigb(y, s, out=z)),
        ("aten::tanh", 2, lambda: a_tanh(x, out=z)),
        ("aten::tanh_backward", 3, lambda: a_tanhb(y, s, out=z)),
    ]


def run_elementwise(batches, big_batch, repeats):
    shape_of = lambda n: (n, 256, 56, 56)  # noqa: E731  ResNet-50 layer1 activations
    big = shape_of(big_batch)
    nbytes = int(np.prod(big)) * 4
    a, b, c = np.empty(big, F32), randn(big, 4), randn(big, 5)
    triad = triad_numba()
    t_nb = best(lambda: triad(a.reshape(-1), b.reshape(-1), c.reshape(-1), F32(3.0)), repeats)

    def np_triad():
        np.multiply(c, F32(3.0), out=a)
        np.add(a, b, out=a)
    t_np = best(np_triad, repeats)
    del a, b, c
    bw_nb, bw_np = 3 * nbytes / t_nb / 1e9, 3 * nbytes / t_np / 1e9
    bw = max(bw_nb, bw_np)
    print(f"\n### Memory bandwidth: triad a = b + s*c on 3 x {nbytes / 2**20:.0f} MiB float32\n")
    print(f"numba prange triad: {bw_nb:.2f} GB/s; numpy triad (multiply then add, out=): "
          f"{bw_np:.2f} GB/s; reference = the faster, {bw:.2f} GB/s\n")
    cols = [f"batch {n} GB/s" for n in batches] + [f"batch {big_batch} ({nbytes / 2**20:.0f} MiB) GB/s",
                                                   "vs triad"]
    print("| op (float32, (N, 256, 56, 56)) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    results = {}
    for n in list(batches) + [big_batch]:
        shape = shape_of(n)
        for label, count, fn in elementwise_cases(shape):
            t = best(fn, repeats)
            results.setdefault(label, []).append(count * int(np.prod(shape)) * 4 / t / 1e9)
    ratios = []
    for label, gbs in results.items():
        ratios.append(gbs[-1] / bw)
        print(f"| {label} | " + " | ".join(f"{g:.2f}" for g in gbs) + f" | {gbs[-1] / bw:.2f} |")
    print(f"\nworst ratio vs triad: {min(ratios):.2f} (target >= 0.80); "
          f"geometric mean {math.exp(np.mean(np.log(ratios))):.2f}")


# --------------------------------------------------------------------------
# 2. ops vs torch
# --------------------------------------------------------------------------

BN_SHAPES = [(64, 112), (256, 56), (2048, 7)]
EPS = 1e-5


FILTER: list[str] = []   # --filter: keep only the peer labels containing one of these


def peer_labels():
    """Labels of the torch comparisons, narrowed by --filter."""
    labels = _all_peer_labels()
    return [lb for lb in labels if any(f in lb for f in FILTER)] if FILTER else labels


def _all_peer_labels():
    labels = []
    for c, h in BN_SHAPES:
        for kind in ("bn train fwd", "bn infer fwd", "bn backward"):
            labels.append(f"{kind} {c}x{h}x{h}")
    labels += ["max pool 3x3/2 fwd 64x112x112", "max pool 3x3/2 bwd 64x112x112",
               "global avg pool fwd 2048x7x7", "global avg pool bwd 2048x7x7",
               "aten max_pool2d_with_indices 64x112x112",
               "aten max_pool2d_with_indices_backward 64x112x112",
               "aten _adaptive_avg_pool2d 2048x7x7->1",
               "softmax fwd (N,1000)", "log_softmax fwd (N,1000)",
               "softmax bwd (N,1000)", "log_softmax bwd (N,1000)",
               "aten _softmax (N,1000)", "aten _log_softmax (N,1000)",
               "aten _softmax_backward_data (N,1000)", "aten _log_softmax_backward_data (N,1000)",
               "aten nll_loss_forward mean (N,1000)", "aten nll_loss_backward mean (N,1000)"]
    return labels


def ours(label, n):
    """A zero-arg callable running streamq's kernel for ``label`` at batch n."""
    import streamq.kernels as K
    kind, dims = label.rsplit(" ", 1)
    if kind.startswith("bn"):
        c, h, _ = (int(v) for v in dims.split("x"))
        x, y = randn((n, c, h, h), 1), np.empty((n, c, h, h), F32)
        sc, bi = randn(c, 2), randn(c, 3)
        rm, rv = np.zeros(c, F32), np.ones(c, F32)
        sm, si = np.empty(c, F32), np.empty(c, F32)
        if kind == "bn train fwd":
            f = K.get("cudnn.batch_norm_forward_training")
            return lambda: f(x, y, sc, bi, mode="spatial", epsilon=EPS,
                             exponential_average_factor=0.1, running_mean=rm, running_var=rv,
                             save_mean=sm, save_inv_variance=si)
        if kind == "bn infer fwd":
            f = K.get("cudnn.batch_norm_forward_inference")
            return lambda: f(x, y, sc, bi, rm, rv, mode="spatial", epsilon=EPS)
        K.get("cudnn.batch_norm_forward_training")(x, y, sc, bi, mode="spatial", epsilon=EPS,
                                                   save_mean=sm, save_inv_variance=si)
        f, dy = K.get("cudnn.batch_norm_backward"), randn((n, c, h, h), 4)
        ds, db = np.empty(c, F32), np.empty(c, F32)
        return lambda: f(x, dy, y, sc, ds, db, mode="spatial", epsilon=EPS, saved_mean=sm,
                         saved_inv_variance=si)
    if kind.startswith("max pool"):
        x = randn((n, 64, 112, 112), 1)
        y = np.empty((n, 64, 56, 56), F32)
        kw = dict(mode="max", window=3, pad=1, stride=2)
        if "fwd" in kind:
            f = K.get("cudnn.pooling_forward")
            return lambda: f(x, y, **kw)
        K.get("cudnn.pooling_forward")(x, y, **kw)
        f, dy, dx = K.get("cudnn.pooling_backward"), randn(y.shape, 2), np.empty_like(x)
        return lambda: f(y, dy, x, dx, **kw)
    if kind.startswith("global avg pool"):
        x, y = randn((n, 2048, 7, 7), 1), np.empty((n, 2048, 1, 1), F32)
        kw = dict(mode="average_count_include_padding", window=7)
        if "fwd" in kind:
            f = K.get("cudnn.pooling_forward")
            return lambda: f(x, y, **kw)
        f, dy, dx = K.get("cudnn.pooling_backward"), randn(y.shape, 2), np.empty_like(x)
        return lambda: f(y, dy, x, dx, **kw)
    if kind.startswith("aten max_pool2d"):
        x = randn((n, 64, 112, 112), 1)
        y, idx = np.empty((n, 64, 56, 56), F32), np.empty((n, 64, 56, 56), np.int64)
        args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
        fwd = K.get("aten::max_pool2d_with_indices")
        if kind.endswith("indices"):
            return lambda: fwd(x, *args, out=y, indices=idx)
        fwd(x, *args, out=y, indices=idx)
        f, g, gi = K.get("aten::max_pool2d_with_indices_backward"), randn(y.shape, 2), \
            np.empty_like(x)
        return lambda: f(g, x, *args, idx, grad_input=gi)
    if kind.startswith("aten _adaptive"):
        x, y = randn((n, 2048, 7, 7), 1), np.empty((n, 2048, 1, 1), F32)
        f = K.get("aten::_adaptive_avg_pool2d")
        return lambda: f(x, 1, out=y)
    # (N, 1000) logits
    x, y = randn((n, 1000), 1) * F32(3), np.empty((n, 1000), F32)
    if kind in ("softmax fwd", "log_softmax fwd"):
        f = K.get("cudnn.softmax_forward")
        x4, y4 = x.reshape(n, 1000, 1, 1), y.reshape(n, 1000, 1, 1)
        alg = "log" if kind.startswith("log") else "accurate"
        return lambda: f(x4, y4, algorithm=alg, mode="instance")
    if kind in ("softmax bwd", "log_softmax bwd"):          # cuDNN's backward vs ATen's
        x4, y4 = x.reshape(n, 1000, 1, 1), y.reshape(n, 1000, 1, 1)
        alg = "log" if kind.startswith("log") else "accurate"
        K.get("cudnn.softmax_forward")(x4, y4, algorithm=alg, mode="instance")
        f, dy, dx = K.get("cudnn.softmax_backward"), randn((n, 1000, 1, 1), 2), np.empty_like(y4)
        return lambda: f(y4, dy, dx, algorithm=alg, mode="instance")
    if kind in ("aten _softmax", "aten _log_softmax"):
        f = K.get("aten::" + kind.split()[1])
        return lambda: f(x, 1, False, out=y)
    if kind.endswith("backward_data"):
        fwd = "aten::_log_softmax" if "log" in kind else "aten::_softmax"
        K.get(fwd)(x, 1, False, out=y)
        f, g, gi = K.get("aten::" + kind.split()[1]), randn((n, 1000), 2), np.empty_like(x)
        return lambda: f(g, y, 1, F32, out=gi)
    t = np.random.default_rng(0).integers(0, 1000, n)
    K.get("aten::_log_softmax")(x, 1, False, out=y)
    out, tw = np.empty((), F32), np.empty((), F32)
    if "forward" in kind:
        f = K.get("aten::nll_loss_forward")
        return lambda: f(y, t, None, "mean", -100, output=out, total_weight=tw)
    K.get("aten::nll_loss_forward")(y, t, None, "mean", -100, output=out, total_weight=tw)
    f, g, gi = K.get("aten::nll_loss_backward"), np.ones((), F32), np.empty_like(x)
    return lambda: f(g, y, t, None, "mean", -100, tw, grad_input=gi)


def theirs(label, n):
    """The torch peer of ``label`` at batch n (only imported in the child processes)."""
    import torch
    import torch.nn.functional as F
    aten = torch.ops.aten
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    kind, dims = label.rsplit(" ", 1)
    if kind.startswith("bn"):
        c, h, _ = (int(v) for v in dims.split("x"))
        x, sc, bi = T(randn((n, c, h, h), 1)), T(randn(c, 2)), T(randn(c, 3))
        rm, rv = torch.zeros(c), torch.ones(c)
        if kind == "bn train fwd":
            return lambda: F.batch_norm(x, rm, rv, sc, bi, training=True, momentum=0.1, eps=EPS)
        if kind == "bn infer fwd":
            return lambda: F.batch_norm(x, rm, rv, sc, bi, training=False, eps=EPS)
        _, sm, si = aten.native_batch_norm(x, sc, bi, rm, rv, True, 0.1, EPS)
        dy = T(randn((n, c, h, h), 4))
        return lambda: aten.native_batch_norm_backward(dy, x, sc, rm, rv, sm, si, True, EPS,
                                                       [True, True, True])
    if kind.startswith("max pool"):
        x = T(randn((n, 64, 112, 112), 1))
        if "fwd" in kind:
            return lambda: F.max_pool2d(x, 3, 2, 1)
        _, idx = aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])
        dy = T(randn((n, 64, 56, 56), 2))
        return lambda: aten.max_pool2d_with_indices_backward(dy, x, [3, 3], [2, 2], [1, 1],
                                                             [1, 1], False, idx)
    if kind.startswith("global avg pool"):
        x = T(randn((n, 2048, 7, 7), 1))
        if "fwd" in kind:
            return lambda: F.adaptive_avg_pool2d(x, 1)
        dy = T(randn((n, 2048, 1, 1), 2))
        return lambda: aten._adaptive_avg_pool2d_backward(dy, x)
    if kind.startswith("aten max_pool2d"):
        x = T(randn((n, 64, 112, 112), 1))
        args = ([3, 3], [2, 2], [1, 1], [1, 1], False)
        if kind.endswith("indices"):
            return lambda: aten.max_pool2d_with_indices(x, *args)
        _, idx = aten.max_pool2d_with_indices(x, *args)
        g = T(randn((n, 64, 56, 56), 2))
        return lambda: aten.max_pool2d_with_indices_backward(g, x, *args, idx)
    if kind.startswith("aten _adaptive"):
        x = T(randn((n, 2048, 7, 7), 1))
        return lambda: aten._adaptive_avg_pool2d(x, [1, 1])
    x = T(randn((n, 1000), 1) * F32(3))
    if kind == "softmax fwd":
        return lambda: F.softmax(x, 1)
    if kind == "log_softmax fwd":
        return lambda: F.log_softmax(x, 1)
    if kind in ("aten _softmax", "aten _log_softmax"):
        f = getattr(aten, kind.split()[1])
        return lambda: f(x, 1, False)
    if kind in ("softmax bwd", "log_softmax bwd"):
        log = kind.startswith("log")
        y = aten._log_softmax(x, 1, False) if log else aten._softmax(x, 1, False)
        g = T(randn((n, 1000), 2))
        f = aten._log_softmax_backward_data if log else aten._softmax_backward_data
        return lambda: f(g, y, 1, torch.float32)
    if kind.endswith("backward_data"):
        log = "log" in kind
        y = aten._log_softmax(x, 1, False) if log else aten._softmax(x, 1, False)
        g, f = T(randn((n, 1000), 2)), getattr(aten, kind.split()[1])
        return lambda: f(g, y, 1, torch.float32)
    t = torch.from_numpy(np.random.default_rng(0).integers(0, 1000, n))
    y = aten._log_softmax(x, 1, False)
    if "forward" in kind:
        return lambda: aten.nll_loss_forward(y, t, None, 1, -100)
    _, tw = aten.nll_loss_forward(y, t, None, 1, -100)
    g = torch.ones(())
    return lambda: aten.nll_loss_backward(g, y, t, None, 1, -100, tw)


def torch_worker(batches, repeats):
    import torch
    torch.set_num_threads(THREADS[0])
    res = {}
    with torch.no_grad():
        for n in batches:
            for label in peer_labels():
                res[f"{label}@{n}"] = best(theirs(label, n), repeats)
    print(json.dumps({"version": torch.__version__, "times": res}))


def run_torch(batches, repeats, extra_env):
    env = dict(ORIGINAL_ENV, **extra_env)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--repeats", str(repeats),
           "--threads", str(THREADS[0]), "--clock", CLOCK_NAME[0], "--batch", *map(str, batches)]
    if FILTER:
        cmd += ["--filter", *FILTER]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peer(batches, repeats):
    try:
        runs = [run_torch(batches, repeats, {}), run_torch(batches, repeats, MALLOC_ENV),
                run_torch(batches, repeats, dict(MALLOC_ENV, GOMP_SPINCOUNT=SPIN))]
    except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        print(f"\ntorch peer unavailable ({exc}); skipping the torch comparison")
        return
    print(f"\n### vs torch {runs[0]['version']} at {THREADS[0]} threads "
          "(ms per call; ratio = fastest torch / ours, > 1 means streamq is faster)\n")
    print("torch runs: as started; with glibc malloc tuned; malloc tuned plus "
          f"GOMP_SPINCOUNT={SPIN} (the libgomp spin setting streamq's kernels use).\n")
    print("| op (float32) | batch | ours | torch | torch malloc-tuned | torch tuned + spin | ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for n in batches:
        for label in peer_labels():
            t_ours = best(ours(label, n), repeats)
            key = f"{label}@{n}"
            ts = [r["times"][key] for r in runs]
            ratios.append(min(ts) / t_ours)
            print(f"| {label} | {n} | {t_ours * 1e3:.3f} | " +
                  " | ".join(f"{t * 1e3:.3f}" for t in ts) + f" | {min(ts) / t_ours:.2f} |")
    print(f"\nworst ratio: {min(ratios):.2f} (target >= 1.00); geometric mean "
          f"{math.exp(np.mean(np.log(ratios))):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--big-batch", type=int, default=96,
                    help="batch of the >= 256 MiB elementwise case (96 -> 294 MiB)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=("elementwise", "peer"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: the calling thread's CPU time (use with --threads 1 on a "
                         "loaded machine)")
    ap.add_argument("--filter", nargs="+", default=[],
                    help="peer comparison: only the ops whose label contains one of these")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    FILTER[:] = args.filter
    THREADS[0] = args.threads
    CLOCK_NAME[0] = args.clock
    CLOCK[0] = time.thread_time if args.clock == "thread" else time.perf_counter
    if args.torch_worker:
        torch_worker(args.batch, args.repeats)
        return
    import numba
    from threadpoolctl import threadpool_info
    numba.set_num_threads(THREADS[0])
    blas = [f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"# bench_dnn: float32, {THREADS[0]} threads, {args.clock} clock, numba {numba.__version__} "
          f"(threading layer after first parallel call), numpy {np.__version__}")
    print(f"BLAS (threadpoolctl): {'; '.join(blas) or 'none'}")
    if args.only != "peer":
        run_elementwise(args.batch, args.big_batch, args.repeats)
    if args.only != "elementwise":
        run_peer(args.batch, args.repeats)


if __name__ == "__main__":
    main()
