"""cuDNN convolutions: forward, backward data/filter/bias, bias+activation forward,
and the algorithm / workspace queries.

Every algorithm enum value runs the same kernel-registry op
(``cudnn.convolution_forward`` ...); the queries therefore report every
algorithm as supported, needing a 0-byte workspace. Checks follow cuDNN's
documented return codes: mismatched dimensions, channel counts or data types
are CUDNN_STATUS_BAD_PARAM; an output whose spatial size is not the one
cudnnGetConvolution2dForwardOutputDim gives, or a compute type that does not
match the data, is CUDNN_STATUS_NOT_SUPPORTED.
"""

from __future__ import annotations

import functools
import time
import typing

import numpy as np

from streamq.kernels import registry

from ._cudnn_common import alpha_beta, disjoint, enqueue, same_dtype, workspace
from ._cudnn_descriptors import cudnnActivationDescriptor_t, cudnnConvolutionDescriptor_t, \
    conv_output_dims
from ._cudnn_tensors import cudnnFilterDescriptor_t, cudnnTensorDescriptor_t, filter_view, \
    tensor_view
from ._cudnn_types import LIB, cudnnActivationMode_t, cudnnConvolutionBwdDataAlgo_t, \
    cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t, \
    cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionFwdAlgo_t, cudnnConvolutionFwdAlgoPerf_t, \
    cudnnConvolutionMode_t, cudnnDataType_t, cudnnDeterminism_t, cudnnStatus_t, live_handle, \
    numpy_dtype

__all__ = [
    "cudnnConvolutionForward", "cudnnConvolutionBackwardData", "cudnnConvolutionBackwardFilter",
    "cudnnConvolutionBackwardBias", "cudnnConvolutionBiasActivationForward",
    "cudnnGetConvolutionForwardAlgorithmMaxCount", "cudnnGetConvolutionForwardAlgorithm_v7",
    "cudnnFindConvolutionForwardAlgorithm", "cudnnGetConvolutionForwardWorkspaceSize",
    "cudnnGetConvolutionBackwardDataAlgorithmMaxCount", "cudnnGetConvolutionBackwardDataAlgorithm_v7",
    "cudnnFindConvolutionBackwardDataAlgorithm", "cudnnGetConvolutionBackwardDataWorkspaceSize",
    "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7", "cudnnFindConvolutionBackwardFilterAlgorithm",
    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
]

_FWD = "cudnn.convolution_forward"
_BWD_DATA = "cudnn.convolution_backward_data"
_BWD_FILTER = "cudnn.convolution_backward_filter"
_BWD_BIAS = "cudnn.convolution_backward_bias"

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_DT = cudnnDataType_t
# Compute types cuDNN accepts per data type ("pseudo half": half data, float compute).
_COMPUTE = {_F64: {_DT.CUDNN_DATA_DOUBLE}, _F32: {_DT.CUDNN_DATA_FLOAT},
            _F16: {_DT.CUDNN_DATA_HALF, _DT.CUDNN_DATA_FLOAT}}


def _algos(enum_type) -> tuple:
    """The algorithms of an algo enum (its ``_COUNT`` member excluded), cached."""
    found = _ALGOS.get(enum_type)
    if found is None:
        found = _ALGOS[enum_type] = tuple(m for m in enum_type if not m.name.endswith("_COUNT"))
    return found


_ALGOS: dict = {}


def _conv(convDesc) -> cudnnConvolutionDescriptor_t:
    return cudnnConvolutionDescriptor_t.live(convDesc, "convDesc")


def _params(conv) -> dict:
    """The kernel's keyword arguments for this descriptor."""
    mode = "convolution" if conv.mode == cudnnConvolutionMode_t.CUDNN_CONVOLUTION \
        else "cross_correlation"
    return dict(pad=conv.pad, stride=conv.stride, dilation=conv.dilation, groups=conv.groups,
                mode=mode)


def _compute_type(conv, dtype) -> None:
    if conv.compute_type not in _COMPUTE[dtype]:
        raise LIB.unsupported(f"computeType {conv.compute_type.name} is not supported for {dtype} "
                              f"data")


def _check_output(conv, x_dims, w_dims, y_shape, y_name: str) -> None:
    """The output (or gradient) shape must be the forward output of x and w."""
    n, k, p, q = conv_output_dims(conv, x_dims, w_dims)
    if tuple(y_shape[:2]) != (n, k):
        raise LIB.bad(f"{y_name}Desc has N, C = {tuple(y_shape[:2])} but the convolution "
                      f"gives {(n, k)}")
    if tuple(y_shape[2:]) != (p, q):
        raise LIB.unsupported(f"{y_name}Desc has spatial size {tuple(y_shape[2:])} but "
                              f"cudnnGetConvolution2dForwardOutputDim gives {(p, q)}")


def _algo(enum_type, value):
    return LIB.enum(enum_type, value, "algo", allowed=_algos(enum_type))


# -- the operations ----------------------------------------------------------------------------------

class _Direction(typing.NamedTuple):
    """What differs between forward, backward-data and backward-filter convolution."""

    op: str              # the kernel registry op
    algo_type: type      # its algo enum
    perf_type: type      # its algo query's result struct
    roles: tuple         # the operands playing the forward convolution's x, w and y


_DIRECTIONS = {
    "forward": _Direction(_FWD, cudnnConvolutionFwdAlgo_t, cudnnConvolutionFwdAlgoPerf_t,
                          ("x", "w", "y")),
    "data": _Direction(_BWD_DATA, cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdDataAlgoPerf_t,
                       ("dx", "w", "dy")),
    "filter": _Direction(_BWD_FILTER, cudnnConvolutionBwdFilterAlgo_t,
                         cudnnConvolutionBwdFilterAlgoPerf_t, ("x", "dw", "dy")),
}


def _convolution(kind: str, handle, convDesc, algo, workSpace, workSpaceSizeInBytes, alpha, beta,
                 operands) -> None:
    """Check and enqueue one of the three convolutions: out = alpha * op(in1, in2) + beta * out.

    ``operands``: ``(name, desc, ptr)`` in the kernel's argument order, the output last.
    """
    direction = _DIRECTIONS[kind]
    x_name, w_name, y_name = direction.roles
    h, conv = live_handle(handle), _conv(convDesc)
    _algo(direction.algo_type, algo)
    workspace(workSpace, workSpaceSizeInBytes)
    views = {name: (filter_view if name == w_name else tensor_view)(desc, ptr, name)
             for name, desc, ptr in operands}
    dtype = same_dtype(**views)
    _compute_type(conv, dtype)
    _check_output(conv, views[x_name].shape, views[w_name].shape, views[y_name].shape, y_name)
    *in_names, out_name = views
    inputs, out = [views[n] for n in in_names], views[out_name]
    disjoint(out_name, out, **{n: views[n] for n in in_names})
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, direction.op, *views.values(), **_params(conv), alpha=a, beta=b,
            reads=inputs + ([out] if b else []), writes=[out])


@LIB.api()
def cudnnConvolutionForward(handle, alpha, xDesc, x, wDesc, w, convDesc, algo, workSpace,
                            workSpaceSizeInBytes, beta, yDesc, y):
    """y = alpha * conv(x, w) + beta * y on the handle's stream (beta == 0: y not read)."""
    _convolution("forward", handle, convDesc, algo, workSpace, workSpaceSizeInBytes, alpha, beta,
                 (("x", xDesc, x), ("w", wDesc, w), ("y", yDesc, y)))


@LIB.api()
def cudnnConvolutionBackwardData(handle, alpha, wDesc, w, dyDesc, dy, convDesc, algo, workSpace,
                                 workSpaceSizeInBytes, beta, dxDesc, dx):
    """dx = alpha * dL/dx + beta * dx from dy = dL/dy and the filter w."""
    _convolution("data", handle, convDesc, algo, workSpace, workSpaceSizeInBytes, alpha, beta,
                 (("w", wDesc, w), ("dy", dyDesc, dy), ("dx", dxDesc, dx)))


@LIB.api()
def cudnnConvolutionBackwardFilter(handle, alpha, xDesc, x, dyDesc, dy, convDesc, algo, workSpace,
                                   workSpaceSizeInBytes, beta, dwDesc, dw):
    """dw = alpha * dL/dw + beta * dw from the input x and dy = dL/dy."""
    _convolution("filter", handle, convDesc, algo, workSpace, workSpaceSizeInBytes, alpha, beta,
                 (("x", xDesc, x), ("dy", dyDesc, dy), ("dw", dwDesc, dw)))


def _bias_view(dbDesc, db, k: int, what: str) -> np.ndarray:
    dbv = tensor_view(dbDesc, db, what)
    if dbv.shape != (1, k, 1, 1):
        raise LIB.bad(f"{what}Desc must be 1 x {k} x 1 x 1, got {dbv.shape}")
    return dbv


@LIB.api()
def cudnnConvolutionBackwardBias(handle, alpha, dyDesc, dy, beta, dbDesc, db):
    """db = alpha * sum over (n, h, w) of dy + beta * db; db is 1 x K x 1 x 1."""
    h = live_handle(handle)
    dyv = tensor_view(dyDesc, dy, "dy")
    if dyv.ndim != 4:
        raise LIB.unsupported(f"dyDesc must be 4-D, got {dyv.ndim}-D")
    dbv = _bias_view(dbDesc, db, dyv.shape[1], "db")
    dtype = same_dtype(dy=dyv, db=dbv)
    disjoint("db", dbv, dy=dyv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, _BWD_BIAS, dyv, dbv, alpha=a, beta=b, reads=[dyv] + ([dbv] if b else []),
            writes=[dbv])


@LIB.api()
def cudnnConvolutionBiasActivationForward(handle, alpha1, xDesc, x, wDesc, w, convDesc, algo,
                                          workSpace, workSpaceSizeInBytes, alpha2, zDesc, z,
                                          biasDesc, bias, activationDesc, yDesc, y):
    """y = act(alpha1 * conv(x, w) + alpha2 * z + bias), one task on the handle's stream.

    As cuDNN: the activation is CUDNN_ACTIVATION_RELU, or CUDNN_ACTIVATION_IDENTITY
    with algo CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM (else NOT_SUPPORTED);
    z may be y itself (same pointer and strides); bias is 1 x K x 1 x 1. The task
    runs the registry's convolution_forward, add_tensor and activation_forward.
    """
    h, conv = live_handle(handle), _conv(convDesc)
    algo = _algo(cudnnConvolutionFwdAlgo_t, algo)
    act = cudnnActivationDescriptor_t.live(activationDesc, "activationDesc")
    relu = act.mode == cudnnActivationMode_t.CUDNN_ACTIVATION_RELU
    if not relu and not (act.mode == cudnnActivationMode_t.CUDNN_ACTIVATION_IDENTITY and
                         algo == cudnnConvolutionFwdAlgo_t.CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM):
        raise LIB.unsupported("the activation must be RELU, or IDENTITY with algo "
                              "CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM")
    workspace(workSpace, workSpaceSizeInBytes)
    xv, wv, yv = tensor_view(xDesc, x, "x"), filter_view(wDesc, w, "w"), tensor_view(yDesc, y, "y")
    zv = tensor_view(zDesc, z, "z")
    dtype = same_dtype(x=xv, w=wv, y=yv, z=zv)
    _compute_type(conv, dtype)
    _check_output(conv, xv.shape, wv.shape, yv.shape, "y")
    bv = _bias_view(biasDesc, bias, yv.shape[1], "bias")
    same_dtype(y=yv, bias=bv)
    if zv.shape != yv.shape:
        raise LIB.bad(f"zDesc has dimensions {zv.shape} but yDesc has {yv.shape}")
    z_is_y = (zv.__array_interface__["data"][0] == yv.__array_interface__["data"][0]
              and zv.strides == yv.strides)
    disjoint("y", yv, x=xv, w=wv, bias=bv, **({} if z_is_y else {"z": zv}))
    a1, a2 = alpha_beta(dtype, alpha1=alpha1, alpha2=alpha2)
    steps = (registry.get(_FWD), registry.get("cudnn.add_tensor"),
             registry.get("cudnn.activation_forward") if relu else None)
    fn = functools.partial(_bias_activation, steps, xv, wv, zv, bv, yv, _params(conv), a1, a2, z_is_y)
    LIB.launch(h.stream(), fn, (), name="cudnn.convolution_bias_activation_forward",
               reads=[xv, wv, bv] + ([zv] if a2 else []), writes=[yv])


def _bias_activation(steps, x, w, z, bias, y, params, alpha1, alpha2, z_is_y):
    conv, add, relu = steps
    if z_is_y:
        conv(x, w, y, **params, alpha=alpha1, beta=alpha2)
    else:
        conv(x, w, y, **params, alpha=alpha1, beta=0.0)
        if alpha2:
            add(z, y, alpha=alpha2, beta=1.0)
    add(bias, y, alpha=1.0, beta=1.0)
    if relu is not None:
        relu(y, y, mode="relu")


# -- algorithm queries ----------------------------------------------------------------------------------

def _geometry(kind: str, xDesc, wDesc, convDesc, yDesc):
    """Validate a query's descriptors (the shapes the operation would check)."""
    conv = _conv(convDesc)
    x = cudnnTensorDescriptor_t.live(xDesc, "xDesc" if kind != "data" else "dxDesc")
    w = cudnnFilterDescriptor_t.live(wDesc, "wDesc" if kind != "filter" else "dwDesc")
    y = cudnnTensorDescriptor_t.live(yDesc, "yDesc" if kind == "forward" else "dyDesc")
    dtype = numpy_dtype(x.data_type, "xDesc")
    if not x.data_type == w.data_type == y.data_type:
        raise LIB.bad("the tensor and filter descriptors have different data types")
    _compute_type(conv, dtype)
    _check_output(conv, x.dims, w.dims, y.dims, "y" if kind == "forward" else "dy")
    return conv, x, w, y, dtype


def _perf_list(kind: str, conv, count, time_ms: float):
    direction = _DIRECTIONS[kind]
    requested = LIB.integer(count, "requestedAlgoCount", 1)
    algos = list(_algos(direction.algo_type)[:requested])
    return len(algos), [direction.perf_type(a, cudnnStatus_t.CUDNN_STATUS_SUCCESS, time_ms, 0,
                                  cudnnDeterminism_t.CUDNN_DETERMINISTIC, conv.math_type)
                        for a in algos]


def _timed_on_stream(handle, op: str, conv, x, w, y, dtype, kind: str) -> float:
    """Run the op once on the handle's stream on scratch arrays; its time in ms."""
    h = live_handle(handle)
    LIB.check_may_block("cudnnFind*")
    stream = h.stream()
    if stream.capture is not None:
        raise LIB.unsupported("a Find call blocks to time the algorithms; the stream is capturing")
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(d.dims).astype(dtype) for d in (x, w, y)]
    order = {"forward": (0, 1, 2), "data": (1, 2, 0), "filter": (0, 2, 1)}[kind]
    args = [arrays[i] for i in order]
    kernel = registry.get(op)
    elapsed = []

    def timed():
        start = time.perf_counter()
        kernel(*args, **_params(conv))
        elapsed.append((time.perf_counter() - start) * 1e3)

    task = LIB.launch(stream, timed, (), name=op)
    LIB.wait(stream, task, what=f"cudnnFind ({op})")
    return elapsed[0]


def _max_count(handle, enum_type) -> int:
    live_handle(handle)
    return len(_algos(enum_type))


# The three directions' algorithm queries; descriptors in _geometry's (x, w, conv, y) order.

def _heuristic(kind: str, handle, xDesc, wDesc, convDesc, yDesc, requestedAlgoCount):
    live_handle(handle)
    conv, *_ = _geometry(kind, xDesc, wDesc, convDesc, yDesc)
    return _perf_list(kind, conv, requestedAlgoCount, -1.0)


def _find(kind: str, handle, xDesc, wDesc, convDesc, yDesc, requestedAlgoCount):
    conv, x, w, y, dtype = _geometry(kind, xDesc, wDesc, convDesc, yDesc)
    LIB.integer(requestedAlgoCount, "requestedAlgoCount", 1)
    ms = _timed_on_stream(handle, _DIRECTIONS[kind].op, conv, x, w, y, dtype, kind)
    return _perf_list(kind, conv, requestedAlgoCount, ms)


def _workspace_size(kind: str, handle, xDesc, wDesc, convDesc, yDesc, algo) -> int:
    live_handle(handle)
    _geometry(kind, xDesc, wDesc, convDesc, yDesc)
    _algo(_DIRECTIONS[kind].algo_type, algo)
    return 0


@LIB.api(1)
def cudnnGetConvolutionForwardAlgorithmMaxCount(handle):
    """``(status, 8)``: the number of forward algorithms."""
    return _max_count(handle, cudnnConvolutionFwdAlgo_t)


@LIB.api(2)
def cudnnGetConvolutionForwardAlgorithm_v7(handle, srcDesc, filterDesc, convDesc, destDesc,
                                           requestedAlgoCount):
    """``(status, returnedAlgoCount, [cudnnConvolutionFwdAlgoPerf_t])``: heuristic answer
    (no timing: time -1); every algorithm is supported with a 0-byte workspace."""
    return _heuristic("forward", handle, srcDesc, filterDesc, convDesc, destDesc,
                      requestedAlgoCount)


@LIB.api(2)
def cudnnFindConvolutionForwardAlgorithm(handle, xDesc, wDesc, convDesc, yDesc,
                                         requestedAlgoCount):
    """``(status, returnedAlgoCount, perfResults)``: times the convolution once on the
    handle's stream (scratch buffers; blocks) and reports that time for every algorithm,
    all of which run the same kernel."""
    return _find("forward", handle, xDesc, wDesc, convDesc, yDesc, requestedAlgoCount)


@LIB.api(1)
def cudnnGetConvolutionForwardWorkspaceSize(handle, xDesc, wDesc, convDesc, yDesc, algo):
    """``(status, 0)``: no algorithm needs a workspace."""
    return _workspace_size("forward", handle, xDesc, wDesc, convDesc, yDesc, algo)


@LIB.api(1)
def cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle):
    """``(status, 6)``: the number of backward-data algorithms."""
    return _max_count(handle, cudnnConvolutionBwdDataAlgo_t)


@LIB.api(2)
def cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, filterDesc, diffDesc, convDesc, gradDesc,
                                                requestedAlgoCount):
    """``(status, returnedAlgoCount, [cudnnConvolutionBwdDataAlgoPerf_t])`` (heuristic)."""
    return _heuristic("data", handle, gradDesc, filterDesc, convDesc, diffDesc, requestedAlgoCount)


@LIB.api(2)
def cudnnFindConvolutionBackwardDataAlgorithm(handle, wDesc, dyDesc, convDesc, dxDesc,
                                              requestedAlgoCount):
    """``(status, returnedAlgoCount, perfResults)`` timed once on the handle's stream."""
    return _find("data", handle, dxDesc, wDesc, convDesc, dyDesc, requestedAlgoCount)


@LIB.api(1)
def cudnnGetConvolutionBackwardDataWorkspaceSize(handle, wDesc, dyDesc, convDesc, dxDesc, algo):
    """``(status, 0)``: no algorithm needs a workspace."""
    return _workspace_size("data", handle, dxDesc, wDesc, convDesc, dyDesc, algo)


@LIB.api(1)
def cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle):
    """``(status, 7)``: the number of backward-filter algorithms."""
    return _max_count(handle, cudnnConvolutionBwdFilterAlgo_t)


@LIB.api(2)
def cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, srcDesc, diffDesc, convDesc, gradDesc,
                                                  requestedAlgoCount):
    """``(status, returnedAlgoCount, [cudnnConvolutionBwdFilterAlgoPerf_t])`` (heuristic)."""
    return _heuristic("filter", handle, srcDesc, gradDesc, convDesc, diffDesc, requestedAlgoCount)


@LIB.api(2)
def cudnnFindConvolutionBackwardFilterAlgorithm(handle, xDesc, dyDesc, convDesc, dwDesc,
                                                requestedAlgoCount):
    """``(status, returnedAlgoCount, perfResults)`` timed once on the handle's stream."""
    return _find("filter", handle, xDesc, dwDesc, convDesc, dyDesc, requestedAlgoCount)


@LIB.api(1)
def cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, xDesc, dyDesc, convDesc, gradDesc, algo):
    """``(status, 0)``: no algorithm needs a workspace."""
    return _workspace_size("filter", handle, xDesc, gradDesc, convDesc, dyDesc, algo)
