"""Benchmark: streamq cuDNN convolution kernels vs PyTorch CPU on ResNet-50's conv layers.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py \\
        [--batch 8 32] [--repeats 5 3] [--provider numba] [--layers 0 2 10]

Every distinct convolution shape of ResNet-50 (224x224 input, torchvision v1.5
strides) is timed in float32, forward and "train" (forward + backward data +
backward filter), at 2 threads. Contenders, interleaved round by round and
layer by layer so that all of them see the same machine load (a short pause
before each lets the previous one's spinning threads go idle). The machine is
shared: each round records the CPU share other processes took (from
/proc/stat), rounds go on until ``--repeats`` quiet rounds (others < 10%) were
seen (or ``--max-rounds-factor`` times as many rounds ran), and every contender
gets its best time over the quiet rounds:

* ours: the streamq provider (``--provider``, default numba);
* torch NCHW and channels_last (oneDNN), 2 threads;
* torch NCHW in a child process whose glibc keeps freed memory
  (``MALLOC_MMAP_THRESHOLD_`` etc.), driven over a pipe so it is interleaved
  too; "torch NCHW*" is the faster of the two, the one we are held to;
* torch native path (``torch.backends.mkldnn.enabled = False``) and torch at
  8 threads (oversubscribed on 2 cores), reported beside ours;
* "sgemm": numpy's matmul (OpenBLAS, 2 threads) of the layer's whole-batch
  im2col GEMM, ``(K, C*R*S) @ (C*R*S, N*P*Q)`` on a pre-built column matrix:
  the GEMM alone. ``ours fwd / sgemm - 1`` is our lowering overhead, and its
  GFLOP/s is a contention detector (a quiet machine gives ~130-160).

Prints markdown tables: ms per call, ratios = peer time / our time (> 1 means
we are faster), geometric means over the layers, and the load (uptime) before
and after each batch size.

``--passes`` instead times forward, backward data and backward filter
separately on ``PASS_LAYERS`` (the task list of ResNet-50 shapes), in one
process, round-robin between ours (numba provider), ours "legacy" (the same
with Winograd and the phase-split strided im2col switched off: the engine
before them; with ``--legacy winograd4`` only Winograd F(4x4, 3x3) is switched
off) and torch oneDNN NCHW at 2 threads (``--threads``); run it with the tuned-malloc
environment so torch is not penalised by page faults::

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 \\
    MALLOC_TOP_PAD_=1073741824 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
    python benchmarks/bench_conv.py --passes --batch 16 --repeats 6
"""

from __future__ import annotations

import argparse
import contextlib
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
# Pause before each contender so the previous one's threads stop spinning:
# OpenMP (torch) spins ~ms; OpenBLAS's pool (numpy's sgemm) for 2**28 cycles.
PAUSE_S = 0.03
PAUSE_AFTER_OPENBLAS_S = 0.15


def out_size(layer):
    C, K, H, R, s, p = layer
    return (H + 2 * p - R) // s + 1


def flops(layer, n):
    C, K, H, R, s, p = layer
    return 2.0 * n * K * C * R * R * out_size(layer) ** 2


def layer_data(layer, n, seed=0):
    """x, w, dy of one layer (float32, fixed seed: the same in every process)."""
    C, K, H, R, s, p = layer
    P = out_size(layer)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, C, H, H), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32) * np.float32(1.0 / np.sqrt(C * R * R))
    dy = rng.standard_normal((n, K, P, P), dtype=np.float32)
    return x, w, dy


def best_of(fn, calls):
    """Best wall time of ``calls`` back-to-back calls."""
    best = np.inf
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_fns(layer, n, channels_last=False, threads=THREADS, mkldnn=True):
    """(fwd, train) closures for torch; each sets its thread count and mkldnn flag first."""
    import torch
    C, K, H, R, s, p = layer
    x, w, dy = layer_data(layer, n)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt, wt, dyt = (torch.from_numpy(a).contiguous(memory_format=fmt) for a in (x, w, dy))

    def setup():
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)

    def train():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
            torch.ops.aten.convolution_backward(dyt, xt, wt, None, [s, s], [p, p], [1, 1],
                                                False, [0, 0], 1, [True, True, False])
    return setup, fwd, train


def ours_fns(layer, n, provider):
    from streamq.kernels import conv  # the module directly: no other kernel module needed
    C, K, H, R, s, p = layer
    x, w, dy = layer_data(layer, n)
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
    return (lambda: None), fwd, train


def sgemm_fn(layer, n):
    """numpy matmul of the layer's whole-batch im2col GEMM on a pre-built column matrix."""
    C, K, H, R, s, p = layer
    P = out_size(layer)
    rng = np.random.default_rng(1)
    wm = rng.standard_normal((K, C * R * R), dtype=np.float32)
    col = rng.standard_normal((C * R * R, n * P * P), dtype=np.float32)
    out = np.empty((K, n * P * P), np.float32)
    return (lambda: None), (lambda: np.matmul(wm, col, out=out)), None


# --------------------------------------------------------------------------- #
# The tuned-malloc torch child: answers timing requests over a pipe
# --------------------------------------------------------------------------- #

def torch_worker():
    """Child process loop: read {"layer", "batch", "calls"} lines, answer best fwd/train times."""
    cache = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["layer"], req["batch"])
        if key not in cache:
            cache.clear()  # one layer's tensors at a time
            cache[key] = torch_fns(LAYERS[req["layer"]], req["batch"])
            setup, fwd, train = cache[key]
            setup()
            fwd(), train()  # warm-up
        setup, fwd, train = cache[key]
        setup()
        what = fwd if req["what"] == "fwd" else train
        print(json.dumps(best_of(what, req["calls"])), flush=True)


class MallocTorch:
    """The child process (torch with glibc keeping freed memory), one request at a time."""

    def __init__(self):
        env = dict(os.environ, **MALLOC_ENV)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--torch-worker"],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def fns(self, index, batch):
        def ask(what, calls):
            self.proc.stdin.write(json.dumps(dict(layer=index, batch=batch, what=what, calls=calls)) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())
        return ask

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------- #
# Measurement
# --------------------------------------------------------------------------- #

class CpuMeter:
    """Share of the machine's CPU time used by *other* processes (and hypervisor steal).

    Reads /proc/stat (all CPUs) and /proc/<pid>/stat of this process and the
    torch child, so a round of measurements can be told quiet (others ~0) from
    contended. Linux only; elsewhere every round counts as quiet.
    """

    def __init__(self, pids):
        self.pids = pids
        self.ncpu = os.cpu_count() or 1
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def snapshot(self):
        try:
            f = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
            busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  # user nice system irq softirq steal
            ours = 0
            for pid in self.pids:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                ours += int(fields[11]) + int(fields[12])  # utime + stime of all threads
            return time.perf_counter(), busy, ours
        except (OSError, ValueError, IndexError):
            return None

    def others(self, a, b) -> float:
        """Fraction of all CPUs' time between two snapshots spent outside our processes."""
        if a is None or b is None:
            return 0.0
        wall = (b[0] - a[0]) * self.hz * self.ncpu
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / max(wall, 1e-9))


    def wait_quiet(self, max_wait_s: float, window_s: float = 0.5) -> None:
        """Sleep until others use < QUIET of the machine over a window (or max_wait_s passed)."""
        deadline = time.perf_counter() + max_wait_s
        while time.perf_counter() < deadline:
            a = self.snapshot()
            time.sleep(window_s)
            if self.others(a, self.snapshot()) < QUIET:
                return


QUIET = 0.10  # a round is quiet when others used < 10% of the machine


def measure_layer(index, batch, repeats, provider, child, meter, max_rounds, max_wait_s):
    """Per contender: best (fwd, train) over the quiet rounds (all rounds if none was quiet).

    Rounds go on until ``repeats`` quiet rounds were seen or ``max_rounds``
    were run; before each, up to ``max_wait_s`` is spent waiting for the
    machine to be quiet. Returns (times, others' CPU share in the rounds used,
    rounds used, rounds run).
    """
    layer = LAYERS[index]
    contenders = {  # numpy's sgemm first: the long pause after it follows below
        "sgemm": sgemm_fn(layer, batch),
        "ours": ours_fns(layer, batch, provider),
        "nchw": torch_fns(layer, batch),
        "cl": torch_fns(layer, batch, channels_last=True),
    }
    side = {"native": torch_fns(layer, batch, mkldnn=False), "8thr": torch_fns(layer, batch, threads=8)}
    ask = child.fns(index, batch) if child else None
    names = [*contenders, *side] + (["malloc"] if ask else [])
    for setup, fwd, train in [*contenders.values(), *side.values()]:
        setup()
        fwd()
        if train:
            train()  # warm-up: JIT, workspaces, allocator
    rounds = []  # (others' share, {name: [fwd, train]})
    while sum(o < QUIET for o, _ in rounds) < repeats and len(rounds) < max_rounds:
        times = {name: [np.inf, np.inf] for name in names}
        meter.wait_quiet(max_wait_s)
        start = meter.snapshot()
        for name, (setup, fwd, train) in {**contenders, **side}.items():
            setup()
            time.sleep(PAUSE_AFTER_OPENBLAS_S if name == "ours" else PAUSE_S)
            times[name][0] = best_of(fwd, 2)
            if train:
                time.sleep(PAUSE_S)
                times[name][1] = best_of(train, 1)
        if ask:
            time.sleep(PAUSE_S)
            times["malloc"][0] = ask("fwd", 2)
            time.sleep(PAUSE_S)
            times["malloc"][1] = ask("train", 1)
        rounds.append((meter.others(start, meter.snapshot()), times))
    used = [r for r in rounds if r[0] < QUIET] or rounds
    t = {name: [min(r[1][name][j] for r in used) for j in (0, 1)] for name in names}
    t.setdefault("malloc", [np.inf, np.inf])
    return t, max(o for o, _ in used), len(used), len(rounds)


def geomean(v):
    return float(np.exp(np.mean(np.log(v))))


def report(batch, rows, provider, loads):
    ms = lambda v: f"{v * 1e3:.2f}"  # noqa: E731
    out = [f"\n### batch {batch}, float32, {THREADS} threads, provider `{provider}` "
           f"(ms, best of rounds; ratio = torch / ours, > 1: we are faster)\n",
           f"Load before: `{loads[0]}`; after: `{loads[1]}`\n"]
    hdr = ("| layer C->K HxW RxS/s | ours fwd | NCHW* fwd | CL fwd | fwd vs NCHW* | fwd vs CL "
           "| ours train | NCHW* train | CL train | train vs NCHW* | train vs CL | sgemm fwd | sgemm GF/s "
           "| lowering overhead | others' CPU, rounds used/run |")
    out += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    keys = ("f_nchw", "f_cl", "t_nchw", "t_cl", "f_plain", "f_malloc", "t_plain", "t_malloc",
            "f_native", "t_native", "f_8", "t_8", "ovh")
    agg = {k: [] for k in keys}
    for (index, (t, others, used, run)) in rows:
        C, K, H, R, s, p = LAYERS[index]
        nchw = [min(t["nchw"][j], t["malloc"][j]) for j in (0, 1)]
        of, ot = t["ours"]
        r = dict(f_nchw=nchw[0] / of, f_cl=t["cl"][0] / of, t_nchw=nchw[1] / ot, t_cl=t["cl"][1] / ot,
                 f_plain=t["nchw"][0] / of, f_malloc=t["malloc"][0] / of,
                 t_plain=t["nchw"][1] / ot, t_malloc=t["malloc"][1] / ot,
                 f_native=t["native"][0] / of, t_native=t["native"][1] / ot,
                 f_8=t["8thr"][0] / of, t_8=t["8thr"][1] / ot, ovh=of / t["sgemm"][0])
        for k, v in r.items():
            if np.isfinite(v) and v > 0:
                agg[k].append(v)
        gf = flops(LAYERS[index], batch) / t["sgemm"][0] / 1e9
        out.append(
            f"| {C}->{K} {H}x{H} {R}x{R}/s{s} | {ms(of)} | {ms(nchw[0])} | {ms(t['cl'][0])} "
            f"| {r['f_nchw']:.2f} | {r['f_cl']:.2f} | {ms(ot)} | {ms(nchw[1])} | {ms(t['cl'][1])} "
            f"| {r['t_nchw']:.2f} | {r['t_cl']:.2f} | {ms(t['sgemm'][0])} | {gf:.0f} "
            f"| {100 * (r['ovh'] - 1):+.0f}% | {100 * others:.0f}%, {used}/{run} |")
    g = {k: (geomean(v) if v else float("nan")) for k, v in agg.items()}
    n = len(rows)
    busy = [LAYERS[i] for i, (_, others, _, _) in rows if others >= QUIET]
    out += ["", f"Rounds used: those in which other processes took < {100 * QUIET:.0f}% of the "
            f"machine's CPU time (measured from /proc/stat); layers with no such round use all "
            f"rounds: {len(busy)} of {n}."]
    out += ["", f"Geometric means over {n} layer shapes (torch time / our time; > 1: we are faster):\n",
            "| peer | forward | forward+backward |", "|---|---|---|",
            f"| **torch NCHW\\***, faster of plain and tuned malloc (target >= 1.0) "
            f"| **{g['f_nchw']:.2f}** | **{g['t_nchw']:.2f}** |",
            f"| torch NCHW, plain malloc | {g['f_plain']:.2f} | {g['t_plain']:.2f} |",
            f"| torch NCHW, tuned malloc (child process) | {g['f_malloc']:.2f} | {g['t_malloc']:.2f} |",
            f"| **torch channels_last** (target >= 0.8) | **{g['f_cl']:.2f}** | **{g['t_cl']:.2f}** |",
            f"| torch native path (mkldnn disabled), 2 threads | {g['f_native']:.2f} | {g['t_native']:.2f} |",
            f"| torch 8 threads (oversubscribed) | {g['f_8']:.2f} | {g['t_8']:.2f} |",
            "", f"Forward lowering overhead (ours fwd / whole-batch sgemm - 1), geometric mean: "
            f"{100 * (g['ovh'] - 1):+.0f}% (target <= +25%); worst layer: "
            f"{100 * (max(agg['ovh']) - 1):+.0f}%."]
    return "\n".join(out)


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(open("/proc/loadavg").read().split()[:3])


# --------------------------------------------------------------------------- #
# --passes: forward / backward data / backward filter per layer, with the
# engine as it was before Winograd and the phase-split im2col ("legacy")
# --------------------------------------------------------------------------- #

#: The ResNet-50 shapes of the per-pass table: indices into LAYERS.
PASS_LAYERS = [0, 2, 6, 10, 12, 16, 18, 22, 1, 3, 4, 9]
PASSES = ("forward", "backward_data", "backward_filter")


#: What the "legacy" engine of --passes switches off: "all" (Winograd, F(2x2) and
#: F(4x4), and the phase-split strided im2col: the engine before them) or
#: "winograd4" (only F(4x4, 3x3): the engine before it). Set by --legacy.
LEGACY = "all"


@contextlib.contextmanager
def legacy_engine(on: bool):
    """Within the block, run the numba provider without the paths :data:`LEGACY` names."""
    from streamq.kernels import _conv_numba, _conv_winograd, _conv_winograd4
    saved = _conv_winograd.applies, _conv_winograd4.applies, _conv_numba.im2col_strided
    if on:
        _conv_winograd4.applies = lambda g: False
        if LEGACY == "all":
            _conv_winograd.applies = lambda g: False
            _conv_numba.im2col_strided = _conv_numba.im2col
    try:
        yield
    finally:
        _conv_winograd.applies, _conv_winograd4.applies, _conv_numba.im2col_strided = saved


def pass_fns(layer, n):
    """{engine: {pass: fn}} for ours (numba provider), ours legacy and torch (oneDNN, NCHW)."""
    import torch
    from streamq.kernels import conv
    C, K, H, R, s, p = layer
    x, w, dy = layer_data(layer, n)
    y, dx, dw = np.empty_like(dy), np.empty_like(x), np.empty_like(w)
    kw = dict(pad=p, stride=s)
    ours = {"forward": lambda: conv.convolution_forward_numba(x, w, y, **kw),
            "backward_data": lambda: conv.convolution_backward_data_numba(w, dy, dx, **kw),
            "backward_filter": lambda: conv.convolution_backward_filter_numba(x, dy, dw, **kw)}
    xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))

    def back(mask):
        with torch.no_grad():
            torch.ops.aten.convolution_backward(dyt, xt, wt, None, [s, s], [p, p], [1, 1],
                                                False, [0, 0], 1, mask)

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    torch_ = {"forward": fwd, "backward_data": lambda: back([True, False, False]),
              "backward_filter": lambda: back([False, True, False])}
    return ours, torch_


def run_passes(batch: int, rounds: int, indices, threads: int = THREADS) -> str:
    """Interleaved best-of-rounds ms per layer and pass: ours, ours legacy, torch; a markdown table.

    ``threads``: torch's thread count and our engine's (OpenBLAS limit and work-item threads).
    """
    import threadpoolctl
    import torch
    from streamq.kernels import _conv_gemm
    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")
    _conv_gemm.THREADS = threads
    engines = ("ours", "legacy", "torch")
    best: dict = {}
    before = uptime()
    fns = {i: pass_fns(LAYERS[i], batch) for i in indices}
    for i in indices:  # warm-up: numba compiles, workspaces, first touch
        for ps in PASSES:
            for legacy in (False, True):
                with legacy_engine(legacy):
                    fns[i][0][ps]()
            fns[i][1][ps]()
    for r in range(rounds):
        for i in indices:
            for ps in PASSES:
                order = engines if r % 2 == 0 else engines[::-1]
                for eng in order:
                    time.sleep(PAUSE_S)
                    fn = fns[i][1][ps] if eng == "torch" else fns[i][0][ps]
                    with legacy_engine(eng == "legacy"):
                        t = best_of(fn, 2)
                    best[i, ps, eng] = min(best.get((i, ps, eng), np.inf), t)
    out = [f"### batch {batch}, float32, {threads} threads: ms (best of {rounds} rounds x 2 calls)",
           "", f"load before: {before}", f"load after: {uptime()}", "",
           "| layer C->K HxW RxS/s | pass | legacy | ours | torch oneDNN | ours vs legacy "
           "| torch / legacy | torch / ours | ours GFLOP/s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for i in indices:
        C, K, H, R, s, p = LAYERS[i]
        for ps in PASSES:
            o, lg, t = (best[i, ps, e] for e in ("ours", "legacy", "torch"))
            out.append(f"| {C}->{K} {H}x{H} {R}x{R}/s{s} | {ps} | {lg * 1e3:.2f} | {o * 1e3:.2f} | "
                       f"{t * 1e3:.2f} | {lg / o:.2f}x | {t / lg:.2f} | {t / o:.2f} | "
                       f"{flops(LAYERS[i], batch) / o / 1e9:.0f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, nargs="+", default=[5, 3],
                    help="rounds per batch size (the last value repeats)")
    ap.add_argument("--provider", default="numba", choices=["numba", "blas"])
    ap.add_argument("--layers", type=int, nargs="+", help="layer indices (default: all)")
    ap.add_argument("--no-malloc-child", action="store_true", help="skip the tuned-malloc torch")
    ap.add_argument("--max-rounds-factor", type=int, default=4,
                    help="at most this many times --repeats rounds per layer while waiting "
                         "for quiet rounds")
    ap.add_argument("--max-wait", type=float, default=30.0,
                    help="seconds to wait for a quiet machine before each round")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--passes", action="store_true",
                    help="per-pass table (forward, backward data, backward filter) of the "
                         "PASS_LAYERS shapes: ours vs ours legacy vs torch, in-process")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="threads of every contender in --passes mode")
    ap.add_argument("--legacy", choices=["all", "winograd4"], default="all",
                    help="--passes: what the legacy engine switches off (all: Winograd and the "
                         "phase-split im2col; winograd4: only Winograd F(4x4, 3x3))")
    args = ap.parse_args()
    global LEGACY
    LEGACY = args.legacy
    if args.torch_worker:
        torch_worker()
        return
    if args.passes:
        indices = args.layers if args.layers is not None else PASS_LAYERS
        for b, batch in enumerate(args.batch):
            print(run_passes(batch, args.repeats[min(b, len(args.repeats) - 1)], indices,
                             args.threads), flush=True)
        return
    import threadpoolctl
    import torch
    from streamq.kernels import _conv_gemm
    blas = [(i["internal_api"], i.get("version"), i.get("architecture"), i["num_threads"])
            for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    print(f"BLAS (threadpoolctl): {blas}; direct cblas: {_conv_gemm.have_cblas()}; "
          f"engine threads: {_conv_gemm.threads()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    indices = args.layers if args.layers is not None else list(range(len(LAYERS)))
    child = None if args.no_malloc_child else MallocTorch()
    meter = CpuMeter([os.getpid()] + ([child.proc.pid] if child else []))
    try:
        for b, batch in enumerate(args.batch):
            repeats = args.repeats[min(b, len(args.repeats) - 1)]
            before = uptime()
            rows = []
            for i in indices:
                res = measure_layer(i, batch, repeats, args.provider, child, meter,
                                    args.max_rounds_factor * repeats, args.max_wait)
                rows.append((i, res))
                print(f"  batch {batch}: layer {i} done (others {100 * res[1]:.0f}%, "
                      f"rounds {res[2]}/{res[3]})", file=sys.stderr, flush=True)
            print(report(batch, rows, args.provider, (before, uptime())), flush=True)
    finally:
        if child:
            child.close()


if __name__ == "__main__":
    main()
