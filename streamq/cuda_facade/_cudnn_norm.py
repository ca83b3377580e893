"""cuDNN batch normalization (derive, training, inference, backward) and dropout.

Batch-norm parameter tensors (scale, bias, means, variances) are described by
the descriptor cudnnDeriveBNTensorDescriptor gives: 1 x C x 1 x 1 (spatial) or
1 x C x H x W (per activation), float for half/float data and double for
double data; anything else is CUDNN_STATUS_BAD_PARAM.

Dropout draws its mask from a counter-based generator: the descriptor's state
buffer (facade memory) holds the seed and the number of elements drawn so far.
Each cudnnDropoutForward reads both when it runs and advances the counter, so
successive calls on a stream draw fresh masks, reproducibly for a given seed.
"""

from __future__ import annotations

import functools

import numpy as np

from streamq.kernels import registry

from ._cudnn_common import alpha_beta, disjoint, enqueue, in_place_or_disjoint, same_dims, \
    same_dtype
from ._cudnn_common import workspace as check_workspace
from ._cudnn_descriptors import cudnnActivationDescriptor_t, cudnnDropoutDescriptor_t, \
    dropout_reserve
from ._cudnn_tensors import cudnnTensorDescriptor_t, packed_strides, tensor_view
from ._cudnn_types import CUDNN_BN_MIN_EPSILON, LIB, cudnnActivationMode_t, cudnnBatchNormMode_t, \
    cudnnBatchNormOps_t, cudnnDataType_t, cudnnTensorFormat_t, live_handle

__all__ = ["cudnnDeriveBNTensorDescriptor", "cudnnBatchNormalizationForwardTraining",
           "cudnnBatchNormalizationForwardInference", "cudnnBatchNormalizationBackward",
           "cudnnBatchNormalizationForwardTrainingEx", "cudnnBatchNormalizationBackwardEx",
           "cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize",
           "cudnnGetBatchNormalizationBackwardExWorkspaceSize",
           "cudnnGetBatchNormalizationTrainingExReserveSpaceSize",
           "cudnnDropoutForward", "cudnnDropoutBackward"]

_PER_ACTIVATION = cudnnBatchNormMode_t.CUDNN_BATCHNORM_PER_ACTIVATION


def _bn_mode(mode) -> tuple[cudnnBatchNormMode_t, str]:
    m = LIB.enum(cudnnBatchNormMode_t, mode, "mode")
    return m, ("per_activation" if m == _PER_ACTIVATION else "spatial")


def _bn_dims(mode, x_dims) -> tuple[int, ...]:
    if len(x_dims) not in (4, 5):
        raise LIB.bad(f"batch normalization needs a 4-D or 5-D xDesc, got {len(x_dims)}-D")
    if mode == _PER_ACTIVATION:
        return (1, *x_dims[1:])
    return (1, x_dims[1]) + (1,) * (len(x_dims) - 2)


def _bn_data_type(data_type):
    return (cudnnDataType_t.CUDNN_DATA_DOUBLE if data_type == cudnnDataType_t.CUDNN_DATA_DOUBLE
            else cudnnDataType_t.CUDNN_DATA_FLOAT)


@LIB.api()
def cudnnDeriveBNTensorDescriptor(derivedBnDesc, xDesc, mode):
    """Set ``derivedBnDesc`` to the parameter tensor batch norm of ``xDesc`` in ``mode``
    uses: 1 x C x 1 x 1 (spatial) or 1 x C x H x W (per activation), float or double."""
    derived = cudnnTensorDescriptor_t.live(derivedBnDesc, "derivedBnDesc", must_be_set=False)
    x = cudnnTensorDescriptor_t.live(xDesc, "xDesc")
    m, _ = _bn_mode(mode)
    dims = _bn_dims(m, x.dims)
    derived._assign(_bn_data_type(x.data_type), dims,
                    packed_strides(dims, cudnnTensorFormat_t.CUDNN_TENSOR_NCHW))


class _BN:
    """The checked data tensors of one batch-norm call and its parameter-tensor rules."""

    def __init__(self, mode, x_view: np.ndarray, param_desc, param_name: str):
        self.mode, self.kernel_mode = _bn_mode(mode)
        self.want = _bn_dims(self.mode, x_view.shape)
        self.param_dtype = np.dtype(np.float64 if x_view.dtype == np.float64 else np.float32)
        d = cudnnTensorDescriptor_t.live(param_desc, param_name)
        if d.dims != self.want:
            raise LIB.bad(f"{param_name} has dimensions {d.dims} but batch norm of xDesc "
                          f"{x_view.shape} in mode {self.mode.name} needs {self.want} "
                          f"(cudnnDeriveBNTensorDescriptor)")
        if d.dtype(param_name) != self.param_dtype:
            raise LIB.bad(f"{param_name} has data type {d.dtype(param_name)} but {x_view.dtype} "
                          f"data needs {self.param_dtype} parameters")
        self.desc = param_desc
        count = x_view.shape[0] * (1 if self.mode == _PER_ACTIVATION else
                                   int(np.prod(x_view.shape[2:])))
        self.count = count

    def param(self, ptr, what: str, *, optional: bool = False):
        """The view of one parameter tensor (None for an optional NULL pointer)."""
        if optional and (ptr is None or (isinstance(ptr, int) and ptr == 0)):
            return None
        return tensor_view(self.desc, ptr, what)

    def pair(self, p1, n1: str, p2, n2: str):
        """Two optional parameter tensors that must be given together."""
        v1, v2 = self.param(p1, n1, optional=True), self.param(p2, n2, optional=True)
        if (v1 is None) != (v2 is None):
            raise LIB.bad(f"{n1} and {n2} must both be NULL or both be given")
        return v1, v2

    def need_two_values(self) -> None:
        if self.count < 2:
            raise LIB.bad(f"batch statistics need at least 2 values per channel, got {self.count}")


def _epsilon(epsilon) -> float:
    eps = LIB.real(epsilon, "epsilon")
    if not eps >= CUDNN_BN_MIN_EPSILON:
        raise LIB.bad(f"epsilon must be >= CUDNN_BN_MIN_EPSILON ({CUDNN_BN_MIN_EPSILON}), got {eps}")
    return eps


def _present(*views) -> list:
    return [v for v in views if v is not None]


def _training_params(bn, bnScale, bnBias, exponentialAverageFactor, resultRunningMean,
                     resultRunningVariance, epsilon, resultSaveMean, resultSaveInvVariance):
    """The training forward's parameter views and scalars, checked (shared by the Ex call)."""
    scale, bias = bn.param(bnScale, "bnScale"), bn.param(bnBias, "bnBias")
    run_mean, run_var = bn.pair(resultRunningMean, "resultRunningMean", resultRunningVariance,
                                "resultRunningVariance")
    save_mean, save_inv = bn.pair(resultSaveMean, "resultSaveMean", resultSaveInvVariance,
                                  "resultSaveInvVariance")
    factor = LIB.real(exponentialAverageFactor, "exponentialAverageFactor")
    if not 0.0 <= factor <= 1.0:
        raise LIB.bad(f"exponentialAverageFactor must be in [0, 1], got {factor}")
    return scale, bias, run_mean, run_var, save_mean, save_inv, factor, _epsilon(epsilon)


@LIB.api()
def cudnnBatchNormalizationForwardTraining(handle, mode, alpha, beta, xDesc, x, yDesc, y,
                                           bnScaleBiasMeanVarDesc, bnScale, bnBias,
                                           exponentialAverageFactor, resultRunningMean,
                                           resultRunningVariance, epsilon, resultSaveMean,
                                           resultSaveInvVariance):
    """y = alpha * (scale * (x - mean) / sqrt(var + eps) + bias) + beta * y with batch
    statistics; updates running = (1 - factor) * running + factor * batch (unbiased
    variance) and saves mean and 1/sqrt(var + eps) when those pointers are not NULL."""
    h = live_handle(handle)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    dtype = same_dtype(x=xv, y=yv)
    same_dims(x=xv, y=yv)
    bn = _BN(mode, xv, bnScaleBiasMeanVarDesc, "bnScaleBiasMeanVarDesc")
    bn.need_two_values()
    scale, bias, run_mean, run_var, save_mean, save_inv, factor, eps = _training_params(
        bn, bnScale, bnBias, exponentialAverageFactor, resultRunningMean, resultRunningVariance,
        epsilon, resultSaveMean, resultSaveInvVariance)
    disjoint("y", yv, x=xv, bnScale=scale, bnBias=bias)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    outputs = _present(run_mean, run_var, save_mean, save_inv)
    enqueue(h, "cudnn.batch_norm_forward_training", xv, yv, scale, bias, mode=bn.kernel_mode,
            epsilon=eps, exponential_average_factor=factor, running_mean=run_mean,
            running_var=run_var, save_mean=save_mean, save_inv_variance=save_inv, alpha=a, beta=b,
            reads=[xv, scale, bias] + _present(run_mean, run_var) + ([yv] if b else []),
            writes=[yv] + outputs)


@LIB.api()
def cudnnBatchNormalizationForwardInference(handle, mode, alpha, beta, xDesc, x, yDesc, y,
                                            bnScaleBiasMeanVarDesc, bnScale, bnBias, estimatedMean,
                                            estimatedVariance, epsilon):
    """y = alpha * (scale * (x - mean) / sqrt(var + eps) + bias) + beta * y with the given
    estimates; may run in place (y = x)."""
    h = live_handle(handle)
    xv, yv = tensor_view(xDesc, x, "x"), tensor_view(yDesc, y, "y")
    dtype = same_dtype(x=xv, y=yv)
    same_dims(x=xv, y=yv)
    bn = _BN(mode, xv, bnScaleBiasMeanVarDesc, "bnScaleBiasMeanVarDesc")
    params = [bn.param(p, n) for p, n in ((bnScale, "bnScale"), (bnBias, "bnBias"),
                                          (estimatedMean, "estimatedMean"),
                                          (estimatedVariance, "estimatedVariance"))]
    eps = _epsilon(epsilon)
    in_place_or_disjoint("y", yv, x=xv)
    disjoint("y", yv, **dict(zip(("bnScale", "bnBias", "estimatedMean", "estimatedVariance"),
                                 params)))
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    enqueue(h, "cudnn.batch_norm_forward_inference", xv, yv, *params, mode=bn.kernel_mode,
            epsilon=eps, alpha=a, beta=b, reads=[xv, *params] + ([yv] if b else []), writes=[yv])


@LIB.api()
def cudnnBatchNormalizationBackward(handle, mode, alphaDataDiff, betaDataDiff, alphaParamDiff,
                                    betaParamDiff, xDesc, x, dyDesc, dy, dxDesc, dx,
                                    dBnScaleBiasDesc, bnScale, dBnScaleResult, dBnBiasResult,
                                    epsilon, savedMean, savedInvVariance):
    """Gradients of training batch norm: dx (blended with alphaDataDiff/betaDataDiff),
    dscale and dbias (alphaParamDiff/betaParamDiff). savedMean/savedInvVariance from the
    forward pass are used when given (both), else the statistics are recomputed."""
    h = live_handle(handle)
    xv, dyv, dxv = tensor_view(xDesc, x, "x"), tensor_view(dyDesc, dy, "dy"), \
        tensor_view(dxDesc, dx, "dx")
    dtype = same_dtype(x=xv, dy=dyv, dx=dxv)
    same_dims(x=xv, dy=dyv, dx=dxv)
    bn = _BN(mode, xv, dBnScaleBiasDesc, "dBnScaleBiasDesc")
    bn.need_two_values()
    scale = bn.param(bnScale, "bnScale")
    dscale, dbias = bn.param(dBnScaleResult, "dBnScaleResult"), bn.param(dBnBiasResult, "dBnBiasResult")
    saved_mean, saved_inv = bn.pair(savedMean, "savedMean", savedInvVariance, "savedInvVariance")
    eps = _epsilon(epsilon)
    disjoint("dx", dxv, x=xv, dy=dyv, bnScale=scale)
    a_d, b_d, a_p, b_p = alpha_beta(dtype, alphaDataDiff=alphaDataDiff, betaDataDiff=betaDataDiff,
                                    alphaParamDiff=alphaParamDiff, betaParamDiff=betaParamDiff)
    enqueue(h, "cudnn.batch_norm_backward", xv, dyv, dxv, scale, dscale, dbias,
            mode=bn.kernel_mode, epsilon=eps, saved_mean=saved_mean, saved_inv_variance=saved_inv,
            alpha_data=a_d, beta_data=b_d, alpha_param=a_p, beta_param=b_p,
            reads=[xv, dyv, scale] + _present(saved_mean, saved_inv)
            + ([dxv] if b_d else []) + ([dscale, dbias] if b_p else []),
            writes=[dxv, dscale, dbias])


# -- fused batch norm (the *Ex calls) ------------------------------------------------------------------

_OPS = cudnnBatchNormOps_t
_OPS_NAMES = {_OPS.CUDNN_BATCHNORM_OPS_BN: "bn", _OPS.CUDNN_BATCHNORM_OPS_BN_ACTIVATION: "bn_activation",
              _OPS.CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION: "bn_add_activation"}


def _is_null(ptr) -> bool:
    return ptr is None or (isinstance(ptr, int) and ptr == 0)


def _bn_ops(bnOps, activationDesc) -> str:
    """The kernel's ``ops`` for bnOps; an activation must be a live ReLU descriptor (cuDNN's
    fused batch norm implements ReLU only: any other mode is NOT_SUPPORTED)."""
    ops = LIB.enum(cudnnBatchNormOps_t, bnOps, "bnOps")
    if ops != _OPS.CUDNN_BATCHNORM_OPS_BN:
        act = cudnnActivationDescriptor_t.live(activationDesc, "activationDesc")
        if act.mode != cudnnActivationMode_t.CUDNN_ACTIVATION_RELU:
            raise LIB.unsupported(f"batch norm fuses CUDNN_ACTIVATION_RELU only, got {act.mode.name}")
    return _OPS_NAMES[ops]


def _ex_query(mode, bnOps, activationDesc, xDesc, **descs) -> None:
    """Check a size query's arguments as the operation would (descriptor kinds, dims, types)."""
    m, _ = _bn_mode(mode)
    ops = _bn_ops(bnOps, activationDesc)
    x = cudnnTensorDescriptor_t.live(xDesc, "xDesc")
    _bn_dims(m, x.dims)
    for name, desc in descs.items():
        if name in ("zDesc", "dzDesc") and ops != "bn_add_activation":
            continue
        if name == "yDesc" and desc is None:
            continue
        d = cudnnTensorDescriptor_t.live(desc, name)
        if name == "bnScaleBiasMeanVarDesc" or name == "dBnScaleBiasDesc":
            continue
        if d.dims != x.dims or d.data_type != x.data_type:
            raise LIB.bad(f"{name} must have xDesc's dimensions and data type")


@LIB.api(1)
def cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(handle, mode, bnOps, xDesc, zDesc, yDesc,
                                                             bnScaleBiasMeanVarDesc, activationDesc):
    """``(status, 0)``: the facade's fused batch norm needs no workspace."""
    live_handle(handle)
    _ex_query(mode, bnOps, activationDesc, xDesc, zDesc=zDesc, yDesc=yDesc,
              bnScaleBiasMeanVarDesc=bnScaleBiasMeanVarDesc)
    return 0


@LIB.api(1)
def cudnnGetBatchNormalizationBackwardExWorkspaceSize(handle, mode, bnOps, xDesc, yDesc, dyDesc, dzDesc,
                                                      dxDesc, dBnScaleBiasDesc, activationDesc):
    """``(status, 0)``: the facade's fused batch-norm backward needs no workspace."""
    live_handle(handle)
    _ex_query(mode, bnOps, activationDesc, xDesc, yDesc=yDesc, dyDesc=dyDesc, dzDesc=dzDesc,
              dxDesc=dxDesc, dBnScaleBiasDesc=dBnScaleBiasDesc)
    return 0


@LIB.api(1)
def cudnnGetBatchNormalizationTrainingExReserveSpaceSize(handle, mode, bnOps, activationDesc, xDesc):
    """``(status, 0)``: nothing passes from forward to backward but y (the ReLU mask is y > 0)."""
    live_handle(handle)
    _ex_query(mode, bnOps, activationDesc, xDesc)
    return 0


@LIB.api()
def cudnnBatchNormalizationForwardTrainingEx(handle, mode, bnOps, alpha, beta, xDesc, xData, zDesc, zData,
                                             yDesc, yData, bnScaleBiasMeanVarDesc, bnScale, bnBias,
                                             exponentialAverageFactor, resultRunningMean,
                                             resultRunningVariance, epsilon, resultSaveMean,
                                             resultSaveInvVariance, activationDesc, workspace,
                                             workSpaceSizeInBytes, reserveSpace,
                                             reserveSpaceSizeInBytes):
    """y = alpha * act(bn(x) [+ z]) + beta * y with batch statistics, in one task.

    bnOps CUDNN_BATCHNORM_OPS_BN is cudnnBatchNormalizationForwardTraining (activationDesc,
    z may be NULL); ..._BN_ACTIVATION applies the ReLU of activationDesc;
    ..._BN_ADD_ACTIVATION adds z (xDesc's dims and type) before it. Only ReLU is fused
    (else NOT_SUPPORTED). Running and saved statistics as the non-Ex call. Workspace and
    reserve space may be NULL/0 (the size queries answer 0); z may be y itself.
    """
    h = live_handle(handle)
    ops = _bn_ops(bnOps, activationDesc)
    check_workspace(workspace, workSpaceSizeInBytes)
    check_workspace(reserveSpace, reserveSpaceSizeInBytes, "reserveSpace")
    xv, yv = tensor_view(xDesc, xData, "x"), tensor_view(yDesc, yData, "y")
    zv = tensor_view(zDesc, zData, "z") if ops == "bn_add_activation" else None
    dtype = same_dtype(x=xv, y=yv, **({"z": zv} if zv is not None else {}))
    same_dims(x=xv, y=yv, **({"z": zv} if zv is not None else {}))
    bn = _BN(mode, xv, bnScaleBiasMeanVarDesc, "bnScaleBiasMeanVarDesc")
    bn.need_two_values()
    scale, bias, run_mean, run_var, save_mean, save_inv, factor, eps = _training_params(
        bn, bnScale, bnBias, exponentialAverageFactor, resultRunningMean, resultRunningVariance,
        epsilon, resultSaveMean, resultSaveInvVariance)
    disjoint("y", yv, x=xv, bnScale=scale, bnBias=bias)
    if zv is not None:
        in_place_or_disjoint("y", yv, z=zv)
    a, b = alpha_beta(dtype, alpha=alpha, beta=beta)
    outputs = _present(run_mean, run_var, save_mean, save_inv)
    enqueue(h, "cudnn.batch_norm_forward_training_ex", xv, zv, yv, scale, bias, mode=bn.kernel_mode,
            epsilon=eps, ops=ops, exponential_average_factor=factor, running_mean=run_mean,
            running_var=run_var, save_mean=save_mean, save_inv_variance=save_inv, alpha=a, beta=b,
            reads=[xv, scale, bias] + _present(zv, run_mean, run_var) + ([yv] if b else []),
            writes=[yv] + outputs)


@LIB.api()
def cudnnBatchNormalizationBackwardEx(handle, mode, bnOps, alphaDataDiff, betaDataDiff, alphaParamDiff,
                                      betaParamDiff, xDesc, xData, yDesc, yData, dyDesc, dyData, dzDesc,
                                      dzData, dxDesc, dxData, dBnScaleBiasDesc, bnScaleData, bnBiasData,
                                      dBnScaleData, dBnBiasData, epsilon, savedMean, savedInvVariance,
                                      activationDesc, workSpace, workSpaceSizeInBytes, reserveSpace,
                                      reserveSpaceSizeInBytes):
    """Gradients of cudnnBatchNormalizationForwardTrainingEx: dy is the gradient of its
    output y (yData: that output, written with alpha = 1, beta = 0); the ReLU passes dy
    where y > 0. Writes dx (blended with alphaDataDiff/betaDataDiff), dz for
    BN_ADD_ACTIVATION (the masked dy, not blended; dz may be dy itself), dscale and
    dbias (alphaParamDiff/betaParamDiff). bnBiasData is checked but not needed (y gives
    the mask). yDesc/yData and dzDesc/dzData may be NULL where bnOps does not use them.
    """
    h = live_handle(handle)
    ops = _bn_ops(bnOps, activationDesc)
    check_workspace(workSpace, workSpaceSizeInBytes)
    check_workspace(reserveSpace, reserveSpaceSizeInBytes, "reserveSpace")
    xv, dyv, dxv = tensor_view(xDesc, xData, "x"), tensor_view(dyDesc, dyData, "dy"), \
        tensor_view(dxDesc, dxData, "dx")
    yv = tensor_view(yDesc, yData, "y") if ops != "bn" else None
    dzv = tensor_view(dzDesc, dzData, "dz") if ops == "bn_add_activation" else None
    extra = {k: v for k, v in (("y", yv), ("dz", dzv)) if v is not None}
    dtype = same_dtype(x=xv, dy=dyv, dx=dxv, **extra)
    same_dims(x=xv, dy=dyv, dx=dxv, **extra)
    bn = _BN(mode, xv, dBnScaleBiasDesc, "dBnScaleBiasDesc")
    bn.need_two_values()
    scale = bn.param(bnScaleData, "bnScaleData")
    if ops != "bn":
        if _is_null(bnBiasData):
            raise LIB.bad("bnBiasData must not be NULL when bnOps fuses an activation")
        bn.param(bnBiasData, "bnBiasData")
    dscale, dbias = bn.param(dBnScaleData, "dBnScaleData"), bn.param(dBnBiasData, "dBnBiasData")
    saved_mean, saved_inv = bn.pair(savedMean, "savedMean", savedInvVariance, "savedInvVariance")
    eps = _epsilon(epsilon)
    disjoint("dx", dxv, x=xv, dy=dyv, bnScaleData=scale, **({"y": yv} if yv is not None else {}))
    if dzv is not None:
        disjoint("dz", dzv, x=xv, y=yv, dx=dxv, bnScaleData=scale)
        in_place_or_disjoint("dz", dzv, dy=dyv)
    a_d, b_d, a_p, b_p = alpha_beta(dtype, alphaDataDiff=alphaDataDiff, betaDataDiff=betaDataDiff,
                                    alphaParamDiff=alphaParamDiff, betaParamDiff=betaParamDiff)
    enqueue(h, "cudnn.batch_norm_backward_ex", xv, yv, dyv, dzv, dxv, scale, dscale, dbias,
            mode=bn.kernel_mode, epsilon=eps, ops=ops, saved_mean=saved_mean,
            saved_inv_variance=saved_inv, alpha_data=a_d, beta_data=b_d, alpha_param=a_p,
            beta_param=b_p,
            reads=[xv, dyv, scale] + _present(yv, saved_mean, saved_inv)
            + ([dxv] if b_d else []) + ([dscale, dbias] if b_p else []),
            writes=[dxv, dscale, dbias] + _present(dzv))


# -- dropout -------------------------------------------------------------------------------------------

@LIB.api()
def cudnnDropoutForward(handle, dropoutDesc, xdesc, x, ydesc, y, reserveSpace,
                        reserveSpaceSizeInBytes):
    """y = x / (1 - p) where kept, 0 where dropped; the keep mask goes to reserveSpace
    (one byte per element) for cudnnDropoutBackward. May run in place (y = x)."""
    h = live_handle(handle)
    desc = cudnnDropoutDescriptor_t.live(dropoutDesc, "dropoutDesc")
    if desc.states is None:
        raise LIB.bad("dropoutDesc has no RNG states (cudnnSetDropoutDescriptor with states)")
    xv, yv = tensor_view(xdesc, x, "x"), tensor_view(ydesc, y, "y")
    same_dtype(x=xv, y=yv)
    same_dims(x=xv, y=yv)
    reserve = dropout_reserve(reserveSpace, reserveSpaceSizeInBytes, xv.size, "reserveSpace")
    in_place_or_disjoint("y", yv, x=xv)
    disjoint("reserveSpace", reserve, x=xv, y=yv)
    kernel = registry.get("cudnn.dropout_forward")
    fn = functools.partial(_dropout_forward, kernel, xv, yv, reserve, desc.dropout, desc.states)
    LIB.launch(h.stream(), fn, (), name="cudnn.dropout_forward", reads=[xv, desc.states],
               writes=[yv, reserve, desc.states])


def _dropout_forward(kernel, x, y, reserve, p, states):
    """The task: draw the mask at the state's counter, then advance the counter."""
    seed, counter = int(states[0]), int(states[1])
    kernel(x, y, reserve, dropout=p, seed=seed, offset=counter)
    states[1] = (counter + x.size) % (1 << 64)


@LIB.api()
def cudnnDropoutBackward(handle, dropoutDesc, dydesc, dy, dxdesc, dx, reserveSpace,
                         reserveSpaceSizeInBytes):
    """dx = dy / (1 - p) where the forward pass kept the element (per reserveSpace), else 0."""
    h = live_handle(handle)
    desc = cudnnDropoutDescriptor_t.live(dropoutDesc, "dropoutDesc")
    dyv, dxv = tensor_view(dydesc, dy, "dy"), tensor_view(dxdesc, dx, "dx")
    same_dtype(dy=dyv, dx=dxv)
    same_dims(dy=dyv, dx=dxv)
    reserve = dropout_reserve(reserveSpace, reserveSpaceSizeInBytes, dyv.size, "reserveSpace")
    in_place_or_disjoint("dx", dxv, dy=dyv)
    disjoint("reserveSpace", reserve, dx=dxv)
    enqueue(h, "cudnn.dropout_backward", dyv, dxv, reserve, dropout=desc.dropout,
            reads=[dyv, reserve], writes=[dxv])
