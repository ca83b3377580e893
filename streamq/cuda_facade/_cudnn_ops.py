"""cuDNN pooling, activation, softmax and tensor operations (add, op, transform, scale, set).

Each function checks its descriptors against each other and against memory,
then enqueues one kernel-registry op on the handle's stream. Element-wise
operations may run in place (output = input, same pointer and strides); a
partial overlap is CUDNN_STATUS_BAD_PARAM.
"""

from __future__ import annotations

import numpy as np

from ._cudnn_common import alpha_beta, disjoint, enqueue, in_place_or_disjoint, \
    same_dims, same_dtype
from ._cudnn_descriptors import cudnnActivationDescriptor_t, cudnnOpTensorDescriptor_t, \
    cudnnPoolingDescriptor_t, pooling_output_dims
from ._cudnn_tensors import tensor_view
from ._cudnn_types import LIB, cudnnActivationMode_t, cudnnDataType_t, cudnnOpTensorOp_t, \
    cudnnPoolingMode_t, cudnnSoftmaxAlgorithm_t, cudnnSoftmaxMode_t, live_handle

__all__ = ["cudnnPoolingForward", "cudnnPoolingBackward", "cudnnActivationForward",
           "cudnnActivationBackward", "cudnnSoftmaxForward", "cudnnSoftmaxBackward",
           "cudnnAddTensor", "cudnnOpTensor", "cudnnTransformTensor", "cudnnScaleTensor",
           "cudnnSetTensor"]

_POOL_MODES = {
    cudnnPoolingMode_t.CUDNN_POOLING_MAX: "max",
    cudnnPoolingMode_t.CUDNN_POOLING_MAX_DETERMINISTIC: "max_deterministic",
    cudnnPoolingMode_t.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING: "average_count_include_padding",
    cudnnPoolingMode_t.CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING: "average_count_exclude_padding",
}
_ACT = cudnnActivationMode_t
_ACT_MODES = {_ACT.CUDNN_ACTIVATION_SIGMOID: "sigmoid", _ACT.CUDNN_ACTIVATION_RELU: "relu",
              _ACT.CUDNN_ACTIVATION_TANH: "tanh", _ACT.CUDNN_ACTIVATION_CLIPPED_RELU: "clipped_relu",
              _ACT.CUDNN_ACTIVATION_ELU: "elu", _ACT.CUDNN_ACTIVATION_SWISH: "swish"}
_OPS = {cudnnOpTensorOp_t.CUDNN_OP_TENSOR_ADD: "add", cudnnOpTensorOp_t.CUDNN_OP_TENSOR_MUL: "mul",
        cudnnOpTensorOp_t.CUDNN_OP_TENSOR_MIN: "min", cudnnOpTensorOp_t.CUDNN_OP_TENSOR_MAX: "max",
        cudnnOpTensorOp_t.CUDNN_OP_TENSOR_SQRT: "sqrt", cudnnOpTensorOp_t.CUDNN_OP_TENSOR_NOT: "not"}
_UNARY = (cudnnOpTensorOp_t.CUDNN_OP_TENSOR_SQRT, cudnnOpTensorOp_t.CUDNN_OP_TENSOR_NOT)


def _if(beta: float, view: np.ndarray) -> list:
    """``[view]`` when the output is read (beta != 0), for the log's read set."""
    return [view] if beta else []


# -- pooling ------------------------------------------------------------------------------------------

def _pooling(poolingDesc, x_shape):
    pool = cudnnPoolingDescriptor_t.live(poolingDesc, "poolingDesc")
    out = pooling_output_dims(pool, x_shape)
    if pool.pad[0] >= pool.window[0] or pool.pad[1] >= pool.window[1]:
        raise LIB.unsupported(f"padding {pool.pad} must be smaller than the window {pool.window}")
    params = dict(mode=_POOL_MODES[pool.mode], window=pool.window, pad=pool.pad, stride=pool.stride)
    return out, params


@LIB.api()
def cudnnPoolingForward(handle, poolingDesc, alpha, xDesc, x, beta, yDesc, y):
    """y = alpha * pool(x) + beta * y; y must have cudnnGetPooling2dForwardOutputDim's dims.

    NaN always propagates through max pooling (CUDNN_PROPAGATE_NAN behaviour,
    whatever the descriptor's NaN option)."""
    h = live_handle(handle)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    dtype = same_dtype(x=xv, y=yv)
    out, params = _pooling(poolingDesc, xv.shape)
    if yv.shape != out:
        raise LIB.bad(f"yDesc has dimensions {yv.shape} but pooling gives {out}")
    disjoint("y", yv, x=xv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.pooling_forward", xv, yv, **params, alpha=a, beta=b,
            reads=[xv] + _if(b, yv), writes=[yv])


@LIB.api()
def cudnnPoolingBackward(handle, poolingDesc, alpha, yDesc, y, dyDesc, dy, xDesc, x, beta, dxDesc,
                         dx):
    """dx = alpha * dL/dx + beta * dx from dy; max pooling routes each gradient to the
    first maximum of its window (recomputed from x)."""
    h = live_handle(handle)
    yv, dyv = tensor_view(yDesc, y, "y"), tensor_view(dyDesc, dy, "dy")
    xv, dxv = tensor_view(xDesc, x, "x"), tensor_view(dxDesc, dx, "dx")
    dtype = same_dtype(x=xv, y=yv, dy=dyv, dx=dxv)
    out, params = _pooling(poolingDesc, xv.shape)
    same_dims(x=xv, dx=dxv)
    for name, view in (("y", yv), ("dy", dyv)):
        if view.shape != out:
            raise LIB.bad(f"{name}Desc has dimensions {view.shape} but pooling gives {out}")
    disjoint("dx", dxv, x=xv, y=yv, dy=dyv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.pooling_backward", yv, dyv, xv, dxv, **params, alpha=a, beta=b,
            reads=[dyv, xv] + _if(b, dxv), writes=[dxv])


# -- activation ---------------------------------------------------------------------------------------

def _activation(activationDesc) -> dict:
    act = cudnnActivationDescriptor_t.live(activationDesc, "activationDesc")
    if act.mode == _ACT.CUDNN_ACTIVATION_IDENTITY:
        raise LIB.bad("CUDNN_ACTIVATION_IDENTITY works only with "
                      "cudnnConvolutionBiasActivationForward, not here")
    coef = act.swish_beta if act.mode == _ACT.CUDNN_ACTIVATION_SWISH else act.coef
    if not np.isfinite(coef):
        raise LIB.bad(f"the activation's coef must be finite, got {coef}")
    if act.mode == _ACT.CUDNN_ACTIVATION_CLIPPED_RELU and coef < 0:
        raise LIB.bad(f"the clipped ReLU ceiling (coef) must be >= 0, got {coef}")
    return dict(mode=_ACT_MODES[act.mode], coef=coef)


@LIB.api()
def cudnnActivationForward(handle, activationDesc, alpha, xDesc, x, beta, yDesc, y):
    """y = alpha * f(x) + beta * y, element-wise; may run in place (y = x)."""
    h = live_handle(handle)
    params = _activation(activationDesc)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    dtype = same_dtype(x=xv, y=yv)
    same_dims(x=xv, y=yv)
    in_place_or_disjoint("y", yv, x=xv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.activation_forward", xv, yv, **params, alpha=a, beta=b,
            reads=[xv] + _if(b, yv), writes=[yv])


@LIB.api()
def cudnnActivationBackward(handle, activationDesc, alpha, yDesc, y, dyDesc, dy, xDesc, x, beta,
                            dxDesc, dx):
    """dx = alpha * dy * f'(.) + beta * dx (sigmoid/tanh use y, the others x); may run
    in place on dy."""
    h = live_handle(handle)
    params = _activation(activationDesc)
    yv, dyv = tensor_view(yDesc, y, "y"), tensor_view(dyDesc, dy, "dy")
    xv, dxv = tensor_view(xDesc, x, "x"), tensor_view(dxDesc, dx, "dx")
    dtype = same_dtype(x=xv, y=yv, dy=dyv, dx=dxv)
    same_dims(x=xv, y=yv, dy=dyv, dx=dxv)
    in_place_or_disjoint("dx", dxv, dy=dyv, x=xv, y=yv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.activation_backward", yv, dyv, xv, dxv, **params, alpha=a, beta=b,
            reads=[yv, dyv, xv] + _if(b, dxv), writes=[dxv])


# -- softmax -----------------------------------------------------------------------------------------

def _softmax(algorithm, mode) -> dict:
    algo = LIB.enum(cudnnSoftmaxAlgorithm_t, algorithm, "algorithm")
    mode = LIB.enum(cudnnSoftmaxMode_t, mode, "mode")
    return dict(algorithm=algo.name.rsplit("_", 1)[1].lower(),
                mode="instance" if mode == cudnnSoftmaxMode_t.CUDNN_SOFTMAX_MODE_INSTANCE
                else "channel")


@LIB.api()
def cudnnSoftmaxForward(handle, algorithm, mode, alpha, xDesc, x, beta, yDesc, y):
    """y = alpha * softmax(x) + beta * y over C*H*W (INSTANCE) or C (CHANNEL); LOG gives
    log-softmax; FAST is computed as ACCURATE. May run in place."""
    h = live_handle(handle)
    params = _softmax(algorithm, mode)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    dtype = same_dtype(x=xv, y=yv)
    same_dims(x=xv, y=yv)
    in_place_or_disjoint("y", yv, x=xv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    # The registry's softmax_forward is in-place safe (y may be x): no copy of x.
    enqueue(h, "cudnn.softmax_forward", xv, yv, **params, alpha=a, beta=b,
            reads=[xv] + _if(b, yv), writes=[yv])


@LIB.api()
def cudnnSoftmaxBackward(handle, algorithm, mode, alpha, yDesc, y, dyDesc, dy, beta, dxDesc, dx):
    """dx = alpha * dL/dx + beta * dx from the forward output y and dy. May run in place on dy."""
    h = live_handle(handle)
    params = _softmax(algorithm, mode)
    yv, dyv, dxv = tensor_view(yDesc, y, "y"), tensor_view(dyDesc, dy, "dy"), \
        tensor_view(dxDesc, dx, "dx")
    dtype = same_dtype(y=yv, dy=dyv, dx=dxv)
    same_dims(y=yv, dy=dyv, dx=dxv)
    in_place_or_disjoint("dx", dxv, dy=dyv)
    disjoint("dx", dxv, y=yv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.softmax_backward", yv, dyv, dxv, **params, alpha=a, beta=b,
            reads=[yv, dyv] + _if(b, dxv), writes=[dxv])


# -- tensor operations --------------------------------------------------------------------------------

def _broadcastable(name: str, a: np.ndarray, c: np.ndarray) -> None:
    if a.ndim != c.ndim or any(s not in (1, t) for s, t in zip(a.shape, c.shape)):
        raise LIB.bad(f"{name}Desc {a.shape} cannot be broadcast to cDesc {c.shape}: each "
                      f"dimension must be 1 or equal")


@LIB.api()
def cudnnAddTensor(handle, alpha, aDesc, A, beta, cDesc, C):
    """C = alpha * A + beta * C, A broadcast along its size-1 dimensions (e.g. a bias)."""
    h = live_handle(handle)
    av, cv = tensor_view(aDesc, A, "a"), tensor_view(cDesc, C, "c")
    dtype = same_dtype(a=av, c=cv)
    _broadcastable("a", av, cv)
    in_place_or_disjoint("C", cv, A=av)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.add_tensor", av, cv, alpha=a, beta=b, reads=[av] + _if(b, cv), writes=[cv])


def _op_compute(comp_type, dtype) -> None:
    want = cudnnDataType_t.CUDNN_DATA_DOUBLE if dtype == np.float64 else cudnnDataType_t.CUDNN_DATA_FLOAT
    if comp_type != want:
        raise LIB.unsupported(f"opTensorCompType {comp_type.name} with {dtype} data (cuDNN "
                              f"computes {dtype} data in {want.name})")


@LIB.api()
def cudnnOpTensor(handle, opTensorDesc, alpha1, aDesc, A, alpha2, bDesc, B, beta, cDesc, C):
    """C = op(alpha1 * A, alpha2 * B) + beta * C; A has C's dims, B each dim 1 or C's.
    SQRT and NOT are unary (B is ignored and may be NULL). C may be A or B (in place)."""
    h = live_handle(handle)
    desc = cudnnOpTensorDescriptor_t.live(opTensorDesc, "opTensorDesc")
    av, cv = tensor_view(aDesc, A, "a"), tensor_view(cDesc, C, "c")
    unary = desc.op in _UNARY
    bv = None if unary else tensor_view(bDesc, B, "b")
    dtype = same_dtype(a=av, c=cv, **({} if unary else {"b": bv}))
    _op_compute(desc.comp_type, dtype)
    same_dims(a=av, c=cv)
    if not unary:
        _broadcastable("b", bv, cv)
    in_place_or_disjoint("C", cv, A=av, **({} if unary else {"B": bv}))
    a1, a2, b = alpha_beta(dtype, alpha1=alpha1, alpha2=alpha2, beta=beta)
    enqueue(h, "cudnn.op_tensor", _OPS[desc.op], av, bv, cv, alpha1=a1, alpha2=a2, beta=b,
            reads=[av] + ([] if unary else [bv]) + _if(b, cv), writes=[cv])


@LIB.api()
def cudnnTransformTensor(handle, alpha, xDesc, x, beta, yDesc, y):
    """y = alpha * x + beta * y between layouts (same dims, e.g. NCHW -> NHWC); x and y
    must not overlap. Converting between data types is NOT_SUPPORTED here."""
    h = live_handle(handle)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    same_dims(x=xv, y=yv)
    if xv.dtype != yv.dtype:
        raise LIB.unsupported(f"converting {xv.dtype} to {yv.dtype} is not supported")
    disjoint("y", yv, x=xv)
    a, b = alpha_beta(xv.dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.transform_tensor", xv, yv, alpha=a, beta=b, reads=[xv] + _if(b, yv),
            writes=[yv])


@LIB.api()
def cudnnScaleTensor(handle, yDesc, y, alpha):
    """y = alpha * y in place."""
    h = live_handle(handle)
    yv = tensor_view(yDesc, y, "y")
    (a,) = alpha_beta(yv.dtype, alpha=alpha)
    enqueue(h, "cudnn.scale_tensor", yv, a, reads=[yv], writes=[yv])


@LIB.api()
def cudnnSetTensor(handle, yDesc, y, valuePtr):
    """Every element of y = *valuePtr (a number, or a host pointer to one of y's type)."""
    h = live_handle(handle)
    yv = tensor_view(yDesc, y, "y")
    value = LIB.host_scalar(valuePtr, yv.dtype, "valuePtr")
    enqueue(h, "cudnn.set_tensor", yv, value, writes=[yv])
