"""cuDNN operation descriptors: convolution, pooling, activation, op tensor, dropout.

Descriptors are plain host objects: setting one validates its fields as cuDNN
does (CUDNN_STATUS_BAD_PARAM for negative sizes, zero strides, invalid enums)
and the operations read them at call time, so changing a descriptor never
affects work already enqueued.
"""

from __future__ import annotations

import numpy as np

from ._cublas_cudnn_shared import LibraryError
from ._cudnn_tensors import cudnnFilterDescriptor_t, cudnnTensorDescriptor_t
from ._cudnn_types import LIB, Descriptor, cudnnActivationMode_t, cudnnConvolutionMode_t, \
    cudnnDataType_t, cudnnMathType_t, cudnnNanPropagation_t, cudnnOpTensorOp_t, cudnnPoolingMode_t, \
    cudnnStatus_t, live_handle

__all__ = [
    "cudnnConvolutionDescriptor_t", "cudnnPoolingDescriptor_t", "cudnnActivationDescriptor_t",
    "cudnnOpTensorDescriptor_t", "cudnnDropoutDescriptor_t",
    "cudnnCreateConvolutionDescriptor", "cudnnDestroyConvolutionDescriptor",
    "cudnnSetConvolution2dDescriptor", "cudnnGetConvolution2dDescriptor",
    "cudnnSetConvolutionGroupCount", "cudnnGetConvolutionGroupCount",
    "cudnnSetConvolutionMathType", "cudnnGetConvolutionMathType",
    "cudnnGetConvolution2dForwardOutputDim",
    "cudnnCreatePoolingDescriptor", "cudnnDestroyPoolingDescriptor", "cudnnSetPooling2dDescriptor",
    "cudnnGetPooling2dDescriptor", "cudnnGetPooling2dForwardOutputDim",
    "cudnnCreateActivationDescriptor", "cudnnDestroyActivationDescriptor",
    "cudnnSetActivationDescriptor", "cudnnGetActivationDescriptor",
    "cudnnSetActivationDescriptorSwishBeta", "cudnnGetActivationDescriptorSwishBeta",
    "cudnnCreateOpTensorDescriptor", "cudnnDestroyOpTensorDescriptor", "cudnnSetOpTensorDescriptor",
    "cudnnGetOpTensorDescriptor",
    "cudnnCreateDropoutDescriptor", "cudnnDestroyDropoutDescriptor", "cudnnDropoutGetStatesSize",
    "cudnnDropoutGetReserveSpaceSize", "cudnnSetDropoutDescriptor", "cudnnRestoreDropoutDescriptor",
    "cudnnGetDropoutDescriptor", "conv_output_dims", "pooling_output_dims", "DROPOUT_STATE_BYTES",
]

DROPOUT_STATE_BYTES = 16   # uint64 seed, uint64 counter (elements drawn so far)


def _destroy(cls, desc, what):
    if desc is not None:
        cls.live(desc, what, must_be_set=False).destroyed = True


# -- convolution ----------------------------------------------------------------------------------

class cudnnConvolutionDescriptor_t(Descriptor):
    """A 2-D convolution: padding, stride, dilation, mode, compute type, groups, math type."""

    def __init__(self):
        super().__init__()
        self.groups = 1
        self.math_type = cudnnMathType_t.CUDNN_DEFAULT_MATH


@LIB.api(1)
def cudnnCreateConvolutionDescriptor():
    """``(status, descriptor)``: a new convolution descriptor (groups 1, default math)."""
    return cudnnConvolutionDescriptor_t()


@LIB.api()
def cudnnDestroyConvolutionDescriptor(convDesc):
    """Destroy a convolution descriptor (None is a no-op)."""
    _destroy(cudnnConvolutionDescriptor_t, convDesc, "convDesc")


@LIB.api()
def cudnnSetConvolution2dDescriptor(convDesc, pad_h, pad_w, u, v, dilation_h, dilation_w, mode,
                                    computeType):
    """Set a 2-D convolution: pads >= 0, strides u, v >= 1, dilations >= 1, mode
    CUDNN_CONVOLUTION or CUDNN_CROSS_CORRELATION, computeType a data type; else BAD_PARAM."""
    desc = cudnnConvolutionDescriptor_t.live(convDesc, "convDesc", must_be_set=False)
    pad = (LIB.integer(pad_h, "pad_h", 0), LIB.integer(pad_w, "pad_w", 0))
    stride = (LIB.integer(u, "u", 1), LIB.integer(v, "v", 1))
    dilation = (LIB.integer(dilation_h, "dilation_h", 1), LIB.integer(dilation_w, "dilation_w", 1))
    mode = LIB.enum(cudnnConvolutionMode_t, mode, "mode")
    compute = LIB.enum(cudnnDataType_t, computeType, "computeType")
    desc.pad, desc.stride, desc.dilation, desc.mode, desc.compute_type = \
        pad, stride, dilation, mode, compute
    desc.is_set = True


@LIB.api(8)
def cudnnGetConvolution2dDescriptor(convDesc):
    """``(status, pad_h, pad_w, u, v, dilation_h, dilation_w, mode, computeType)``."""
    d = cudnnConvolutionDescriptor_t.live(convDesc, "convDesc")
    return (*d.pad, *d.stride, *d.dilation, d.mode, d.compute_type)


@LIB.api()
def cudnnSetConvolutionGroupCount(convDesc, groupCount):
    """Set the number of groups (>= 1) of a grouped convolution."""
    cudnnConvolutionDescriptor_t.live(convDesc, "convDesc", must_be_set=False).groups = \
        LIB.integer(groupCount, "groupCount", 1)


@LIB.api(1)
def cudnnGetConvolutionGroupCount(convDesc):
    """``(status, groupCount)``."""
    return cudnnConvolutionDescriptor_t.live(convDesc, "convDesc", must_be_set=False).groups


@LIB.api()
def cudnnSetConvolutionMathType(convDesc, mathType):
    """Record the math type (the facade always computes in full precision)."""
    cudnnConvolutionDescriptor_t.live(convDesc, "convDesc", must_be_set=False).math_type = \
        LIB.enum(cudnnMathType_t, mathType, "mathType")


@LIB.api(1)
def cudnnGetConvolutionMathType(convDesc):
    """``(status, mathType)``."""
    return cudnnConvolutionDescriptor_t.live(convDesc, "convDesc", must_be_set=False).math_type


def conv_output_dims(conv, x_dims, w_dims) -> tuple[int, int, int, int]:
    """(N, K, P, Q) of convolving x (N, C, H, W) with w (K, C/groups, R, S), checked as
    cuDNN checks it (BAD_PARAM naming the mismatch)."""
    if len(x_dims) != 4 or len(w_dims) != 4:
        raise LIB.bad(f"a 2-D convolution needs 4-D tensor and filter descriptors, got "
                      f"{len(x_dims)}-D and {len(w_dims)}-D")
    n, c, h, w = x_dims
    k, cg, r, s = w_dims
    if c != cg * conv.groups:
        raise LIB.bad(f"the input has {c} channels but the filter expects {cg} per group x "
                      f"{conv.groups} groups")
    if k % conv.groups:
        raise LIB.bad(f"the filter count {k} is not a multiple of groupCount {conv.groups}")
    out = []
    for size, f, p, st, dl in ((h, r, conv.pad[0], conv.stride[0], conv.dilation[0]),
                               (w, s, conv.pad[1], conv.stride[1], conv.dilation[1])):
        span = (f - 1) * dl + 1
        if span > size + 2 * p:
            raise LIB.bad(f"the dilated filter ({span}) is larger than the padded input "
                          f"({size + 2 * p})")
        out.append((size + 2 * p - span) // st + 1)
    return n, k, out[0], out[1]


@LIB.api(4)
def cudnnGetConvolution2dForwardOutputDim(convDesc, inputTensorDesc, filterDesc):
    """``(status, n, c, h, w)`` of the forward convolution's output (cuDNN's formula
    1 + (in + 2*pad - ((filter - 1)*dilation + 1)) / stride)."""
    conv = cudnnConvolutionDescriptor_t.live(convDesc, "convDesc")
    x = cudnnTensorDescriptor_t.live(inputTensorDesc, "inputTensorDesc")
    w = cudnnFilterDescriptor_t.live(filterDesc, "filterDesc")
    return conv_output_dims(conv, x.dims, w.dims)


# -- pooling ----------------------------------------------------------------------------------------

class cudnnPoolingDescriptor_t(Descriptor):
    """A 2-D pooling: mode, NaN option, window, padding, stride."""


@LIB.api(1)
def cudnnCreatePoolingDescriptor():
    """``(status, descriptor)``: a new, unset pooling descriptor."""
    return cudnnPoolingDescriptor_t()


@LIB.api()
def cudnnDestroyPoolingDescriptor(poolingDesc):
    """Destroy a pooling descriptor (None is a no-op)."""
    _destroy(cudnnPoolingDescriptor_t, poolingDesc, "poolingDesc")


@LIB.api()
def cudnnSetPooling2dDescriptor(poolingDesc, mode, maxpoolingNanOpt, windowHeight, windowWidth,
                                verticalPadding, horizontalPadding, verticalStride,
                                horizontalStride):
    """Set a 2-D pooling: window and strides >= 1, paddings >= 0, valid enums; else BAD_PARAM."""
    desc = cudnnPoolingDescriptor_t.live(poolingDesc, "poolingDesc", must_be_set=False)
    mode = LIB.enum(cudnnPoolingMode_t, mode, "mode")
    nan = LIB.enum(cudnnNanPropagation_t, maxpoolingNanOpt, "maxpoolingNanOpt")
    window = (LIB.integer(windowHeight, "windowHeight", 1), LIB.integer(windowWidth, "windowWidth", 1))
    pad = (LIB.integer(verticalPadding, "verticalPadding", 0),
           LIB.integer(horizontalPadding, "horizontalPadding", 0))
    stride = (LIB.integer(verticalStride, "verticalStride", 1),
              LIB.integer(horizontalStride, "horizontalStride", 1))
    desc.mode, desc.nan, desc.window, desc.pad, desc.stride = mode, nan, window, pad, stride
    desc.is_set = True


@LIB.api(8)
def cudnnGetPooling2dDescriptor(poolingDesc):
    """``(status, mode, maxpoolingNanOpt, windowHeight, windowWidth, verticalPadding,
    horizontalPadding, verticalStride, horizontalStride)``."""
    d = cudnnPoolingDescriptor_t.live(poolingDesc, "poolingDesc")
    return (d.mode, d.nan, *d.window, *d.pad, *d.stride)


def pooling_output_dims(pool, x_dims) -> tuple[int, int, int, int]:
    """(N, C, P, Q) of pooling a 4-D input: 1 + (in + 2*pad - window) / stride."""
    if len(x_dims) != 4:
        raise LIB.bad(f"2-D pooling needs a 4-D input, got {len(x_dims)}-D")
    n, c, h, w = x_dims
    out = []
    for size, win, p, st in ((h, pool.window[0], pool.pad[0], pool.stride[0]),
                             (w, pool.window[1], pool.pad[1], pool.stride[1])):
        if win > size + 2 * p:
            raise LIB.bad(f"the pooling window ({win}) is larger than the padded input ({size + 2 * p})")
        out.append((size + 2 * p - win) // st + 1)
    return n, c, out[0], out[1]


@LIB.api(4)
def cudnnGetPooling2dForwardOutputDim(poolingDesc, inputTensorDesc):
    """``(status, n, c, h, w)`` of the pooling's output for ``inputTensorDesc``."""
    pool = cudnnPoolingDescriptor_t.live(poolingDesc, "poolingDesc")
    x = cudnnTensorDescriptor_t.live(inputTensorDesc, "inputTensorDesc")
    return pooling_output_dims(pool, x.dims)


# -- activation ---------------------------------------------------------------------------------------

class cudnnActivationDescriptor_t(Descriptor):
    """An activation: mode, ReLU NaN option, coef (clipped-ReLU ceiling / ELU alpha), swish beta."""

    def __init__(self):
        super().__init__()
        self.swish_beta = 1.0


@LIB.api(1)
def cudnnCreateActivationDescriptor():
    """``(status, descriptor)``: a new, unset activation descriptor."""
    return cudnnActivationDescriptor_t()


@LIB.api()
def cudnnDestroyActivationDescriptor(activationDesc):
    """Destroy an activation descriptor (None is a no-op)."""
    _destroy(cudnnActivationDescriptor_t, activationDesc, "activationDesc")


@LIB.api()
def cudnnSetActivationDescriptor(activationDesc, mode, reluNanOpt, coef):
    """Set an activation: a cudnnActivationMode_t, a NaN option and ``coef`` (double)."""
    desc = cudnnActivationDescriptor_t.live(activationDesc, "activationDesc", must_be_set=False)
    mode = LIB.enum(cudnnActivationMode_t, mode, "mode")
    nan = LIB.enum(cudnnNanPropagation_t, reluNanOpt, "reluNanOpt")
    desc.mode, desc.nan, desc.coef = mode, nan, LIB.real(coef, "coef")
    desc.is_set = True


@LIB.api(3)
def cudnnGetActivationDescriptor(activationDesc):
    """``(status, mode, reluNanOpt, coef)``."""
    d = cudnnActivationDescriptor_t.live(activationDesc, "activationDesc")
    return d.mode, d.nan, d.coef


@LIB.api()
def cudnnSetActivationDescriptorSwishBeta(activationDesc, swish_beta):
    """Set swish's beta: CUDNN_ACTIVATION_SWISH computes x * sigmoid(beta * x) (default 1)."""
    cudnnActivationDescriptor_t.live(activationDesc, "activationDesc", must_be_set=False) \
        .swish_beta = LIB.real(swish_beta, "swish_beta")


@LIB.api(1)
def cudnnGetActivationDescriptorSwishBeta(activationDesc):
    """``(status, swish_beta)``."""
    return cudnnActivationDescriptor_t.live(activationDesc, "activationDesc",
                                            must_be_set=False).swish_beta


# -- op tensor ------------------------------------------------------------------------------------------

class cudnnOpTensorDescriptor_t(Descriptor):
    """cudnnOpTensor's operation, compute type and NaN option."""


@LIB.api(1)
def cudnnCreateOpTensorDescriptor():
    """``(status, descriptor)``: a new, unset op-tensor descriptor."""
    return cudnnOpTensorDescriptor_t()


@LIB.api()
def cudnnDestroyOpTensorDescriptor(opTensorDesc):
    """Destroy an op-tensor descriptor (None is a no-op)."""
    _destroy(cudnnOpTensorDescriptor_t, opTensorDesc, "opTensorDesc")


@LIB.api()
def cudnnSetOpTensorDescriptor(opTensorDesc, opTensorOp, opTensorCompType, opTensorNanOpt):
    """Set the operation (ADD, MUL, MIN, MAX, SQRT, NOT), compute type and NaN option."""
    desc = cudnnOpTensorDescriptor_t.live(opTensorDesc, "opTensorDesc", must_be_set=False)
    op = LIB.enum(cudnnOpTensorOp_t, opTensorOp, "opTensorOp")
    comp = LIB.enum(cudnnDataType_t, opTensorCompType, "opTensorCompType")
    nan = LIB.enum(cudnnNanPropagation_t, opTensorNanOpt, "opTensorNanOpt")
    desc.op, desc.comp_type, desc.nan = op, comp, nan
    desc.is_set = True


@LIB.api(3)
def cudnnGetOpTensorDescriptor(opTensorDesc):
    """``(status, opTensorOp, opTensorCompType, opTensorNanOpt)``."""
    d = cudnnOpTensorDescriptor_t.live(opTensorDesc, "opTensorDesc")
    return d.op, d.comp_type, d.nan


# -- dropout -------------------------------------------------------------------------------------------

class cudnnDropoutDescriptor_t(Descriptor):
    """Dropout probability plus the RNG state buffer (seed and draw counter, in facade memory)."""

    def __init__(self):
        super().__init__()
        self.dropout, self.states, self.state_size, self.seed = 0.0, None, 0, 0


@LIB.api(1)
def cudnnCreateDropoutDescriptor():
    """``(status, descriptor)``: a new, unset dropout descriptor."""
    return cudnnDropoutDescriptor_t()


@LIB.api()
def cudnnDestroyDropoutDescriptor(dropoutDesc):
    """Destroy a dropout descriptor (None is a no-op)."""
    _destroy(cudnnDropoutDescriptor_t, dropoutDesc, "dropoutDesc")


@LIB.api(1)
def cudnnDropoutGetStatesSize(handle):
    """``(status, bytes)`` of RNG state cudnnSetDropoutDescriptor needs (16 here)."""
    live_handle(handle)
    return DROPOUT_STATE_BYTES


@LIB.api(1)
def cudnnDropoutGetReserveSpaceSize(xdesc):
    """``(status, bytes)`` of reserve space a dropout of ``xdesc`` needs: one byte per element."""
    d = cudnnTensorDescriptor_t.live(xdesc, "xdesc")
    return int(np.prod(d.dims))


def _dropout_fields(desc, handle, dropout, states, stateSizeInBytes, seed):
    """Validate cudnnSet/RestoreDropoutDescriptor's arguments; returns the states view or None."""
    live_handle(handle)
    cudnnDropoutDescriptor_t.live(desc, "dropoutDesc", must_be_set=False)
    p = LIB.real(dropout, "dropout")
    if not 0.0 <= p <= 1.0:
        raise LIB.bad(f"dropout must be in [0, 1], got {p}")
    seed = LIB.integer(seed, "seed", 0)
    if seed >= 1 << 64:
        raise LIB.bad(f"seed must fit in 64 bits, got {seed}")
    if states is None or (isinstance(states, int) and states == 0):
        return p, seed, None
    size = LIB.integer(stateSizeInBytes, "stateSizeInBytes", 0)
    if size < DROPOUT_STATE_BYTES:
        raise LibraryError(cudnnStatus_t.CUDNN_STATUS_INVALID_VALUE,
                           f"stateSizeInBytes {size} is less than cudnnDropoutGetStatesSize's "
                           f"{DROPOUT_STATE_BYTES}")
    return p, seed, LIB.view(states, np.uint64, (2,), what="states")


@LIB.api()
def cudnnSetDropoutDescriptor(dropoutDesc, handle, dropout, states, stateSizeInBytes, seed):
    """Set the dropout probability and initialise the RNG ``states`` with ``seed`` (an
    op on the handle's stream). With ``states`` NULL only the probability is set.
    stateSizeInBytes below cudnnDropoutGetStatesSize: CUDNN_STATUS_INVALID_VALUE."""
    p, seed, view = _dropout_fields(dropoutDesc, handle, dropout, states, stateSizeInBytes, seed)
    desc = dropoutDesc
    if view is not None:
        LIB.launch(handle.stream(), _init_states, (view, seed), name="cudnn.dropout_init_states",
                   writes=[view])
        desc.states, desc.state_size, desc.seed = view, DROPOUT_STATE_BYTES, seed
    desc.dropout = p
    desc.is_set = True


def _init_states(view, seed):
    view[0] = seed
    view[1] = 0


@LIB.api()
def cudnnRestoreDropoutDescriptor(dropoutDesc, handle, dropout, states, stateSizeInBytes, seed):
    """Point a descriptor at ``states`` already initialised (e.g. by another descriptor)
    without re-initialising them."""
    p, seed, view = _dropout_fields(dropoutDesc, handle, dropout, states, stateSizeInBytes, seed)
    if view is None:
        raise LIB.bad("states is NULL: there is no RNG state to restore")
    dropoutDesc.states, dropoutDesc.state_size, dropoutDesc.seed = view, DROPOUT_STATE_BYTES, seed
    dropoutDesc.dropout = p
    dropoutDesc.is_set = True


@LIB.api(3)
def cudnnGetDropoutDescriptor(dropoutDesc, handle):
    """``(status, dropout, states, seed)`` (states: the state buffer's address, or None)."""
    live_handle(handle)
    d = cudnnDropoutDescriptor_t.live(dropoutDesc, "dropoutDesc")
    address = None if d.states is None else d.states.__array_interface__["data"][0]
    return d.dropout, address, d.seed


def dropout_reserve(reserveSpace, size_in_bytes, count: int, what: str):
    """The uint8 view of the first ``count`` reserve bytes (INVALID_VALUE if too small)."""
    size = LIB.integer(size_in_bytes, "reserveSpaceSizeInBytes", 0)
    if size < count:
        raise LibraryError(cudnnStatus_t.CUDNN_STATUS_INVALID_VALUE,
                           f"reserveSpaceSizeInBytes {size} is less than the {count} bytes "
                           f"cudnnDropoutGetReserveSpaceSize requires")
    return LIB.view(reserveSpace, np.uint8, (count,), what=what)

