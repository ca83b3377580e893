"""The research's ResNet comparison: streamq's facade vs PyTorch CPU (oneDNN) vs PyTorch's native path.

One command regenerates every table and plot of ``benchmarks/results/resnet.md``:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_resnet.py [--quick]

Experiments (each engine in its own subprocess, engines interleaved, best of repeats):

* ``conv``: one conv2d layer forward (ResNet-50's 3x3 64->64 at 56x56 and its 1x1 64->256),
  images/s over batch sizes 1..64 (see ``bench_conv_layer.py``);
* ``passes``: the same layers' forward, backward-data and backward-filter ms at one batch size
  (what the kernel engineers need);
* ``train``: ResNet-50 training steps (forward + backward + SGD with momentum) at 224x224,
  images/s over batch sizes 1..16;
* ``profile``: where one ResNet-50 training step's time goes, per op kind: streamq from its
  queue log, PyTorch from ``torch.profiler``.

Engines: ``streamq`` (the example ``examples/resnet_model.py`` over ``streamq.cuda_facade``,
CMGs from the topology), ``torch`` (PyTorch CPU, oneDNN, default NCHW layout) and
``torch-native`` (``torch.backends.mkldnn.enabled = False``). Thread settings are 1x, 2x and 4x
the cores (``torch.set_num_threads``). streamq always runs the topology's pinned workers, one
per core: there is nothing to oversubscribe, so its one measurement stands in every thread
setting. Every torch measurement runs twice, with the plain glibc allocator and with glibc told
to keep freed memory (``TUNED_MALLOC``); the tables hold streamq to the faster of the two.

``--quick`` (a few minutes on a quiet machine) trims batch sizes, thread settings, steps and
repeats. Results go to ``benchmarks/results/resnet.json``; ``plot_resnet.py`` turns them into
``resnet.md`` and the PNGs (run automatically at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")
EXAMPLES = os.path.join(ROOT, "examples")
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

#: glibc settings that keep freed memory in the process (the issue's fair-comparison rule).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
                "MALLOC_TOP_PAD_": "1073741824"}
ENGINES = ("streamq", "torch", "torch-native")
RESULT_TAG = "RESULT "


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def load() -> float:
    """The 1-minute load average (how busy the shared machine was)."""
    return round(os.getloadavg()[0], 2)


def blas_info() -> list[dict]:
    """What threadpoolctl reports for the BLAS/OpenMP libraries numpy (and streamq) load."""
    import numpy  # noqa: F401  (loads OpenBLAS)
    import threadpoolctl
    return [{k: d.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads")}
            for d in threadpoolctl.threadpool_info()]


# --------------------------------------------------------------------------- #
# Subprocess runs
# --------------------------------------------------------------------------- #

def engine_env(malloc: str) -> dict:
    """The environment of an engine's subprocess: OpenBLAS overrides dropped, malloc as asked."""
    if malloc not in ("plain", "tuned"):
        raise ValueError(f"malloc must be 'plain' or 'tuned', got {malloc!r}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") and k not in TUNED_MALLOC}
    if malloc == "tuned":
        env.update(TUNED_MALLOC)
    return env


def run_worker(spec: dict, timeout: float) -> dict:
    """Run ``spec`` in a fresh interpreter (``--worker``) and return its result record.

    A worker that fails or times out gives ``{"error": ...}`` instead of raising, so one
    engine's failure does not lose the others' figures.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t0, load0 = time.perf_counter(), load()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=engine_env(spec.get("malloc", "plain")), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", **spec}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip()[-800:], **spec}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result.update(spec=spec, wall_s=round(time.perf_counter() - t0, 1), load_before=load0,
                  load_after=load())
    return result


def worker_main(spec: dict) -> None:
    """Entry point of a subprocess: set the engine up, run the experiment, print the result."""
    experiment = spec["experiment"]
    if spec["engine"] != "streamq":
        import torch
        torch.set_num_threads(int(spec["threads"]))
        torch.backends.mkldnn.enabled = spec["engine"] != "torch-native"
    if experiment in ("conv", "passes"):
        import bench_conv_layer
        result = bench_conv_layer.run(spec)
    elif experiment == "train":
        result = run_train(spec)
    elif experiment == "profile":
        result = run_profile(spec)
    else:
        raise ValueError(f"experiment must be conv, passes, train or profile, got {experiment!r}")
    if spec["engine"] == "streamq":
        import streamq
        result["threads"] = sum(len(c.cpus) for c in streamq.topology())
    result["blas"] = blas_info()
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- #
# ResNet-50 training steps
# --------------------------------------------------------------------------- #

def torch_resnet50(torch, classes: int = 1000):
    """torchvision's ResNet-50 v1.5 (stride on the 3x3 conv), without torchvision."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return torch.relu_(self.body(x) + s)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, count in enumerate((3, 4, 6, 3)):
        for i in range(count):
            layers.append(Bottleneck(cin, 64 * 2 ** stage, 2 if stage > 0 and i == 0 else 1))
            cin = 64 * 2 ** stage * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


class _TorchTrainer:
    """One PyTorch training step of ResNet-50 on a fixed batch."""

    def __init__(self, size: int, classes: int):
        import torch
        torch.manual_seed(0)
        self.torch, self.size, self.classes = torch, size, classes
        self.model = torch_resnet50(torch, classes)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def set_batch(self, n: int) -> None:
        g = self.torch.Generator().manual_seed(n)
        self.x = self.torch.randn(n, 3, self.size, self.size, generator=g)
        self.t = self.torch.randint(0, self.classes, (n,), generator=g)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.t)
        loss.backward()
        self.opt.step()
        return float(loss)


class _StreamqTrainer:
    """One training step of the example's ResNet-50 on the CUDA facade, on a fixed batch."""

    def __init__(self, size: int, classes: int):
        import numpy as np
        sys.path.insert(0, EXAMPLES)
        import resnet_model as rm
        self.np, self.rm, self.size, self.classes = np, rm, size, classes
        self.eng = rm.Engine(0)
        self.model = rm.ResNet(self.eng, 50, classes, width=64, small=False, seed=0)
        params, grads = self.model.parameters()
        self.loss_fn = rm.CrossEntropy(self.eng)
        self.opt = rm.SGD(self.eng, params, grads, lr=0.01)

    def set_batch(self, n: int) -> None:
        rng = self.np.random.default_rng(n)
        self.x = self.eng.upload(rng.standard_normal((n, 3, self.size, self.size), dtype=self.np.float32))
        self.t = self.eng.upload(rng.integers(0, self.classes, n).astype(self.np.int64))

    def step(self) -> float:
        loss = self.loss_fn.forward(self.model.forward(self.x), self.t)
        self.model.backward(self.loss_fn.backward())
        self.opt.step()
        return float(self.eng.download(loss))       # synchronizes the stream


def _trainer(spec: dict):
    cls = _StreamqTrainer if spec["engine"] == "streamq" else _TorchTrainer
    return cls(spec.get("size", 224), spec.get("classes", 1000))


def run_train(spec: dict) -> dict:
    """Time training steps at each of ``spec['batches']``: best and median images/s.

    Each batch size gets ``warmup`` untimed steps, then up to ``steps`` timed ones (fewer once
    ``max_s`` seconds have been spent on the batch size, never fewer than one).
    """
    trainer = _trainer(spec)
    rows = []
    for n in spec["batches"]:
        trainer.set_batch(n)
        for _ in range(spec.get("warmup", 1)):
            trainer.step()
        times, spent, loss = [], 0.0, float("nan")
        while len(times) < spec.get("steps", 3) and (not times or spent < spec.get("max_s", 60)):
            t0 = time.perf_counter()
            loss = trainer.step()
            times.append(time.perf_counter() - t0)
            spent += times[-1]
        times.sort()
        rows.append({"batch": n, "img_s": n / times[0], "img_s_median": n / times[len(times) // 2],
                     "steps": len(times), "loss": loss, "load": load()})
    return {"rows": rows}


# --------------------------------------------------------------------------- #
# Where a step's time goes
# --------------------------------------------------------------------------- #

#: Op kinds of the breakdown, by queue-log op name (streamq) and profiler op name (torch).
STREAMQ_KINDS = {
    "cudnn.convolution_forward": "conv fwd", "cudnn.convolution_backward_data": "conv bwd data",
    "cudnn.convolution_backward_filter": "conv bwd filter",
    "cudnn.batch_norm_forward_training": "bn fwd", "cudnn.batch_norm_backward": "bn bwd",
    # the fused calls (BN [+ residual add] + ReLU) count as batch norm
    "cudnn.batch_norm_forward_training_ex": "bn fwd", "cudnn.batch_norm_backward_ex": "bn bwd",
    "cudnn.activation_forward": "relu fwd", "cudnn.activation_backward": "relu bwd",
    "cudnn.pooling_forward": "max pool fwd", "cudnn.pooling_backward": "max pool bwd",
    "cudnn.add_tensor": "add", "cublas.gemm": "gemm (fc)", "aten::_foreach_sgd_": "sgd",
}
TORCH_KINDS = {
    "aten::convolution": "conv fwd", "aten::convolution_backward": "conv bwd data+filter",
    "aten::native_batch_norm": "bn fwd", "aten::_native_batch_norm_legit": "bn fwd",
    "aten::native_batch_norm_backward": "bn bwd",
    "aten::relu_": "relu fwd", "aten::relu": "relu fwd", "aten::threshold_backward": "relu bwd",
    "aten::max_pool2d_with_indices": "max pool fwd", "aten::max_pool2d_with_indices_backward": "max pool bwd",
    "aten::add": "add", "aten::add_": "add", "aten::addmm": "gemm (fc)", "aten::mm": "gemm (fc)",
    "Optimizer.step#SGD.step": "sgd",
}


def streamq_breakdown(log_path: str, range_name: str) -> dict:
    """ms per op kind inside the user range ``range_name`` of a queue log, and the range's wall."""
    with open(log_path) as fh:
        records = [json.loads(line) for line in fh]
    rng = next(r for r in records if r["type"] == "range" and r["name"] == range_name)
    kinds: dict[str, float] = {}
    shapes: dict[str, dict] = {}
    for r in records:
        if r["type"] == "task" and rng["start_us"] <= r["start_us"] <= rng["end_us"]:
            kind = STREAMQ_KINDS.get(r["name"], "other")
            ms = (r["end_us"] - r["start_us"]) / 1e3
            kinds[kind] = kinds.get(kind, 0.0) + ms
            if kind.startswith("conv"):
                x, w = _conv_operands(r)
                _add_shape(shapes, x, w, kind, ms)
    return {"wall_ms": (rng["end_us"] - rng["start_us"]) / 1e3, "ms": kinds, "conv_shapes": shapes}


def _conv_operands(record: dict) -> tuple[list, list]:
    """(x shape, w shape) of a convolution task record of the queue log."""
    views = [b["shape"] for b in record["reads"] + record["writes"] if len(b["shape"]) == 4]
    name = record["name"]
    if name.endswith("forward"):                 # reads x, w; writes y
        return views[0], views[1]
    if name.endswith("backward_data"):           # reads w, dy; writes dx
        return views[2], views[0]
    return views[0], views[2]                    # backward_filter: reads x, dy; writes dw


def _add_shape(shapes: dict, x, w, kind: str, ms: float) -> None:
    """Add a call of ``ms`` to convolution ``C->K HxW RxS`` (a ResNet-50 layer shape is unique by it)."""
    key = f"{x[1]}->{w[0]} {x[2]}x{x[3]} {w[2]}x{w[3]}"
    cell = shapes.setdefault(key, {}).setdefault(kind, {"ms": 0.0, "calls": 0})
    cell["ms"] += ms
    cell["calls"] += 1


def torch_breakdown(prof, wall_ms: float) -> dict:
    """ms per op kind from a torch profiler run: total CPU time of each op of a kind in
    ``TORCH_KINDS`` that does not run inside another such op (SGD's adds count as SGD)."""
    kinds: dict[str, float] = {}
    shapes: dict[str, dict] = {}
    for ev in prof.events():
        kind = TORCH_KINDS.get(ev.name)
        if kind is None:
            continue
        parent = ev.cpu_parent
        while parent is not None and parent.name not in TORCH_KINDS:
            parent = parent.cpu_parent
        if parent is None:
            ms = ev.cpu_time_total / 1e3
            kinds[kind] = kinds.get(kind, 0.0) + ms
            if kind.startswith("conv"):
                shp = ev.input_shapes
                x, w = (shp[0], shp[1]) if kind == "conv fwd" else (shp[1], shp[2])
                _add_shape(shapes, x, w, kind, ms)
    kinds["other"] = max(0.0, wall_ms - sum(kinds.values()))
    return {"wall_ms": wall_ms, "ms": kinds, "conv_shapes": shapes}


def run_profile(spec: dict) -> dict:
    """Warm training steps at ``spec['batch']`` (``spec['steps']``, default 2), each profiled and
    broken down per op kind; the fastest one is returned, with the best unprofiled step beside it
    (the profilers' own overhead is the difference)."""
    trainer = _trainer(spec)
    n = spec["batch"]
    trainer.set_batch(n)
    plain = []
    for _ in range(max(1, spec.get("warmup", 1))):
        t0 = time.perf_counter()
        trainer.step()
        plain.append(time.perf_counter() - t0)
    best = None
    for i in range(spec.get("steps", 2)):
        out = _profiled_step(spec["engine"], trainer, i)
        if best is None or out["wall_ms"] < best["wall_ms"]:
            best = out
    best.update(batch=n, load=load(), unprofiled_ms=min(plain) * 1e3)
    return best


def _profiled_step(engine: str, trainer, i: int) -> dict:
    """One training step under the queue log (streamq) or torch.profiler, broken down."""
    if engine == "streamq":
        import tempfile
        import streamq
        path = os.path.join(tempfile.mkdtemp(), f"step{i}.jsonl")
        streamq.trace.enable(path)
        with streamq.trace.range("profiled step"):
            trainer.step()
        streamq.trace.disable()
        out = streamq_breakdown(path, "profiled step")
        os.remove(path)
        return out
    import torch.profiler
    cpu = torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[cpu], record_shapes=True) as prof:
        t0 = time.perf_counter()
        trainer.step()
        wall_ms = (time.perf_counter() - t0) * 1e3
    return torch_breakdown(prof, wall_ms)


# --------------------------------------------------------------------------- #
# The driver
# --------------------------------------------------------------------------- #

def plan(quick: bool) -> dict:
    """Batch sizes, thread factors, steps and repeats of a full or ``--quick`` run."""
    if quick:
        return {"factors": (1, 4), "conv_batches": (1, 4, 16, 64), "train_batches": (4, 16),
                "repeats": 1, "train_steps": 2, "native_factors": (1,), "profile": True}
    return {"factors": (1, 2, 4), "conv_batches": (1, 2, 4, 8, 16, 32, 64),
            "train_batches": (1, 2, 4, 8, 16), "repeats": 2, "train_steps": 3, "native_factors": (1, 2, 4),
            "profile": True}


def configs(p: dict) -> list[dict]:
    """Every (engine, threads, malloc) to measure; streamq once (its pinned workers)."""
    n = cores()
    out = [{"engine": "streamq", "threads": None, "factor": None, "malloc": "plain"}]
    for engine, factors in (("torch", p["factors"]), ("torch-native", p["native_factors"])):
        for f in factors:
            for malloc in ("plain", "tuned"):
                out.append({"engine": engine, "threads": f * n, "factor": f, "malloc": malloc})
    return out


def sweep(experiment: str, extra: dict, p: dict, timeout: float, log) -> list[dict]:
    """Run every config ``p['repeats']`` times, rotating the engine order each repeat."""
    results = []
    cfgs = configs(p)
    for rep in range(p["repeats"]):
        order = cfgs[rep % len(cfgs):] + cfgs[:rep % len(cfgs)]
        for cfg in order:
            spec = {"experiment": experiment, **cfg, **extra}
            res = run_worker(spec, timeout)
            res["repeat"] = rep
            results.append(res)
            log(f"  {experiment:7s} {cfg['engine']:12s} threads={cfg['threads']} malloc={cfg['malloc']:5s} "
                f"rep {rep}: " + ("ERROR " + res["error"][-200:] if "error" in res else
                                  f"{res.get('wall_s')} s, load {res.get('load_before')}->{res.get('load_after')}"))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute run: fewer batches, threads, repeats")
    ap.add_argument("--only", nargs="+", choices=("conv", "passes", "train", "profile"),
                    help="run only these experiments (default: all)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "resnet.json"), help="JSON results path")
    ap.add_argument("--repeats", type=int, help="override the plan's repeats (interleaved rounds)")
    ap.add_argument("--train-batches", type=int, nargs="+", help="override the training batch sizes")
    ap.add_argument("--factors", type=int, nargs="+",
                    help="override the PyTorch thread settings, as multiples of the cores (oneDNN and native)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per engine subprocess (default 1800)")
    ap.add_argument("--no-plot", action="store_true", help="do not regenerate resnet.md and the PNGs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    p = plan(args.quick)
    if args.repeats is not None:
        if args.repeats < 1:
            ap.error(f"--repeats must be >= 1, got {args.repeats}")
        p["repeats"] = args.repeats
    for name, values in (("train_batches", args.train_batches), ("factors", args.factors)):
        if values is not None:
            if min(values) < 1:
                ap.error(f"--{name.replace('_', '-')} must be positive, got {values}")
            p[name] = tuple(values)
            if name == "factors":
                p["native_factors"] = tuple(values)
    todo = args.only or ["conv", "passes", "train", "profile"]
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": cores(), "quick": args.quick,
                     "python": sys.version.split()[0], "load_start": load(), "blas": blas_info(),
                     "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}}}
    if os.path.exists(args.out) and args.only:        # keep the experiments not re-run
        with open(args.out) as fh:
            old = json.load(fh)
        data.update({k: v for k, v in old.items() if k != "meta" and k not in todo})
        # the kept experiments' run stays the file's meta; this partial re-run is noted in it
        rerun = {"date": data["meta"]["date"], "experiments": todo, "load_start": data["meta"]["load_start"]}
        data["meta"] = dict(old["meta"], reruns=old["meta"].get("reruns", []) + [rerun])

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} load {load():5.2f}] {msg}", flush=True)

    print(f"BLAS (threadpoolctl): {data['meta']['blas']}")
    log(f"plan: {data['meta']['plan']}")
    import bench_conv_layer
    if "conv" in todo:
        data["conv"] = sweep("conv", {"layers": bench_conv_layer.LAYER_NAMES, "batches": p["conv_batches"]},
                             p, args.timeout, log)
    if "passes" in todo:
        q = dict(p, factors=(1,), native_factors=(1,))
        data["passes"] = sweep("passes", {"layers": bench_conv_layer.LAYER_NAMES, "batch": 16}, q,
                               args.timeout, log)
    if "train" in todo:
        data["train"] = sweep("train", {"batches": p["train_batches"], "steps": p["train_steps"]}, p,
                              args.timeout, log)
    if "profile" in todo:
        prof = []
        for cfg in ({"engine": "streamq", "threads": None, "malloc": "plain"},
                    {"engine": "torch", "threads": cores(), "malloc": "tuned"},
                    {"engine": "torch", "threads": cores(), "malloc": "plain"}):
            res = run_worker({"experiment": "profile", "batch": 16, "warmup": 2, **cfg}, args.timeout)
            log(f"  profile {cfg['engine']} malloc={cfg['malloc']}: " + res.get("error", "ok")[-200:])
            prof.append(res)
        data["profile"] = prof
    if "reruns" in data["meta"]:
        data["meta"]["reruns"][-1]["load_end"] = load()
    else:
        data["meta"]["load_end"] = load()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(data, fh, indent=1)
    log(f"wrote {args.out}")
    if not args.no_plot:
        import plot_resnet
        plot_resnet.main([args.out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
