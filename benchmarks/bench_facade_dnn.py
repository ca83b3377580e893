"""Benchmark: a cuDNN convolution through the CUDA facade vs the kernel provider called directly.

Run (OpenBLAS env unset, as the project's benchmarks require):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_facade_dnn.py
        [--batch 8] [--repeats 9] [--min-time 1.5] [--dtype float32]

For ResNet-50's 3x3 and 1x1 convolution layers at batch 8, every round times
the same forward convolution on the same facade memory three ways, in rotating
order (the machine is shared and noisy; a layer is repeated at least
``--repeats`` times and until each way has run ``--min-time`` seconds):

* ``facade``: ``cudnnConvolutionForward`` on a handle bound to a stream, then
  ``cudaStreamSynchronize``: descriptor and memory checks, the enqueue on the
  stream's queue, the kernel on a CMG worker, the wake-up of the host;
* ``direct``: the provider function ``registry.get("cudnn.convolution_forward")``
  called on the calling thread with the same views and parameters;
* ``kernel on worker``: the same provider call timed inside a host function
  (``cudaLaunchHostFunc``) on the stream: the kernel where the facade runs it,
  without the facade's checks and thread hand-offs.

Prints the facade's fixed cost per call (a tiny convolution, where the kernel
costs almost nothing) and the part of it spent on the host (checks, enqueue),
then a markdown table per layer: the best ms of facade and direct, their ratio
(the target is <= 1.05), the median of the per-round ratios facade / direct
and kernel-on-worker / direct, and 1 + fixed cost /
direct time (the ratio the fixed cost alone predicts). Medians of per-round
ratios are robust to load that hits a whole round; best times are not.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from streamq.cuda_facade import _memory  # noqa: E402
from streamq.cuda_facade import cudnn as dnn  # noqa: E402
from streamq.cuda_facade import runtime as rt  # noqa: E402
from streamq.kernels import registry  # noqa: E402

# (C, K, H=W, R=S, stride, pad): ResNet-50's 3x3 layers, then its 1x1 layers.
LAYERS = [
    (64, 64, 56, 3, 1, 1), (128, 128, 28, 3, 1, 1), (256, 256, 14, 3, 1, 1), (512, 512, 7, 3, 1, 1),
    (128, 128, 56, 3, 2, 1), (256, 256, 28, 3, 2, 1), (512, 512, 14, 3, 2, 1),
    (64, 64, 56, 1, 1, 0), (64, 256, 56, 1, 1, 0), (256, 64, 56, 1, 1, 0), (256, 128, 56, 1, 1, 0),
    (128, 512, 28, 1, 1, 0), (512, 128, 28, 1, 1, 0), (256, 512, 56, 1, 2, 0),
    (512, 256, 28, 1, 1, 0), (256, 1024, 14, 1, 1, 0), (1024, 256, 14, 1, 1, 0),
    (1024, 512, 14, 1, 1, 0), (512, 2048, 7, 1, 1, 0), (2048, 512, 7, 1, 1, 0),
]
DATA = {"float32": (np.float32, dnn.CUDNN_DATA_FLOAT), "float64": (np.float64, dnn.CUDNN_DATA_DOUBLE)}


def ok(result):
    if result[0] != 0:
        raise RuntimeError(f"{result} ({dnn.last_status_detail()})")
    return result[1] if len(result) == 2 else result[1:]


def device_array(shape, dtype, rng):
    """Facade device memory filled with N(0, 1) values: (pointer, numpy view)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    ptr = ok(rt.cudaMalloc(nbytes))
    view = _memory.typed_view(ptr, dtype, shape)
    view[...] = rng.standard_normal(shape)
    return ptr, view


class Layer:
    """One convolution set up for all three ways: facade descriptors and provider arguments."""

    def __init__(self, layer, batch, dtype, data_type, handle, stream, rng):
        C, K, H, R, s, p = layer
        self.name = f"{C}->{K} {H}x{H} {R}x{R}/s{s}"
        P = (H + 2 * p - R) // s + 1
        self.xp, self.x = device_array((batch, C, H, H), dtype, rng)
        self.wp, self.w = device_array((K, C, R, R), dtype, rng)
        self.yp, self.y = device_array((batch, K, P, P), dtype, rng)
        self.xd, self.yd = ok(dnn.cudnnCreateTensorDescriptor()), ok(dnn.cudnnCreateTensorDescriptor())
        ok(dnn.cudnnSetTensor4dDescriptor(self.xd, dnn.CUDNN_TENSOR_NCHW, data_type, batch, C, H, H))
        ok(dnn.cudnnSetTensor4dDescriptor(self.yd, dnn.CUDNN_TENSOR_NCHW, data_type, batch, K, P, P))
        self.wd = ok(dnn.cudnnCreateFilterDescriptor())
        ok(dnn.cudnnSetFilter4dDescriptor(self.wd, data_type, dnn.CUDNN_TENSOR_NCHW, K, C, R, R))
        self.cd = ok(dnn.cudnnCreateConvolutionDescriptor())
        ok(dnn.cudnnSetConvolution2dDescriptor(self.cd, p, p, s, s, 1, 1, dnn.CUDNN_CROSS_CORRELATION,
                                               data_type))
        self.params = dict(pad=(p, p), stride=(s, s), dilation=(1, 1), groups=1,
                           mode="cross_correlation", alpha=1.0, beta=0.0)
        self.handle, self.stream = handle, stream
        self.kernel = registry.get("cudnn.convolution_forward")
        self.inner = 0.0

    def facade(self) -> float:
        start = time.perf_counter()
        ok(dnn.cudnnConvolutionForward(self.handle, 1.0, self.xd, self.xp, self.wd, self.wp, self.cd,
                                       dnn.CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, None, 0,
                                       0.0, self.yd, self.yp))
        ok(rt.cudaStreamSynchronize(self.stream))
        return time.perf_counter() - start

    def direct(self) -> float:
        start = time.perf_counter()
        self.kernel(self.x, self.w, self.y, **self.params)
        return time.perf_counter() - start

    def on_worker(self) -> float:
        """The kernel's own time when run by the stream's worker (a host function)."""
        def host_fn(_):
            self.inner = self.direct()
        ok(rt.cudaLaunchHostFunc(self.stream, host_fn, None))
        ok(rt.cudaStreamSynchronize(self.stream))
        return self.inner

    def free(self):
        for ptr in (self.xp, self.wp, self.yp):
            ok(rt.cudaFree(ptr))


def host_side_cost(layer, calls: int = 100, batches: int = 20) -> float:
    """Seconds per cudnnConvolutionForward call spent on the host (checks and enqueue): the
    calls are enqueued behind a host function that holds the stream; best of ``batches``."""
    best = float("inf")
    for _ in range(batches):
        release = threading.Event()
        ok(rt.cudaLaunchHostFunc(layer.stream, lambda _: release.wait(), None))
        start = time.perf_counter()
        for _ in range(calls):
            ok(dnn.cudnnConvolutionForward(layer.handle, 1.0, layer.xd, layer.xp, layer.wd, layer.wp,
                                           layer.cd, dnn.CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                           None, 0, 0.0, layer.yd, layer.yp))
        best = min(best, (time.perf_counter() - start) / calls)
        release.set()
        ok(rt.cudaStreamSynchronize(layer.stream))
    return best


def rounds(ways, repeats: int, min_time: float) -> np.ndarray:
    """Times (rounds x ways) of the ``ways`` (callables returning seconds), run in rotating
    order each round, after one warm-up each; at least ``repeats`` rounds and until every
    way has run ``min_time`` seconds."""
    for way in ways:
        way()
    times = []
    while len(times) < repeats or min(np.sum(times, axis=0)) < min_time:
        shift = len(times) % len(ways)
        order = list(range(len(ways)))[shift:] + list(range(len(ways)))[:shift]
        row = [0.0] * len(ways)
        for i in order:
            row[i] = ways[i]()
        times.append(row)
    return np.array(times)


def blas_info() -> str:
    from threadpoolctl import threadpool_info
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
                     f"threads={i.get('num_threads')} ({os.path.basename(i.get('filepath', ''))})"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def geo(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=1.5,
                        help="keep repeating a layer until each way ran this many seconds")
    parser.add_argument("--dtype", choices=sorted(DATA), default="float32")
    args = parser.parse_args()
    dtype, data_type = DATA[args.dtype]
    rng = np.random.default_rng(0)
    handle = ok(dnn.cudnnCreate())
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ok(dnn.cudnnSetStream(handle, stream))
    print(f"BLAS: {blas_info()}")
    print(f"load average at start: {os.getloadavg()}")
    print(f"provider order: {registry.providers('cudnn.convolution_forward')}; batch {args.batch}, "
          f"{args.dtype}; >= {args.repeats} rounds and >= {args.min_time} s per way per layer\n")

    # The facade's fixed cost per call (checks, enqueue, two thread hand-offs), measured
    # where the kernel itself costs almost nothing.
    tiny = Layer((8, 8, 8, 1, 1, 0), 1, dtype, data_type, handle, stream, rng)
    t = rounds([tiny.facade, tiny.direct], 500, 0.0)
    fixed = float(np.median(t[:, 0] - t[:, 1]))
    print(f"fixed cost on a tiny 1x8x8x8 1x1 convolution: facade {np.median(t[:, 0]) * 1e6:.1f} us, "
          f"direct {np.median(t[:, 1]) * 1e6:.1f} us (medians of 500 rounds); difference "
          f"{fixed * 1e6:.1f} us per call (best times: {t[:, 0].min() * 1e6:.1f} / "
          f"{t[:, 1].min() * 1e6:.1f} us)")
    print(f"of which host-side checks and enqueue: {host_side_cost(tiny) * 1e6:.1f} us per call "
          f"(best batch of 100 calls enqueued behind a held stream)\n")
    tiny.free()

    print("| layer C->K HxW RxS/s | facade ms | direct ms | facade / direct | median facade / direct "
          "| median kernel-on-worker / direct | 1 + fixed / direct |")
    print("|---|---|---|---|---|---|---|")
    best, med, worker, bound = [], [], [], []
    for spec in LAYERS:
        layer = Layer(spec, args.batch, dtype, data_type, handle, stream, rng)
        t = rounds([layer.facade, layer.direct, layer.on_worker], args.repeats, args.min_time)
        f, d = t[:, 0].min(), t[:, 1].min()
        best.append(f / d)
        med.append(float(np.median(t[:, 0] / t[:, 1])))
        worker.append(float(np.median(t[:, 2] / t[:, 1])))
        bound.append(1 + fixed / d)
        print(f"| {layer.name} | {f * 1e3:.2f} | {d * 1e3:.2f} | {best[-1]:.3f} | {med[-1]:.3f} | "
              f"{worker[-1]:.3f} | {bound[-1]:.3f} |", flush=True)
        layer.free()
    print(f"\ngeometric means over the layers: facade / direct (best times) {geo(best):.3f}, median "
          f"facade / direct {geo(med):.3f}, median kernel-on-worker / direct {geo(worker):.3f}, "
          f"fixed-cost estimate {geo(bound):.3f} (target: facade within 5% of direct)")
    print(f"load average at end: {os.getloadavg()}")
    ok(dnn.cudnnDestroy(handle))
    ok(rt.cudaStreamDestroy(stream))


if __name__ == "__main__":
    main()
