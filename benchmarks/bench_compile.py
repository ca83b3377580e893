"""Benchmark: numba compile cost of the non-conv kernel modules (cold vs warm cache).

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_compile.py
        [--modules pooling dnn_ops aten_ops aten_linear] [--dtypes float32 float64]
        [--suite] [--repeats 2]

For each kernel module, a fresh interpreter imports it and calls every op of
its ``numba`` provider once on small inputs of each dtype (the workload below,
one call per op and dtype, all code paths the tests take for that dtype). It
runs with ``NUMBA_CACHE_DIR`` set to a new empty directory ("cold": numba
compiles everything), then again in another fresh interpreter with the same,
now filled, directory ("warm": numba loads the cached machine code). A third
column times the same workload a second time inside the cold process (no
compilation or loading at all), the floor. Reported per module: import time
and first-workload time, cold and warm; the best of ``--repeats`` runs.

``--suite`` also times the kernel test files of these modules with an empty
cache and with a warm one (``pytest -q -p no:cacheprovider``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODULES = ("pooling", "dnn_ops", "aten_ops", "aten_linear")
TEST_FILES = ("tests/kernels/test_pooling.py", "tests/kernels/test_dnn_ops.py",
              "tests/kernels/test_aten_ops.py", "tests/kernels/test_aten_linear.py")


# --------------------------------------------------------------------------
# workloads (run in the child): every numba op of the module, once per dtype
# --------------------------------------------------------------------------

def _work_pooling(K, np, dt):
    x = np.ones((2, 3, 9, 9), dt)
    y, dx = np.empty((2, 3, 5, 5), dt), np.empty_like(x)
    g, gy = np.ones((2, 3, 7, 7), dt), np.empty((2, 3, 1, 1), dt)
    for mode in ("max", "average_count_include_padding", "average_count_exclude_padding"):
        kw = dict(mode=mode, window=3, pad=1, stride=2)
        K.get("cudnn.pooling_forward", "numba")(x, y, **kw)
        K.get("cudnn.pooling_backward", "numba")(y, y, x, dx, **kw)
        K.get("cudnn.pooling_forward", "numba")(g, gy, mode=mode, window=7)
        K.get("cudnn.pooling_backward", "numba")(gy, gy, g, g.copy(), mode=mode, window=7)


def _work_dnn_ops(K, np, dt):
    get = lambda op: K.get(op, "numba")  # noqa: E731
    x = np.linspace(-2, 2, 2 * 4 * 5 * 6).astype(dt).reshape(2, 4, 5, 6)
    y, dx = np.empty_like(x), np.empty_like(x)
    for mode in ("relu", "sigmoid", "tanh", "clipped_relu", "elu", "swish", "identity"):
        get("cudnn.activation_forward")(x, y, mode=mode, coef=1.0)
        get("cudnn.activation_backward")(y, x, x, dx, mode=mode, coef=1.0)
    c = np.ones(4, dt)
    sm, si = np.empty(4), np.empty(4)
    for mode, p in (("spatial", c), ("per_activation", np.ones((4, 5, 6), dt))):
        get("cudnn.batch_norm_forward_training")(x, y, p, p, mode=mode, epsilon=1e-5)
        get("cudnn.batch_norm_forward_inference")(x, y, p, p, p, p, mode=mode, epsilon=1e-5)
        get("cudnn.batch_norm_backward")(x, x, dx, p, p.copy(), p.copy(), mode=mode, epsilon=1e-5)
    for alg in ("accurate", "log"):
        for mode in ("instance", "channel"):
            get("cudnn.softmax_forward")(x, y, algorithm=alg, mode=mode)
            get("cudnn.softmax_backward")(y, x, dx, algorithm=alg, mode=mode)
    for op in ("add", "mul", "min", "max", "sqrt", "not"):
        get("cudnn.op_tensor")(op, x, x[:1, :, :1, :1], y, alpha1=1.0, alpha2=1.0, beta=0.5)
    get("cudnn.add_tensor")(c.reshape(1, 4, 1, 1), y, alpha=1.0, beta=1.0)
    get("cudnn.transform_tensor")(x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2), y)
    get("cudnn.scale_tensor")(y, 2.0)
    get("cudnn.set_tensor")(y, 1.0)
    r = np.empty(x.size, np.uint8)
    get("cudnn.dropout_forward")(x, y, r, dropout=0.5, seed=1)
    get("cudnn.dropout_backward")(x, dx, r, dropout=0.5)


def _work_aten_ops(K, np, dt):
    get = lambda op: K.get(op, "numba")  # noqa: E731
    n = 5000                                       # above the elementwise numba threshold
    a, b, o = np.linspace(-3, 3, n).astype(dt), np.ones(n, dt), np.empty(n, dt)
    for op in ("aten::add", "aten::sub", "aten::mul", "aten::div"):
        get(op)(a, b, out=o)
        get(op)(a, 2.0, out=o)
    for op in ("aten::relu", "aten::sigmoid", "aten::tanh"):
        get(op)(a, out=o)
    get("aten::threshold")(a, 0.5, 0.0, out=o)
    for op in ("aten::threshold_backward",):
        get(op)(b, a, 0.0, out=o)
    get("aten::sigmoid_backward")(b, a, out=o)
    get("aten::tanh_backward")(b, a, out=o)
    get("aten::fill_")(o, 1.0)
    get("aten::copy_")(o, a)
    x = np.linspace(-1, 1, 40 * 50).astype(dt).reshape(40, 50)
    get("aten::sum")(x, 1, out=np.empty(40, dt))
    get("aten::sum")(x, 0, out=np.empty(50, dt))
    get("aten::mean")(x, out=np.empty((), dt))
    get("aten::amax")(x, 1, out=np.empty(40, dt))
    get("aten::amax")(x, 0, out=np.empty(50, dt))
    get("aten::argmax")(x, 1, out=np.empty(40, np.int64))
    get("aten::argmax")(x, 0, out=np.empty(50, np.int64))
    y = np.empty_like(x)
    for op, bop in (("aten::_softmax", "aten::_softmax_backward_data"),
                    ("aten::_log_softmax", "aten::_log_softmax_backward_data")):
        for d in (0, 1):
            get(op)(x, d, False, out=y)
            get(bop)(x, y, d, dt, out=np.empty_like(x))
    t = np.arange(40) % 50
    out, tw = np.empty((), dt), np.empty((), dt)
    get("aten::nll_loss_forward")(y, t, None, "mean", -100, output=out, total_weight=tw)
    get("aten::nll_loss_backward")(out, y, t, None, "mean", -100, tw, grad_input=np.empty_like(y))
    p = np.ones((2, 3, 9, 9), dt)
    get("aten::_adaptive_avg_pool2d")(p, (4, 3), out=np.empty((2, 3, 4, 3), dt))
    get("aten::_adaptive_avg_pool2d")(p, 1, out=np.empty((2, 3, 1, 1), dt))
    get("aten::_adaptive_avg_pool2d_backward")(np.ones((2, 3, 4, 3), dt), p, out=np.empty_like(p))
    v, i = np.empty((2, 3, 5, 5), dt), np.empty((2, 3, 5, 5), np.int64)
    get("aten::max_pool2d_with_indices")(p, 3, 2, 1, 1, False, out=v, indices=i)
    get("aten::max_pool2d_with_indices_backward")(v, p, 3, 2, 1, 1, False, i,
                                                  grad_input=np.empty_like(p))


def _work_aten_linear(K, np, dt):
    get = lambda op: K.get(op, "numba")  # noqa: E731
    w = np.ones((300, 256), dt)
    idx = np.arange(600) % 300
    get("aten::embedding")(w, idx, out=np.empty((600, 256), dt))
    get("aten::embedding_backward")(np.ones((600, 256), dt), idx, 300, out=np.empty_like(w))
    get("aten::cat")([w, w], 0, out=np.empty((600, 256), dt))
    ps = [np.ones(70000, dt), np.ones((3, 4), dt)]
    gs = [np.ones_like(p) for p in ps]
    get("aten::_foreach_sgd_")(ps, gs, [np.zeros_like(p) for p in ps], lr=0.1, momentum=0.9,
                               first_step=True)
    get("aten::_fused_adam_")(ps, gs, [np.zeros_like(p) for p in ps],
                              [np.zeros_like(p) for p in ps], None,
                              [np.zeros(1, dt) for _ in ps], lr=0.1, beta1=0.9, beta2=0.99,
                              weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)


WORK = {"pooling": _work_pooling, "dnn_ops": _work_dnn_ops, "aten_ops": _work_aten_ops,
        "aten_linear": _work_aten_linear}


def child(module: str, dtypes: list[str]) -> None:
    """Runs in the fresh interpreter: import, first workload, second workload; prints JSON."""
    import importlib
    t0 = time.perf_counter()
    import numpy as np
    import streamq.kernels as K
    importlib.import_module(f"streamq.kernels.{module}")
    K.ops()
    t1 = time.perf_counter()
    for dt in dtypes:
        WORK[module](K, np, np.dtype(dt))
    t2 = time.perf_counter()
    for dt in dtypes:
        WORK[module](K, np, np.dtype(dt))
    t3 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "first": t2 - t1, "again": t3 - t2}))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(module, dtypes, cache_dir):
    """The child's timings plus its total CPU time ("cpu"), which a loaded machine inflates
    far less than wall time (compilation is single-threaded)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", module, "--dtypes", *dtypes]
    cpu0 = _children_cpu()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{module} workload failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["cpu"] = _children_cpu() - cpu0
    return res


def run_suite(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0, cpu0 = time.perf_counter(), _children_cpu()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *TEST_FILES], env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    last = (out.stdout.strip().splitlines() or ["?"])[-1]
    return elapsed, cpu, last


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--suite", action="store_true", help="also time the kernel test files")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dtypes)
        return
    import numba
    from threadpoolctl import threadpool_info
    blas = [f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"# bench_compile: numba {numba.__version__}, dtypes {', '.join(args.dtypes)}, "
          f"best of {args.repeats}")
    print(f"BLAS (threadpoolctl): {'; '.join(blas) or 'none'}\n")
    print("| module | import cold (s) | first calls cold (s) | cold process CPU (s) | "
          "import warm (s) | first calls warm (s) | warm process CPU (s) | "
          "calls again, in process (s) |")
    print("|---|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0, 0.0, 0.0]
    for module in args.modules:
        cold, warm = [], []
        for _ in range(args.repeats):
            cache = tempfile.mkdtemp(prefix="streamq-numba-cache-")
            try:
                cold.append(run_child(module, args.dtypes, cache))
                warm.append(run_child(module, args.dtypes, cache))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        c = min(cold, key=lambda r: r["import"] + r["first"])
        w = min(warm, key=lambda r: r["import"] + r["first"])
        totals[0] += c["import"] + c["first"]
        totals[1] += w["import"] + w["first"]
        totals[2] += c["cpu"]
        totals[3] += w["cpu"]
        print(f"| {module} | {c['import']:.2f} | {c['first']:.2f} | {c['cpu']:.1f} | "
              f"{w['import']:.2f} | {w['first']:.2f} | {w['cpu']:.1f} | "
              f"{min(r['again'] for r in cold):.3f} |")
    print(f"\nall modules, import + first calls: cold {totals[0]:.1f} s wall / {totals[2]:.1f} s "
          f"CPU, warm {totals[1]:.1f} s wall / {totals[3]:.1f} s CPU")
    if args.suite:
        cache = tempfile.mkdtemp(prefix="streamq-numba-cache-")
        try:
            t_cold, c_cold, line_cold = run_suite(cache)
            t_warm, c_warm, line_warm = run_suite(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"\nkernel test files ({', '.join(TEST_FILES)}):")
        print(f"cold cache {t_cold:.1f} s wall, {c_cold:.1f} s CPU ({line_cold}); "
              f"warm cache {t_warm:.1f} s wall, {c_warm:.1f} s CPU ({line_warm})")


if __name__ == "__main__":
    main()
