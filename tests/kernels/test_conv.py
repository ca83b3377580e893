"""Tests of the cuDNN convolution kernels (streamq.kernels.conv).

The float64 ``reference`` provider is the oracle for every other provider; the
reference itself is checked against naive Python loops, hand-computed values,
the adjoint identity <conv(x), dy> = <x, dgrad(dy)> = <w, wgrad(x, dy)>, and
finite differences.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import streamq.kernels as kernels
from streamq.kernels import _conv_fast, _conv_gemm, _conv_winograd, _conv_winograd4, conv

FWD = "cudnn.convolution_forward"
BWD_DATA = "cudnn.convolution_backward_data"
BWD_FILTER = "cudnn.convolution_backward_filter"
BWD_BIAS = "cudnn.convolution_backward_bias"
OUT_SHAPE = "cudnn.convolution_output_shape"

CONV_OPS = (FWD, BWD_DATA, BWD_FILTER)
FAST = ("blas", "numba")

# Tolerances against the float64 reference. float32: products summed over at
# most a few hundred terms of O(1) values in float32 GEMMs; errors ~1e-6 of the
# largest |value|, checked with margin. float16: results are rounded once into
# half precision (eps 9.8e-4) from float32 sums.
TOL = {np.float64: (1e-10, 1e-10), np.float32: (2e-4, 1e-4), np.float16: (4e-3, 4e-3)}


def op_providers(op):
    return kernels.providers(op)


def fast_providers(op):
    """Every provider but the oracle itself (third-party ones included)."""
    return [p for p in kernels.providers(op) if p != "reference"]


def call(op, provider, *arrays, **kw):
    kernels.get(op, provider=provider)(*arrays, **kw)


def conv_params(case):
    return {k: case[k] for k in ("pad", "stride", "dilation", "groups", "mode") if k in case}


def make(rng, case, dtype):
    """Random x, w, dy for one geometry case (values in [-1, 1])."""
    params = conv_params(case)
    out_shape = conv.convolution_output_shape(
        case["x"], case["w"], params.get("pad", 0), params.get("stride", 1),
        params.get("dilation", 1), groups=params.get("groups", 1))
    x = rng.uniform(-1, 1, case["x"]).astype(dtype)
    w = rng.uniform(-1, 1, case["w"]).astype(dtype)
    dy = rng.uniform(-1, 1, out_shape).astype(dtype)
    return x, w, dy, params


def run_op(op, provider, x, w, dy, params, out=None, alpha=1.0, beta=0.0):
    """Run one conv op, returning its output array (NaN-filled unless given)."""
    shape = {FWD: dy.shape, BWD_DATA: x.shape, BWD_FILTER: w.shape}[op]
    if out is None:
        out = np.full(shape, np.nan, dtype=x.dtype)
    args = {FWD: (x, w, out), BWD_DATA: (w, dy, out), BWD_FILTER: (x, dy, out)}[op]
    call(op, provider, *args, alpha=alpha, beta=beta, **params)
    return out


def assert_close(got, want, dtype, scale=None):
    rtol, atol = TOL[np.dtype(dtype).type]
    finite = np.isfinite(want)
    scale = scale if scale is not None else max(1.0, float(np.abs(want[finite]).max(initial=0)))
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               rtol=rtol, atol=atol * scale)


# Geometries: (name, case). Chosen to cover every path of the fast providers.
CASES = [
    ("3x3_pad1", dict(x=(2, 3, 7, 9), w=(4, 3, 3, 3), pad=1)),
    ("batch1_odd", dict(x=(1, 5, 11, 6), w=(3, 5, 3, 2), pad=(1, 0))),
    ("1x1", dict(x=(2, 6, 5, 7), w=(5, 6, 1, 1))),
    ("1x1_stride2", dict(x=(3, 4, 9, 8), w=(6, 4, 1, 1), stride=2)),
    ("pad_gt_kernel", dict(x=(2, 2, 5, 5), w=(3, 2, 2, 3), pad=(4, 3))),
    ("stride_gt_kernel", dict(x=(2, 3, 13, 11), w=(4, 3, 2, 2), stride=(3, 4), pad=1)),
    ("dilation", dict(x=(2, 3, 10, 9), w=(2, 3, 3, 2), dilation=(2, 3), pad=(2, 1))),
    ("groups2_conv", dict(x=(2, 4, 8, 7), w=(6, 2, 3, 3), groups=2, pad=1, mode="convolution")),
    ("depthwise", dict(x=(2, 5, 8, 8), w=(5, 1, 3, 3), groups=5, pad=1, stride=2)),
    ("depthwise_mult", dict(x=(1, 3, 7, 6), w=(6, 1, 2, 3), groups=3, pad=(0, 2),
                            dilation=(2, 1), mode="convolution")),
    ("convolution_mode", dict(x=(2, 3, 6, 7), w=(2, 3, 3, 2), stride=(1, 2), mode="convolution")),
    ("7x7_stride2", dict(x=(1, 2, 15, 13), w=(3, 2, 7, 7), stride=2, pad=3)),
    # 3x3 stride 1 (Winograd when forced): odd output sizes, no/large/uneven padding, groups.
    ("3x3_odd_pad0", dict(x=(3, 5, 9, 6), w=(7, 5, 3, 3))),
    ("3x3_pad2_groups", dict(x=(1, 6, 5, 8), w=(4, 3, 3, 3), pad=(2, 1), groups=2)),
    ("3x3_pad3", dict(x=(2, 2, 4, 5), w=(3, 2, 3, 3), pad=3, mode="convolution")),
]

# Paths of the fast engine, forced by its module constants so that small test
# shapes exercise what large layers use: the phase-split implicit GEMM, banded
# im2col (a band of output rows per block), several images per block, and 1x1
# images used in place (split into column bands). ``THREADS`` sets how many
# threads run the work items: 1 (serial, BLAS keeps its own threads) or 3
# (more than the items of some cases, more than the cores of the test machine).
PATHS = {
    "auto": {},
    "auto_serial": dict(THREADS=1),
    "phase_split": dict(SHIFT_MIN_CHANNELS=1, SHIFT_MIN_COLS=1, THREADS=3),
    "im2col_bands": dict(SHIFT_MIN_CHANNELS=10**9, COL_BLOCK_ELEMS=40, POINTWISE_MIN_COLS=10**9,
                         THREADS=3),
    "im2col_batched": dict(SHIFT_MIN_CHANNELS=10**9, COL_BLOCK_ELEMS=10**6,
                           POINTWISE_MIN_COLS=10**9, THREADS=3),
    "pointwise_bands": dict(POINTWISE_MIN_COLS=1, THREADS=3),
    # Winograd F(2x2, 3x3) for every 3x3 stride-1 case (numba provider), whole
    # images per block or bands of tile rows.
    "winograd": dict(WINOGRAD_MIN_CHANNELS=1, WINOGRAD_MAX_TILE_WASTE=10,
                     WINOGRAD4_MAX_TILE_WASTE=0, THREADS=3),
    "winograd_bands": dict(WINOGRAD_MIN_CHANNELS=1, WINOGRAD_MAX_TILE_WASTE=10,
                           WINOGRAD4_MAX_TILE_WASTE=0, WINOGRAD_BLOCK_ELEMS=40, THREADS=3),
    # Filter gradient split by input channels over the threads (small images), one column
    # chunk per slice or several (accumulated with beta = 1).
    "filter_split": dict(FILTER_SPLIT_MAX_PIXELS=10**9, FILTER_SPLIT_MIN_ELEMS=0,
                         FILTER_SPLIT_MIN_ROWS=1, THREADS=3),
    "filter_split_chunks": dict(FILTER_SPLIT_MAX_PIXELS=10**9, FILTER_SPLIT_MIN_ELEMS=0,
                                FILTER_SPLIT_MIN_ROWS=1, COL_BLOCK_ELEMS=40, THREADS=3),
    # Winograd F(4x4, 3x3) for all three passes, whole images per block or bands of tile rows.
    "winograd4": dict(WINOGRAD_MIN_CHANNELS=1, WINOGRAD_MAX_TILE_WASTE=10,
                      WINOGRAD4_MAX_TILE_WASTE=10, THREADS=3),
    "winograd4_bands": dict(WINOGRAD_MIN_CHANNELS=1, WINOGRAD_MAX_TILE_WASTE=10,
                            WINOGRAD4_MAX_TILE_WASTE=10, WINOGRAD4_BLOCK_ELEMS=40, THREADS=3),
}


def _module_of(name):
    """The module a PATHS setting patches, and the attribute name there."""
    if name == "THREADS":
        return _conv_gemm, name
    if name.startswith("WINOGRAD_"):
        return _conv_winograd, name[len("WINOGRAD_"):]
    if name.startswith("WINOGRAD4_"):
        return _conv_winograd4, name[len("WINOGRAD4_"):]
    return _conv_fast, name


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        monkeypatch.setattr(*_module_of(name), value)
    if request.param == "phase_split":
        # Wide-grid waste limit must not veto the forced path either.
        monkeypatch.setattr(_conv_fast, "use_shift", _force_shift)
    return request.param


def _force_shift(g):
    """The phase-split forward pass for every geometry it can run (all but plain 1x1)."""
    return not _conv_fast._pointwise(g)


# --------------------------------------------------------------------------- #
# The reference against independent computations
# --------------------------------------------------------------------------- #

def naive_forward(x, w, pad, stride, dilation, groups, mode):
    """cuDNN's definition, one multiply-add at a time."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (ph, pw), (sh, sw), (dh, dw) = pad, stride, dilation
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(P):
                for q in range(Q):
                    acc = 0.0
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h, v = p * sh - ph + r * dh, q * sw - pw + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    rr, ss = (R - 1 - r, S - 1 - s) if mode == "convolution" else (r, s)
                                    acc += x[n, g * Cg + c, h, v] * w[k, c, rr, ss]
                    y[n, k, p, q] = acc
    return y


def naive_backward(x, w, dy, pad, stride, dilation, groups, mode):
    """(dx, dw) by scattering each output's gradient to the products that made it."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (ph, pw), (sh, sw), (dh, dw_) = pad, stride, dilation
    Kg = K // groups
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h, v = p * sh - ph + r * dh, q * sw - pw + s * dw_
                                if 0 <= h < H and 0 <= v < W:
                                    rr, ss = (R - 1 - r, S - 1 - s) if mode == "convolution" else (r, s)
                                    dx[n, g * Cg + c, h, v] += dy[n, k, p, q] * w[k, c, rr, ss]
                                    dw[k, c, rr, ss] += dy[n, k, p, q] * x[n, g * Cg + c, h, v]
    return dx, dw


def _pairs(case):
    norm = lambda v, d: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return (norm(case.get("pad", 0), 0), norm(case.get("stride", 1), 1),
            norm(case.get("dilation", 1), 1))


@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_naive_loops(name, case):
    rng = np.random.default_rng(1)
    x, w, dy, params = make(rng, case, np.float64)
    pad, stride, dilation = _pairs(case)
    groups, mode = case.get("groups", 1), case.get("mode", "cross_correlation")
    want_y = naive_forward(x, w, pad, stride, dilation, groups, mode)
    want_dx, want_dw = naive_backward(x, w, dy, pad, stride, dilation, groups, mode)
    np.testing.assert_allclose(run_op(FWD, "reference", x, w, dy, params), want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_op(BWD_DATA, "reference", x, w, dy, params), want_dx,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_op(BWD_FILTER, "reference", x, w, dy, params), want_dw,
                               rtol=1e-12, atol=1e-12)


def test_reference_hand_computed_values():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
    y = np.empty((1, 1, 3, 3))
    call(FWD, "reference", x, w, y)
    np.testing.assert_array_equal(y[0, 0], x[0, 0, :3, :3])
    call(FWD, "reference", x, w, y, mode="convolution")  # flipped: bottom-right pixel
    np.testing.assert_array_equal(y[0, 0], x[0, 0, 1:, 1:])
    ones = np.ones((1, 1, 3, 3))
    y = np.empty((1, 1, 3, 3))
    call(FWD, "reference", np.ones((1, 1, 3, 3)), ones, y, pad=1)  # counts in-image taps
    np.testing.assert_array_equal(y[0, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    db = np.empty(2)
    call(BWD_BIAS, "reference", np.arange(16.0).reshape(2, 2, 2, 2), db)
    np.testing.assert_array_equal(db, [0 + 1 + 2 + 3 + 8 + 9 + 10 + 11, 4 + 5 + 6 + 7 + 12 + 13 + 14 + 15])


@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_reference_adjoint_identity(name, case):
    rng = np.random.default_rng(2)
    x, w, dy, params = make(rng, case, np.float64)
    y = run_op(FWD, "reference", x, w, dy, params)
    dx = run_op(BWD_DATA, "reference", x, w, dy, params)
    dw = run_op(BWD_FILTER, "reference", x, w, dy, params)
    lhs = np.vdot(y, dy)
    assert np.vdot(x, dx) == pytest.approx(lhs, rel=1e-12, abs=1e-12)
    assert np.vdot(w, dw) == pytest.approx(lhs, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------- #
# Every provider against the reference
# --------------------------------------------------------------------------- #

def test_every_op_has_reference_and_a_fast_provider():
    for op in CONV_OPS:
        assert {"reference", "blas", "numba"} <= set(op_providers(op))
    assert {"reference", "numba"} <= set(op_providers(BWD_BIAS))
    assert {"reference", "blas", "numba"} <= set(op_providers(OUT_SHAPE))


@pytest.mark.parametrize("provider", fast_providers(FWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_provider_matches_reference(provider, dtype, name, case, path):
    rng = np.random.default_rng(3)
    x, w, dy, params = make(rng, case, dtype)
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    for op in CONV_OPS:
        want = run_op(op, "reference", x64, w64, dy64, params)
        got = run_op(op, provider, x, w, dy, params)
        assert got.dtype == dtype
        assert_close(got, want, dtype)


@pytest.mark.parametrize("provider", op_providers(FWD))
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 0.0), (0.5, 1.0), (-1.5, 0.25)])
def test_alpha_beta_blending(provider, alpha, beta, path):
    if provider == "reference" and path != "auto":
        return  # engine paths only concern the fast providers
    rng = np.random.default_rng(4)
    for name, case in (CASES[0], CASES[3], CASES[8]):
        x, w, dy, params = make(rng, case, np.float32)
        for op in CONV_OPS:
            value = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
            prior = rng.uniform(-1, 1, value.shape).astype(np.float32)
            if beta == 0:
                prior[...] = np.nan  # beta == 0: the output is never read
            got = run_op(op, provider, x, w, dy, params, out=prior.copy(), alpha=alpha, beta=beta)
            want = alpha * value + (beta * prior.astype(np.float64) if beta else 0.0)
            assert np.isfinite(got).all(), (op, name)
            assert_close(got, want, np.float32)


@pytest.mark.parametrize("provider", op_providers(FWD))
def test_float16(provider, path):
    if provider == "reference" and path != "auto":
        return  # engine paths only concern the fast providers
    rng = np.random.default_rng(5)
    for name, case in (CASES[0], CASES[2], CASES[8], CASES[7]):
        x, w, dy, params = make(rng, case, np.float16)
        for op in CONV_OPS:
            want = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
            got = run_op(op, provider, x, w, dy, params)
            assert got.dtype == np.float16
            assert_close(got, want, np.float16)


@pytest.mark.parametrize("provider", op_providers(FWD))
def test_strided_inputs_and_outputs(provider, path):
    if provider == "reference" and path != "auto":
        return  # engine paths only concern the fast providers
    rng = np.random.default_rng(6)
    case = dict(x=(2, 4, 9, 10), w=(6, 2, 3, 3), groups=2, pad=1, stride=(2, 1))
    x, w, dy, params = make(rng, case, np.float32)
    want = {op: run_op(op, "reference", x, w, dy, params) for op in CONV_OPS}
    # Non-contiguous views with the same values: every other element of a bigger array.
    def spread(a):
        big = np.zeros(tuple(2 * d for d in a.shape), dtype=a.dtype)
        view = big[::2, ::2, ::2, ::2]
        view[...] = a
        return view
    xs, ws, dys = spread(x), spread(w.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3), spread(dy)
    assert not (xs.flags.c_contiguous or ws.flags.c_contiguous or dys.flags.c_contiguous)
    for op in CONV_OPS:
        parent = np.full(tuple(2 * d for d in want[op].shape), -7.0, dtype=np.float32)
        out = parent[1::2, ::2, 1::2, ::2]
        out[...] = np.nan
        run_op(op, provider, xs, ws, dys, params, out=out)
        assert_close(out, want[op], np.float32)
        untouched = np.ones(parent.shape, bool)
        untouched[1::2, ::2, 1::2, ::2] = False
        assert (parent[untouched] == -7.0).all(), op


@pytest.mark.parametrize("provider", fast_providers(FWD))
def test_nan_and_inf_in_x_propagate_like_the_reference(provider, path):
    rng = np.random.default_rng(7)
    for name, case in (CASES[0], CASES[3], CASES[8], CASES[6]):
        x, w, dy, params = make(rng, case, np.float32)
        x[0, 0, 1, 1] = np.nan
        x[-1, -1, -1, 0] = np.inf
        x[0, -1, 0, -1] = -np.inf
        for op in (FWD, BWD_FILTER):
            want = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
            got = run_op(op, provider, x, w, dy, params)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{op} {name}")
            assert_close(got, want, np.float32)


@pytest.mark.parametrize("provider", op_providers(BWD_BIAS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backward_bias(provider, dtype):
    rng = np.random.default_rng(8)
    dy = rng.uniform(-1, 1, (3, 5, 7, 6)).astype(dtype)
    want = dy.astype(np.float64).sum(axis=(0, 2, 3))
    for shape in ((5,), (1, 5, 1, 1)):
        db = np.full(shape, np.nan, dtype=dtype)
        call(BWD_BIAS, provider, dy, db)
        assert_close(db.reshape(-1), want, dtype)
        prior = rng.uniform(-1, 1, shape).astype(dtype)
        db = prior.copy()
        call(BWD_BIAS, provider, dy[:, :, ::2], db, alpha=0.5, beta=-2.0)  # strided dy
        want2 = 0.5 * dy[:, :, ::2].astype(np.float64).sum(axis=(0, 2, 3)) - 2.0 * prior.reshape(-1)
        assert_close(db.reshape(-1), want2, dtype)


# --------------------------------------------------------------------------- #
# Gradients by finite differences (float64, small shapes)
# --------------------------------------------------------------------------- #

FD_CASES = [CASES[1], CASES[3], CASES[6], CASES[7], CASES[9]]


@pytest.mark.parametrize("provider", op_providers(FWD))
@pytest.mark.parametrize("name,case", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_backward_data_and_filter_by_finite_differences(provider, name, case):
    rng = np.random.default_rng(9)
    x, w, dy, params = make(rng, case, np.float64)

    def loss(x_, w_):  # L = <conv(x, w), dy>
        return np.vdot(run_op(FWD, "reference", x_, w_, dy, params), dy)

    dx = run_op(BWD_DATA, provider, x, w, dy, params)
    dw = run_op(BWD_FILTER, provider, x, w, dy, params)
    eps = 1e-6
    for arr, grad, which in ((x, dx, "x"), (w, dw, "w")):
        for idx in map(tuple, rng.integers(0, arr.shape, size=(12, 4))):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, w) if which == "x" else (x, plus)
            args_m = (minus, w) if which == "x" else (x, minus)
            numeric = (loss(*args_p) - loss(*args_m)) / (2 * eps)
            assert grad[idx] == pytest.approx(numeric, rel=1e-6, abs=1e-7), (which, idx)


@pytest.mark.parametrize("provider", op_providers(BWD_BIAS))
def test_backward_bias_by_finite_differences(provider):
    rng = np.random.default_rng(10)
    y0 = rng.uniform(-1, 1, (2, 3, 4, 5))
    dy = rng.uniform(-1, 1, y0.shape)
    b = rng.uniform(-1, 1, 3)

    def loss(b_):  # L = <y0 + b (broadcast over N, P, Q), dy>
        return np.vdot(y0 + b_.reshape(1, 3, 1, 1), dy)

    db = np.empty(3)
    call(BWD_BIAS, provider, dy, db)
    eps = 1e-6
    for k in range(3):
        e = np.zeros(3)
        e[k] = eps
        assert db[k] == pytest.approx((loss(b + e) - loss(b - e)) / (2 * eps), rel=1e-6)


# --------------------------------------------------------------------------- #
# Validation: bad input raises naming the parameter
# --------------------------------------------------------------------------- #

def _arrays(dtype=np.float32):
    x = np.zeros((2, 4, 6, 6), dtype)
    w = np.zeros((3, 4, 3, 3), dtype)
    y = np.zeros((2, 3, 4, 4), dtype)
    return x, w, y


BAD = [
    ("stride", dict(stride=0), ValueError, "stride must be positive"),
    ("stride", dict(stride=(1, -2)), ValueError, "stride must be positive"),
    ("stride", dict(stride="2"), TypeError, "stride must be an int or a pair"),
    ("pad", dict(pad=-1), ValueError, "pad must be non-negative"),
    ("pad", dict(pad=(1, 2, 3)), TypeError, "pad must be an int or a pair"),
    ("dilation", dict(dilation=(0, 1)), ValueError, "dilation must be positive"),
    ("groups", dict(groups=0), ValueError, "groups must be positive"),
    ("groups", dict(groups=1.5), TypeError, "groups must be an int"),
    ("groups", dict(groups=3), ValueError, "groups=3 does not divide the channel count"),
    ("mode", dict(mode="correlation"), ValueError, "mode must be"),
    ("alpha", dict(alpha="1"), TypeError, "alpha must be a real number"),
    ("beta", dict(beta=None), TypeError, "beta must be a real number"),
]


@pytest.mark.parametrize("provider", op_providers(FWD))
@pytest.mark.parametrize("param,kw,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_parameters_name_the_parameter(provider, param, kw, exc, match):
    x, w, y = _arrays()
    for op, args in ((FWD, (x, w, y)), (BWD_DATA, (w, y, x)), (BWD_FILTER, (x, y, w))):
        with pytest.raises(exc, match=match):
            call(op, provider, *args, **kw)


@pytest.mark.parametrize("provider", op_providers(FWD))
def test_bad_arrays_name_the_array(provider):
    x, w, y = _arrays()
    cases = [
        (FWD, (x, w, np.zeros((2, 3, 5, 4), np.float32)), {}, ValueError, r"y must have shape \(2, 3, 4, 4\)"),
        (FWD, (x, w, y), dict(pad=1), ValueError, r"y must have shape \(2, 3, 6, 6\)"),
        (FWD, (x, w.astype(np.float64), y), {}, TypeError, "w must have the same dtype as x"),
        (FWD, (x.astype(np.int32), w, y), {}, TypeError, "x must be float16, float32 or float64"),
        (FWD, (x[0], w, y), {}, ValueError, "x must have 4 dimensions"),
        (FWD, (x.tolist(), w, y), {}, TypeError, "x must be a numpy array"),
        (FWD, (x, np.zeros((3, 2, 3, 3), np.float32), y), {}, ValueError, "w must have C/groups = 4"),
        (FWD, (x, np.zeros((3, 2, 3, 3), np.float32), y), dict(groups=2), ValueError,
         "groups=2 does not divide the filter count of w"),
        (FWD, (x, np.zeros((3, 4, 9, 3), np.float32), y), {}, ValueError, "w's dilated filter"),
        (FWD, (x, w, y), dict(dilation=4), ValueError, "w's dilated filter"),
        (FWD, (x, w, x[:, :3, :4, :4]), {}, ValueError, "y must not overlap x"),
        (FWD, (np.zeros((0, 4, 6, 6), np.float32), w, y), {}, ValueError, "x must have positive dimensions"),
        (BWD_DATA, (w, np.zeros((2, 3, 4, 5), np.float32), x), {}, ValueError, r"dy must have shape"),
        (BWD_DATA, (w, y, np.zeros((2, 6, 6, 6), np.float32)), {}, ValueError, "w must have C/groups = 6"),
        (BWD_DATA, (w, y, x.astype(np.float16)), {}, TypeError, "dx must have the same dtype as w"),
        (BWD_FILTER, (x, y, np.zeros((3, 4, 2, 3), np.float32)), {}, ValueError, "dy must have shape"),
        (BWD_FILTER, (x, y[:, :2], w), {}, ValueError, "dy must have shape"),
    ]
    readonly = y.copy()
    readonly.flags.writeable = False
    cases.append((FWD, (x, w, readonly), {}, ValueError, "y is read-only"))
    for op, args, kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            call(op, provider, *args, **kw)


@pytest.mark.parametrize("provider", op_providers(BWD_BIAS))
def test_backward_bias_bad_input(provider):
    dy = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"db must have shape \(1, 3, 1, 1\) or \(3,\)"):
        call(BWD_BIAS, provider, dy, np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="db must have the same dtype as dy"):
        call(BWD_BIAS, provider, dy, np.zeros(3))
    with pytest.raises(ValueError, match="dy must have 4 dimensions"):
        call(BWD_BIAS, provider, dy[0], np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        call(BWD_BIAS, provider, dy, np.zeros(3, np.float32), alpha=[1])


def test_bad_input_leaves_output_untouched():
    x, w, y = _arrays()
    y[...] = 5.0
    for provider in op_providers(FWD):
        with pytest.raises(ValueError):
            call(FWD, provider, x, w, y, stride=0)
        assert (y == 5.0).all()


# --------------------------------------------------------------------------- #
# The output-shape helper
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("provider", op_providers(OUT_SHAPE))
def test_output_shape(provider):
    shape = kernels.get(OUT_SHAPE, provider=provider)
    assert shape((1, 3, 224, 224), (64, 3, 7, 7), 3, 2, 1) == (1, 64, 112, 112)  # ResNet conv1
    assert shape((8, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1)) == (8, 64, 56, 56)
    assert shape((2, 4, 10, 9), (6, 2, 3, 2), (1, 0), (2, 3), (2, 1), groups=2) == (2, 6, 4, 3)
    # cuDNN's formula: (H + 2p - d(R-1) - 1)//s + 1, by hand: (10+2-4-1)//2+1 = 4, (9-1-1)//3+1 = 3
    with pytest.raises(ValueError, match="stride must be positive"):
        shape((1, 1, 4, 4), (1, 1, 3, 3), 0, 0, 1)
    with pytest.raises(ValueError, match="w_shape must have C/groups"):
        shape((1, 4, 4, 4), (1, 3, 3, 3))
    with pytest.raises(ValueError, match="x_shape must have 4 dimensions"):
        shape((4, 4, 4), (1, 3, 3, 3))


# --------------------------------------------------------------------------- #
# Engine details: GEMM fallback, workspaces, threads
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("route", ["default", "numpy_fallback"])
def test_gemm_contract(dtype, route, monkeypatch):
    """gemm: c = alpha*op(a)@op(b) + beta*c on strided views, beta == 0 never reads c."""
    if route == "numpy_fallback":
        monkeypatch.setattr(_conv_gemm, "_funcs", {})
    rng = np.random.default_rng(11)
    a = rng.standard_normal((9, 5)).astype(dtype)          # used transposed: (5, 9)
    b = rng.standard_normal((9, 14)).astype(dtype)[:, ::2]  # strided columns (9, 7)
    b = np.ascontiguousarray(b)[:, :7]
    parent = np.full((5, 10), np.nan, dtype)
    c = parent[:, 2:9]                                       # row pitch 10 > 7
    _conv_gemm.gemm(a, b, c, 2.0, 0.0, trans_a=True)
    want = 2.0 * (a.T.astype(np.float64) @ b)
    rtol = TOL[np.dtype(dtype).type][0]
    np.testing.assert_allclose(c, want, rtol=rtol, atol=rtol)
    assert np.isnan(parent[:, :2]).all() and np.isnan(parent[:, 9:]).all()
    acc = rng.standard_normal((7, 7)).astype(dtype)
    prior = acc.copy()
    bt = np.asfortranarray(b)                                # column-major operand
    _conv_gemm.gemm(bt, b, acc, -1.0, 0.5, trans_a=True)
    np.testing.assert_allclose(acc, 0.5 * prior - b.T.astype(np.float64) @ b, rtol=rtol, atol=10 * rtol)
    with pytest.raises(ValueError, match="gemm shapes do not agree"):
        _conv_gemm.gemm(a, b, c)


def test_workspaces_are_reused_in_steady_state():
    rng = np.random.default_rng(12)
    case = dict(x=(2, 16, 24, 24), w=(16, 16, 3, 3), pad=1)
    x, w, dy, params = make(rng, case, np.float32)
    for provider in FAST:
        for op in CONV_OPS:
            run_op(op, provider, x, w, dy, params)
    before = {k: id(v) for k, v in _conv_fast._tls.buffers.items()}
    for provider in FAST:
        for op in CONV_OPS:
            run_op(op, provider, x, w, dy, params)
    after = {k: id(v) for k, v in _conv_fast._tls.buffers.items()}
    assert before == after


@pytest.mark.timeout(120)
@pytest.mark.parametrize("provider", FAST)
def test_concurrent_calls_from_threads(provider, monkeypatch):
    """Calls from several threads at once share the helper pool and the BLAS hold."""
    monkeypatch.setattr(_conv_gemm, "THREADS", 2)  # parallel items on any machine
    rng = np.random.default_rng(13)
    jobs = []
    for name, case in (CASES[0], CASES[7], CASES[11], ("big", dict(x=(2, 16, 24, 24), w=(16, 16, 3, 3), pad=1))):
        x, w, dy, params = make(rng, case, np.float32)
        jobs.append((x, w, dy, params, {op: run_op(op, "reference", x, w, dy, params) for op in CONV_OPS}))
    errors = []

    def work(seed):
        try:
            for i in range(8):
                x, w, dy, params, want = jobs[(seed + i) % len(jobs)]
                for op in CONV_OPS:
                    assert_close(run_op(op, provider, x, w, dy, params), want[op], np.float32)
        except Exception as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# --------------------------------------------------------------------------- #
# The parallel engine: work items, BLAS thread hold, block planning
# --------------------------------------------------------------------------- #

def _blas_count():
    """OpenBLAS's process-wide thread count, or None when it cannot be read."""
    _conv_gemm._functions()
    return _conv_gemm._threads_api[0]() if _conv_gemm._threads_api else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_for_runs_every_item_once(threads, monkeypatch):
    monkeypatch.setattr(_conv_gemm, "THREADS", threads)
    seen, lock = [], threading.Lock()

    def body(i):
        with lock:
            seen.append(i)

    _conv_gemm.parallel_for(37, body)
    assert sorted(seen) == list(range(37))
    _conv_gemm.parallel_for(0, body)  # nothing to do
    assert len(seen) == 37


@pytest.mark.timeout(60)
def test_parallel_for_reraises_the_first_error_and_restores_blas_threads(monkeypatch):
    monkeypatch.setattr(_conv_gemm, "THREADS", 2)
    before = _blas_count()
    inside = []

    def body(i):
        inside.append(_blas_count())
        if i == 3:
            raise KeyError("item 3")

    with pytest.raises(KeyError, match="item 3"):
        _conv_gemm.parallel_for(50, body)
    assert len(inside) < 50  # items after the failure were skipped
    if before is not None:
        if before > 1:
            assert set(inside) == {1}  # BLAS held to one thread per call inside the loop
        assert _blas_count() == before  # and given back afterwards


@pytest.mark.timeout(60)
def test_parallel_for_finishes_when_the_helper_pool_is_busy(monkeypatch):
    """The caller takes part, so a loop never waits for helpers stuck elsewhere."""
    monkeypatch.setattr(_conv_gemm, "THREADS", 2)
    release = threading.Event()
    pool = _conv_gemm._executor()
    blockers = [pool.submit(release.wait, 30) for _ in range(pool._max_workers)]
    try:
        ran_on = set()
        _conv_gemm.parallel_for(8, lambda i: ran_on.add(threading.get_ident()))
        assert ran_on == {threading.get_ident()}
    finally:
        release.set()
        for f in blockers:
            f.result(timeout=30)


@pytest.mark.timeout(60)
def test_serial_blas_holds_are_counted_across_threads():
    before = _blas_count()
    if before is None:
        pytest.skip("OpenBLAS thread count not controllable here")
    entered, leave = threading.Barrier(3), threading.Event()

    def holder():
        with _conv_gemm.serial_blas():
            entered.wait(timeout=30)
            leave.wait(timeout=30)

    threads = [threading.Thread(target=holder) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait(timeout=30)
    assert _blas_count() == 1
    assert _conv_gemm.threads() == before  # the loop size still follows the held count
    leave.set()
    for t in threads:
        t.join(timeout=30)
    assert _blas_count() == before


def test_serial_blas_restores_at_most_streamqs_cap(monkeypatch):
    from streamq import _limits
    before = _blas_count()
    if before is None or before < 2:
        pytest.skip("needs a controllable OpenBLAS with >= 2 threads")
    monkeypatch.setattr(_limits, "_process_blas_threads", None)
    try:
        with _conv_gemm.serial_blas():
            _limits._process_blas_threads = 1  # streamq capped BLAS meanwhile
        assert _blas_count() == 1
    finally:
        _conv_gemm._threads_api[1](before)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_loop_gets_a_fresh_pool_and_its_blas_threads(monkeypatch):
    monkeypatch.setattr(_conv_gemm, "THREADS", 2)
    before = _blas_count()
    read_end, write_end = os.pipe()
    forked = []

    def body(i):
        if i != 0:
            return
        pid = os.fork()  # BLAS is held at one thread here, helpers are busy
        if pid == 0:
            try:
                seen = []
                _conv_gemm.parallel_for(6, seen.append)
                msg = f"{sorted(seen) == list(range(6))} {_blas_count()}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                msg = repr(exc)
            os.write(write_end, msg.encode())
            os._exit(0)
        forked.append(pid)

    _conv_gemm.parallel_for(2, body)
    deadline = time.monotonic() + 30
    while os.waitpid(forked[0], os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(forked[0], 9)
            pytest.fail("forked child hung")
        time.sleep(0.01)
    assert os.read(read_end, 200).decode() == f"True {before}"


def _geo(N, C, H, W, K, R, S, pad=0, stride=1):
    return conv._geometry("x", (N, C, H, W), "w", (K, C, R, S), pad, stride, 1, 1)


def test_plan_covers_every_output_once_within_the_block_limit(monkeypatch):
    monkeypatch.setattr(_conv_fast, "COL_BLOCK_ELEMS", 5000)
    for g in (_geo(8, 4, 10, 10, 3, 3, 3, pad=1), _geo(5, 2, 40, 40, 3, 3, 3, pad=1),
              _geo(3, 16, 6, 6, 8, 1, 1), _geo(1, 8, 30, 30, 4, 1, 1)):
        rows = g.Cg * g.R * g.S
        for parts in (1, 2, 3):
            covered = np.zeros((g.N, g.P), int)
            for n0, nb, p0, np_ in _conv_fast.plan(g, rows, parts):
                covered[n0:n0 + nb, p0:p0 + np_] += 1
                if not _conv_fast._per_image(g):
                    assert rows * nb * np_ * g.Q <= 5000 or np_ == 1
            assert (covered == 1).all()


def test_plan_balances_whole_image_blocks_over_threads(monkeypatch):
    monkeypatch.setattr(_conv_fast, "COL_BLOCK_ELEMS", 10**6)
    g = _geo(8, 16, 7, 7, 32, 3, 3, pad=1)  # 144 * 49 elements per image: all 8 fit one block
    assert _conv_fast.plan(g, 144, 1) == [(0, 8, 0, 7)]
    assert _conv_fast.plan(g, 144, 2) == [(0, 4, 0, 7), (4, 4, 0, 7)]
    assert _conv_fast.plan(g, 144, 3) == [(0, 3, 0, 7), (3, 3, 0, 7), (6, 2, 0, 7)]
    monkeypatch.setattr(_conv_fast, "COL_BLOCK_ELEMS", 144 * 49 * 3)  # three images per block
    assert [b[1] for b in _conv_fast.plan(g, 144, 2)] == [2, 2, 2, 2]  # 4 blocks, not 3
    big = _geo(1, 8, 30, 30, 4, 1, 1)  # one large 1x1 image: column bands, one per thread
    assert _conv_fast.plan(big, 8, 2) == [(0, 1, 0, 15), (0, 1, 15, 15)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("provider", FAST)
def test_concurrent_filter_gradients_keep_their_partial_sums(provider, monkeypatch):
    """Helper threads hop between concurrent calls; no call's partial sums may be reused early."""
    monkeypatch.setattr(_conv_gemm, "THREADS", 3)
    rng = np.random.default_rng(14)
    jobs = []
    for name, case in (("3x3", dict(x=(6, 16, 12, 12), w=(8, 16, 3, 3), pad=1)),
                       ("im2col", dict(x=(6, 3, 9, 9), w=(5, 3, 3, 3), stride=2)),
                       ("pointwise", dict(x=(6, 8, 24, 24), w=(4, 8, 1, 1)))):
        x, w, dy, params = make(rng, case, np.float32)
        jobs.append((x, dy, params, run_op(BWD_FILTER, "reference", x, w, dy, params)))
    errors = []
    start = threading.Barrier(6)

    def work(seed):
        try:
            start.wait(timeout=30)
            for i in range(12):
                x, dy, params, want = jobs[(seed + i) % len(jobs)]
                got = np.full(want.shape, np.nan, np.float32)
                call(BWD_FILTER, provider, x, dy, got, **params)
                assert_close(got, want, np.float32)
        except Exception as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors, errors[:2]


def test_forward_path_choice_on_resnet_shapes():
    """Documented rules: Winograd for 3x3 stride 1 (numba provider); else phase split for
    strided 1x1 and for large stride-1 images only."""
    for C, H in ((64, 56), (128, 28), (256, 14)):
        assert _conv_winograd.applies(_geo(8, C, H, H, C, 3, 3, pad=1))
    assert not _conv_winograd.applies(_geo(8, 512, 7, 7, 512, 3, 3, pad=1))  # 4x5 tiles for 7x7
    assert not _conv_winograd.applies(_geo(8, 128, 56, 56, 128, 3, 3, pad=1, stride=2))
    assert not _conv_winograd.applies(_geo(8, 3, 224, 224, 64, 7, 7, pad=3, stride=2))
    assert not _conv_winograd.applies(_geo(8, 8, 14, 14, 64, 3, 3, pad=1))  # too few channels
    # F(4x4, 3x3) for 56x56 (14x15 tiles incl. the junk column: 1.07x) and 28x28 (1.14x) only.
    assert _conv_winograd4.applies(_geo(8, 64, 56, 56, 64, 3, 3, pad=1))
    assert _conv_winograd4.applies(_geo(8, 128, 28, 28, 128, 3, 3, pad=1))
    assert not _conv_winograd4.applies(_geo(8, 256, 14, 14, 256, 3, 3, pad=1))  # 1.63x
    assert _conv_fast.use_shift(_geo(8, 64, 56, 56, 64, 3, 3, pad=1))          # L = 3246
    assert _conv_fast.use_shift(_geo(8, 256, 56, 56, 512, 1, 1, stride=2))     # one phase, 784 columns
    assert not _conv_fast.use_shift(_geo(8, 128, 28, 28, 128, 3, 3, pad=1))   # L = 838 < 2048
    assert not _conv_fast.use_shift(_geo(8, 128, 56, 56, 128, 3, 3, pad=1, stride=2))
    assert not _conv_fast.use_shift(_geo(8, 1024, 14, 14, 2048, 1, 1, stride=2))  # 49 columns
    assert not _conv_fast.use_shift(_geo(8, 3, 224, 224, 64, 7, 7, pad=3, stride=2))
    assert not _conv_fast.use_shift(_geo(8, 64, 56, 56, 64, 1, 1))             # plain pointwise
    # Filter gradient split by channels: small images with a large gradient, threads > 1.
    assert _conv_fast.use_filter_split(_geo(16, 512, 7, 7, 512, 3, 3, pad=1), 2)
    assert _conv_fast.use_filter_split(_geo(16, 512, 14, 14, 512, 3, 3, pad=1, stride=2), 2)
    assert _conv_fast.use_filter_split(_geo(16, 2048, 7, 7, 512, 1, 1), 2)
    assert not _conv_fast.use_filter_split(_geo(16, 2048, 7, 7, 512, 1, 1), 1)
    assert not _conv_fast.use_filter_split(_geo(16, 512, 7, 7, 2048, 1, 1), 2)  # dy > slice
    assert not _conv_fast.use_filter_split(_geo(16, 1024, 14, 14, 256, 1, 1), 2)  # 1 MiB
    assert not _conv_fast.use_filter_split(_geo(16, 512, 28, 28, 2048, 1, 1), 2)  # 784 pixels


# --------------------------------------------------------------------------- #
# Winograd F(2x2, 3x3)
# --------------------------------------------------------------------------- #

def _spy_winograd(monkeypatch):
    """Record the geometry of every Winograd forward (incl. backward data) and filter-gradient run."""
    calls = []
    for name in ("forward", "backward_filter"):
        real = getattr(_conv_winograd, name)

        def spy(*args, _real=real, _name=name):
            calls.append((_name, args[3]))
            return _real(*args)

        monkeypatch.setattr(_conv_winograd, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_winograd_forward_and_backward_data(dtype, pad, monkeypatch):
    """Wide enough 3x3 stride-1 layers take Winograd in all three passes (float16/32 inputs,
    float32 compute) and match the float64 reference, in both modes, with groups."""
    calls = _spy_winograd(monkeypatch)
    monkeypatch.setattr(_conv_winograd, "MAX_TILE_WASTE", 10)  # small test images
    monkeypatch.setattr(_conv_gemm, "THREADS", 3)
    rng = np.random.default_rng(21)
    for case in (dict(x=(3, 16, 11, 10), w=(24, 16, 3, 3), pad=pad),
                 dict(x=(2, 32, 9, 12), w=(32, 16, 3, 3), pad=(pad, 1), groups=2,
                      mode="convolution")):
        x, w, dy, params = make(rng, case, dtype)
        for op in CONV_OPS:
            want = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
            assert_close(run_op(op, "numba", x, w, dy, params), want, dtype)
            prior = rng.uniform(-1, 1, want.shape).astype(dtype)
            out = np.empty(want.shape[:-1] + (2 * want.shape[-1],), dtype)[..., ::2]  # strided
            out[...] = prior
            got = run_op(op, "numba", x, w, dy, params, out=out, alpha=-0.5, beta=2.0)
            assert_close(got, -0.5 * want + 2.0 * prior.astype(np.float64), dtype)
    assert [c[0] for c in calls] == ["forward"] * 4 + ["backward_filter"] * 2 + (
        ["forward"] * 4 + ["backward_filter"] * 2)
    # Backward data ran as the transposed forward: input dy (K channels), output dx (C).
    assert (calls[2][1].C, calls[2][1].K, calls[2][1].ph) == (24, 16, 2 - pad)
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    for op in CONV_OPS:
        run_op(op, "numba", x, w, dy, params)
    assert len(calls) == 12  # float64 keeps the direct GEMM sums


def test_winograd_falls_back_on_non_finite_input(monkeypatch):
    """inf - inf inside the transforms would make NaN where the direct sum gives inf."""
    calls = _spy_winograd(monkeypatch)
    monkeypatch.setattr(_conv_winograd, "MAX_TILE_WASTE", 10)
    rng = np.random.default_rng(22)
    x, w, dy, params = make(rng, dict(x=(2, 16, 6, 6), w=(16, 16, 3, 3), pad=1), np.float32)
    x[0, 3, 2, 2] = np.inf
    dy[1, 5, 0, 0] = -np.inf
    for op in CONV_OPS:
        want = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
        got = run_op(op, "numba", x, w, dy, params)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        assert_close(got, want, np.float32)
    assert calls == []


def test_winograd_all_finite():
    a = np.zeros(1000, np.float32)
    a[7] = 3e38  # large finite values stay finite (x * 0 == 0)
    assert _conv_winograd.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[999] = bad
        assert not _conv_winograd.all_finite(b)


def test_winograd_filter_transform_hand_computed():
    """U = G g G^T for a filter of ones: G @ ones(3, 3) @ G.T, rows (1, 1.5, 0.5, 1)."""
    u = _conv_winograd.transform_filters(np.ones((1, 1, 3, 3)), np.float64)
    col = np.array([1.0, 1.5, 0.5, 1.0])
    np.testing.assert_array_equal(u.reshape(4, 4), np.outer(col, col))


def test_strided_im2col_matches_the_plain_kernel():
    """The phase-split im2col (column stride > 1) fills exactly what the plain kernel does."""
    from streamq.kernels import _conv_numba
    rng = np.random.default_rng(23)
    for x_shape, (R, S), (ph, pw), (sh, sw), (dh, dw) in (
            ((2, 3, 15, 16), (7, 7), (3, 3), (2, 2), (1, 1)),
            ((1, 2, 9, 13), (3, 2), (0, 4), (1, 3), (2, 2)),
            ((3, 4, 8, 7), (2, 3), (5, 1), (3, 2), (1, 3))):
        g = conv._geometry("x", x_shape, "w", (1, x_shape[1], R, S), (ph, pw), (sh, sw),
                           (dh, dw), 1)
        x = rng.standard_normal(x_shape).astype(np.float32)
        half = g.P // 2
        for n0, nb, p0, np_ in ((0, x_shape[0], 0, g.P), (x_shape[0] - 1, 1, half, g.P - half)):
            args = (n0, nb, 1, g.Cg - 1, p0, np_, g.Q, R, S, ph, pw, sh, sw, dh, dw)
            want = np.full((((g.Cg - 1) * R * S), nb * np_ * g.Q), np.nan, np.float32)
            got = want.copy()
            _conv_numba.im2col(x, want, *args)
            _conv_numba.im2col_strided(x, got, *args)
            np.testing.assert_array_equal(got, want)
            assert not np.isnan(got).any()


# --------------------------------------------------------------------------- #
# Winograd F(4x4, 3x3)
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("block_elems", [None, 40])
def test_winograd4_all_passes(dtype, pad, block_elems, monkeypatch):
    """All three passes take F(4x4, 3x3) where its tiles fit (forced here for small odd-sized
    images, whole images or bands of tile rows per block) and match the float64 reference
    with alpha/beta into strided outputs, both modes, groups, batch 1; float64 keeps the
    direct GEMM."""
    calls, grads = [], []
    real, real_bf = _conv_winograd4.forward, _conv_winograd4.backward_filter

    def spy(*args):
        calls.append(args[3])
        return real(*args)

    def spy_bf(*args):
        grads.append(args[3])
        return real_bf(*args)

    monkeypatch.setattr(_conv_winograd4, "forward", spy)
    monkeypatch.setattr(_conv_winograd4, "backward_filter", spy_bf)
    monkeypatch.setattr(_conv_winograd, "MAX_TILE_WASTE", 10)
    monkeypatch.setattr(_conv_winograd4, "MAX_TILE_WASTE", 10)
    if block_elems:
        monkeypatch.setattr(_conv_winograd4, "BLOCK_ELEMS", block_elems)
    monkeypatch.setattr(_conv_gemm, "THREADS", 3)
    rng = np.random.default_rng(24)
    cases = (dict(x=(3, 16, 13, 10), w=(24, 16, 3, 3), pad=pad),
             dict(x=(1, 32, 9, 15), w=(32, 16, 3, 3), pad=(pad, 1), groups=2,
                  mode="convolution"),
             dict(x=(2, 16, 4, 3), w=(16, 16, 3, 3), pad=(2, 2)))  # one tile, mostly padding
    for case in cases:
        x, w, dy, params = make(rng, case, dtype)
        for op in CONV_OPS:
            want = run_op(op, "reference", *(a.astype(np.float64) for a in (x, w, dy)), params)
            assert_close(run_op(op, "numba", x, w, dy, params), want, dtype)
            prior = rng.uniform(-1, 1, want.shape).astype(dtype)
            out = np.empty(want.shape[:-1] + (2 * want.shape[-1],), dtype)[..., ::2]  # strided
            out[...] = prior
            got = run_op(op, "numba", x, w, dy, params, out=out, alpha=-0.5, beta=2.0)
            assert_close(got, -0.5 * want + 2.0 * prior.astype(np.float64), dtype)
    assert len(calls) == 4 * len(cases)  # forward and backward data, twice each
    assert len(grads) == 2 * len(cases)
    assert (calls[2].C, calls[2].K) == (24, 16)  # backward data: dy (K channels) -> dx (C)
    n = len(calls)
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    for op in CONV_OPS:
        run_op(op, "numba", x, w, dy, params)
    assert len(calls) == n and len(grads) == 2 * len(cases)


def test_winograd4_filter_gradient_is_the_adjoint_of_the_filter_transform():
    """<G g G^T, dU> == <g, G^T dU G> for random g and dU (float64 transforms)."""
    rng = np.random.default_rng(25)
    g = rng.standard_normal((70, 9)).astype(np.float32)  # more than one chunk of 64 filters
    du = rng.standard_normal((36, 70)).astype(np.float32)
    u = np.empty((36, 70), np.float32)  # the engine's dtypes (see the test above)
    _conv_winograd4._filter_transform(g, u)
    dg = np.empty((70, 9))
    _conv_winograd4._filter_gradient(du, _conv_winograd4.G, dg)
    lhs = np.sum(u.astype(np.float64) * du, axis=0)
    np.testing.assert_allclose(lhs, np.sum(g.astype(np.float64) * dg, axis=1),
                               rtol=1e-5, atol=1e-5 * np.abs(lhs).max())


def test_winograd4_filter_transform_hand_computed():
    """U = G g G^T for a filter of ones: G @ (1, 1, 1) = (1/4, -1/2, -1/6, 7/24, 1/8, 1)."""
    # float32, the one dtype the engine compiles these kernels for (a second would cost a
    # cold numba compile): the float64 products are rounded once into float32.
    u = _conv_winograd4.transform_filters(np.ones((1, 1, 3, 3), np.float32), np.float32)
    col = np.array([1 / 4, -1 / 2, -1 / 6, 7 / 24, 1 / 8, 1.0])
    np.testing.assert_allclose(u.reshape(6, 6), np.outer(col, col), rtol=1e-7, atol=0)


def test_winograd4_single_tile_hand_computed():
    """A 6x6 input of ones with a 3x3 filter of ones, no padding: every output is 9."""
    y = np.full((1, 1, 4, 4), np.nan, np.float32)
    g = conv._geometry("x", (1, 1, 6, 6), "w", (1, 1, 3, 3), 0, 1, 1, 1)
    _conv_winograd4.forward(np.ones((1, 1, 6, 6), np.float32), np.ones((1, 1, 3, 3), np.float32),
                            y, g, 1.0, 0.0)
    np.testing.assert_allclose(y, 9.0, rtol=1e-6)


# --------------------------------------------------------------------------- #
# Filter gradient split by input channels
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("provider", FAST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_filter_split_matches_reference(provider, dtype, monkeypatch):
    """The channel-split filter gradient (forced for small shapes, 2 and 3 threads, one or
    several column chunks) matches the float64 reference: padding, strides, groups, flipped
    mode, batch 1, a 1x1 layer, alpha/beta into a strided output."""
    used = []
    real = _conv_fast._filter_split

    def spy(*args):
        used.append(args[4])
        return real(*args)

    monkeypatch.setattr(_conv_fast, "_filter_split", spy)
    monkeypatch.setattr(_conv_fast, "FILTER_SPLIT_MAX_PIXELS", 10**9)
    monkeypatch.setattr(_conv_fast, "FILTER_SPLIT_MIN_ELEMS", 0)
    monkeypatch.setattr(_conv_fast, "FILTER_SPLIT_MIN_ROWS", 1)
    rng = np.random.default_rng(26)
    cases = (dict(x=(3, 7, 9, 8), w=(4, 7, 3, 3), pad=1, stride=2),
             dict(x=(1, 6, 5, 7), w=(4, 3, 3, 2), pad=(2, 0), groups=2, mode="convolution"),
             dict(x=(2, 9, 6, 5), w=(3, 9, 1, 1)))
    for threads, block in ((2, None), (3, 40)):
        monkeypatch.setattr(_conv_gemm, "THREADS", threads)
        if block:
            monkeypatch.setattr(_conv_fast, "COL_BLOCK_ELEMS", block)
        for case in cases:
            x, w, dy, params = make(rng, case, dtype)
            want = run_op(BWD_FILTER, "reference", *(a.astype(np.float64) for a in (x, w, dy)),
                          params)
            assert_close(run_op(BWD_FILTER, provider, x, w, dy, params), want, dtype)
            prior = rng.uniform(-1, 1, want.shape).astype(dtype)
            out = np.empty(want.shape[:-1] + (2 * want.shape[-1],), dtype)[..., ::2]
            out[...] = prior
            got = run_op(BWD_FILTER, provider, x, w, dy, params, out=out, alpha=0.5, beta=-1.0)
            assert_close(got, 0.5 * want - prior.astype(np.float64), dtype)
    assert len(used) == 2 * 2 * len(cases)
