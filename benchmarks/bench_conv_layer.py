"""The research's conv2d-layer experiment: images/s of one convolution over batch sizes, per engine.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv_layer.py [--quick]

runs only the ``conv`` and ``passes`` experiments of ``bench_resnet.py`` (which see for the
engines, thread settings, allocator rule and output files). This module also holds what a
worker subprocess runs for them: :func:`run`.

* ``conv``: the forward convolution of each layer in ``LAYERS`` at each batch size; the best of
  several repeats (fewer for big batches, and at most ``MAX_S`` seconds per point), as images/s.
* ``passes``: forward, backward-data and backward-filter of each layer at one batch size, best ms.

streamq runs the layer as the ResNet example does (``resnet_model.Conv2d`` on an ``Engine``:
cuDNN calls on a facade stream, then a stream synchronize); torch runs
``torch.nn.functional.conv2d`` and ``torch.ops.aten.convolution_backward`` under ``no_grad``.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: name -> (C, K, H=W, R=S, stride, pad): ResNet-50's 3x3 layer of stage 1 and its 1x1 expansion.
LAYERS = {
    "3x3 64->64 56x56": (64, 64, 56, 3, 1, 1),
    "1x1 64->256 56x56": (64, 256, 56, 1, 1, 0),
}
LAYER_NAMES = list(LAYERS)
#: Seconds of timed calls per (layer, batch) point, at most (at least two calls are timed).
MAX_S = 8.0


def repeats_for(batch: int) -> int:
    """Timed calls per point: fewer for big batches (each call is longer)."""
    return 10 if batch <= 4 else 6 if batch <= 16 else 3


def best_time(fn, reps: int, max_s: float = MAX_S) -> float:
    """Best wall time of ``fn()`` over up to ``reps`` calls (at least 2, stopping after ``max_s``)."""
    fn()                                   # warm-up: JIT, workspaces, first-touch of pages
    best, spent, done = float("inf"), 0.0, 0
    while done < reps and (done < 2 or spent < max_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, done = min(best, dt), spent + dt, done + 1
    return best


class _StreamqLayer:
    """A layer as the ResNet example runs it: facade memory, cuDNN calls on one stream."""

    def __init__(self, geometry, batch: int):
        import numpy as np
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
        import resnet_model as rm
        from streamq.cuda_facade import cudnn
        self.rm, self.cudnn = rm, cudnn
        c, k, h, r, stride, pad = geometry
        if not hasattr(_StreamqLayer, "eng"):
            _StreamqLayer.eng = rm.Engine(0)
        eng = self.eng
        rng = np.random.default_rng(batch)
        self.conv = rm.Conv2d(eng, c, k, r, stride, pad, rng=rng)
        self.x = eng.upload(rng.standard_normal((batch, c, h, h), dtype=np.float32))
        self.dy = eng.upload(rng.standard_normal(self.conv.out_shape(self.x.shape), dtype=np.float32))
        self.dx = eng.empty(self.x.shape)

    def forward(self):
        self.conv.forward(self.x)
        self.eng.synchronize()

    def backward_data(self):
        eng, cv, dnn = self.eng, self.conv, self.cudnn
        self.rm.check(dnn.cudnnConvolutionBackwardData(
            eng.dnn, 1.0, cv.wdesc, cv.w.ctypes.data, eng.tensor_desc(self.dy.shape), self.dy.ctypes.data,
            cv.cdesc, dnn.cudnnConvolutionBwdDataAlgo_t.CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, None, 0, 0.0,
            eng.tensor_desc(self.x.shape), self.dx.ctypes.data))
        eng.synchronize()

    def backward_filter(self):
        eng, cv, dnn = self.eng, self.conv, self.cudnn
        self.rm.check(dnn.cudnnConvolutionBackwardFilter(
            eng.dnn, 1.0, eng.tensor_desc(self.x.shape), self.x.ctypes.data, eng.tensor_desc(self.dy.shape),
            self.dy.ctypes.data, cv.cdesc, dnn.cudnnConvolutionBwdFilterAlgo_t.CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            None, 0, 0.0, cv.wdesc, cv.dw.ctypes.data))
        eng.synchronize()


class _TorchLayer:
    """The same layer in PyTorch (oneDNN or native, as the worker set it up), NCHW."""

    def __init__(self, geometry, batch: int):
        import torch
        c, k, h, r, stride, pad = geometry
        g = torch.Generator().manual_seed(batch)
        self.torch, self.stride, self.pad = torch, stride, pad
        self.x = torch.randn(batch, c, h, h, generator=g)
        self.w = torch.randn(k, c, r, r, generator=g) * (2.0 / (c * r * r)) ** 0.5
        with torch.no_grad():
            self.dy = torch.randn_like(self.forward_value())

    def forward_value(self):
        return self.torch.nn.functional.conv2d(self.x, self.w, stride=self.stride, padding=self.pad)

    def forward(self):
        with self.torch.no_grad():
            self.forward_value()

    def _backward(self, mask):
        with self.torch.no_grad():
            self.torch.ops.aten.convolution_backward(
                self.dy, self.x, self.w, None, [self.stride] * 2, [self.pad] * 2, [1, 1], False, [0, 0], 1, mask)

    def backward_data(self):
        self._backward([True, False, False])

    def backward_filter(self):
        self._backward([False, True, False])


def run(spec: dict) -> dict:
    """Worker body for the ``conv`` and ``passes`` experiments (engine already set up)."""
    from bench_resnet import load
    cls = _StreamqLayer if spec["engine"] == "streamq" else _TorchLayer
    rows = []
    if spec["experiment"] == "conv":
        for name in spec["layers"]:
            for n in spec["batches"]:
                layer = cls(LAYERS[name], n)
                t = best_time(layer.forward, repeats_for(n))
                rows.append({"layer": name, "batch": n, "img_s": n / t, "ms": t * 1e3, "load": load()})
                del layer
    else:
        n = spec["batch"]
        for name in spec["layers"]:
            layer = cls(LAYERS[name], n)
            for pass_name in ("forward", "backward_data", "backward_filter"):
                t = best_time(getattr(layer, pass_name), repeats_for(n))
                rows.append({"layer": name, "batch": n, "pass": pass_name, "ms": t * 1e3, "load": load()})
    return {"rows": rows}


def main(argv=None) -> int:
    import bench_resnet
    argv = list(sys.argv[1:] if argv is None else argv)
    return bench_resnet.main(argv + ["--only", "conv", "passes"])


if __name__ == "__main__":
    sys.exit(main())
