"""cuDNN's fused batch norm through the facade: cudnnBatchNormalizationForwardTrainingEx /
BackwardEx, their size queries and cudnnBatchNormOps_t, against float64 numpy written here.

cuDNN semantics (cuDNN 8.9 API reference, cudnnBatchNormalizationForwardTrainingEx): bnOps
selects BN, BN then activation, or BN then element-wise add of z, then activation; the
activation descriptor is used for the latter two (NULL allowed for BN); the fused kernels
implement ReLU only; workspace NULL with size 0 makes the call act as the non-Ex one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from facade_helpers import H2D, download, handle_fixture, library_ok, upload

import streamq
from streamq.cuda_facade import cudnn as dnn
from streamq.cuda_facade import runtime as rt

S = dnn.cudnnStatus_t
OK, BAD, UNSUPPORTED = S.CUDNN_STATUS_SUCCESS, S.CUDNN_STATUS_BAD_PARAM, S.CUDNN_STATUS_NOT_SUPPORTED
BN, BN_ACT, BN_ADD_ACT = (dnn.CUDNN_BATCHNORM_OPS_BN, dnn.CUDNN_BATCHNORM_OPS_BN_ACTIVATION,
                          dnn.CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION)
SPATIAL, PER_ACT = dnn.CUDNN_BATCHNORM_SPATIAL, dnn.CUDNN_BATCHNORM_PER_ACTIVATION
EPS, FACTOR = 1e-3, 0.25
pytestmark = pytest.mark.usefixtures("clean_library_device")


ok = library_ok(dnn.last_status_detail)
handle = handle_fixture(dnn.cudnnCreate, dnn.cudnnDestroy, ok)


def tensor(shape, dtype=dnn.CUDNN_DATA_FLOAT):
    desc = ok(dnn.cudnnCreateTensorDescriptor())
    ok(dnn.cudnnSetTensor4dDescriptor(desc, dnn.CUDNN_TENSOR_NCHW, dtype, *shape))
    return desc


def activation(mode=dnn.CUDNN_ACTIVATION_RELU):
    desc = ok(dnn.cudnnCreateActivationDescriptor())
    ok(dnn.cudnnSetActivationDescriptor(desc, mode, dnn.CUDNN_NOT_PROPAGATE_NAN, 0.0))
    return desc


class Problem:
    """Host data, device copies and descriptors of one fused batch-norm call."""

    def __init__(self, bn_mode, shape=(4, 3, 5, 6), seed=2):
        rng = np.random.default_rng(seed)
        self.mode, self.shape = bn_mode, shape
        self.axes = (0, 2, 3) if bn_mode == SPATIAL else (0,)
        self.pshape = (1, shape[1], 1, 1) if bn_mode == SPATIAL else (1,) + shape[1:]
        self.x = rng.normal(1.0, 2.0, shape).astype(np.float32)
        self.z = rng.normal(0.0, 1.0, shape).astype(np.float32)
        self.dy = rng.uniform(-1, 1, shape).astype(np.float32)
        self.scale = rng.uniform(0.5, 1.5, self.pshape).astype(np.float32)
        self.bias = rng.uniform(-0.5, 0.5, self.pshape).astype(np.float32)
        self.xd = tensor(shape)
        self.pd = ok(dnn.cudnnCreateTensorDescriptor())
        ok(dnn.cudnnDeriveBNTensorDescriptor(self.pd, self.xd, bn_mode))
        zeros = np.zeros(self.pshape, np.float32)
        self.xp, self.zp, self.dyp = upload(self.x), upload(self.z), upload(self.dy)
        self.yp, self.dxp, self.dzp = (upload(np.full(shape, np.nan, np.float32)) for _ in range(3))
        self.sp, self.bp = upload(self.scale), upload(self.bias)
        self.rmp = upload(np.full(self.pshape, 0.5, np.float32))
        self.rvp = upload(np.full(self.pshape, 2.0, np.float32))
        self.smp, self.sip, self.dsp, self.dbp = (upload(zeros) for _ in range(4))

    def forward(self, handle, ops, act, alpha=1.0, beta=0.0, z=True):
        add = ops == BN_ADD_ACT and z
        return dnn.cudnnBatchNormalizationForwardTrainingEx(
            handle, self.mode, ops, alpha, beta, self.xd, self.xp, self.xd if add else None,
            self.zp if add else None, self.xd, self.yp, self.pd, self.sp, self.bp, FACTOR, self.rmp, self.rvp,
            EPS, self.smp, self.sip, act, None, 0, None, 0)

    def backward(self, handle, ops, act, bias=True):
        add = ops == BN_ADD_ACT
        return dnn.cudnnBatchNormalizationBackwardEx(
            handle, self.mode, ops, 1.0, 0.0, 1.0, 0.0, self.xd, self.xp, self.xd, self.yp, self.xd, self.dyp,
            self.xd if add else None, self.dzp if add else None, self.xd, self.dxp, self.pd, self.sp,
            self.bp if bias else None, self.dsp, self.dbp, EPS, self.smp, self.sip, act, None, 0, None, 0)

    def expected(self, ops):
        """(y, pre-activation, mean, var) in float64."""
        x = self.x.astype(np.float64)
        mean, var = x.mean(axis=self.axes, keepdims=True), x.var(axis=self.axes, keepdims=True)
        pre = self.scale * (x - mean) / np.sqrt(var + EPS) + self.bias
        if ops == BN_ADD_ACT:
            pre = pre + self.z
        return (pre if ops == BN else np.maximum(pre, 0)), pre, mean, var


@pytest.mark.parametrize("bn_mode", [SPATIAL, PER_ACT])
@pytest.mark.parametrize("ops", [BN, BN_ACT, BN_ADD_ACT])
def test_forward_and_backward(handle, bn_mode, ops):
    p = Problem(bn_mode)
    act = activation()
    ok(p.forward(handle, ops, act))
    y, pre, mean, var = p.expected(ops)
    m = p.x.size // p.scale.size
    np.testing.assert_allclose(download(p.yp, p.shape, np.float32), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(download(p.rmp, p.pshape, np.float32), 0.75 * 0.5 + 0.25 * mean, rtol=1e-5)
    np.testing.assert_allclose(download(p.rvp, p.pshape, np.float32), 0.75 * 2.0 + 0.25 * var * m / (m - 1),
                               rtol=1e-5)
    np.testing.assert_allclose(download(p.sip, p.pshape, np.float32), 1 / np.sqrt(var + EPS), rtol=1e-5)

    ok(p.backward(handle, ops, act))
    g = p.dy.astype(np.float64) if ops == BN else np.where(pre > 0, p.dy, 0.0)
    xhat = (p.x - mean) / np.sqrt(var + EPS)
    g_bias, g_scale = g.sum(axis=p.axes, keepdims=True), (g * xhat).sum(axis=p.axes, keepdims=True)
    g_x = p.scale / np.sqrt(var + EPS) * (g - g_bias / m - xhat * g_scale / m)
    np.testing.assert_allclose(download(p.dbp, p.pshape, np.float32), g_bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(download(p.dsp, p.pshape, np.float32), g_scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(download(p.dxp, p.shape, np.float32), g_x, rtol=1e-4, atol=1e-5)
    if ops == BN_ADD_ACT:
        np.testing.assert_allclose(download(p.dzp, p.shape, np.float32), g, rtol=0, atol=0)


def test_blending_and_bn_ops_equal_the_plain_call(handle):
    p = Problem(SPATIAL)
    y0 = np.random.default_rng(1).standard_normal(p.shape).astype(np.float32)
    ok(rt.cudaMemcpy(p.yp, y0.reshape(-1), y0.nbytes, H2D))
    ok(p.forward(handle, BN_ADD_ACT, activation(), alpha=2.0, beta=0.5))
    y = p.expected(BN_ADD_ACT)[0]
    np.testing.assert_allclose(download(p.yp, p.shape, np.float32), 2.0 * y + 0.5 * y0, rtol=1e-4, atol=1e-4)
    # bnOps BN with a NULL activation and NULL z: exactly cudnnBatchNormalizationForwardTraining
    ok(p.forward(handle, BN, None))
    ex = download(p.yp, p.shape, np.float32)
    plain = upload(np.zeros(p.shape, np.float32))
    ok(dnn.cudnnBatchNormalizationForwardTraining(handle, SPATIAL, 1.0, 0.0, p.xd, p.xp, p.xd, plain, p.pd,
                                                  p.sp, p.bp, FACTOR, None, None, EPS, None, None))
    np.testing.assert_array_equal(ex, download(plain, p.shape, np.float32))


def test_size_queries(handle):
    p, act = Problem(SPATIAL), activation()
    for ops in (BN, BN_ACT, BN_ADD_ACT):
        assert ok(dnn.cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
            handle, SPATIAL, ops, p.xd, p.xd, p.xd, p.pd, act)) == 0
        assert ok(dnn.cudnnGetBatchNormalizationBackwardExWorkspaceSize(
            handle, SPATIAL, ops, p.xd, p.xd, p.xd, p.xd, p.xd, p.pd, act)) == 0
        assert ok(dnn.cudnnGetBatchNormalizationTrainingExReserveSpaceSize(handle, SPATIAL, ops, act, p.xd)) == 0
    sig = activation(dnn.CUDNN_ACTIVATION_SIGMOID)
    assert dnn.cudnnGetBatchNormalizationTrainingExReserveSpaceSize(handle, SPATIAL, BN_ACT, sig, p.xd) \
        == (UNSUPPORTED, None)
    assert dnn.cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
        handle, SPATIAL, BN_ADD_ACT, p.xd, tensor((1, 3, 5, 6)), p.xd, p.pd, act) == (BAD, None)


def test_rejections(handle):
    p, act = Problem(SPATIAL), activation()
    for mode in (dnn.CUDNN_ACTIVATION_SIGMOID, dnn.CUDNN_ACTIVATION_CLIPPED_RELU, dnn.CUDNN_ACTIVATION_SWISH,
                 dnn.CUDNN_ACTIVATION_IDENTITY):
        assert p.forward(handle, BN_ACT, activation(mode)) == (UNSUPPORTED,)
        assert p.backward(handle, BN_ADD_ACT, activation(mode)) == (UNSUPPORTED,)
    assert p.forward(handle, BN_ACT, None) == (BAD,)                     # activation needed
    assert p.forward(handle, 3, act) == (BAD,)                           # not a cudnnBatchNormOps_t
    assert p.forward(handle, BN_ADD_ACT, act, z=False) == (BAD,)         # z needed
    ok(p.forward(handle, BN_ACT, act))
    assert p.backward(handle, BN_ACT, act, bias=False) == (BAD,)         # bnBiasData needed
    assert dnn.cudnnBatchNormalizationForwardTrainingEx(                 # z of other dims
        handle, SPATIAL, BN_ADD_ACT, 1.0, 0.0, p.xd, p.xp, tensor((2, 3, 5, 6)), p.zp, p.xd, p.yp, p.pd, p.sp,
        p.bp, FACTOR, None, None, EPS, None, None, act, None, 0, None, 0) == (BAD,)
    assert dnn.cudnnBatchNormalizationBackwardEx(                        # dx = y: overlap
        handle, SPATIAL, BN_ACT, 1.0, 0.0, 1.0, 0.0, p.xd, p.xp, p.xd, p.yp, p.xd, p.dyp, None, None, p.xd,
        p.yp, p.pd, p.sp, p.bp, p.dsp, p.dbp, EPS, None, None, act, None, 0, None, 0) == (BAD,)


def test_in_place_dz_and_queue_log(handle, tmp_path):
    p, act = Problem(SPATIAL), activation()
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ok(p.forward(handle, BN_ADD_ACT, act))
        ok(dnn.cudnnBatchNormalizationBackwardEx(                        # dz written over dy
            handle, SPATIAL, BN_ADD_ACT, 1.0, 0.0, 1.0, 0.0, p.xd, p.xp, p.xd, p.yp, p.xd, p.dyp, p.xd, p.dyp,
            p.xd, p.dxp, p.pd, p.sp, p.bp, p.dsp, p.dbp, EPS, p.smp, p.sip, act, None, 0, None, 0))
        ok(rt.cudaDeviceSynchronize())
    finally:
        streamq.trace.disable()
    pre = p.expected(BN_ADD_ACT)[1]
    np.testing.assert_array_equal(download(p.dyp, p.shape, np.float32), np.where(pre > 0, p.dy, 0))
    tasks = {r["name"]: r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "task"}
    fwd, bwd = tasks["cudnn.batch_norm_forward_training_ex"], tasks["cudnn.batch_norm_backward_ex"]
    assert [r["buffer"] for r in fwd["reads"]] == [p.xp, p.sp, p.bp, p.zp, p.rmp, p.rvp]
    assert [r["buffer"] for r in fwd["writes"]] == [p.yp, p.rmp, p.rvp, p.smp, p.sip]
    assert [r["buffer"] for r in bwd["reads"]] == [p.xp, p.dyp, p.sp, p.yp, p.smp, p.sip]
    assert [r["buffer"] for r in bwd["writes"]] == [p.dxp, p.dsp, p.dbp, p.dyp]
