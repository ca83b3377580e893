"""cudnn.pooling_forward / cudnn.pooling_backward: every provider vs the float64
reference, the reference vs naive loops, finite differences, ties, NaN, errors."""

import itertools

import numpy as np
import pytest

import streamq.kernels as K
from streamq.kernels.pooling import MODES, output_shape

FWD, BWD = "cudnn.pooling_forward", "cudnn.pooling_backward"
# float32: outputs are single roundings of float64-accumulated values; 1e-5
# relative is ample. float16: one half-ulp (~5e-4) of the stored result, and
# numba's float32 staging can add another.
TOL = {np.float16: dict(rtol=2e-3, atol=2e-3), np.float32: dict(rtol=1e-5, atol=1e-6),
       np.float64: dict(rtol=1e-12, atol=1e-12)}
CONFIGS = [((3, 3), (1, 1), (2, 2)),      # ResNet stem max pool
           ((2, 3), (0, 1), (1, 2)),      # rectangular, overlapping
           ((4, 4), (0, 0), (4, 4)),      # non-overlapping, "global" on 4x4 blocks
           ((2, 2), (2, 3), (3, 3)),      # pad >= window (all-padding windows), stride > window
           ((1, 3), (0, 1), (2, 4)),      # stride > window: inputs between windows skipped
           ((9, 11), (0, 0), (1, 1))]     # global pooling of the 9x11 planes (own numba path)


def rng():
    return np.random.default_rng(1234)


def naive_forward(x, mode, window, pad, stride):
    """Direct loops over every output element (independent of the reference)."""
    n_, c_, h_, w_ = x.shape
    _, _, p_, q_ = output_shape(x.shape, window, pad, stride)
    y = np.empty((n_, c_, p_, q_))
    for n, c, p, q in itertools.product(range(n_), range(c_), range(p_), range(q_)):
        vals = [float(x[n, c, h, w])
                for h in range(p * stride[0] - pad[0], p * stride[0] - pad[0] + window[0])
                for w in range(q * stride[1] - pad[1], q * stride[1] - pad[1] + window[1])
                if 0 <= h < h_ and 0 <= w < w_]
        if not vals:                   # the window lies wholly in the padding
            y[n, c, p, q] = np.finfo(x.dtype).min if mode.startswith("max") else 0.0
        elif mode.startswith("max"):
            y[n, c, p, q] = np.nan if any(np.isnan(vals)) else max(vals)
        elif mode == "average_count_include_padding":
            y[n, c, p, q] = sum(vals) / (window[0] * window[1])
        else:
            y[n, c, p, q] = sum(vals) / len(vals)
    return y


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_reference_forward_matches_naive_loops(mode, cfg):
    x = rng().standard_normal((2, 3, 9, 11))
    x[0, 1, 4, 5] = np.nan
    y = np.empty(output_shape(x.shape, *cfg))
    K.get(FWD, "reference")(x, y, mode=mode, window=cfg[0], pad=cfg[1], stride=cfg[2])
    np.testing.assert_allclose(y, naive_forward(x, mode, *cfg), rtol=1e-13, equal_nan=True)


def test_reference_hand_computed():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = np.empty((1, 1, 2, 2))
    K.get(FWD, "reference")(x, y, mode="max", window=(2, 2), stride=(2, 2))
    assert y.ravel().tolist() == [5, 7, 13, 15]
    K.get(FWD, "reference")(x, y, mode="average_count_include_padding", window=(2, 2),
                            stride=(2, 2))
    assert y.ravel().tolist() == [2.5, 4.5, 10.5, 12.5]
    y1 = np.empty((1, 1, 3, 3))
    # pad 1, window 2, stride 2: corner window holds only x[0,0] = 0.
    K.get(FWD, "reference")(x, y1, mode="average_count_exclude_padding", window=(2, 2),
                            pad=(1, 1), stride=(2, 2))
    assert y1[0, 0, 0, 0] == 0.0 and y1[0, 0, 0, 1] == 1.5 and y1[0, 0, 2, 2] == 15.0


@pytest.mark.parametrize("provider", K.providers(FWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_reference(provider, dtype, mode):
    r = rng()
    for window, pad, stride in CONFIGS:
        for n in (1, 2):
            x = r.standard_normal((n, 3, 9, 11)).astype(dtype)
            x[0, 0, 2, 3], x[-1, 2, 0, 0] = np.nan, np.inf
            shape = output_shape(x.shape, window, pad, stride)
            expect = np.empty(shape, dtype)
            K.get(FWD, "reference")(x, expect, mode=mode, window=window, pad=pad, stride=stride,
                                    alpha=1.5)
            y = np.full(shape, np.nan, dtype)          # beta == 0: NaN must not leak
            K.get(FWD, provider)(x, y, mode=mode, window=window, pad=pad, stride=stride,
                                 alpha=1.5)
            np.testing.assert_allclose(y, expect, equal_nan=True, **TOL[dtype])
            y0 = r.standard_normal(shape).astype(dtype)
            expect, y = y0.copy(), y0.copy()
            K.get(FWD, "reference")(x, expect, mode=mode, window=window, pad=pad,
                                    stride=stride, alpha=-1.0, beta=0.5)
            K.get(FWD, provider)(x, y, mode=mode, window=window, pad=pad, stride=stride,
                                 alpha=-1.0, beta=0.5)
            np.testing.assert_allclose(y, expect, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("provider", K.providers(BWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("mode", MODES)
def test_backward_matches_reference(provider, dtype, mode):
    r = rng()
    for window, pad, stride in CONFIGS:
        x = r.standard_normal((2, 3, 9, 11)).astype(dtype)
        x[1, 1, 3, 3] = np.nan
        shape = output_shape(x.shape, window, pad, stride)
        y = np.empty(shape, dtype)
        K.get(FWD, "reference")(x, y, mode=mode, window=window, pad=pad, stride=stride)
        dy = r.standard_normal(shape).astype(dtype)
        for alpha, beta in ((1.0, 0.0), (2.0, -0.5)):
            dx0 = (r.standard_normal(x.shape).astype(dtype) if beta
                   else np.full(x.shape, np.nan, dtype))
            expect, dx = dx0.copy(), dx0.copy()
            kw = dict(mode=mode, window=window, pad=pad, stride=stride, alpha=alpha, beta=beta)
            K.get(BWD, "reference")(y, dy, x, expect, **kw)
            K.get(BWD, provider)(y, dy, x, dx, **kw)
            np.testing.assert_allclose(dx, expect, **TOL[dtype])


@pytest.mark.parametrize("provider", K.providers(BWD))
@pytest.mark.parametrize("mode", MODES)
def test_backward_finite_differences(provider, mode):
    """dx equals d/dx sum(dy * pool(x)) (float64; distinct values so max is smooth)."""
    for window, pad, stride in (((3, 2), (1, 1), (2, 1)), ((2, 2), (2, 3), (3, 1))):
        _check_finite_differences(provider, mode, window, pad, stride)


def _check_finite_differences(provider, mode, window, pad, stride):
    r = rng()
    x = r.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6).astype(np.float64) * 0.1
    shape = output_shape(x.shape, window, pad, stride)
    dy = r.standard_normal(shape)
    kw = dict(mode=mode, window=window, pad=pad, stride=stride)

    def loss(xx):
        y = np.empty(shape)
        K.get(FWD, "reference")(xx, y, **kw)
        y[y == np.finfo(np.float64).min] = 0.0   # all-padding windows: constant, no gradient
        return float((y * dy).sum())

    dx = np.empty_like(x)
    K.get(BWD, provider)(np.empty(shape), dy, x, dx, **kw)
    h = 1e-3                                  # values are 0.1 apart: no max switches
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = (loss(xp) - loss(xm)) / (2 * h)
    np.testing.assert_allclose(dx, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("provider", K.providers(BWD))
@pytest.mark.parametrize("mode", ["max", "max_deterministic"])
def test_max_backward_ties_go_to_first_max(provider, mode):
    """Constant input: every window's gradient goes to its first (top-left) element."""
    x = np.ones((1, 1, 5, 5), np.float32)
    kw = dict(mode=mode, window=(3, 3), pad=(1, 1), stride=(2, 2))
    dy = np.ones((1, 1, 3, 3), np.float32)
    dx = np.full_like(x, np.nan)
    K.get(BWD, provider)(dy, dy, x, dx, **kw)
    # Window (p, q) starts at (2p-1, 2q-1) clipped to 0: first in-bounds element is
    # (max(2p-1, 0), max(2q-1, 0)) -> rows/cols {0, 1, 3}; each receives one window.
    expect = np.zeros((5, 5), np.float32)
    for p, q in itertools.product(range(3), range(3)):
        expect[max(2 * p - 1, 0), max(2 * q - 1, 0)] += 1
    assert expect.sum() == 9 and expect[0, 0] == 1 and expect[1, 1] == 1
    np.testing.assert_array_equal(dx[0, 0], expect)
    # Two equal maxima in one window: the earlier (row-major) one wins.
    x2 = np.zeros((1, 1, 2, 2), np.float64)
    x2[0, 0, 0, 1] = x2[0, 0, 1, 0] = 5.0
    dx2 = np.empty_like(x2)
    K.get(BWD, provider)(np.empty((1, 1, 1, 1)), np.full((1, 1, 1, 1), 3.0), x2, dx2,
                         mode=mode, window=(2, 2))
    assert dx2.ravel().tolist() == [0.0, 3.0, 0.0, 0.0]


@pytest.mark.parametrize("provider", K.providers(FWD))
def test_max_pool_propagates_nan(provider):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 3, 3] = 7.0
    y = np.empty((1, 1, 2, 2), np.float32)
    K.get(FWD, provider)(x, y, mode="max", window=(2, 2), stride=(2, 2))
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == 7.0 and y[0, 0, 0, 1] == 0.0
    dx = np.empty_like(x)
    K.get(BWD, provider)(y, np.ones_like(y), x, dx, mode="max", window=(2, 2), stride=(2, 2))
    assert dx[0, 0, 1, 1] == 1.0 and dx[0, 0, 0, 0] == 0.0   # gradient goes to the NaN


@pytest.mark.parametrize("provider", K.providers(FWD))
def test_non_contiguous_inputs(provider):
    r = rng()
    base = r.standard_normal((2, 6, 10, 22)).astype(np.float32)
    x = base[:, ::2, :, ::2]                                # strided view (2, 3, 10, 11)
    shape = output_shape(x.shape, (3, 3), (1, 1), (2, 2))
    expect = np.empty(shape, np.float32)
    K.get(FWD, "reference")(np.ascontiguousarray(x), expect, mode="max", window=3, pad=1,
                            stride=2)
    ybig = np.zeros((2, 3) + (shape[2], 2 * shape[3]), np.float32)
    y = ybig[:, :, :, ::2]                                  # non-contiguous output
    K.get(FWD, provider)(x, y, mode="max", window=3, pad=1, stride=2)
    np.testing.assert_allclose(y, expect, **TOL[np.float32])
    dx = np.zeros((2, 3, 10, 11), np.float32).transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
    expect_dx = np.empty((2, 3, 10, 11), np.float32)
    dy = r.standard_normal(shape).astype(np.float32)
    kw = dict(mode="average_count_exclude_padding", window=3, pad=1, stride=2)
    K.get(BWD, "reference")(expect, dy, np.ascontiguousarray(x), expect_dx, **kw)
    K.get(BWD, provider)(y, dy, x, dx, **kw)
    np.testing.assert_allclose(dx, expect_dx, **TOL[np.float32])


@pytest.mark.parametrize("provider", K.providers(FWD))
def test_bad_arguments_name_the_parameter(provider):
    f, b = K.get(FWD, provider), K.get(BWD, provider)
    x = np.zeros((1, 2, 5, 5), np.float32)
    y = np.zeros((1, 2, 3, 3), np.float32)
    ok = dict(mode="max", window=(3, 3), pad=(1, 1), stride=(2, 2))
    f(x, y, **ok)
    cases = [
        (ValueError, "mode", dict(ok, mode="median")),
        (ValueError, "stride", dict(ok, stride=(0, 2))),
        (ValueError, "window", dict(ok, window=(0, 3))),
        (ValueError, "pad", dict(ok, pad=(-1, 0))),
        (TypeError, "window", dict(ok, window=(3.0, 3))),
        (TypeError, "alpha", dict(ok, alpha="1")),
    ]
    for exc, name, kw in cases:
        with pytest.raises(exc, match=name):
            f(x, y, **kw)
    with pytest.raises(ValueError, match="window"):       # larger than padded input
        f(np.zeros((1, 2, 2, 2), np.float32), y, mode="max", window=(5, 5), pad=(1, 1))
    with pytest.raises(ValueError, match="y must have shape"):
        f(x, np.zeros((1, 2, 2, 3), np.float32), **ok)
    with pytest.raises(TypeError, match="y must have the dtype"):
        f(x, y.astype(np.float64), **ok)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        f(x[0], y, **ok)
    with pytest.raises(TypeError, match="x must be float"):
        f(x.astype(np.int32), y, **ok)
    with pytest.raises(ValueError, match="dx must have shape"):
        b(y, y, x, np.zeros((1, 2, 5, 4), np.float32), **ok)
    with pytest.raises(ValueError, match="dy must have shape"):
        b(y, x, x, x.copy(), **ok)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="y is read-only"):
        f(x, y, **ok)


@pytest.mark.parametrize("provider", K.providers(FWD))
def test_windows_wholly_in_the_padding(provider):
    """pad 2 > window 2, stride 2 on a 2x2 input: only the centre window sees data."""
    x = np.array([[1.0, 4.0], [3.0, 2.0]], np.float32).reshape(1, 1, 2, 2)
    kw = dict(window=2, pad=2, stride=2)
    assert output_shape(x.shape, (2, 2), (2, 2), (2, 2)) == (1, 1, 3, 3)
    lowest = np.finfo(np.float32).min                       # cuDNN's -FLT_MAX
    for mode, centre, empty in (("max", 4.0, lowest), ("average_count_include_padding", 2.5, 0.0),
                                ("average_count_exclude_padding", 2.5, 0.0)):
        y = np.full((1, 1, 3, 3), np.nan, np.float32)
        K.get(FWD, provider)(x, y, mode=mode, **kw)
        expect = np.full((3, 3), empty, np.float32)
        expect[1, 1] = centre
        np.testing.assert_array_equal(y[0, 0], expect)
        dy = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
        dx = np.full_like(x, np.nan)
        K.get(BWD, provider)(y, dy, x, dx, mode=mode, **kw)
        # only the centre window (dy = 5) reaches the input
        want = [[0, 5], [0, 0]] if mode == "max" else [[1.25] * 2] * 2
        np.testing.assert_array_equal(dx[0, 0], np.array(want, np.float32))
    x16 = x.astype(np.float16)
    y16 = np.empty((1, 1, 3, 3), np.float16)
    K.get(FWD, provider)(x16, y16, mode="max", **kw)
    assert y16[0, 0, 0, 0] == np.finfo(np.float16).min and y16[0, 0, 1, 1] == 4


@pytest.mark.parametrize("provider", K.providers(FWD))
def test_failed_calls_write_nothing(provider):
    x = np.ones((1, 2, 5, 5), np.float32)
    y = np.full((1, 2, 3, 3), 7.0, np.float32)
    dx = np.full_like(x, 7.0)
    ok = dict(mode="max", window=3, pad=1, stride=2)
    with pytest.raises(ValueError, match="dy must have shape"):
        K.get(BWD, provider)(y, np.ones((1, 2, 3, 4), np.float32), x, dx, **ok)
    with pytest.raises(ValueError, match="stride"):
        K.get(FWD, provider)(x, y, **dict(ok, stride=0))
    with pytest.raises(ValueError, match="window"):
        K.get(FWD, provider)(x, y, **dict(ok, window=8, pad=0))
    assert (y == 7).all() and (dx == 7).all()


def naive_max_winners(x, window, pad, stride):
    """dL/dx of max pooling with dy = 1..P*Q per plane, by direct loops: each window's
    gradient goes to its first NaN, else its first maximum, in row-major order."""
    n_, c_, h_, w_ = x.shape
    _, _, p_, q_ = output_shape(x.shape, window, pad, stride)
    dx = np.zeros(x.shape)
    for n, c, p, q in itertools.product(range(n_), range(c_), range(p_), range(q_)):
        best = None
        for h in range(p * stride[0] - pad[0], p * stride[0] - pad[0] + window[0]):
            for w in range(q * stride[1] - pad[1], q * stride[1] - pad[1] + window[1]):
                if not (0 <= h < h_ and 0 <= w < w_):
                    continue
                v = float(x[n, c, h, w])
                if best is None or (not np.isnan(best[0]) and (np.isnan(v) or v > best[0])):
                    best = (v, h, w)
        if best is not None:
            dx[n, c, best[1], best[2]] += 1 + p * q_ + q
    return dx


MAX_BWD_CONFIGS = [((3, 3), (1, 1), (2, 2)), ((3, 3), (0, 0), (1, 1)), ((2, 2), (0, 0), (2, 2)),
                   ((5, 3), (2, 1), (3, 2)), ((1, 4), (0, 3), (1, 3)), ((2, 3), (3, 4), (2, 2)),
                   ((4, 1), (1, 0), (5, 1))]


@pytest.mark.parametrize("provider", K.providers(BWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", MAX_BWD_CONFIGS)
def test_max_backward_winners_match_naive_loops(provider, dtype, cfg):
    """Odd plane sizes, many ties (a few distinct values), -inf, inf and NaN runs: every
    window's gradient lands on cuDNN's winner (first NaN, else first maximum)."""
    r = rng()
    x = r.integers(-2, 3, (2, 3, 13, 17)).astype(dtype)
    x[0, 0, 2:5, 3:9] = -np.inf                       # windows of equal -inf values
    x[0, 1, 5, 6], x[0, 1, 6, 5] = np.nan, np.nan     # two NaNs in a window: the first wins
    x[1, 2, 7:9, 0:4] = np.inf
    x[1, 0] = 1.0                                     # a constant plane: all ties
    window, pad, stride = cfg
    shape = output_shape(x.shape, window, pad, stride)
    dy = np.broadcast_to(np.arange(1, shape[2] * shape[3] + 1, dtype=dtype).reshape(shape[2:]),
                         shape).copy()
    dx = np.full(x.shape, np.nan, dtype)
    K.get(BWD, provider)(np.empty(shape, dtype), dy, x, dx, mode="max", window=window,
                         pad=pad, stride=stride)
    np.testing.assert_array_equal(dx, naive_max_winners(x, window, pad, stride))


@pytest.mark.parametrize("provider", K.providers(BWD))
def test_max_backward_non_contiguous_and_blended(provider):
    r = rng()
    base = r.standard_normal((2, 6, 11, 30)).astype(np.float32)
    x = base[:, ::2, :, ::2]                                # (2, 3, 11, 15), strided
    kw = dict(mode="max", window=3, pad=1, stride=2)
    shape = output_shape(x.shape, (3, 3), (1, 1), (2, 2))
    dy = r.standard_normal(shape).astype(np.float32)[..., ::-1]    # negative strides
    expect = r.standard_normal(x.shape).astype(np.float32)
    dx = np.zeros((2, 3, 15, 11), np.float32).transpose(0, 1, 3, 2)
    dx[...] = expect
    K.get(BWD, "reference")(np.empty(shape, np.float32), np.ascontiguousarray(dy),
                            np.ascontiguousarray(x), expect, alpha=0.5, beta=-2.0, **kw)
    K.get(BWD, provider)(np.empty(shape, np.float32), dy, x, dx, alpha=0.5, beta=-2.0, **kw)
    np.testing.assert_allclose(dx, expect, **TOL[np.float32])


def test_max_backward_big_planes_search_in_float64(monkeypatch):
    """float32 planes too big for exact float32 flat indices are searched in float64; the
    limit is lowered here so that a small plane takes that path."""
    from streamq.kernels import pooling
    monkeypatch.setattr(pooling, "_F32_EXACT_INDEX", 16)
    x = rng().integers(-3, 4, (2, 2, 9, 10)).astype(np.float32)
    kw = dict(mode="max", window=(3, 2), pad=(1, 1), stride=(2, 2))
    shape = output_shape(x.shape, (3, 2), (1, 1), (2, 2))
    dy = np.broadcast_to(np.arange(1, shape[2] * shape[3] + 1, dtype=np.float32)
                         .reshape(shape[2:]), shape).copy()
    dx = np.empty_like(x)
    K.get(BWD, "numba")(np.empty(shape, np.float32), dy, x, dx, **kw)
    np.testing.assert_array_equal(dx, naive_max_winners(x, (3, 2), (1, 1), (2, 2)))


@pytest.mark.parametrize("provider", K.providers(FWD))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("mode", ["average_count_include_padding", "average_count_exclude_padding"])
def test_global_average_pool(provider, dtype, mode):
    """Window = the whole plane, no padding (ResNet's head): the mean of each plane, for
    odd planes, a strided input, 1x1 planes, NaN/inf propagation and blending."""
    r = rng()
    for shape in ((3, 70, 7, 7), (2, 5, 1, 1), (1, 3, 13, 5)):
        x = r.standard_normal(shape).astype(dtype)
        x[0, 1, 0, 0], x[-1, 2, -1, -1] = np.nan, np.inf
        want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
        y = np.full(shape[:2] + (1, 1), np.nan, dtype)
        K.get(FWD, provider)(x, y, mode=mode, window=shape[2:])
        np.testing.assert_allclose(y, want, equal_nan=True, **TOL[dtype])
        assert np.isnan(y[0, 1, 0, 0]) and y[-1, 2, 0, 0] == np.inf
        y0 = r.standard_normal(y.shape).astype(dtype)
        y = y0.copy()
        K.get(FWD, provider)(x[:, ::-1], y, mode=mode, window=shape[2:], alpha=2.0, beta=-0.5)
        np.testing.assert_allclose(y, 2.0 * want[:, ::-1] - 0.5 * y0.astype(np.float64),
                                   equal_nan=True, **TOL[dtype])
