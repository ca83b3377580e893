"""Benchmark: streamq cuDNN convolution kernels vs PyTorch CPU on ResNet-50's conv layers.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py [--batch 8 32]
        [--repeats 5] [--providers numba blas]

Every distinct convolution shape of ResNet-50 (224x224 input, torchvision v1.5
strides) is timed in float32: forward, and forward + backward data + backward
filter ("train"). Peers measured in the same run, interleaved layer by layer
(best of ``--repeats``, the machine is shared and noisy):

* torch NCHW and channels_last at 2 threads (oneDNN), the main yardstick;
* torch with ``torch.backends.mkldnn.enabled = False`` (native path);
* torch at 8 threads (oversubscribed on this 2-core machine);
* torch NCHW in a child process with glibc malloc tuned not to return big
  blocks to the OS (MALLOC_MMAP_THRESHOLD_ etc.); we hold ourselves to the
  faster torch of the two.
* "gemm": numpy matmul of the layer's im2col GEMM shape per image, on a
  pre-built column matrix, i.e. the GEMM alone, to express the lowering
  overhead of our forward pass.

Prints a markdown table (ms per call, ratios = torch time / our time, so > 1
means we are faster) and geometric means over the layers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (C, K, H=W, R=S, stride, pad): every distinct conv shape of ResNet-50.
LAYERS = [
    (3, 64, 224, 7, 2, 3),
    (64, 64, 56, 1, 1, 0), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 0), (256, 64, 56, 1, 1, 0),
    (256, 128, 56, 1, 1, 0), (128, 128, 56, 3, 2, 1), (128, 512, 28, 1, 1, 0),
    (256, 512, 56, 1, 2, 0), (512, 128, 28, 1, 1, 0), (128, 128, 28, 3, 1, 1),
    (512, 256, 28, 1, 1, 0), (256, 256, 28, 3, 2, 1), (256, 1024, 14, 1, 1, 0),
    (512, 1024, 28, 1, 2, 0), (1024, 256, 14, 1, 1, 0), (256, 256, 14, 3, 1, 1),
    (1024, 512, 14, 1, 1, 0), (512, 512, 14, 3, 2, 1), (512, 2048, 7, 1, 1, 0),
    (1024, 2048, 14, 1, 2, 0), (2048, 512, 7, 1, 1, 0), (512, 512, 7, 3, 1, 1),
]
THREADS = 2
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
              "MALLOC_TOP_PAD_": "1073741824"}


def best(fn, repeats):
    fn()  # warm-up (JIT, workspaces, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def layer_data(layer, n, seed=0):
    C, K, H, R, s, p = layer
    P = (H + 2 * p - R) // s + 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, C, H, H), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32) * np.float32(1.0 / np.sqrt(C * R * R))
    dy = rng.standard_normal((n, K, P, P), dtype=np.float32)
    return x, w, dy, P


def torch_fns(layer, n, channels_last, threads, mkldnn=True):
    import torch
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    C, K, H, R, s, p = layer
    x, w, dy, _ = layer_data(layer, n)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).contiguous(memory_format=fmt)
    wt = torch.from_numpy(w).contiguous(memory_format=fmt)
    dyt = torch.from_numpy(dy).contiguous(memory_format=fmt)

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)

    def train():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
            torch.ops.aten.convolution_backward(dyt, xt, wt, None, [s, s], [p, p], [1, 1],
                                                False, [0, 0], 1, [True, True, False])
    return fwd, train


def ours_fns(layer, n, provider):
    from streamq.kernels import conv  # the module directly: no other kernel module needed
    C, K, H, R, s, p = layer
    x, w, dy, P = layer_data(layer, n)
    y, dx, dw = np.empty_like(dy), np.empty_like(x), np.empty_like(w)
    f = getattr(conv, f"convolution_forward_{provider}")
    bd = getattr(conv, f"convolution_backward_data_{provider}")
    bf = getattr(conv, f"convolution_backward_filter_{provider}")
    kw = dict(pad=p, stride=s)

    def fwd():
        f(x, w, y, **kw)

    def train():
        f(x, w, y, **kw)
        bd(w, dy, dx, **kw)
        bf(x, dy, dw, **kw)
    return fwd, train


def gemm_fn(layer, n):
    C, K, H, R, s, p = layer
    _, w, _, P = layer_data(layer, n)
    wm = w.reshape(K, -1)
    col = np.random.default_rng(1).standard_normal((C * R * R, P * P), dtype=np.float32)
    out = np.empty((K, P * P), np.float32)

    def fwd():
        for _ in range(n):
            np.matmul(wm, col, out=out)
    return fwd


def torch_worker(batch, repeats):
    """Child process: torch NCHW at THREADS threads, with whatever malloc env it was given."""
    res = {}
    for i, layer in enumerate(LAYERS):
        fwd, train = torch_fns(layer, batch, False, THREADS)
        res[i] = (best(fwd, repeats), best(train, repeats))
    print(json.dumps(res))


def geomean(v):
    return float(np.exp(np.mean(np.log(v))))


def run(batch, repeats, providers):
    import torch
    rows, ratios = [], {}
    for i, layer in enumerate(LAYERS):
        t = {}
        fns = {f"ours_{pv}": ours_fns(layer, batch, pv) for pv in providers}
        fns["torch_nchw"] = torch_fns(layer, batch, False, THREADS)
        fns["torch_cl"] = torch_fns(layer, batch, True, THREADS)
        for name, (fwd, train) in fns.items():
            t[name] = [np.inf, np.inf]
            fwd(), train()  # warm-up: JIT, workspaces, allocator
        # Rounds: each contender runs a short burst per round (after a pause so the
        # previous contender's spinning worker threads go idle); keep the best call.
        for _ in range(repeats):
            for name, (fwd, train) in fns.items():
                if name.startswith("torch"):
                    torch.set_num_threads(THREADS)
                    torch.backends.mkldnn.enabled = True
                time.sleep(0.02)
                t[name][0] = min(t[name][0], best(fwd, 2))
                t[name][1] = min(t[name][1], best(train, 1))
        nf, nt = torch_fns(layer, batch, False, THREADS, mkldnn=False)
        t["torch_native"] = [best(nf, max(2, repeats // 2)), best(nt, max(2, repeats // 2))]
        of, ot = torch_fns(layer, batch, False, 8)
        t["torch_8thr"] = [best(of, max(2, repeats // 2)), best(ot, max(2, repeats // 2))]
        torch.set_num_threads(THREADS)
        torch.backends.mkldnn.enabled = True
        t["gemm"] = [best(gemm_fn(layer, batch), repeats), np.nan]
        rows.append((layer, t))
        print(f"  layer {i + 1}/{len(LAYERS)} done", file=sys.stderr, flush=True)
    env = dict(os.environ, **MALLOC_ENV)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker",
                          "--batch", str(batch), "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True).stdout
    tuned = json.loads(out.strip().splitlines()[-1])
    for i, (layer, t) in enumerate(rows):
        t["torch_malloc"] = tuned[str(i)]
    return rows


def report(batch, rows, providers):
    main = f"ours_{providers[0]}"
    lines = [f"\n### batch {batch}, float32, {THREADS} threads (ms, best of repeats; ratio = torch / ours)\n"]
    hdr = ("| layer C->K HxW RxS/s | ours fwd | torch NCHW* fwd | torch CL fwd | fwd vs NCHW* | fwd vs CL "
           "| ours train | torch NCHW* train | torch CL train | train vs NCHW* | train vs CL "
           "| gemm-only fwd | lowering overhead |")
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    agg = {k: [] for k in ("f_nchw", "f_cl", "t_nchw", "t_cl", "ovh", "f_native", "f_8", "t_native",
                           "t_8", "f_nchw_plain", "f_malloc")}
    tot = {"ours_f": 0.0, "ours_t": 0.0, "nchw_f": 0.0, "nchw_t": 0.0, "cl_f": 0.0, "cl_t": 0.0,
           "gemm": 0.0}
    for (C, K, H, R, s, p), t in rows:
        nchw = [min(t["torch_nchw"][j], t["torch_malloc"][j]) for j in (0, 1)]
        of, ot = t[main]
        r = dict(f_nchw=nchw[0] / of, f_cl=t["torch_cl"][0] / of, t_nchw=nchw[1] / ot,
                 t_cl=t["torch_cl"][1] / ot, ovh=of / t["gemm"][0] - 1,
                 f_native=t["torch_native"][0] / of, f_8=t["torch_8thr"][0] / of,
                 t_native=t["torch_native"][1] / ot, t_8=t["torch_8thr"][1] / ot,
                 f_nchw_plain=t["torch_nchw"][0] / of, f_malloc=t["torch_malloc"][0] / of)
        for k, v in r.items():
            agg[k].append(v)
        tot["ours_f"] += of
        tot["ours_t"] += ot
        tot["nchw_f"] += nchw[0]
        tot["nchw_t"] += nchw[1]
        tot["cl_f"] += t["torch_cl"][0]
        tot["cl_t"] += t["torch_cl"][1]
        tot["gemm"] += t["gemm"][0]
        ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
        lines.append(
            f"| {C}->{K} {H}x{H} {R}x{R}/s{s} | {ms(of)} | {ms(nchw[0])} | {ms(t['torch_cl'][0])} "
            f"| {r['f_nchw']:.2f} | {r['f_cl']:.2f} | {ms(ot)} | {ms(nchw[1])} | {ms(t['torch_cl'][1])} "
            f"| {r['t_nchw']:.2f} | {r['t_cl']:.2f} | {ms(t['gemm'][0])} | {100 * r['ovh']:+.0f}% |")
    lines.append(
        f"| **total** | {tot['ours_f'] * 1e3:.1f} | {tot['nchw_f'] * 1e3:.1f} | {tot['cl_f'] * 1e3:.1f} "
        f"| {tot['nchw_f'] / tot['ours_f']:.2f} | {tot['cl_f'] / tot['ours_f']:.2f} "
        f"| {tot['ours_t'] * 1e3:.1f} | {tot['nchw_t'] * 1e3:.1f} | {tot['cl_t'] * 1e3:.1f} "
        f"| {tot['nchw_t'] / tot['ours_t']:.2f} | {tot['cl_t'] / tot['ours_t']:.2f} "
        f"| {tot['gemm'] * 1e3:.1f} | {100 * (tot['ours_f'] / tot['gemm'] - 1):+.0f}% |")
    g = {k: geomean(v) for k, v in agg.items() if k != "ovh"}
    lines.append("")
    lines.append(f"Geometric means over {len(rows)} layer shapes (torch / ours; >1 = we are faster):\n")
    lines.append("| peer | forward | forward+backward |")
    lines.append("|---|---|---|")
    lines.append(f"| torch NCHW*, best of plain and tuned malloc (target >= 1.0) | {g['f_nchw']:.2f} "
                 f"| {g['t_nchw']:.2f} |")
    lines.append(f"| torch NCHW, plain malloc | {g['f_nchw_plain']:.2f} | - |")
    lines.append(f"| torch NCHW, tuned malloc (child process) | {g['f_malloc']:.2f} | - |")
    lines.append(f"| torch channels_last (target >= 0.8) | {g['f_cl']:.2f} | {g['t_cl']:.2f} |")
    lines.append(f"| torch mkldnn disabled (native) | {g['f_native']:.2f} | {g['t_native']:.2f} |")
    lines.append(f"| torch 8 threads (oversubscribed) | {g['f_8']:.2f} | {g['t_8']:.2f} |")
    lines.append(f"\nForward lowering overhead vs the bare GEMM: geometric mean "
                 f"{100 * (geomean([1 + v for v in agg['ovh']]) - 1):+.0f}% (target <= +25%); "
                 f"main provider: `{providers[0]}`.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--providers", nargs="+", default=["numba"])
    ap.add_argument("--layers", type=int, default=len(LAYERS), help="only the first N layers")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    del LAYERS[args.layers:]
    if args.torch_worker:
        torch_worker(args.batch[0], args.repeats)
        return
    import threadpoolctl
    import torch
    from streamq.kernels import _conv_gemm
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"], i.get("version"))
            for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    print(f"BLAS (threadpoolctl): {blas}; direct cblas: {_conv_gemm.have_cblas()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    for batch in args.batch:
        print(report(batch, run(batch, args.repeats, args.providers), args.providers), flush=True)


if __name__ == "__main__":
    main()
