"""The cuDNN facade (streamq.cuda_facade.cudnn) against cuDNN's documented semantics.

Every result is compared with a float64 numpy reference written here (explicit
window loops / einsum), never with the kernel registry. Rules are quoted from
the cuDNN 8.9 API reference (docs.nvidia.com/deeplearning/cudnn/api/), the
sections of each function named in the tests.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from facade_helpers import D2H, WAIT, download, handle_fixture, library_ok, upload
from facade_helpers import StreamGate as Gate

import streamq
from streamq.cuda_facade import cudnn as dnn
from streamq.cuda_facade import runtime as rt

S = dnn.cudnnStatus_t
OK, BAD, UNSUPPORTED = S.CUDNN_STATUS_SUCCESS, S.CUDNN_STATUS_BAD_PARAM, S.CUDNN_STATUS_NOT_SUPPORTED
F32, F64, F16 = dnn.CUDNN_DATA_FLOAT, dnn.CUDNN_DATA_DOUBLE, dnn.CUDNN_DATA_HALF
NCHW, NHWC = dnn.CUDNN_TENSOR_NCHW, dnn.CUDNN_TENSOR_NHWC
DTYPES = {F32: np.float32, F64: np.float64, F16: np.float16}
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-11, atol=1e-11),
       np.float16: dict(rtol=5e-3, atol=5e-3)}
pytestmark = pytest.mark.usefixtures("clean_library_device")
FWD_ALGO = dnn.CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM


# -- helpers ---------------------------------------------------------------------------------------------

ok = library_ok(dnn.last_status_detail)
handle = handle_fixture(dnn.cudnnCreate, dnn.cudnnDestroy, ok)


def tensor(shape, dtype=F32, fmt=NCHW):
    """A 4-D tensor descriptor of NCHW ``shape`` in layout ``fmt``."""
    desc = ok(dnn.cudnnCreateTensorDescriptor())
    ok(dnn.cudnnSetTensor4dDescriptor(desc, fmt, dtype, *shape))
    return desc


def filt(shape, dtype=F32, fmt=NCHW):
    desc = ok(dnn.cudnnCreateFilterDescriptor())
    ok(dnn.cudnnSetFilter4dDescriptor(desc, dtype, fmt, *shape))
    return desc


def conv_desc(pad=(0, 0), stride=(1, 1), dilation=(1, 1), mode=dnn.CUDNN_CROSS_CORRELATION,
              compute=F32, groups=1):
    desc = ok(dnn.cudnnCreateConvolutionDescriptor())
    ok(dnn.cudnnSetConvolution2dDescriptor(desc, *pad, *stride, *dilation, mode, compute))
    ok(dnn.cudnnSetConvolutionGroupCount(desc, groups))
    return desc


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# -- float64 references --------------------------------------------------------------------------------

def out_size(size, f, pad, stride, dil):
    return (size + 2 * pad - dil * (f - 1) - 1) // stride + 1


def taps(xp, w_shape, P, Q, stride, dil):
    """For each filter tap (r, s): the (N, C, P, Q) window of the padded input it sees."""
    _, _, R, S_ = w_shape
    for r in range(R):
        for s in range(S_):
            yield r, s, xp[:, :, r * dil[0]:r * dil[0] + stride[0] * (P - 1) + 1:stride[0],
                           s * dil[1]:s * dil[1] + stride[1] * (Q - 1) + 1:stride[1]]


def conv_fwd_ref(x, w, pad, stride, dil, groups=1, flip=False):
    x, w = x.astype(np.float64), w.astype(np.float64)
    if flip:
        w = w[:, :, ::-1, ::-1]
    N, C, H, W = x.shape
    K, Cg, R, S_ = w.shape
    P, Q = out_size(H, R, pad[0], stride[0], dil[0]), out_size(W, S_, pad[1], stride[1], dil[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    y = np.zeros((N, K, P, Q))
    Kg = K // groups
    for r, s, win in taps(xp, w.shape, P, Q, stride, dil):
        for g in range(groups):
            y[:, g * Kg:(g + 1) * Kg] += np.einsum("ncpq,kc->nkpq", win[:, g * Cg:(g + 1) * Cg],
                                                   w[g * Kg:(g + 1) * Kg, :, r, s])
    return y


def conv_bwd_data_ref(w, dy, x_shape, pad, stride, dil, groups=1):
    w, dy = w.astype(np.float64), dy.astype(np.float64)
    N, C, H, W = x_shape
    K, Cg, R, S_ = w.shape
    P, Q = dy.shape[2:]
    dxp = np.zeros((N, C, H + 2 * pad[0], W + 2 * pad[1]))
    Kg = K // groups
    for r, s, win in taps(dxp, w.shape, P, Q, stride, dil):      # win is a writable view
        for g in range(groups):
            win[:, g * Cg:(g + 1) * Cg] += np.einsum("nkpq,kc->ncpq", dy[:, g * Kg:(g + 1) * Kg],
                                                     w[g * Kg:(g + 1) * Kg, :, r, s])
    return dxp[:, :, pad[0]:pad[0] + H, pad[1]:pad[1] + W]


def conv_bwd_filter_ref(x, dy, w_shape, pad, stride, dil, groups=1):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    K, Cg, R, S_ = w_shape
    P, Q = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    dw = np.zeros(w_shape)
    Kg = K // groups
    for r, s, win in taps(xp, w_shape, P, Q, stride, dil):
        for g in range(groups):
            dw[g * Kg:(g + 1) * Kg, :, r, s] = np.einsum(
                "nkpq,ncpq->kc", dy[:, g * Kg:(g + 1) * Kg], win[:, g * Cg:(g + 1) * Cg])
    return dw


def pool_ref(x, mode, window, pad, stride):
    x = x.astype(np.float64)
    N, C, H, W = x.shape
    P, Q = (H + 2 * pad[0] - window[0]) // stride[0] + 1, (W + 2 * pad[1] - window[1]) // stride[1] + 1
    y = np.zeros((N, C, P, Q))
    for p in range(P):
        for q in range(Q):
            r0, s0 = p * stride[0] - pad[0], q * stride[1] - pad[1]
            rows = slice(max(r0, 0), min(r0 + window[0], H))
            cols = slice(max(s0, 0), min(s0 + window[1], W))
            win = x[:, :, rows, cols]
            if mode == "max":
                y[:, :, p, q] = win.max(axis=(2, 3))
            elif mode == "include":
                y[:, :, p, q] = win.sum(axis=(2, 3)) / (window[0] * window[1])
            else:
                y[:, :, p, q] = win.mean(axis=(2, 3))
    return y


# -- handles, versions, errors -----------------------------------------------------------------------------

def test_handle_and_stream(handle):
    assert int(ok(dnn.cudnnGetStream(handle))) == 0
    s = ok(rt.cudaStreamCreate())
    ok(dnn.cudnnSetStream(handle, s))
    assert int(ok(dnn.cudnnGetStream(handle))) == int(s)
    ok(rt.cudaStreamDestroy(s))
    # cudnnSetStream: CUDNN_STATUS_BAD_PARAM "invalid (NULL) handle".
    assert dnn.cudnnSetStream(None, 0) == (BAD,)
    assert dnn.cudnnSetStream(handle, s) == (BAD,)       # destroyed stream
    ok(dnn.cudnnDestroy(handle))
    assert dnn.cudnnSetStream(handle, 0) == (BAD,)
    assert dnn.cudnnDestroy(handle) == (BAD,)


def test_error_strings_and_version():
    assert ok(dnn.cudnnGetErrorString(BAD)) == "CUDNN_STATUS_BAD_PARAM"
    assert ok(dnn.cudnnGetErrorString(9)) == "CUDNN_STATUS_NOT_SUPPORTED"
    assert ok(dnn.cudnnGetErrorString(12345)) == "CUDNN_UNKNOWN_STATUS"
    assert ok(dnn.cudnnGetVersion()) == 8907
    assert (int(S.CUDNN_STATUS_BAD_PARAM), int(S.CUDNN_STATUS_EXECUTION_FAILED),
            int(S.CUDNN_STATUS_NOT_SUPPORTED)) == (3, 8, 9)


def test_tensor_descriptors():
    d = tensor((2, 3, 4, 5), F32, NHWC)
    # NHWC: channels are adjacent; strides (elements) n = H*W*C, c = 1, h = W*C, w = C.
    assert ok(dnn.cudnnGetTensor4dDescriptor(d)) == (F32, 2, 3, 4, 5, 60, 1, 15, 3)
    ok(dnn.cudnnSetTensor4dDescriptorEx(d, F64, 1, 2, 3, 4, 100, 30, 10, 2))
    assert ok(dnn.cudnnGetTensor4dDescriptor(d)) == (F64, 1, 2, 3, 4, 100, 30, 10, 2)
    assert ok(dnn.cudnnGetTensorSizeInBytes(d)) == (30 + 2 * 10 + 3 * 2 + 1) * 8
    ok(dnn.cudnnSetTensorNdDescriptor(d, F16, 5, [1, 2, 3, 4, 5], [120, 60, 20, 5, 1]))
    assert ok(dnn.cudnnGetTensorNdDescriptor(d, 8)) == (F16, 5, [1, 2, 3, 4, 5], [120, 60, 20, 5, 1])
    assert dnn.cudnnGetTensor4dDescriptor(d)[0] == BAD                  # not 4-D
    ok(dnn.cudnnSetTensorNdDescriptorEx(d, NHWC, F32, 4, [2, 3, 4, 5]))
    assert ok(dnn.cudnnGetTensorNdDescriptor(d, 4))[3] == [60, 1, 15, 3]
    # cudnnSetTensor4dDescriptor: BAD_PARAM "at least one of n, c, h, w was negative, or format
    # / dataType has an invalid enumerant value".
    assert dnn.cudnnSetTensor4dDescriptor(d, NCHW, F32, 2, -3, 4, 5) == (BAD,)
    assert dnn.cudnnSetTensor4dDescriptor(d, 7, F32, 2, 3, 4, 5) == (BAD,)
    assert dnn.cudnnSetTensor4dDescriptor(d, NCHW, 99, 2, 3, 4, 5) == (BAD,)
    assert dnn.cudnnSetTensor4dDescriptor(d, dnn.CUDNN_TENSOR_NCHW_VECT_C, F32, 1, 4, 1, 1) \
        == (UNSUPPORTED,)
    assert dnn.cudnnSetTensor4dDescriptor(d, NCHW, F32, 2048, 1024, 1024, 1) == (UNSUPPORTED,)
    assert dnn.cudnnSetTensorNdDescriptor(d, F32, 9, [1] * 9, [1] * 9) == (UNSUPPORTED,)
    assert ok(dnn.cudnnGetTensorNdDescriptor(d, 4))[1] == 4           # failed sets changed nothing
    ok(dnn.cudnnDestroyTensorDescriptor(d))
    assert dnn.cudnnDestroyTensorDescriptor(d) == (BAD,)
    assert dnn.cudnnSetTensor4dDescriptor(d, NCHW, F32, 1, 1, 1, 1) == (BAD,)
    ok(dnn.cudnnDestroyTensorDescriptor(None))


def test_filter_and_convolution_descriptors():
    w = filt((8, 3, 3, 3), F32, NHWC)
    assert ok(dnn.cudnnGetFilter4dDescriptor(w)) == (F32, NHWC, 8, 3, 3, 3)
    c = conv_desc(pad=(1, 1), stride=(2, 2), dilation=(1, 1))
    assert ok(dnn.cudnnGetConvolution2dDescriptor(c)) == (1, 1, 2, 2, 1, 1,
                                                         dnn.CUDNN_CROSS_CORRELATION, F32)
    # Output size 1 + (in + 2*pad - ((filter - 1)*dilation + 1)) / stride: (7 + 2 - 3)//2 + 1 = 4.
    assert ok(dnn.cudnnGetConvolution2dForwardOutputDim(c, tensor((1, 3, 7, 7)), w)) == (1, 8, 4, 4)
    ok(dnn.cudnnSetConvolution2dDescriptor(c, 1, 1, 2, 2, 2, 2, dnn.CUDNN_CONVOLUTION, F32))
    assert ok(dnn.cudnnGetConvolution2dForwardOutputDim(c, tensor((1, 3, 7, 7)), w)) == (1, 8, 3, 3)
    # The filter's channels must be the input's (per group): BAD_PARAM.
    assert dnn.cudnnGetConvolution2dForwardOutputDim(c, tensor((1, 4, 7, 7)), w)[0] == BAD
    ok(dnn.cudnnSetConvolutionGroupCount(c, 2))
    assert ok(dnn.cudnnGetConvolution2dForwardOutputDim(c, tensor((1, 6, 7, 7)), w)) == (1, 8, 3, 3)
    assert ok(dnn.cudnnGetConvolutionGroupCount(c)) == 2
    ok(dnn.cudnnSetConvolutionMathType(c, dnn.CUDNN_TENSOR_OP_MATH))
    assert ok(dnn.cudnnGetConvolutionMathType(c)) == dnn.CUDNN_TENSOR_OP_MATH
    # cudnnSetConvolution2dDescriptor: BAD_PARAM for negative pads, non-positive strides or
    # dilations, or an invalid mode.
    for args in ((-1, 0, 1, 1, 1, 1, 1, F32), (0, 0, 0, 1, 1, 1, 1, F32), (0, 0, 1, 1, 0, 1, 1, F32),
                 (0, 0, 1, 1, 1, 1, 5, F32)):
        assert dnn.cudnnSetConvolution2dDescriptor(c, *args) == (BAD,)
    assert dnn.cudnnSetConvolutionGroupCount(c, 0) == (BAD,)
    # A dilated filter larger than the padded input has no output.
    big = filt((1, 1, 9, 9))
    assert dnn.cudnnGetConvolution2dForwardOutputDim(conv_desc(), tensor((1, 1, 8, 8)), big)[0] == BAD


# -- convolutions --------------------------------------------------------------------------------------

CONV_CASES = [
    dict(x=(2, 3, 9, 8), w=(4, 3, 3, 3), pad=(1, 1), stride=(1, 1), dil=(1, 1)),
    dict(x=(1, 4, 11, 10), w=(6, 2, 3, 2), pad=(2, 0), stride=(2, 3), dil=(2, 1), groups=2),
    dict(x=(2, 6, 5, 5), w=(6, 1, 3, 3), pad=(1, 1), stride=(1, 1), dil=(1, 1), groups=6),
    dict(x=(2, 8, 6, 6), w=(5, 8, 1, 1), pad=(0, 0), stride=(1, 1), dil=(1, 1)),
    dict(x=(1, 2, 7, 7), w=(3, 2, 3, 3), pad=(0, 1), stride=(1, 1), dil=(1, 1), flip=True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c['x']}w{c['w']}")
@pytest.mark.parametrize("dt", [F32, F64])
def test_convolution_forward_and_gradients(handle, case, dt):
    dtype, groups, flip = DTYPES[dt], case.get("groups", 1), case.get("flip", False)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, case["x"]).astype(dtype)
    w = rng.uniform(-1, 1, case["w"]).astype(dtype)
    mode = dnn.CUDNN_CONVOLUTION if flip else dnn.CUDNN_CROSS_CORRELATION
    cd = conv_desc(case["pad"], case["stride"], case["dil"], mode, dt, groups)
    xd, wd = tensor(x.shape, dt), filt(w.shape, dt)
    y_shape = ok(dnn.cudnnGetConvolution2dForwardOutputDim(cd, xd, wd))
    yd = tensor(y_shape, dt)
    y0 = rng.uniform(-1, 1, y_shape).astype(dtype)
    xp, wp, yp = upload(x), upload(w), upload(y0)
    # cudnnConvolutionForward: y = alpha * conv(x, w) + beta * y.
    ok(dnn.cudnnConvolutionForward(handle, 0.5, xd, xp, wd, wp, cd, FWD_ALGO, None, 0, 2.0, yd, yp))
    ref = conv_fwd_ref(x, w, case["pad"], case["stride"], case["dil"], groups, flip)
    np.testing.assert_allclose(download(yp, y_shape, dtype), 0.5 * ref + 2.0 * y0, **TOL[dtype])

    dy = rng.uniform(-1, 1, y_shape).astype(dtype)
    dyp, dxp, dwp = upload(dy), upload(np.zeros_like(x)), upload(np.zeros_like(w))
    w_eff = w[:, :, ::-1, ::-1] if flip else w
    ok(dnn.cudnnConvolutionBackwardData(handle, 1.0, wd, wp, yd, dyp, cd,
                                        dnn.CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, None, 0, 0.0, xd, dxp))
    ref_dx = conv_bwd_data_ref(w_eff, dy, x.shape, case["pad"], case["stride"], case["dil"], groups)
    np.testing.assert_allclose(download(dxp, x.shape, dtype), ref_dx, **TOL[dtype])
    ok(dnn.cudnnConvolutionBackwardFilter(handle, 1.0, xd, xp, yd, dyp, cd,
                                          dnn.CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, None, 0, 0.0, wd,
                                          dwp))
    ref_dw = conv_bwd_filter_ref(x, dy, w.shape, case["pad"], case["stride"], case["dil"], groups)
    if flip:
        ref_dw = ref_dw[:, :, ::-1, ::-1]
    np.testing.assert_allclose(download(dwp, w.shape, dtype), ref_dw, **TOL[dtype])


def test_convolution_nhwc_layouts_and_half(handle):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 4, 6, 5)).astype(np.float16)
    w = rng.uniform(-1, 1, (3, 4, 3, 3)).astype(np.float16)
    # Half data with float compute ("pseudo half"), x / w / y all channels-last.
    cd = conv_desc((1, 1), compute=F32)
    xd, wd, yd = tensor(x.shape, F16, NHWC), filt(w.shape, F16, NHWC), tensor((2, 3, 6, 5), F16, NHWC)
    xp, wp = upload(nhwc(x)), upload(nhwc(w))
    yp = upload(np.zeros((2, 6, 5, 3), np.float16))
    ok(dnn.cudnnConvolutionForward(handle, 1.0, xd, xp, wd, wp, cd, FWD_ALGO, None, 0, 0.0, yd, yp))
    got = download(yp, (2, 6, 5, 3), np.float16).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, conv_fwd_ref(x, w, (1, 1), (1, 1), (1, 1)), **TOL[np.float16])


def test_convolution_backward_bias(handle):
    dy = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    db0 = np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
    dyp, dbp = upload(dy), upload(db0)
    ok(dnn.cudnnConvolutionBackwardBias(handle, 1.0, tensor(dy.shape), dyp, 1.0, tensor((1, 3, 1, 1)),
                                        dbp))
    # db[k] = sum over n, h, w of dy: channel 0 holds 0..3 and 12..15 -> 6 + 54 = 60.
    np.testing.assert_array_equal(download(dbp, (1, 3, 1, 1), np.float32).ravel(),
                                  [61, 94, 127])
    assert dnn.cudnnConvolutionBackwardBias(handle, 1.0, tensor(dy.shape), dyp, 0.0,
                                            tensor((1, 2, 1, 1)), dbp) == (BAD,)


@pytest.mark.parametrize("z_is_y", [False, True])
def test_convolution_bias_activation_forward(handle, z_is_y):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    z = rng.uniform(-1, 1, (1, 3, 5, 5)).astype(np.float32)
    bias = np.array([0.5, -0.5, 0.1], np.float32).reshape(1, 3, 1, 1)
    act = ok(dnn.cudnnCreateActivationDescriptor())
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_RELU, dnn.CUDNN_PROPAGATE_NAN, 0.0))
    cd, yd = conv_desc((1, 1)), tensor((1, 3, 5, 5))
    xp, wp, bp, zp = upload(x), upload(w), upload(bias), upload(z)
    yp = zp if z_is_y else upload(np.full((1, 3, 5, 5), np.nan, np.float32))
    ok(dnn.cudnnConvolutionBiasActivationForward(
        handle, 2.0, tensor(x.shape), xp, filt(w.shape), wp, cd, FWD_ALGO, None, 0, 0.5, yd, zp,
        tensor((1, 3, 1, 1)), bp, act, yd, yp))
    # y = act(alpha1 * conv(x, w) + alpha2 * z + bias).
    want = np.maximum(2.0 * conv_fwd_ref(x, w, (1, 1), (1, 1), (1, 1)) + 0.5 * z + bias, 0)
    np.testing.assert_allclose(download(yp, (1, 3, 5, 5), np.float32), want, rtol=1e-5, atol=1e-5)
    # "CUDNN_ACTIVATION_IDENTITY ... only with CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM".
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_IDENTITY, 0, 0.0))
    assert dnn.cudnnConvolutionBiasActivationForward(
        handle, 1.0, tensor(x.shape), xp, filt(w.shape), wp, cd, FWD_ALGO, None, 0, 0.0, yd, zp,
        tensor((1, 3, 1, 1)), bp, act, yd, yp) == (UNSUPPORTED,)


def test_algorithm_queries(handle):
    xd, wd, cd, yd = tensor((1, 2, 6, 6)), filt((3, 2, 3, 3)), conv_desc((1, 1)), tensor((1, 3, 6, 6))
    assert ok(dnn.cudnnGetConvolutionForwardAlgorithmMaxCount(handle)) == 8
    count, perf = ok(dnn.cudnnGetConvolutionForwardAlgorithm_v7(handle, xd, wd, cd, yd, 3))
    assert count == 3 and [p.status for p in perf] == [OK] * 3 and all(p.memory == 0 for p in perf)
    count, perf = ok(dnn.cudnnFindConvolutionForwardAlgorithm(handle, xd, wd, cd, yd, 10))
    assert count == 8 and len({p.algo for p in perf}) == 8 and all(p.time > 0 for p in perf)
    count, _ = ok(dnn.cudnnFindConvolutionBackwardDataAlgorithm(handle, wd, yd, cd, xd, 10))
    assert count == 6
    count, _ = ok(dnn.cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, xd, yd, cd, wd, 10))
    assert count == 7
    ok(dnn.cudnnFindConvolutionBackwardFilterAlgorithm(handle, xd, yd, cd, wd, 1))
    assert ok(dnn.cudnnGetConvolutionForwardWorkspaceSize(handle, xd, wd, cd, yd, 6)) == 0
    assert ok(dnn.cudnnGetConvolutionBackwardDataWorkspaceSize(handle, wd, yd, cd, xd, 0)) == 0
    assert ok(dnn.cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, xd, yd, cd, wd, 3)) == 0
    assert dnn.cudnnGetConvolutionForwardAlgorithm_v7(handle, xd, wd, cd, yd, 0)[0] == BAD
    assert dnn.cudnnGetConvolutionForwardWorkspaceSize(handle, xd, wd, cd, yd, 8)[0] == BAD


def test_convolution_rejections_enqueue_nothing(handle):
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    xp, wp = upload(x), upload(w)
    yp = upload(np.full((1, 3, 5, 5), 7, np.float32))
    xd, wd, yd, cd = tensor(x.shape), filt(w.shape), tensor((1, 3, 5, 5)), conv_desc((1, 1))
    cases = [
        # (arguments changed, status): cudnnConvolutionForward's documented returns.
        (dict(wDesc=filt(w.shape, F64)), BAD),                  # data types differ
        (dict(xDesc=tensor((1, 3, 5, 5))), BAD),                # channels differ (and x too small)
        (dict(yDesc=tensor((1, 3, 4, 4))), UNSUPPORTED),        # wrong output spatial size
        (dict(yDesc=tensor((1, 2, 5, 5))), BAD),                # wrong output channels
        (dict(convDesc=conv_desc((1, 1), compute=F64)), UNSUPPORTED),   # compute type
        (dict(algo=8), BAD), (dict(algo=-1), BAD),
        (dict(x=None), BAD), (dict(x=xp + 1), BAD), (dict(y=upload(np.zeros(10, np.float32))), BAD),
        (dict(y=xp), BAD),                                      # output overlaps an input
        (dict(convDesc=ok(dnn.cudnnCreateConvolutionDescriptor())), BAD),  # never set
        (dict(handle=None), BAD), (dict(alpha=None), BAD), (dict(alpha=np.ones(1, np.float64)), BAD),
        (dict(workSpace=12288, workSpaceSizeInBytes=64), BAD),  # not facade memory
    ]
    for change, status in cases:
        args = dict(handle=handle, alpha=1.0, xDesc=xd, x=xp, wDesc=wd, w=wp, convDesc=cd,
                    algo=FWD_ALGO, workSpace=None, workSpaceSizeInBytes=0, beta=0.0, yDesc=yd, y=yp)
        args.update(change)
        assert dnn.cudnnConvolutionForward(**args) == (status,), (change, dnn.last_status_detail())
    np.testing.assert_array_equal(download(yp, (1, 3, 5, 5), np.float32), 7)
    freed = upload(x)
    ok(rt.cudaFree(freed))
    assert dnn.cudnnConvolutionForward(handle, 1.0, xd, freed, wd, wp, cd, FWD_ALGO, None, 0, 0.0,
                                       yd, yp) == (BAD,)
    assert "not in any live facade allocation" in dnn.last_status_detail()
    ok(dnn.cudnnDestroyFilterDescriptor(wd))
    assert dnn.cudnnConvolutionForward(handle, 1.0, xd, xp, wd, wp, cd, FWD_ALGO, None, 0, 0.0,
                                       yd, yp) == (BAD,)
    assert "destroyed" in dnn.last_status_detail()


# -- pooling, activation, softmax --------------------------------------------------------------------

@pytest.mark.parametrize("mode,name", [(dnn.CUDNN_POOLING_MAX, "max"),
                                       (dnn.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING, "include"),
                                       (dnn.CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING, "exclude")])
def test_pooling_forward_backward(handle, mode, name):
    rng = np.random.default_rng(3)
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float64)   # distinct values
    pd = ok(dnn.cudnnCreatePoolingDescriptor())
    ok(dnn.cudnnSetPooling2dDescriptor(pd, mode, dnn.CUDNN_PROPAGATE_NAN, 3, 2, 1, 1, 2, 2))
    xd = tensor(x.shape, F64)
    y_shape = ok(dnn.cudnnGetPooling2dForwardOutputDim(pd, xd))
    assert y_shape == (2, 3, (7 + 2 - 3) // 2 + 1, (6 + 2 - 2) // 2 + 1)
    yd = tensor(y_shape, F64)
    xp, yp = upload(x), upload(np.zeros(y_shape))
    ok(dnn.cudnnPoolingForward(handle, pd, 1.0, xd, xp, 0.0, yd, yp))
    y = download(yp, y_shape, np.float64)
    np.testing.assert_allclose(y, pool_ref(x, name, (3, 2), (1, 1), (2, 2)), rtol=1e-12)
    # Backward: the adjoint of the forward map, <pool(x + t e), dy> slope = <e, dx>.
    dy = rng.uniform(-1, 1, y_shape)
    dxp = upload(np.zeros_like(x))
    ok(dnn.cudnnPoolingBackward(handle, pd, 1.0, yd, yp, yd, upload(dy), xd, xp, 0.0, xd, dxp))
    dx = download(dxp, x.shape, np.float64)
    e = rng.uniform(-1, 1, x.shape)
    t = 1e-3 if name == "max" else 1.0      # max: small step keeps the argmax (distinct values)
    slope = ((pool_ref(x + t * e, name, (3, 2), (1, 1), (2, 2)) - y) * dy).sum() / t
    assert slope == pytest.approx((e * dx).sum(), rel=1e-6)
    assert dnn.cudnnPoolingForward(handle, pd, 1.0, xd, xp, 0.0, tensor((2, 3, 4, 3), F64), yp) == (BAD,)


def test_pooling_descriptor_rejections():
    pd = ok(dnn.cudnnCreatePoolingDescriptor())
    # cudnnSetPooling2dDescriptor: BAD_PARAM for non-positive window/stride or invalid enums.
    assert dnn.cudnnSetPooling2dDescriptor(pd, 0, 0, 0, 2, 0, 0, 1, 1) == (BAD,)
    assert dnn.cudnnSetPooling2dDescriptor(pd, 0, 0, 2, 2, 0, 0, 1, 0) == (BAD,)
    assert dnn.cudnnSetPooling2dDescriptor(pd, 9, 0, 2, 2, 0, 0, 1, 1) == (BAD,)
    assert dnn.cudnnSetPooling2dDescriptor(pd, 0, 0, 2, 2, -1, 0, 1, 1) == (BAD,)
    ok(dnn.cudnnSetPooling2dDescriptor(pd, 0, 1, 2, 3, 0, 1, 2, 1))
    assert ok(dnn.cudnnGetPooling2dDescriptor(pd)) == (0, 1, 2, 3, 0, 1, 2, 1)


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


ACT_CASES = [  # mode, coef, f(x), f'(x) given (x, y)
    (dnn.CUDNN_ACTIVATION_RELU, 0.0, lambda x: np.maximum(x, 0), lambda x, y: (x > 0) * 1.0),
    (dnn.CUDNN_ACTIVATION_SIGMOID, 0.0, sigmoid, lambda x, y: y * (1 - y)),
    (dnn.CUDNN_ACTIVATION_TANH, 0.0, np.tanh, lambda x, y: 1 - y * y),
    (dnn.CUDNN_ACTIVATION_CLIPPED_RELU, 0.5, lambda x: np.clip(x, 0, 0.5),
     lambda x, y: ((x > 0) & (x < 0.5)) * 1.0),
    (dnn.CUDNN_ACTIVATION_ELU, 0.7, lambda x: np.where(x > 0, x, 0.7 * np.expm1(x)),
     lambda x, y: np.where(x > 0, 1.0, 0.7 * np.exp(x))),
]


@pytest.mark.parametrize("mode,coef,f,df", ACT_CASES, ids=lambda v: getattr(v, "name", ""))
def test_activation_forward_backward(handle, mode, coef, f, df):
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, (2, 3, 4, 5)).astype(np.float32)
    act = ok(dnn.cudnnCreateActivationDescriptor())
    ok(dnn.cudnnSetActivationDescriptor(act, mode, dnn.CUDNN_NOT_PROPAGATE_NAN, coef))
    assert ok(dnn.cudnnGetActivationDescriptor(act)) == (mode, dnn.CUDNN_NOT_PROPAGATE_NAN, coef)
    d = tensor(x.shape)
    xp, yp = upload(x), upload(np.ones_like(x))
    ok(dnn.cudnnActivationForward(handle, act, 2.0, d, xp, -1.0, d, yp))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(download(yp, x.shape, np.float32), 2 * f(x64) - 1, rtol=1e-5, atol=1e-6)
    ok(dnn.cudnnActivationForward(handle, act, 1.0, d, xp, 0.0, d, yp))
    y = download(yp, x.shape, np.float32).astype(np.float64)
    dy = rng.uniform(-1, 1, x.shape).astype(np.float32)
    dxp = upload(np.zeros_like(x))
    ok(dnn.cudnnActivationBackward(handle, act, 1.0, d, yp, d, upload(dy), d, xp, 0.0, d, dxp))
    np.testing.assert_allclose(download(dxp, x.shape, np.float32), dy * df(x64, y), rtol=1e-5,
                               atol=1e-6)


def test_activation_in_place_swish_and_identity(handle):
    x = np.array([-1.0, 0.0, 0.5, 2.0], np.float64).reshape(1, 1, 2, 2)
    act = ok(dnn.cudnnCreateActivationDescriptor())
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_SWISH, 1, 0.0))
    ok(dnn.cudnnSetActivationDescriptorSwishBeta(act, 2.0))
    assert ok(dnn.cudnnGetActivationDescriptorSwishBeta(act)) == 2.0
    d, xp = tensor(x.shape, F64), upload(x)
    ok(dnn.cudnnActivationForward(handle, act, 1.0, d, xp, 0.0, d, xp))        # in place
    np.testing.assert_allclose(download(xp, x.shape, np.float64), x * sigmoid(2 * x), rtol=1e-14)
    # CUDNN_ACTIVATION_IDENTITY "does not work with cudnnActivationForward()".
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_IDENTITY, 1, 0.0))
    assert dnn.cudnnActivationForward(handle, act, 1.0, d, xp, 0.0, d, xp) == (BAD,)
    assert dnn.cudnnSetActivationDescriptor(act, 11, 1, 0.0) == (BAD,)
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_RELU, 1, 0.0))
    # In place needs the same strides; a shifted view partially overlaps: BAD_PARAM.
    d2 = ok(dnn.cudnnCreateTensorDescriptor())
    ok(dnn.cudnnSetTensor4dDescriptorEx(d2, F64, 1, 1, 2, 1, 2, 2, 2, 1))
    assert dnn.cudnnActivationForward(handle, act, 1.0, d2, xp, 0.0, d2, xp + 8) == (BAD,)


def softmax_ref(x, axes, log=False):
    x = x.astype(np.float64)
    shifted = x - x.max(axis=axes, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=axes, keepdims=True))
    return shifted - lse if log else np.exp(shifted - lse)


@pytest.mark.parametrize("algo", [dnn.CUDNN_SOFTMAX_FAST, dnn.CUDNN_SOFTMAX_ACCURATE,
                                  dnn.CUDNN_SOFTMAX_LOG])
@pytest.mark.parametrize("mode,axes", [(dnn.CUDNN_SOFTMAX_MODE_INSTANCE, (1, 2, 3)),
                                       (dnn.CUDNN_SOFTMAX_MODE_CHANNEL, (1,))])
def test_softmax_forward_backward(handle, algo, mode, axes):
    rng = np.random.default_rng(5)
    x = rng.uniform(-5, 5, (2, 4, 3, 3))
    log = algo == dnn.CUDNN_SOFTMAX_LOG
    d, xp = tensor(x.shape, F64), upload(x)
    yp = upload(np.zeros_like(x))
    ok(dnn.cudnnSoftmaxForward(handle, algo, mode, 1.0, d, xp, 0.0, d, yp))
    y = softmax_ref(x, axes, log)
    np.testing.assert_allclose(download(yp, x.shape, np.float64), y, rtol=1e-12, atol=1e-14)
    dy = rng.uniform(-1, 1, x.shape)
    dyp = upload(dy)
    ok(dnn.cudnnSoftmaxBackward(handle, algo, mode, 1.0, d, yp, d, dyp, 0.0, d, dyp))  # in place
    # Jacobian-vector product: softmax' = y * (dy - sum(dy * y)); log-softmax' = dy - e^y * sum(dy).
    want = dy - np.exp(y) * dy.sum(axis=axes, keepdims=True) if log else \
        y * (dy - (dy * y).sum(axis=axes, keepdims=True))
    np.testing.assert_allclose(download(dyp, x.shape, np.float64), want, rtol=1e-11, atol=1e-13)
    ok(dnn.cudnnSoftmaxForward(handle, algo, mode, 1.0, d, xp, 0.0, d, xp))            # in place
    np.testing.assert_allclose(download(xp, x.shape, np.float64), y, rtol=1e-12, atol=1e-14)
    assert dnn.cudnnSoftmaxForward(handle, 3, mode, 1.0, d, xp, 0.0, d, yp) == (BAD,)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("mode,shape,axes", [
    (dnn.CUDNN_SOFTMAX_MODE_INSTANCE, (3, 1000, 1, 1), (1, 2, 3)),     # logits, one thread
    (dnn.CUDNN_SOFTMAX_MODE_INSTANCE, (40, 1000, 1, 1), (1, 2, 3)),    # parallel rows
    (dnn.CUDNN_SOFTMAX_MODE_CHANNEL, (2, 7, 5, 9), (1,))])
def test_softmax_forward_in_place_float32(handle, log, mode, shape, axes):
    # cudnnSoftmaxForward with y == x (same pointer, same descriptor), with and without
    # blending: y = alpha * softmax(x) + beta * y reads the old y, which is x itself.
    rng = np.random.default_rng(11)
    x = rng.uniform(-8, 8, shape).astype(np.float32)
    d = tensor(shape)
    algo = dnn.CUDNN_SOFTMAX_LOG if log else dnn.CUDNN_SOFTMAX_ACCURATE
    ref = softmax_ref(x, axes, log)
    for alpha, beta in ((1.0, 0.0), (0.5, -2.0)):
        xp = upload(x)
        ok(dnn.cudnnSoftmaxForward(handle, algo, mode, alpha, d, xp, beta, d, xp))
        want = alpha * ref + beta * x.astype(np.float64)
        np.testing.assert_allclose(download(xp, shape, np.float32), want, rtol=1e-5, atol=1e-6)


# -- batch normalization, dropout ------------------------------------------------------------------------

def test_derive_bn_descriptor():
    derived = ok(dnn.cudnnCreateTensorDescriptor())
    ok(dnn.cudnnDeriveBNTensorDescriptor(derived, tensor((2, 3, 4, 5), F16), dnn.CUDNN_BATCHNORM_SPATIAL))
    assert ok(dnn.cudnnGetTensor4dDescriptor(derived))[:5] == (F32, 1, 3, 1, 1)
    ok(dnn.cudnnDeriveBNTensorDescriptor(derived, tensor((2, 3, 4, 5), F64),
                                         dnn.CUDNN_BATCHNORM_PER_ACTIVATION))
    assert ok(dnn.cudnnGetTensor4dDescriptor(derived))[:5] == (F64, 1, 3, 4, 5)
    assert dnn.cudnnDeriveBNTensorDescriptor(derived, tensor((2, 3, 4, 5)), 7) == (BAD,)


@pytest.mark.parametrize("bn_mode,axes", [(dnn.CUDNN_BATCHNORM_SPATIAL, (0, 2, 3)),
                                          (dnn.CUDNN_BATCHNORM_PER_ACTIVATION, (0,))])
def test_batch_norm_training_inference_backward(handle, bn_mode, axes):
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, (4, 3, 3, 2)).astype(np.float32)
    xd = tensor(x.shape)
    pd = ok(dnn.cudnnCreateTensorDescriptor())
    ok(dnn.cudnnDeriveBNTensorDescriptor(pd, xd, bn_mode))
    pshape = (1, 3, 1, 1) if bn_mode == dnn.CUDNN_BATCHNORM_SPATIAL else (1, 3, 3, 2)
    scale = rng.uniform(0.5, 1.5, pshape).astype(np.float32)
    bias = rng.uniform(-1, 1, pshape).astype(np.float32)
    run_mean0, run_var0 = np.full(pshape, 0.5, np.float32), np.full(pshape, 2.0, np.float32)
    xp, yp, sp, bp = upload(x), upload(np.zeros_like(x)), upload(scale), upload(bias)
    rmp, rvp, smp, sip = upload(run_mean0), upload(run_var0), upload(np.zeros(pshape, np.float32)), \
        upload(np.zeros(pshape, np.float32))
    eps, factor = 1e-3, 0.25
    ok(dnn.cudnnBatchNormalizationForwardTraining(handle, bn_mode, 1.0, 0.0, xd, xp, xd, yp, pd, sp, bp,
                                                  factor, rmp, rvp, eps, smp, sip))
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    m = x.size // scale.size
    xhat = (x64 - mean) / np.sqrt(var + eps)
    np.testing.assert_allclose(download(yp, x.shape, np.float32), scale * xhat + bias, rtol=1e-4, atol=1e-5)
    # Running stats: (1 - factor) * old + factor * batch, the variance unbiased (m / (m - 1)).
    np.testing.assert_allclose(download(rmp, pshape, np.float32), 0.75 * 0.5 + 0.25 * mean, rtol=1e-5)
    np.testing.assert_allclose(download(rvp, pshape, np.float32), 0.75 * 2.0 + 0.25 * var * m / (m - 1),
                               rtol=1e-5)
    np.testing.assert_allclose(download(smp, pshape, np.float32), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(download(sip, pshape, np.float32), 1 / np.sqrt(var + eps), rtol=1e-5)

    ok(dnn.cudnnBatchNormalizationForwardInference(handle, bn_mode, 1.0, 0.0, xd, xp, xd, yp, pd, sp, bp,
                                                   rmp, rvp, eps))
    rm, rv = download(rmp, pshape, np.float32), download(rvp, pshape, np.float32)
    np.testing.assert_allclose(download(yp, x.shape, np.float32),
                               scale * (x64 - rm) / np.sqrt(rv + eps) + bias, rtol=1e-4, atol=1e-5)

    dy = rng.uniform(-1, 1, x.shape).astype(np.float32)
    dxp, dsp, dbp = upload(np.zeros_like(x)), upload(np.zeros(pshape, np.float32)), \
        upload(np.zeros(pshape, np.float32))
    ok(dnn.cudnnBatchNormalizationBackward(handle, bn_mode, 1.0, 0.0, 1.0, 0.0, xd, xp, xd, upload(dy),
                                           xd, dxp, pd, sp, dsp, dbp, eps, smp, sip))
    dy64 = dy.astype(np.float64)
    g_bias, g_scale = dy64.sum(axis=axes, keepdims=True), (dy64 * xhat).sum(axis=axes, keepdims=True)
    g_x = scale / np.sqrt(var + eps) * (dy64 - g_bias / m - xhat * g_scale / m)
    np.testing.assert_allclose(download(dbp, pshape, np.float32), g_bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(download(dsp, pshape, np.float32), g_scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(download(dxp, x.shape, np.float32), g_x, rtol=1e-4, atol=1e-5)


def test_batch_norm_rejections(handle):
    x = np.ones((2, 3, 2, 2), np.float32)
    xd, xp, yp = tensor(x.shape), upload(x), upload(x)
    pd = tensor((1, 3, 1, 1))
    p = upload(np.ones(3, np.float32))
    spatial = dnn.CUDNN_BATCHNORM_SPATIAL

    def train(**change):
        args = dict(pdesc=pd, eps=1e-5, run_var=p, factor=1.0, save_inv=None, mode=spatial)
        args.update(change)
        return dnn.cudnnBatchNormalizationForwardTraining(
            handle, args["mode"], 1.0, 0.0, xd, xp, xd, yp, args["pdesc"], p, p, args["factor"], p,
            args["run_var"], args["eps"], None, args["save_inv"])
    assert train() == (OK,)
    assert train(pdesc=tensor((1, 3, 2, 2))) == (BAD,)                   # not the derived shape
    assert train(pdesc=tensor((1, 3, 1, 1), F64)) == (BAD,)              # not the derived type
    assert train(eps=-1e-3) == (BAD,)                                    # < CUDNN_BN_MIN_EPSILON
    assert train(run_var=None) == (BAD,)                                 # running mean without var
    assert train(save_inv=p) == (BAD,)                                   # saved inv var without mean
    assert train(factor=1.5) == (BAD,)
    assert train(mode=5) == (BAD,)
    one = tensor((1, 3, 1, 1))                                            # 1 value per channel
    assert dnn.cudnnBatchNormalizationForwardTraining(handle, spatial, 1.0, 0.0, one, xp, one, yp, pd,
                                                      p, p, 1.0, None, None, 1e-5, None, None) == (BAD,)


def test_dropout(handle):
    size = ok(dnn.cudnnDropoutGetStatesSize(handle))
    states = ok(rt.cudaMalloc(size))
    dd = ok(dnn.cudnnCreateDropoutDescriptor())
    p = 0.25
    ok(dnn.cudnnSetDropoutDescriptor(dd, handle, p, states, size, 1234))
    assert ok(dnn.cudnnGetDropoutDescriptor(dd, handle)) == (p, states, 1234)
    x = np.random.default_rng(7).uniform(1, 2, (4, 8, 16, 16)).astype(np.float32)   # no zeros
    d = tensor(x.shape)
    reserve_size = ok(dnn.cudnnDropoutGetReserveSpaceSize(d))
    assert reserve_size >= x.size
    xp, yp, rp = upload(x), upload(np.zeros_like(x)), ok(rt.cudaMalloc(reserve_size))
    ok(dnn.cudnnDropoutForward(handle, dd, d, xp, d, yp, rp, reserve_size))
    y = download(yp, x.shape, np.float32)
    kept = y != 0
    # Kept elements are scaled by 1 / (1 - p); the rest are 0; about 1 - p are kept.
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 0.02
    dy = np.ones_like(x)
    dxp = upload(np.zeros_like(x))
    ok(dnn.cudnnDropoutBackward(handle, dd, d, upload(dy), d, dxp, rp, reserve_size))
    np.testing.assert_allclose(download(dxp, x.shape, np.float32), kept / (1 - p), rtol=1e-6)
    # The state advances: a second forward draws a different mask; re-seeding repeats the first.
    ok(dnn.cudnnDropoutForward(handle, dd, d, xp, d, yp, rp, reserve_size))
    assert ((download(yp, x.shape, np.float32) != 0) != kept).any()
    ok(dnn.cudnnSetDropoutDescriptor(dd, handle, p, states, size, 1234))
    ok(dnn.cudnnDropoutForward(handle, dd, d, xp, d, yp, rp, reserve_size))
    np.testing.assert_array_equal(download(yp, x.shape, np.float32) != 0, kept)
    # Too little reserve or state: CUDNN_STATUS_INVALID_VALUE.
    assert dnn.cudnnDropoutForward(handle, dd, d, xp, d, yp, rp, 10) == (S.CUDNN_STATUS_INVALID_VALUE,)
    assert dnn.cudnnSetDropoutDescriptor(dd, handle, p, states, 4, 1) == (S.CUDNN_STATUS_INVALID_VALUE,)
    assert dnn.cudnnSetDropoutDescriptor(dd, handle, 1.5, states, size, 1) == (BAD,)
    no_state = ok(dnn.cudnnCreateDropoutDescriptor())
    ok(dnn.cudnnSetDropoutDescriptor(no_state, handle, p, None, 0, 1))
    assert dnn.cudnnDropoutForward(handle, no_state, d, xp, d, yp, rp, reserve_size) == (BAD,)


# -- tensor operations --------------------------------------------------------------------------------------

def test_add_tensor_bias_broadcast(handle):
    c0 = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    bias = np.array([10, 20, 30], np.float32).reshape(1, 3, 1, 1)
    cp = upload(c0)
    ok(dnn.cudnnAddTensor(handle, 2.0, tensor(bias.shape), upload(bias), 1.0, tensor(c0.shape), cp))
    np.testing.assert_array_equal(download(cp, c0.shape, np.float32), c0 + 2 * bias)
    assert dnn.cudnnAddTensor(handle, 1.0, tensor((1, 2, 1, 1)), upload(bias), 1.0,
                              tensor(c0.shape), cp) == (BAD,)


@pytest.mark.parametrize("op,f", [
    (dnn.CUDNN_OP_TENSOR_ADD, lambda a, b: a + b), (dnn.CUDNN_OP_TENSOR_MUL, lambda a, b: a * b),
    (dnn.CUDNN_OP_TENSOR_MIN, np.minimum), (dnn.CUDNN_OP_TENSOR_MAX, np.maximum),
    (dnn.CUDNN_OP_TENSOR_SQRT, lambda a, b: np.sqrt(a)), (dnn.CUDNN_OP_TENSOR_NOT, lambda a, b: 1 - a),
])
def test_op_tensor(handle, op, f):
    rng = np.random.default_rng(8)
    a = rng.uniform(0, 2, (2, 3, 4, 1))
    b = rng.uniform(-1, 1, (1, 3, 1, 1))
    c0 = rng.uniform(-1, 1, a.shape)
    desc = ok(dnn.cudnnCreateOpTensorDescriptor())
    ok(dnn.cudnnSetOpTensorDescriptor(desc, op, F64, dnn.CUDNN_PROPAGATE_NAN))
    assert ok(dnn.cudnnGetOpTensorDescriptor(desc)) == (op, F64, dnn.CUDNN_PROPAGATE_NAN)
    cp = upload(c0)
    ok(dnn.cudnnOpTensor(handle, desc, 0.5, tensor(a.shape, F64), upload(a), 3.0, tensor(b.shape, F64),
                         upload(b), 0.25, tensor(c0.shape, F64), cp))
    # C = op(alpha1 * A, alpha2 * B) + beta * C.
    np.testing.assert_allclose(download(cp, a.shape, np.float64), f(0.5 * a, 3.0 * b) + 0.25 * c0,
                               rtol=1e-14)
    ok(dnn.cudnnSetOpTensorDescriptor(desc, op, F32, 0))
    assert dnn.cudnnOpTensor(handle, desc, 1.0, tensor(a.shape, F64), upload(a), 1.0,
                             tensor(b.shape, F64), upload(b), 0.0, tensor(a.shape, F64), cp) \
        == (UNSUPPORTED,)


def test_transform_scale_set_tensor(handle):
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    xp, yp = upload(x), upload(np.ones(x.size, np.float32))
    # cudnnTransformTensor: NCHW -> NHWC, y = alpha * x + beta * y.
    ok(dnn.cudnnTransformTensor(handle, 2.0, tensor(x.shape), xp, 1.0, tensor(x.shape, F32, NHWC), yp))
    np.testing.assert_array_equal(download(yp, (2, 2, 2, 3), np.float32), nhwc(2 * x + 1))
    assert dnn.cudnnTransformTensor(handle, 1.0, tensor(x.shape), xp, 0.0, tensor(x.shape), xp) == (BAD,)
    assert dnn.cudnnTransformTensor(handle, 1.0, tensor(x.shape), xp, 0.0, tensor((2, 3, 2, 1)), yp) \
        == (BAD,)
    ok(dnn.cudnnScaleTensor(handle, tensor(x.shape), xp, -0.5))
    np.testing.assert_array_equal(download(xp, x.shape, np.float32), -0.5 * x)
    ok(dnn.cudnnSetTensor(handle, tensor(x.shape, F32, NHWC), xp, np.array([3.5], np.float32)))
    np.testing.assert_array_equal(download(xp, x.shape, np.float32), 3.5)
    assert dnn.cudnnSetTensor(handle, tensor(x.shape), xp, np.array([3.5])) == (BAD,)   # not a float


def test_in_place_calls_match_out_of_place(handle):
    # In-place calls (output = input, same pointer and strides) give the out-of-place result,
    # including log-softmax over rows (computed in place, without a copy of x).
    rng = np.random.default_rng(10)
    x = rng.uniform(0.5, 2, (2, 3, 4, 4)).astype(np.float32)
    d = tensor(x.shape)

    def run(call, in_place):
        xp = upload(x)
        yp = xp if in_place else upload(np.zeros_like(x))
        call(xp, yp)
        return download(yp, x.shape, np.float32)

    calls = {
        "log-softmax": lambda xp, yp: ok(dnn.cudnnSoftmaxForward(
            handle, dnn.CUDNN_SOFTMAX_LOG, dnn.CUDNN_SOFTMAX_MODE_INSTANCE, 1.0, d, xp, 0.0, d, yp)),
        "bn-inference": lambda xp, yp: ok(dnn.cudnnBatchNormalizationForwardInference(
            handle, dnn.CUDNN_BATCHNORM_SPATIAL, 1.0, 0.0, d, xp, d, yp, tensor((1, 3, 1, 1)), p, p, p,
            p, 1e-5)),
        "add-tensor": lambda xp, yp: ok(dnn.cudnnAddTensor(handle, 0.5, d, xp, 2.0, d, yp)),
    }
    p = upload(np.array([0.5, 1.0, 2.0], np.float32))
    for name, call in calls.items():
        if name == "add-tensor":       # out of place: C = 0.5 * A + 2 * C with C = A beforehand
            want = 2.5 * x
        else:
            want = run(call, in_place=False)
        np.testing.assert_allclose(run(call, in_place=True), want, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.timeout(60)
def test_handles_belong_to_the_device_current_at_creation(python_subprocess):
    # cudnnCreate: "the cuDNN handle is tied to the current CUDA device"; cudnnSetStream:
    # CUDNN_STATUS_MAPPING_ERROR for "a mismatch between the user stream and the handle context".
    result = python_subprocess("""
        import numpy as np
        from streamq.cuda_facade import cudnn as dnn, cublas as cb, runtime as rt
        assert rt.cudaGetDeviceCount() == (0, 2)
        rt.cudaSetDevice(1)
        _, h = dnn.cudnnCreate()
        _, hb = cb.cublasCreate()
        _, s1 = rt.cudaStreamCreate()
        rt.cudaSetDevice(0)
        _, s0 = rt.cudaStreamCreate()
        print(int(dnn.cudnnSetStream(h, s0)[0]), int(cb.cublasSetStream(hb, s0)[0]))
        print(int(dnn.cudnnSetStream(h, s1)[0]), int(cb.cublasSetStream(hb, s1)[0]))
        # Work of a handle of device 1 goes to device 1's default stream, whatever the
        # calling thread's current device.
        _, ptr = rt.cudaMalloc(64)
        _, d = dnn.cudnnCreateTensorDescriptor()
        dnn.cudnnSetTensor4dDescriptor(d, dnn.CUDNN_TENSOR_NCHW, dnn.CUDNN_DATA_FLOAT, 1, 1, 4, 4)
        dnn.cudnnSetStream(h, 0)
        status = dnn.cudnnSetTensor(h, d, ptr, 1.5)[0]
        rt.cudaSetDevice(1)
        rt.cudaDeviceSynchronize()
        out = np.zeros(16, np.float32)
        rt.cudaMemcpy(out, ptr, 64, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        print(int(status), h.stream().device.index, out.tolist() == [1.5] * 16)
    """, env={"STREAMQ_TOPOLOGY": "2x1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "7", "0", "0", "0", "1", "True"]


# -- streams, threads, the queue log ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_ops_see_earlier_work_on_their_stream(handle):
    s = ok(rt.cudaStreamCreate())
    ok(dnn.cudnnSetStream(handle, s))
    x = np.full((1, 2, 3, 3), 5.0, np.float32)
    xp, yp = upload(x), upload(np.zeros_like(x))
    act = ok(dnn.cudnnCreateActivationDescriptor())
    ok(dnn.cudnnSetActivationDescriptor(act, dnn.CUDNN_ACTIVATION_RELU, 1, 0.0))
    d = tensor(x.shape)
    gate = Gate(s)
    ok(rt.cudaMemsetAsync(xp, 0, x.nbytes, s))        # queued behind the gate
    ok(dnn.cudnnActivationForward(handle, act, 1.0, d, xp, 0.0, d, yp))
    ok(dnn.cudnnScaleTensor(handle, d, xp, 2.0))
    assert rt.cudaStreamQuery(s)[0] == rt.cudaError_t.cudaErrorNotReady
    gate.release.set()
    ok(rt.cudaStreamSynchronize(s))
    np.testing.assert_array_equal(download(yp, x.shape, np.float32), 0)   # relu saw the memset
    ok(rt.cudaStreamDestroy(s))
    # Later work on a destroyed stream cannot be launched.
    assert dnn.cudnnScaleTensor(handle, d, xp, 2.0) == (S.CUDNN_STATUS_EXECUTION_FAILED,)


@pytest.mark.timeout(60)
def test_many_threads_each_with_handle_and_stream():
    rng = np.random.default_rng(9)
    data = [(rng.uniform(-1, 1, (1, 3, 8, 8)), rng.uniform(-1, 1, (4, 3, 3, 3))) for _ in range(4)]
    results, errors = {}, []

    def worker(i):
        try:
            h = ok(dnn.cudnnCreate())
            s = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
            ok(dnn.cudnnSetStream(h, s))
            x, w = data[i]
            xd, wd, yd, cd = tensor(x.shape, F64), filt(w.shape, F64), tensor((1, 4, 8, 8), F64), \
                conv_desc((1, 1), compute=F64)
            xp, wp, yp = upload(x), upload(w), upload(np.zeros((1, 4, 8, 8)))
            for _ in range(5):       # y = conv(x, w) + y, five times in stream order
                ok(dnn.cudnnConvolutionForward(h, 1.0, xd, xp, wd, wp, cd, FWD_ALGO, None, 0, 1.0, yd, yp))
            ok(rt.cudaStreamSynchronize(s))
            out = np.empty((1, 4, 8, 8))
            ok(rt.cudaMemcpy(out.reshape(-1), yp, out.nbytes, D2H))
            results[i] = out
            ok(dnn.cudnnDestroy(h))
            ok(rt.cudaStreamDestroy(s))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not errors, errors
    for i, (x, w) in enumerate(data):
        np.testing.assert_allclose(results[i], 5 * conv_fwd_ref(x, w, (1, 1), (1, 1), (1, 1)),
                                   rtol=1e-11, atol=1e-11)


def test_queue_log_and_sticky_errors(handle, tmp_path):
    x = np.ones((1, 2, 4, 4), np.float32)
    xp, wp = upload(x), upload(np.ones((3, 2, 3, 3), np.float32))
    yp = upload(np.zeros((1, 3, 2, 2), np.float32))
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ok(dnn.cudnnConvolutionForward(handle, 1.0, tensor(x.shape), xp, filt((3, 2, 3, 3)), wp,
                                       conv_desc(), FWD_ALGO, None, 0, 0.0, tensor((1, 3, 2, 2)), yp))
        ok(rt.cudaDeviceSynchronize())
    finally:
        streamq.trace.disable()
    (task,) = [r for r in map(json.loads, path.read_text().splitlines())
               if r.get("type") == "task" and r.get("name") == "cudnn.convolution_forward"]
    assert task["kind"] == "kernel" and task["status"] == "ok"
    assert [(r["buffer"], r["shape"]) for r in task["reads"]] == [(xp, [1, 2, 4, 4]), (wp, [3, 2, 3, 3])]
    assert [(r["buffer"], r["strides"]) for r in task["writes"]] == [(yp, [48, 16, 8, 4])]
    np.testing.assert_array_equal(download(yp, (1, 3, 2, 2), np.float32), 18.0)

    def boom(_):
        raise RuntimeError("kernel fault")
    ok(rt.cudaLaunchHostFunc(0, boom, None))
    rt.cudaDeviceSynchronize()
    assert dnn.cudnnScaleTensor(handle, tensor(x.shape), xp, 2.0) == (S.CUDNN_STATUS_EXECUTION_FAILED,)
    assert "kernel fault" in dnn.last_status_detail()
