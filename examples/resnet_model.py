"""ResNet-18/50 written the way a cuDNN-based framework is, on streamq's CUDA facade.

Weights, activations and gradients live in facade memory; every forward and
backward step is a cuDNN, cuBLAS or native (ATen) kernel call enqueued on one
stream through ``streamq.cuda_facade`` — nothing is computed with numpy on the
host. Only the host-side weight initialisation and reading the loss cross the
host/device boundary (cudaMemcpy), as in a CUDA program.

The layers keep what their backward pass needs (input, output, saved batch
statistics), like a framework's autograd tape, and write their parameter
gradients into ``layer.grads``; :class:`SGD` updates every parameter with one
multi-tensor ``aten::_foreach_sgd_`` launch.

What makes a step cheap, as in a tuned framework:

* every layer owns its output and gradient buffers and reuses them from step to
  step while the shapes stay the same (stream order makes that safe), so a
  steady-state step allocates nothing; an output stays valid until the layer's
  next forward (a gradient, until its next backward);
* every ReLU is fused into the batch norm before it, and each block's residual sum
  into its last batch norm: cudnnBatchNormalizationForwardTrainingEx with
  CUDNN_BATCHNORM_OPS_BN_ACTIVATION / ..._BN_ADD_ACTIVATION computes
  ``relu(bn(x) [+ shortcut])`` in one pass, and cudnnBatchNormalizationBackwardEx
  applies the ReLU's mask (from the saved output) inside the batch-norm gradient and
  writes the shortcut's gradient, so no separate ReLU or add runs in either direction;
* in backward the body's first convolution accumulates its input gradient onto the
  shortcut's (``beta = 1``).
"""

from __future__ import annotations

import math

import numpy as np

import streamq.cuda_facade as cf
from streamq.cuda_facade import cublas, cudnn
from streamq.cuda_facade import runtime as cudart

F32 = np.float32
_ONE_BLOCK = (1, 1, 1)


def check(result):
    """Unwrap a facade call's ``(status, *results)``; raise if the status is not success."""
    status, *values = result
    if int(status) != 0:
        detail = ""
        for module in (cudnn, cublas):
            getter = getattr(module, "last_status_detail", None)
            if getter is not None and getter():
                detail = f" ({getter()})"
                break
        raise RuntimeError(f"{getattr(status, 'name', status)}{detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class Engine:
    """One device, one stream, and the cuDNN/cuBLAS handles bound to it."""

    def __init__(self, device: int = 0, dtype=F32):
        check(cudart.cudaSetDevice(device))
        self.device = device
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        double = self.dtype == np.float64
        self.cudnn_dtype = (cudnn.cudnnDataType_t.CUDNN_DATA_DOUBLE if double
                            else cudnn.cudnnDataType_t.CUDNN_DATA_FLOAT)
        self.gemm = cublas.cublasDgemm if double else cublas.cublasSgemm
        self.stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.dnn = check(cudnn.cudnnCreate())
        check(cudnn.cudnnSetStream(self.dnn, self.stream))
        self.blas = check(cublas.cublasCreate())
        check(cublas.cublasSetStream(self.blas, self.stream))
        self._descs: dict[tuple, object] = {}
        self.relu_desc = check(cudnn.cudnnCreateActivationDescriptor())
        check(cudnn.cudnnSetActivationDescriptor(self.relu_desc, cudnn.cudnnActivationMode_t.CUDNN_ACTIVATION_RELU,
                                                 cudnn.cudnnNanPropagation_t.CUDNN_NOT_PROPAGATE_NAN, 0.0))

    def empty(self, shape, dtype=None) -> np.ndarray:
        """A numpy view of fresh facade memory on this engine's device (default: the engine's dtype)."""
        return cf.device_array(tuple(shape), self.dtype if dtype is None else dtype, device=self.device)

    def param(self, host: np.ndarray) -> np.ndarray:
        """Facade memory holding ``host`` converted to the engine's dtype."""
        return self.upload(host.astype(self.dtype))

    def upload(self, host: np.ndarray) -> np.ndarray:
        """Facade memory holding a copy of ``host`` (a synchronous cudaMemcpy)."""
        host = np.require(host, requirements="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        dev = self.empty(host.shape, host.dtype)
        check(cudart.cudaMemcpy(dev.ctypes.data, host, host.nbytes,
                                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return dev

    def download(self, dev: np.ndarray) -> np.ndarray:
        """A host copy of facade memory ``dev``, after the stream's work (synchronizes)."""
        check(cudart.cudaStreamSynchronize(self.stream))
        host = np.empty(dev.shape, dev.dtype)
        check(cudart.cudaMemcpy(host, dev.ctypes.data, dev.nbytes,
                                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return host

    def launch(self, op: str, *args, **kwargs) -> None:
        """cudaLaunchKernel of a native (ATen) op on the stream."""
        check(cudart.cudaLaunchKernel(op, _ONE_BLOCK, _ONE_BLOCK, args + (kwargs,), 0, self.stream))

    def tensor_desc(self, shape) -> object:
        """A cached NCHW cuDNN tensor descriptor of the engine's dtype for ``shape`` (1-4 dims, padded to 4)."""
        shape = tuple(int(s) for s in shape) + (1,) * (4 - len(shape))
        desc = self._descs.get(shape)
        if desc is None:
            desc = check(cudnn.cudnnCreateTensorDescriptor())
            check(cudnn.cudnnSetTensor4dDescriptor(desc, cudnn.cudnnTensorFormat_t.CUDNN_TENSOR_NCHW,
                                                   self.cudnn_dtype, *shape))
            self._descs[shape] = desc
        return desc

    def synchronize(self) -> None:
        """Wait for every op enqueued so far."""
        check(cudart.cudaStreamSynchronize(self.stream))


# --------------------------------------------------------------------------- #
# Layers
# --------------------------------------------------------------------------- #

class Buffers:
    """Mixin: facade buffers owned by an object with an ``eng``, reused from step to step."""

    def buffer(self, name: str, shape) -> np.ndarray:
        """Facade memory owned by this object under ``name``, reused while ``shape`` stays the
        same (ops on the one stream run in order, so last step's readers are done before
        this step's writers start)."""
        shape = tuple(int(s) for s in shape)
        cache = self.__dict__.setdefault("_buffers", {})
        buf = cache.get(name)
        if buf is None or buf.shape != shape:
            buf = cache[name] = self.eng.empty(shape)
        return buf


class Layer(Buffers):
    """A differentiable step: ``forward(x) -> y``, ``backward(dy) -> dx``.

    Both take an optional ``acc``: a buffer of the result's shape that the result
    is *added into* (``acc += result``, returned), which is how a residual block
    fuses its sum into the kernels on either side of it. Layers whose kernel has a
    ``beta`` argument do it in the kernel; the others add afterwards.
    """

    params: list[np.ndarray] = []
    grads: list[np.ndarray] = []
    training = True

    def forward(self, x: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
        """The output for input ``x`` (keeps what backward needs), or ``acc`` + it."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray | None:
        """The gradient wrt the last input given the gradient wrt the last output (or
        ``acc`` + it); None where no input gradient is needed."""
        raise NotImplementedError

    def layers(self):
        """This layer and the layers inside it."""
        yield self

    def accumulate(self, result: np.ndarray, acc: np.ndarray | None) -> np.ndarray:
        """``result`` itself, or ``acc += result`` (cudnnAddTensor) when ``acc`` is given."""
        if acc is None:
            return result
        eng = self.eng
        check(cudnn.cudnnAddTensor(eng.dnn, 1.0, eng.tensor_desc(result.shape), result.ctypes.data, 1.0,
                                   eng.tensor_desc(acc.shape), acc.ctypes.data))
        return acc


def _check_acc(acc: np.ndarray | None, shape) -> None:
    """Raise if an accumulation buffer does not have the result's shape."""
    if acc is not None and tuple(acc.shape) != tuple(shape):
        raise ValueError(f"acc must have shape {tuple(shape)}, got {tuple(acc.shape)}")


class Conv2d(Layer):
    """Convolution without bias (ResNet puts batch norm after it)."""

    def __init__(self, eng: Engine, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, *,
                 rng: np.random.Generator, needs_dx: bool = True):
        self.eng, self.cin, self.cout, self.k, self.stride, self.pad = eng, cin, cout, k, stride, pad
        self.needs_dx = needs_dx
        std = math.sqrt(2.0 / (cin * k * k))          # He initialisation
        self.w = eng.param(rng.normal(0.0, std, (cout, cin, k, k)))
        self.dw = eng.empty(self.w.shape)
        self.params, self.grads = [self.w], [self.dw]
        self.wdesc = check(cudnn.cudnnCreateFilterDescriptor())
        check(cudnn.cudnnSetFilter4dDescriptor(self.wdesc, eng.cudnn_dtype,
                                               cudnn.cudnnTensorFormat_t.CUDNN_TENSOR_NCHW, cout, cin, k, k))
        self.cdesc = check(cudnn.cudnnCreateConvolutionDescriptor())
        check(cudnn.cudnnSetConvolution2dDescriptor(self.cdesc, pad, pad, stride, stride, 1, 1,
                                                    cudnn.cudnnConvolutionMode_t.CUDNN_CROSS_CORRELATION,
                                                    eng.cudnn_dtype))

    def out_shape(self, shape):
        """The output shape (N, K, P, Q) for an input of ``shape`` (N, C, H, W)."""
        n, _, h, w = shape
        p = (h + 2 * self.pad - self.k) // self.stride + 1
        q = (w + 2 * self.pad - self.k) // self.stride + 1
        return (n, self.cout, p, q)

    def forward(self, x, acc=None):
        eng = self.eng
        shape = self.out_shape(x.shape)
        _check_acc(acc, shape)
        y = self.buffer("y", shape) if acc is None else acc
        check(cudnn.cudnnConvolutionForward(
            eng.dnn, 1.0, eng.tensor_desc(x.shape), x.ctypes.data, self.wdesc, self.w.ctypes.data, self.cdesc,
            cudnn.cudnnConvolutionFwdAlgo_t.CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, None, 0,
            0.0 if acc is None else 1.0, eng.tensor_desc(y.shape), y.ctypes.data))
        self.x = x
        return y

    def backward(self, dy, acc=None):
        eng, x = self.eng, self.x
        _check_acc(acc, x.shape)
        check(cudnn.cudnnConvolutionBackwardFilter(
            eng.dnn, 1.0, eng.tensor_desc(x.shape), x.ctypes.data, eng.tensor_desc(dy.shape), dy.ctypes.data,
            self.cdesc, cudnn.cudnnConvolutionBwdFilterAlgo_t.CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, None, 0,
            0.0, self.wdesc, self.dw.ctypes.data))
        if not self.needs_dx:
            return None
        dx = self.buffer("dx", x.shape) if acc is None else acc
        check(cudnn.cudnnConvolutionBackwardData(
            eng.dnn, 1.0, self.wdesc, self.w.ctypes.data, eng.tensor_desc(dy.shape), dy.ctypes.data,
            self.cdesc, cudnn.cudnnConvolutionBwdDataAlgo_t.CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, None, 0,
            0.0 if acc is None else 1.0, eng.tensor_desc(x.shape), dx.ctypes.data))
        return dx


class BatchNorm2d(Layer):
    """Spatial batch normalisation: batch statistics in training, running ones in eval.

    ``relu=True`` fuses the ReLU that follows it (CUDNN_BATCHNORM_OPS_BN_ACTIVATION);
    :meth:`forward_add_relu` / :meth:`backward_add_relu` fuse a residual sum as well
    (..._BN_ADD_ACTIVATION). The fused backward takes the ReLU's mask from the output y.
    """

    MOMENTUM = 0.1      # cuDNN's exponentialAverageFactor, torch's momentum
    EPS = 1e-5

    def __init__(self, eng: Engine, c: int, *, zero_init: bool = False, relu: bool = False):
        self.eng, self.c, self.relu = eng, c, relu
        self.scale = eng.param(np.full((1, c, 1, 1), 0.0 if zero_init else 1.0))
        self.bias = eng.param(np.zeros((1, c, 1, 1)))
        self.running_mean = eng.param(np.zeros((1, c, 1, 1)))
        self.running_var = eng.param(np.ones((1, c, 1, 1)))
        self.save_mean = eng.empty((1, c, 1, 1))
        self.save_inv = eng.empty((1, c, 1, 1))
        self.dscale = eng.empty((1, c, 1, 1))
        self.dbias = eng.empty((1, c, 1, 1))
        self.params, self.grads = [self.scale, self.bias], [self.dscale, self.dbias]
        self.mode = cudnn.cudnnBatchNormMode_t.CUDNN_BATCHNORM_SPATIAL

    def forward(self, x, acc=None):
        eng = self.eng
        _check_acc(acc, x.shape)
        if self.relu:
            return self.accumulate(self._fused_forward(x, None), acc)
        y = self.buffer("y", x.shape) if acc is None else acc
        beta = 0.0 if acc is None else 1.0          # y = bn(x) + beta * y: the fused residual sum
        xd, bd = eng.tensor_desc(x.shape), eng.tensor_desc((1, self.c, 1, 1))
        if self.training:
            check(cudnn.cudnnBatchNormalizationForwardTraining(
                eng.dnn, self.mode, 1.0, beta, xd, x.ctypes.data, xd, y.ctypes.data, bd,
                self.scale.ctypes.data, self.bias.ctypes.data, self.MOMENTUM, self.running_mean.ctypes.data,
                self.running_var.ctypes.data, self.EPS, self.save_mean.ctypes.data, self.save_inv.ctypes.data))
        else:
            self._inference(x, y, beta)
        self.x = x
        return y

    def forward_add_relu(self, x, z):
        """relu(bn(x) + z), the end of a residual block, in one kernel (training)."""
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"z must have shape {tuple(x.shape)}, got {tuple(z.shape)}")
        return self._fused_forward(x, z)

    def _inference(self, x, y, beta):
        eng = self.eng
        xd, bd = eng.tensor_desc(x.shape), eng.tensor_desc((1, self.c, 1, 1))
        check(cudnn.cudnnBatchNormalizationForwardInference(
            eng.dnn, self.mode, 1.0, beta, xd, x.ctypes.data, xd, y.ctypes.data, bd,
            self.scale.ctypes.data, self.bias.ctypes.data, self.running_mean.ctypes.data,
            self.running_var.ctypes.data, self.EPS))

    def _fused_forward(self, x, z):
        eng = self.eng
        y = self.buffer("y", x.shape)
        xd, bd = eng.tensor_desc(x.shape), eng.tensor_desc((1, self.c, 1, 1))
        if self.training:
            ops = (cudnn.CUDNN_BATCHNORM_OPS_BN_ACTIVATION if z is None
                   else cudnn.CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION)
            check(cudnn.cudnnBatchNormalizationForwardTrainingEx(
                eng.dnn, self.mode, ops, 1.0, 0.0, xd, x.ctypes.data, None if z is None else xd,
                None if z is None else z.ctypes.data, xd, y.ctypes.data, bd, self.scale.ctypes.data,
                self.bias.ctypes.data, self.MOMENTUM, self.running_mean.ctypes.data,
                self.running_var.ctypes.data, self.EPS, self.save_mean.ctypes.data, self.save_inv.ctypes.data,
                eng.relu_desc, None, 0, None, 0))
        else:                                       # no fused inference call in cuDNN
            self._inference(x, y, 0.0)
            if z is not None:
                check(cudnn.cudnnAddTensor(eng.dnn, 1.0, xd, z.ctypes.data, 1.0, xd, y.ctypes.data))
            check(cudnn.cudnnActivationForward(eng.dnn, eng.relu_desc, 1.0, xd, y.ctypes.data, 0.0, xd,
                                               y.ctypes.data))
        self.x, self.y = x, y
        return y

    def backward(self, dy, acc=None):
        eng, x = self.eng, self.x
        _check_acc(acc, x.shape)
        dx = self.buffer("dx", x.shape) if acc is None else acc
        if self.relu:
            return self._fused_backward(dy, None, dx, 0.0 if acc is None else 1.0)
        xd, bd = eng.tensor_desc(x.shape), eng.tensor_desc((1, self.c, 1, 1))
        check(cudnn.cudnnBatchNormalizationBackward(
            eng.dnn, self.mode, 1.0, 0.0 if acc is None else 1.0, 1.0, 0.0, xd, x.ctypes.data, xd,
            dy.ctypes.data, xd, dx.ctypes.data, bd, self.scale.ctypes.data, self.dscale.ctypes.data,
            self.dbias.ctypes.data, self.EPS, self.save_mean.ctypes.data, self.save_inv.ctypes.data))
        return dx

    def backward_add_relu(self, dy, dz):
        """The gradient wrt x of :meth:`forward_add_relu`; the one wrt z (dy masked by the
        ReLU) is written into ``dz``."""
        _check_acc(dz, self.x.shape)
        return self._fused_backward(dy, dz, self.buffer("dx", self.x.shape), 0.0)

    def _fused_backward(self, dy, dz, dx, beta):
        eng, x = self.eng, self.x
        xd, bd = eng.tensor_desc(x.shape), eng.tensor_desc((1, self.c, 1, 1))
        ops = (cudnn.CUDNN_BATCHNORM_OPS_BN_ACTIVATION if dz is None
               else cudnn.CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION)
        check(cudnn.cudnnBatchNormalizationBackwardEx(
            eng.dnn, self.mode, ops, 1.0, beta, 1.0, 0.0, xd, x.ctypes.data, xd, self.y.ctypes.data, xd,
            dy.ctypes.data, None if dz is None else xd, None if dz is None else dz.ctypes.data, xd,
            dx.ctypes.data, bd, self.scale.ctypes.data, self.bias.ctypes.data, self.dscale.ctypes.data,
            self.dbias.ctypes.data, self.EPS, self.save_mean.ctypes.data, self.save_inv.ctypes.data,
            eng.relu_desc, None, 0, None, 0))
        return dx


class ReLU(Layer):
    """max(x, 0) through cudnnActivationForward/Backward.

    ``inplace=True`` overwrites the input with the output and the incoming gradient
    with the outgoing one (torch's ``ReLU(inplace=True)``): only for an input that
    nothing else reads afterwards, such as a batch norm's output. Backward needs
    only the output (x > 0 exactly where y > 0), so nothing else is kept.
    """

    def __init__(self, eng: Engine, *, inplace: bool = False):
        self.eng, self.inplace = eng, inplace
        self.desc = check(cudnn.cudnnCreateActivationDescriptor())
        check(cudnn.cudnnSetActivationDescriptor(self.desc, cudnn.cudnnActivationMode_t.CUDNN_ACTIVATION_RELU,
                                                 cudnn.cudnnNanPropagation_t.CUDNN_NOT_PROPAGATE_NAN, 0.0))

    def forward(self, x, acc=None):
        eng = self.eng
        y = x if self.inplace else self.buffer("y", x.shape)
        d = eng.tensor_desc(x.shape)
        check(cudnn.cudnnActivationForward(eng.dnn, self.desc, 1.0, d, x.ctypes.data, 0.0, d, y.ctypes.data))
        self.y = y
        return self.accumulate(y, acc)

    def backward(self, dy, acc=None):
        eng = self.eng
        dx = dy if self.inplace else self.buffer("dx", dy.shape)
        d = eng.tensor_desc(dy.shape)
        check(cudnn.cudnnActivationBackward(eng.dnn, self.desc, 1.0, d, self.y.ctypes.data, d, dy.ctypes.data,
                                            d, self.y.ctypes.data, 0.0, d, dx.ctypes.data))
        return self.accumulate(dx, acc)


class MaxPool2d(Layer):
    """Max pooling (3x3, stride 2, padding 1 in the ResNet stem)."""

    def __init__(self, eng: Engine, k: int = 3, stride: int = 2, pad: int = 1):
        self.eng, self.k, self.stride, self.pad = eng, k, stride, pad
        self.desc = check(cudnn.cudnnCreatePoolingDescriptor())
        check(cudnn.cudnnSetPooling2dDescriptor(self.desc, cudnn.cudnnPoolingMode_t.CUDNN_POOLING_MAX,
                                                cudnn.cudnnNanPropagation_t.CUDNN_NOT_PROPAGATE_NAN,
                                                k, k, pad, pad, stride, stride))

    def forward(self, x, acc=None):
        eng = self.eng
        n, c, h, w = x.shape
        p = (h + 2 * self.pad - self.k) // self.stride + 1
        q = (w + 2 * self.pad - self.k) // self.stride + 1
        y = self.buffer("y", (n, c, p, q))
        check(cudnn.cudnnPoolingForward(eng.dnn, self.desc, 1.0, eng.tensor_desc(x.shape), x.ctypes.data, 0.0,
                                        eng.tensor_desc(y.shape), y.ctypes.data))
        self.x, self.y = x, y
        return self.accumulate(y, acc)

    def backward(self, dy, acc=None):
        eng = self.eng
        _check_acc(acc, self.x.shape)
        dx = self.buffer("dx", self.x.shape) if acc is None else acc
        xd, yd = eng.tensor_desc(self.x.shape), eng.tensor_desc(dy.shape)
        check(cudnn.cudnnPoolingBackward(eng.dnn, self.desc, 1.0, yd, self.y.ctypes.data, yd, dy.ctypes.data,
                                         xd, self.x.ctypes.data, 0.0 if acc is None else 1.0, xd,
                                         dx.ctypes.data))
        return dx


class GlobalAvgPool(Layer):
    """Average over H and W (aten::_adaptive_avg_pool2d to 1x1), flattened to (N, C)."""

    def __init__(self, eng: Engine):
        self.eng = eng

    def forward(self, x, acc=None):
        n, c = x.shape[:2]
        y = self.buffer("y", (n, c, 1, 1))
        self.eng.launch("aten::_adaptive_avg_pool2d", x, (1, 1), out=y)
        self.x = x
        return self.accumulate(y.reshape(n, c), acc)

    def backward(self, dy, acc=None):
        dx = self.buffer("dx", self.x.shape)
        self.eng.launch("aten::_adaptive_avg_pool2d_backward", dy.reshape(dy.shape + (1, 1)), self.x, out=dx)
        return self.accumulate(dx, acc)


class Linear(Layer):
    """y = x W^T + b with cublas{S,D}gemm (column-major, as cuBLAS sees row-major arrays)."""

    def __init__(self, eng: Engine, cin: int, cout: int, *, rng: np.random.Generator):
        self.eng, self.cin, self.cout = eng, cin, cout
        bound = 1.0 / math.sqrt(cin)
        self.w = eng.param(rng.uniform(-bound, bound, (cout, cin)))
        self.b = eng.param(rng.uniform(-bound, bound, (1, cout, 1, 1)))
        self.dw = eng.empty(self.w.shape)
        self.db = eng.empty(self.b.shape)
        self.params, self.grads = [self.w, self.b], [self.dw, self.db]

    def forward(self, x, acc=None):
        eng = self.eng
        n = x.shape[0]
        _check_acc(acc, (n, self.cout))
        y = self.buffer("y", (n, self.cout)) if acc is None else acc
        # Row-major y (n, out) is column-major y^T (out, n) = W (out, in) . x^T (in, n);
        # W row-major is W^T column-major (in x out), hence OP_T with lda = in.
        check(eng.gemm(eng.blas, cublas.cublasOperation_t.CUBLAS_OP_T,
                       cublas.cublasOperation_t.CUBLAS_OP_N, self.cout, n, self.cin, 1.0,
                       self.w.ctypes.data, self.cin, x.ctypes.data, self.cin, 0.0 if acc is None else 1.0,
                       y.ctypes.data, self.cout))
        check(cudnn.cudnnAddTensor(eng.dnn, 1.0, eng.tensor_desc(self.b.shape), self.b.ctypes.data, 1.0,
                                   eng.tensor_desc((n, self.cout)), y.ctypes.data))
        self.x = x
        return y

    def backward(self, dy, acc=None):
        eng, x = self.eng, self.x
        n = x.shape[0]
        _check_acc(acc, x.shape)
        op_n, op_t = cublas.cublasOperation_t.CUBLAS_OP_N, cublas.cublasOperation_t.CUBLAS_OP_T
        # dW (out, in) = dy^T x  <=>  column-major dW^T (in, out) = x^T (in, n) . dy (n, out)
        check(eng.gemm(eng.blas, op_n, op_t, self.cin, self.cout, n, 1.0, x.ctypes.data, self.cin,
                       dy.ctypes.data, self.cout, 0.0, self.dw.ctypes.data, self.cin))
        eng.launch("aten::sum", dy, [0], False, out=self.db.reshape(self.cout))
        # dx (n, in) = dy W  <=>  column-major dx^T (in, n) = W^T (in, out) . dy^T (out, n)
        dx = self.buffer("dx", (n, self.cin)) if acc is None else acc
        check(eng.gemm(eng.blas, op_n, op_n, self.cin, n, self.cout, 1.0, self.w.ctypes.data,
                       self.cin, dy.ctypes.data, self.cout, 0.0 if acc is None else 1.0, dx.ctypes.data,
                       self.cin))
        return dx


class Sequential(Layer):
    """Layers applied in order; ``acc`` goes to the last layer in forward, the first in backward."""

    def __init__(self, *layers: Layer):
        self.children = list(layers)

    def forward(self, x, acc=None):
        last = len(self.children) - 1
        for i, layer in enumerate(self.children):
            x = layer.forward(x, acc if i == last else None)
        return x

    def backward(self, dy, acc=None):
        for i, layer in reversed(list(enumerate(self.children))):
            dy = layer.backward(dy, acc if i == 0 else None)
        return dy

    def layers(self):
        yield self
        for child in self.children:
            yield from child.layers()


class Residual(Layer):
    """relu(body(x) + shortcut(x)): ResNet's basic and bottleneck blocks.

    The body's last layer is a batch norm that adds the shortcut's output (x itself
    for an identity shortcut) and applies the block's ReLU in the same kernel
    (:meth:`BatchNorm2d.forward_add_relu`). Backward: that batch norm writes the
    gradient of the sum into the block's ``dz`` buffer, the shortcut runs on it, and
    the body's first layer accumulates its input gradient onto the shortcut's (for an
    identity shortcut, onto ``dz`` itself).
    """

    def __init__(self, eng: Engine, body: Sequential, shortcut: Sequential | None):
        if not isinstance(body.children[-1], BatchNorm2d) or body.children[-1].relu:
            raise ValueError("the body must end with a BatchNorm2d without relu")
        self.eng, self.body, self.shortcut = eng, body, shortcut

    def forward(self, x, acc=None):
        *front, last = self.body.children
        z = x if self.shortcut is None else self.shortcut.forward(x)
        h = x
        for layer in front:
            h = layer.forward(h)
        return self.accumulate(last.forward_add_relu(h, z), acc)

    def backward(self, dy, acc=None):
        *front, last = self.body.children
        dz = self.buffer("dz", dy.shape)
        dh = last.backward_add_relu(dy, dz)
        base = dz if self.shortcut is None else self.shortcut.backward(dz)
        for i in range(len(front) - 1, -1, -1):
            dh = front[i].backward(dh, base if i == 0 else None)
        return self.accumulate(dh, acc)

    def layers(self):
        yield self
        yield from self.body.layers()
        if self.shortcut is not None:
            yield from self.shortcut.layers()


def basic_block(eng, cin, cout, stride, rng):
    """Two 3x3 convolutions (ResNet-18/34)."""
    body = Sequential(Conv2d(eng, cin, cout, 3, stride, 1, rng=rng), BatchNorm2d(eng, cout, relu=True),
                      Conv2d(eng, cout, cout, 3, 1, 1, rng=rng), BatchNorm2d(eng, cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(Conv2d(eng, cin, cout, 1, stride, 0, rng=rng), BatchNorm2d(eng, cout))
    return Residual(eng, body, shortcut), cout


def bottleneck_block(eng, cin, width, stride, rng):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand x4 (ResNet-50)."""
    cout = width * 4
    body = Sequential(Conv2d(eng, cin, width, 1, 1, 0, rng=rng), BatchNorm2d(eng, width, relu=True),
                      Conv2d(eng, width, width, 3, stride, 1, rng=rng), BatchNorm2d(eng, width, relu=True),
                      Conv2d(eng, width, cout, 1, 1, 0, rng=rng), BatchNorm2d(eng, cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(Conv2d(eng, cin, cout, 1, stride, 0, rng=rng), BatchNorm2d(eng, cout))
    return Residual(eng, body, shortcut), cout


ARCHITECTURES = {
    18: (basic_block, (2, 2, 2, 2)),
    34: (basic_block, (3, 4, 6, 3)),
    50: (bottleneck_block, (3, 4, 6, 3)),
}


class ResNet(Sequential):
    """ResNet-{18,34,50}: stem, four stages, global average pool, fully connected layer.

    ``small=True`` is the 32x32 variant: a 3x3 stride-1 stem without max pool.
    ``width`` is the first stage's channel count (64 in the paper).
    """

    def __init__(self, eng: Engine, depth: int = 18, classes: int = 10, *, width: int = 64,
                 small: bool = False, seed: int = 0, in_channels: int = 3):
        if depth not in ARCHITECTURES:
            raise ValueError(f"depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        rng = np.random.default_rng(seed)
        block, counts = ARCHITECTURES[depth]
        if small:
            stem = [Conv2d(eng, in_channels, width, 3, 1, 1, rng=rng, needs_dx=False),
                    BatchNorm2d(eng, width, relu=True)]
        else:
            stem = [Conv2d(eng, in_channels, width, 7, 2, 3, rng=rng, needs_dx=False),
                    BatchNorm2d(eng, width, relu=True), MaxPool2d(eng)]
        layers, cin = stem, width
        for stage, count in enumerate(counts):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blk, cin = block(eng, cin, width * 2 ** stage, stride, rng)
                layers.append(blk)
        layers += [GlobalAvgPool(eng), Linear(eng, cin, classes, rng=rng)]
        super().__init__(*layers)
        self.eng = eng

    def parameters(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every parameter and its gradient buffer, in layer order."""
        params, grads = [], []
        for layer in self.layers():
            params += layer.params
            grads += layer.grads
        return params, grads

    def train(self, mode: bool = True) -> None:
        """Training mode (batch statistics) or eval mode (running statistics)."""
        for layer in self.layers():
            layer.training = mode


class CrossEntropy(Buffers):
    """Softmax cross-entropy, mean over the batch: aten::_log_softmax + aten::nll_loss."""

    def __init__(self, eng: Engine):
        self.eng = eng
        self.loss = eng.empty(())
        self.total_weight = eng.empty(())
        self.one = eng.param(np.ones(()))

    def forward(self, logits: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The loss, a 0-d array in facade memory (read it with ``Engine.download``)."""
        eng = self.eng
        self.logp = self.buffer("logp", logits.shape)
        self.target = target
        eng.launch("aten::_log_softmax", logits, 1, False, out=self.logp)
        eng.launch("aten::nll_loss_forward", self.logp, target, None, "mean", -100,
                   output=self.loss, total_weight=self.total_weight)
        return self.loss

    def backward(self) -> np.ndarray:
        """The gradient of the loss wrt the logits."""
        eng = self.eng
        dlogp = self.buffer("dlogp", self.logp.shape)
        eng.launch("aten::nll_loss_backward", self.one, self.logp, self.target, None, "mean", -100,
                   self.total_weight, grad_input=dlogp)
        dlogits = self.buffer("dlogits", self.logp.shape)
        eng.launch("aten::_log_softmax_backward_data", dlogp, self.logp, 1, eng.dtype, out=dlogits)
        return dlogits


class SGD:
    """SGD with momentum and weight decay, one multi-tensor launch per step (torch.optim.SGD's rule)."""

    def __init__(self, eng: Engine, params, grads, *, lr: float, momentum: float = 0.9,
                 weight_decay: float = 1e-4):
        self.eng, self.params, self.grads = eng, list(params), list(grads)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers = [eng.empty(p.shape, p.dtype) for p in self.params]
        self.first_step = True

    def step(self) -> None:
        """Update every parameter from its gradient."""
        self.eng.launch("aten::_foreach_sgd_", self.params, self.grads, self.buffers, lr=self.lr,
                        momentum=self.momentum, weight_decay=self.weight_decay, first_step=self.first_step)
        self.first_step = False
