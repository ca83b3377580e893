"""Tests of the ATen kernels (streamq/kernels/aten_ops.py).

Three layers: the float64 ``reference`` provider is checked against
independent computations (hand values, naive loops, identities, finite
differences); every provider is checked against the reference on random,
odd-sized, non-contiguous and NaN/inf inputs; and, when torch is importable,
a few cases against torch itself. Bad arguments must raise naming the
parameter. Outputs are pre-filled with NaN (or garbage) so a kernel that
leaves part of ``out`` unwritten, or reads it, fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import streamq.kernels as K
import streamq.kernels.aten_ops  # noqa: F401  registers our ops even if a sibling module is missing
from streamq.kernels import _aten_jit as jit

try:  # the registry imports every builtin kernel module on first use; a sibling module
    K.ops()  # being written by someone else may be missing or broken: not this file's concern
except Exception:  # noqa: BLE001
    pass

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
RNG = np.random.default_rng(1234)
BIG = 4099          # above the elementwise numba threshold, odd on purpose
# float32: results are rounded once from float64 in the reference, while fast
# providers compute in float32 (as torch does): a few ulps apart, hence 1e-5;
# float16 (11-bit mantissa) likewise a few ulps of 2**-11.
TOL = {np.float16: dict(rtol=4e-3, atol=1e-3), np.float32: dict(rtol=1e-5, atol=1e-6),
       np.float64: dict(rtol=1e-12, atol=1e-13)}


def prov(op):
    return K.providers(op)


def call(op, provider, *args, **kwargs):
    return K.get(op, provider)(*args, **kwargs)


def ref(op, *args, **kwargs):
    return K.get(op, "reference")(*args, **kwargs)


def garbage(shape, dtype):
    """An output array full of NaN (or a big value for integer/bool dtypes)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.full(shape, np.nan, dtype)
    return np.full(shape, 77 if dtype.kind in "ui" else True, dtype)


def rand(shape, dtype=np.float64, scale=1.0):
    return np.asarray(RNG.standard_normal(shape) * scale).astype(dtype)


def noncontig(a):
    """A non-contiguous view with a's values (every other column of a wider array)."""
    wide = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else a.copy()
    if a.ndim == 0:
        return wide
    wide[..., ::2] = a
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or a.shape[-1] <= 1
    return view


def assert_close(got, want, dtype=None):
    dtype = np.dtype(dtype or want.dtype).type
    assert got.shape == want.shape and got.dtype == want.dtype
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   equal_nan=True, **TOL[dtype])
    else:
        np.testing.assert_array_equal(got, want)


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar function f at x (float64)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = f(x)
        flat[i] = old - eps
        lo = f(x)
        flat[i] = old
        gf[i] = (hi - lo) / (2 * eps)
    return g


# ================================================================ oracle ====

def test_reference_binary_hand_values():
    a = np.array([7, -7, 5, -5], np.int64)
    o = garbage(4, np.int64)
    assert ref("aten::div", a, 2, rounding_mode="trunc", out=o).tolist() == [3, -3, 2, -2]
    assert ref("aten::div", a, 2, rounding_mode="floor", out=o).tolist() == [3, -4, 2, -3]
    assert ref("aten::add", a, np.array([1, 1, 1, 1]), alpha=3, out=o).tolist() == [10, -4, 8, -2]
    assert ref("aten::sub", a, 1, alpha=2, out=o).tolist() == [5, -9, 3, -7]
    f = garbage(4, np.float32)
    assert ref("aten::div", a, 2, out=f).tolist() == [3.5, -3.5, 2.5, -2.5]
    x = np.array([7.5, -7.5, 1.0, -1.0])
    o = garbage(4, np.float64)
    assert ref("aten::div", x, 2.0, rounding_mode="floor", out=o).tolist() == [3.0, -4.0, 0.0, -1.0]
    assert ref("aten::div", x, 2.0, rounding_mode="trunc", out=o).tolist() == [3.0, -3.0, 0.0, -0.0]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ref("aten::div", np.array([1.0, -1.0, 0.0]), 0.0, rounding_mode="floor", out=garbage(3, np.float64))
    assert r[0] == np.inf and r[1] == -np.inf and np.isnan(r[2])
    b = np.array([True, False])
    assert ref("aten::add", b, np.array([False, False]), out=garbage(2, bool)).tolist() == [True, False]
    assert ref("aten::mul", b, True, out=garbage(2, bool)).tolist() == [True, False]
    assert ref("aten::add", b, 2, out=garbage(2, np.int64)).tolist() == [3, 2]


@pytest.mark.parametrize("a, b, want", [
    (np.zeros(2, np.int32), 2.5, np.float32),            # python float -> default float
    (np.zeros(2, np.int32), 2, np.int32),                # python int does not widen
    (np.zeros(2, np.float16), np.zeros((), np.float64), np.float16),   # 0-d does not widen
    (np.zeros(2, np.int64), np.zeros((), np.float64), np.float64),     # ...unless higher category
    (np.zeros(2, np.float16), np.zeros(2, np.int64), np.float16),
    (np.zeros(2, np.uint8), np.zeros(2, np.int8), np.int16),
    (np.zeros(2, bool), 1, np.int64),
    (np.zeros(2, np.float32), np.zeros(2, np.float64), np.float64),
])
def test_result_type_matches_torch_rules(a, b, want):
    assert streamq.kernels.aten_ops.result_type(a, b) == np.dtype(want)
    if torch is not None:
        tb = torch.from_numpy(np.asarray(b)) if isinstance(b, np.ndarray) else b
        assert torch.result_type(torch.from_numpy(a), tb) == getattr(torch, np.dtype(want).name)


def test_reference_unary_hand_values():
    x = np.array([np.nan, -1.0, 0.0, 0.5, 2.0])
    assert np.array_equal(ref("aten::relu", x, out=garbage(5, float)), [np.nan, 0, 0, 0.5, 2], equal_nan=True)
    assert np.array_equal(ref("aten::threshold", x, 0.5, 9.0, out=garbage(5, float)),
                          [np.nan, 9, 9, 9, 2], equal_nan=True)
    g = np.array([1.0, 2.0, np.nan, np.nan, 5.0])
    assert np.array_equal(ref("aten::threshold_backward", g, x, 0.5, out=garbage(5, float)),
                          [1.0, 0, 0, 0, 5.0])
    s = ref("aten::sigmoid", np.array([0.0, np.inf, -np.inf, np.nan]), out=garbage(4, float))
    assert np.array_equal(s, [0.5, 1.0, 0.0, np.nan], equal_nan=True)
    t = ref("aten::tanh", np.array([0.0, 1.0, -np.inf]), out=garbage(3, float))
    np.testing.assert_allclose(t, [0.0, (np.e - 1 / np.e) / (np.e + 1 / np.e), -1.0], rtol=1e-15)


def test_reference_backward_by_finite_differences():
    x = rand((3, 5))
    g = rand((3, 5))
    for fwd, bwd in (("aten::sigmoid", "aten::sigmoid_backward"), ("aten::tanh", "aten::tanh_backward")):
        y = ref(fwd, x, out=garbage(x.shape, float))
        got = ref(bwd, g, y, out=garbage(x.shape, float))
        want = numgrad(lambda v: float((g * ref(fwd, v, out=np.empty_like(v))).sum()), x.copy())
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    xt = x + np.sign(x) * 0.01        # keep away from the kink at the threshold
    got = ref("aten::threshold_backward", g, xt, 0.0, out=garbage(x.shape, float))
    want = numgrad(lambda v: float((g * ref("aten::relu", v, out=np.empty_like(v))).sum()), xt.copy())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_reference_reductions_against_loops():
    x = rand((3, 4, 5))
    o = garbage((3, 5), np.float64)
    ref("aten::sum", x, 1, out=o)
    for i, k in itertools.product(range(3), range(5)):
        assert o[i, k] == pytest.approx(sum(x[i, j, k] for j in range(4)), rel=1e-14)
    m = garbage((1, 4, 1), np.float64)
    ref("aten::mean", x, (0, -1), True, out=m)
    for j in range(4):
        assert m[0, j, 0] == pytest.approx(sum(x[i, j, k] for i in range(3) for k in range(5)) / 15)
    assert ref("aten::amax", np.array([[1, 5, 2], [7, 0, 7]]), 1, out=garbage(2, np.int64)).tolist() == [5, 7]
    a = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 9.0, 9.0, -1.0]])
    am = ref("aten::amax", a, -1, out=garbage(2, float))
    assert np.isnan(am[0]) and am[1] == 9.0
    assert ref("aten::argmax", a, 1, out=garbage(2, np.int64)).tolist() == [1, 1]
    assert ref("aten::argmax", a, out=garbage((), np.int64)) == 1
    assert ref("aten::argmax", np.array([3, 9, 9]), out=garbage((), np.int64)) == 1
    assert ref("aten::sum", np.array([True, True, False]), out=garbage((), np.int64)) == 2
    assert np.isnan(ref("aten::mean", np.zeros(0), out=garbage((), float)))


def test_reference_softmax_identities():
    x = rand((2, 3, 4), scale=3)
    for dim in (0, 1, -1):
        s = ref("aten::_softmax", x, dim, False, out=garbage(x.shape, float))
        e = np.exp(x)
        np.testing.assert_allclose(s, e / e.sum(axis=dim, keepdims=True), rtol=1e-13)
        ls = ref("aten::_log_softmax", x, dim, False, out=garbage(x.shape, float))
        np.testing.assert_allclose(ls, np.log(s), rtol=1e-12, atol=1e-13)
    big = np.array([1000.0, 1001.0, 1002.0])   # overflows without the max shift
    s = ref("aten::_softmax", big, 0, False, out=garbage(3, float))
    np.testing.assert_allclose(s, ref("aten::_softmax", big - 1000, 0, False, out=garbage(3, float)))
    g = rand(x.shape)
    for op, bop in (("aten::_softmax", "aten::_softmax_backward_data"),
                    ("aten::_log_softmax", "aten::_log_softmax_backward_data")):
        y = ref(op, x, 1, False, out=garbage(x.shape, float))
        got = ref(bop, g, y, 1, np.float64, out=garbage(x.shape, float))
        want = numgrad(lambda v: float((g * ref(op, v, 1, False, out=np.empty_like(v))).sum()), x.copy())
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_reference_nll_loss_hand_values_and_gradient():
    x = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    t = np.array([2, 0, -100])
    w = np.array([1.0, 2.0, 4.0])
    out, tw = garbage((), float), garbage((), float)
    ref("aten::nll_loss_forward", x, t, w, "mean", -100, output=out, total_weight=tw)
    assert tw == 5.0 and out == pytest.approx(-(4 * 0.3 + 1 * 1.0) / 5)
    ref("aten::nll_loss_forward", x, t, w, "sum", -100, output=out, total_weight=tw)
    assert out == pytest.approx(-(4 * 0.3 + 1.0))
    per = garbage(3, float)
    ref("aten::nll_loss_forward", x, t, None, "none", -100, output=per, total_weight=tw)
    assert per.tolist() == [-0.3, -1.0, 0.0] and tw == 0
    ref("aten::nll_loss_forward", x[1], np.array(2), w, "none", -100, output=out, total_weight=tw)
    assert out == -12.0 and tw == 4.0          # 1-d self reduces to a scalar, as torch
    ref("aten::nll_loss_forward", x, np.full(3, -100), None, "mean", -100, output=out, total_weight=tw)
    assert np.isnan(out) and tw == 0
    xr = rand((4, 3))
    tr = np.array([0, 2, 1, 2])
    for red, gshape in (("mean", ()), ("sum", ()), ("none", (4,))):
        g = rand(gshape)
        tw = np.zeros(())

        def loss(v):
            o = np.empty(gshape)
            ref("aten::nll_loss_forward", v, tr, w, red, 1, output=o, total_weight=tw)
            return float((g * o).sum())
        want = numgrad(loss, xr.copy())
        loss(xr)
        got = ref("aten::nll_loss_backward", g, xr, tr, w, red, 1, tw, grad_input=garbage(xr.shape, float))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def _adaptive_loop(x, oh, ow):
    H, W = x.shape[-2:]
    r = np.zeros(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        h0, h1 = int(np.floor(i * H / oh)), int(np.ceil((i + 1) * H / oh))
        for j in range(ow):
            w0, w1 = int(np.floor(j * W / ow)), int(np.ceil((j + 1) * W / ow))
            r[..., i, j] = x[..., h0:h1, w0:w1].sum(axis=(-1, -2)) / ((h1 - h0) * (w1 - w0))
    return r


def test_reference_adaptive_avg_pool_against_loop_and_gradient():
    x = rand((2, 3, 7, 5))
    for oh, ow in ((3, 2), (7, 5), (1, 1), (4, 4)):
        got = ref("aten::_adaptive_avg_pool2d", x, (oh, ow), out=garbage((2, 3, oh, ow), float))
        np.testing.assert_allclose(got, _adaptive_loop(x, oh, ow), rtol=1e-14)
    xs = rand((1, 2, 5, 4))
    g = rand((1, 2, 3, 3))
    got = ref("aten::_adaptive_avg_pool2d_backward", g, xs, out=garbage(xs.shape, float))
    want = numgrad(lambda v: float((g * _adaptive_loop(v, 3, 3)).sum()), xs.copy())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def _maxpool_loop(x, k, s, p, d, oh, ow):
    H, W = x.shape[-2:]
    vals = np.zeros(x.shape[:-2] + (oh, ow))
    idx = np.zeros(x.shape[:-2] + (oh, ow), np.int64)
    for lead in np.ndindex(*x.shape[:-2]):
        for i, j in np.ndindex(oh, ow):
            best, bi = -np.inf, None
            for a, b in np.ndindex(*k):
                r, c = i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + b * d[1]
                if 0 <= r < H and 0 <= c < W:
                    v = x[lead + (r, c)]
                    if bi is None:
                        bi = r * W + c
                    if v > best or np.isnan(v):
                        best, bi = v, r * W + c
            vals[lead + (i, j)], idx[lead + (i, j)] = best, bi
    return vals, idx


@pytest.mark.parametrize("H, W, k, s, p, d, ceil, want", [
    (5, 5, (3, 3), (2, 2), (1, 1), (2, 2), True, (2, 2)),
    (6, 6, (2, 2), (2, 2), (1, 1), (1, 1), True, (4, 4)),   # last window starts in the padding
    (5, 5, (2, 2), (2, 2), (0, 0), (1, 1), True, (3, 3)),
    (5, 5, (2, 2), (2, 2), (0, 0), (1, 1), False, (2, 2)),
    (7, 6, (3, 2), (2, 3), (1, 0), (1, 2), False, (4, 2)),
    (4, 4, (2, 2), (3, 3), (1, 1), (1, 1), True, (2, 2)),   # ceil window would start past input+pad
])
def test_reference_max_pool_against_loop_and_output_size(H, W, k, s, p, d, ceil, want):
    x = rand((2, 2, H, W))
    x[0, 0, 1, 1] = np.nan
    oh, ow = want
    assert streamq.kernels.aten_ops.pool_output_size(H, k[0], s[0], p[0], d[0], ceil) == oh
    out, idx = garbage((2, 2, oh, ow), float), garbage((2, 2, oh, ow), np.int64)
    ref("aten::max_pool2d_with_indices", x, k, s, p, d, ceil, out=out, indices=idx)
    vals, widx = _maxpool_loop(x, k, s, p, d, oh, ow)
    np.testing.assert_array_equal(out, vals)
    np.testing.assert_array_equal(idx, widx)
    if torch is not None:
        tv, ti = torch.ops.aten.max_pool2d_with_indices(torch.from_numpy(x), list(k), list(s),
                                                        list(p), list(d), ceil)
        assert tuple(tv.shape[-2:]) == want
        np.testing.assert_array_equal(idx, ti.numpy())


def test_reference_max_pool_backward_by_finite_differences():
    x = rand((1, 2, 5, 6))
    k, s, p, d = (3, 2), (2, 2), (1, 1), (1, 1)
    out, idx = np.empty((1, 2, 3, 4)), np.empty((1, 2, 3, 4), np.int64)
    ref("aten::max_pool2d_with_indices", x, k, s, p, d, False, out=out, indices=idx)
    g = rand(out.shape)
    got = ref("aten::max_pool2d_with_indices_backward", g, x, k, s, p, d, False, idx,
              grad_input=garbage(x.shape, float))

    def f(v):
        o, i = np.empty(out.shape), np.empty(out.shape, np.int64)
        ref("aten::max_pool2d_with_indices", v, k, s, p, d, False, out=o, indices=i)
        return float((g * o).sum())
    np.testing.assert_allclose(got, numgrad(f, x.copy()), rtol=1e-6, atol=1e-8)


def test_reference_fill_and_copy_casts():
    a = np.zeros(3, np.int32)
    assert ref("aten::fill_", a, 2.7).tolist() == [2, 2, 2]
    assert ref("aten::fill_", np.zeros(2, np.uint8), -1).tolist() == [255, 255]
    assert ref("aten::fill_", np.zeros(2, bool), 2).tolist() == [True, True]
    assert ref("aten::fill_", np.zeros(2, np.float16), np.array(1.5)).tolist() == [1.5, 1.5]
    assert ref("aten::copy_", np.zeros(3, np.int32), np.array([2.7, -2.7, 0.5])).tolist() == [2, -2, 0]
    assert ref("aten::copy_", np.zeros(3, bool), np.array([0.0, np.nan, -1.0])).tolist() == [False, True, True]
    assert ref("aten::copy_", np.zeros((2, 2), np.float32), np.array([True, False])).tolist() == [[1, 0], [1, 0]]
    assert ref("aten::copy_", np.zeros(2, np.int8), np.array([300, -129])).tolist() == [44, 127]


# ========================================================= providers ====

DTYPES = [np.float32, np.float64, np.float16]


def _binary_cases():
    yield "same", (7, 5), (7, 5)
    yield "big", (BIG,), (BIG,)
    yield "bcast", (3, 1, 5), (4, 1)
    yield "scalar", (BIG,), None
    yield "batch1", (1, 9), (9,)


@pytest.mark.parametrize("op", ["aten::add", "aten::sub", "aten::mul", "aten::div"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_providers_match_reference(op, dtype):
    for name, sa, sb in _binary_cases():
        a = rand(sa, dtype, 3)
        b = rand(sb, dtype, 3) if sb else 1.75
        if op == "aten::div" and sb:
            b[np.abs(b) < 0.1] = 0.5
        if a.size > 4:
            a.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, 0.0]
        kw = {"alpha": 0.5} if op in ("aten::add", "aten::sub") else {}
        shape = np.broadcast_shapes(sa, sb or ())
        want = ref(op, a, b, out=garbage(shape, dtype), **kw)
        for p in prov(op):
            got = call(op, p, a, b, out=garbage(shape, dtype), **kw)
            assert_close(got, want)
            if name == "same":
                got = call(op, p, noncontig(a), noncontig(b), out=garbage(shape, dtype), **kw)
                assert_close(got, want)


@pytest.mark.parametrize("provider", ["reference", "numpy", "numba"])
def test_binary_integer_and_rounding_modes(provider):
    a = RNG.integers(-50, 50, (6, 7)).astype(np.int32)
    b = RNG.integers(1, 9, (7,)).astype(np.int64) * np.where(RNG.random(7) < 0.5, -1, 1)
    for mode in ("trunc", "floor"):
        got = call("aten::div", provider, a, b, rounding_mode=mode, out=garbage(a.shape, np.int64))
        q = np.trunc(a / b) if mode == "trunc" else np.floor(a / b)
        np.testing.assert_array_equal(got, q.astype(np.int64))
    got = call("aten::div", provider, a, b, out=garbage(a.shape, np.float32))
    np.testing.assert_allclose(got, (a / b).astype(np.float32), rtol=1e-6)
    got = call("aten::add", provider, a, 3, alpha=2, out=garbage(a.shape, np.int32))
    np.testing.assert_array_equal(got, a + 6)
    got = call("aten::mul", provider, a, 0.5, out=garbage(a.shape, np.float32))
    np.testing.assert_array_equal(got, (a * 0.5).astype(np.float32))
    # quantized floats: the floor/trunc quotient is exact, so every provider agrees exactly
    x = (RNG.integers(-40, 40, BIG) / 4).astype(np.float32)
    y = np.resize(np.array([0.5, -1.5, 2.25, -3.0], np.float32), BIG)
    for mode in ("trunc", "floor"):
        got = call("aten::div", provider, x, y, rounding_mode=mode, out=garbage(BIG, np.float32))
        q = np.trunc(x.astype(float) / y) if mode == "trunc" else np.floor(x.astype(float) / y)
        np.testing.assert_array_equal(got, q.astype(np.float32))
    with pytest.raises(ZeroDivisionError, match="other"):
        call("aten::div", provider, a, 0, rounding_mode="floor", out=garbage(a.shape, np.int32))


@pytest.mark.parametrize("op", ["aten::add_", "aten::sub_", "aten::mul_", "aten::div_"])
def test_inplace_binary(op):
    base = rand((BIG,), np.float32)
    other = rand((BIG,), np.float32)
    want = ref(op.rstrip("_"), base, other, out=garbage(BIG, np.float32))
    for p in prov(op):
        a = base.copy()
        assert call(op, p, a, other) is a
        assert_close(a, want)
        a = base.copy()          # other overlapping self, shifted by one element
        want_shift = ref(op.rstrip("_"), a[1:], a[:-1], out=garbage(BIG - 1, np.float32))
        call(op, p, a[1:], a[:-1])
        assert_close(a[1:], want_shift)
    with pytest.raises(TypeError, match="self"):
        call(op, "numba", np.zeros(3, np.int32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="other"):
        call(op, "numba", np.zeros(3, np.float32), np.ones((2, 3), np.float32))


UNARY = ["aten::relu", "aten::sigmoid", "aten::tanh"]


@pytest.mark.parametrize("op", UNARY + ["aten::threshold"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unary_providers_match_reference(op, dtype):
    extra = (0.25, -3.0) if op == "aten::threshold" else ()
    for shape in ((BIG,), (3, 7), (1,), ()):
        x = rand(shape, dtype, 4)
        if x.size > 6:
            x.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0]
        want = ref(op, x, *extra, out=garbage(shape, dtype))
        for p in prov(op):
            assert_close(call(op, p, x, *extra, out=garbage(shape, dtype)), want)
            if x.ndim == 2:
                assert_close(call(op, p, noncontig(x), *extra, out=garbage(shape, dtype)), want)
            y = x.copy()
            assert call(op + "_", p, y, *extra) is y
            assert_close(y, want)


def test_unary_integer_inputs():
    a = np.arange(-5, 5, dtype=np.int32)
    for p in prov("aten::relu"):
        assert call("aten::relu", p, a, out=garbage(10, np.int32)).tolist() == np.maximum(a, 0).tolist()
        assert call("aten::threshold", p, a, 1.5, 9, out=garbage(10, np.int32)).tolist() == \
            np.where(a <= 1, 9, a).tolist()
    for op, f in (("aten::sigmoid", lambda v: 1 / (1 + np.exp(-v))), ("aten::tanh", np.tanh)):
        for p in prov(op):
            got = call(op, p, a, out=garbage(10, np.float32))
            np.testing.assert_allclose(got, f(a.astype(float)), rtol=1e-6)
            with pytest.raises(TypeError, match="self"):
                call(op + "_", p, a.copy())


def test_jit_transcendentals_accuracy_dense():
    """The vectorised exp/tanh used by the numba kernels, on a dense grid incl. extremes."""
    for dt, max_ulp in ((np.float32, 2), (np.float64, 4)):
        x = np.concatenate([np.linspace(-30, 30, 300001), np.linspace(-1, 1, 20001),
                            [np.inf, -np.inf, np.nan, 0.0, 1e-30, 80.0, -80.0]]).astype(dt)
        for kernel, f in ((jit.sigmoid, lambda v: 1 / (1 + np.exp(-v))), (jit.tanh, np.tanh)):
            got = np.empty_like(x)
            kernel(x, got)
            want = f(x.astype(np.float64)).astype(dt)
            assert np.array_equal(np.isnan(got), np.isnan(want))
            ok = ~np.isnan(want)
            ulps = np.abs(got[ok].astype(float) - want[ok]) / np.spacing(np.abs(want[ok]).astype(dt))
            assert ulps.max() <= max_ulp


@pytest.mark.parametrize("op, fwd", [("aten::sigmoid_backward", "aten::sigmoid"),
                                     ("aten::tanh_backward", "aten::tanh"),
                                     ("aten::threshold_backward", None)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_elementwise_providers_match_reference(op, fwd, dtype):
    for shape in ((BIG,), (4, 5), ()):
        g = rand(shape, dtype)
        x = rand(shape, dtype)
        if g.size > 3:
            g.reshape(-1)[0] = np.nan
            x.reshape(-1)[1:3] = [np.nan, 0.0]
        second = ref(fwd, x, out=np.empty(shape, dtype)) if fwd else x
        extra = (0.0,) if fwd is None else ()
        want = ref(op, g, second, *extra, out=garbage(shape, dtype))
        for p in prov(op):
            assert_close(call(op, p, g, second, *extra, out=garbage(shape, dtype)), want)
            if g.ndim == 2:
                assert_close(call(op, p, noncontig(g), noncontig(second), *extra,
                                  out=garbage(shape, dtype)), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8, bool])
def test_fill_and_copy_providers(dtype):
    for p in prov("aten::fill_"):
        for shape in ((BIG,), (3, 4)):
            a = garbage(shape, dtype)
            call("aten::fill_", p, a, 3)
            assert (a == np.dtype(dtype).type(3)).all()
            call("aten::fill_", p, noncontig(a), 1)
    src = (RNG.standard_normal(BIG) * 50)
    src_i = RNG.integers(-300, 300, BIG)
    for p in prov("aten::copy_"):
        for s in (src, src.astype(np.float32), src_i, src_i.astype(np.int16)):
            want = ref("aten::copy_", garbage(BIG, dtype), s)
            if np.dtype(dtype) == np.uint8 and s.dtype.kind == "f":
                continue      # negative float -> unsigned is undefined behaviour in C and torch
            assert_close(call("aten::copy_", p, garbage(BIG, dtype), s), want)
        a = np.arange(12).astype(dtype)
        want = ref("aten::copy_", a.copy()[1:], a[:-1].copy())
        assert_close(call("aten::copy_", p, a[1:], a[:-1]), want)   # overlapping src
        b = garbage((3, 4), dtype)
        assert_close(call("aten::copy_", p, b, np.arange(4)), np.tile(np.arange(4).astype(dtype), (3, 1)))


# reductions -------------------------------------------------------------

RED_CASES = [((5, 7, 3), None), ((5, 7, 3), 1), ((5, 7, 3), (0, -1)), ((5, 7, 3), (0, 1)),
             ((5, 7, 3), -1), ((1, 70001), 1), ((70001,), 0), ((3, 40), ()), ((), None), ((4, 0), 1)]


@pytest.mark.parametrize("op", ["aten::sum", "aten::mean"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_mean_providers(op, dtype):
    for shape, dim in RED_CASES:
        x = np.asarray(rand(shape, dtype, 2) + (1.0 if op == "aten::sum" else 0))
        dims = () if dim is None else (dim if isinstance(dim, tuple) else (dim,))
        for keepdim in (False, True):
            want_shape = np.sum(np.zeros(shape), axis=dims or None, keepdims=keepdim).shape
            want = ref(op, x, dim, keepdim, out=garbage(want_shape, dtype))
            for p in prov(op):
                assert_close(call(op, p, x, dim, keepdim, out=garbage(want_shape, dtype)), want)
                if x.ndim == 3:
                    assert_close(call(op, p, noncontig(x), dim, keepdim, out=garbage(want_shape, dtype)), want)


def test_float32_sum_is_accurate():
    x = (RNG.random(1_000_003) * 1e3).astype(np.float32)
    x[::2] *= -1
    exact = np.sum(x.astype(np.float64))
    for p in prov("aten::sum"):
        got = call("aten::sum", p, x, out=garbage((), np.float32))
        assert abs(float(got) - exact) <= 1e-6 * abs(exact) + float(np.spacing(np.float32(exact)))


def test_sum_dtype_rules():
    xi = RNG.integers(-9, 9, (4, 5)).astype(np.int8)
    for p in prov("aten::sum"):
        assert call("aten::sum", p, xi, 1, out=garbage(4, np.int64)).tolist() == xi.astype(int).sum(1).tolist()
        got = call("aten::sum", p, xi, dtype=np.float32, out=garbage((), np.float32))
        assert got == xi.sum()
        got = call("aten::mean", p, xi, 0, dtype=np.float64, out=garbage(5, np.float64))
        np.testing.assert_allclose(got, xi.mean(0))
        x = np.array([1.7, -2.2], np.float64)
        assert call("aten::sum", p, x, dtype=np.int32, out=garbage((), np.int32)) == -1  # cast first
        with pytest.raises(TypeError, match="self"):
            call("aten::mean", p, xi, out=garbage((), np.float32))
        with pytest.raises(TypeError, match="dtype"):
            call("aten::mean", p, x, dtype=np.int64, out=garbage((), np.int64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, bool])
def test_amax_argmax_providers(dtype):
    for shape, dim in RED_CASES:
        if 0 in shape:
            continue
        x = rand(shape, np.float64, 5)
        x = np.asarray(np.round(x) if np.dtype(dtype).kind != "f" else x)   # ties for ints
        x = np.asarray(x > 0) if dtype is bool else x.astype(dtype)
        if np.dtype(dtype).kind == "f" and x.size > 30:
            flat = x.reshape(-1)
            flat[[3, 17]] = np.nan
            flat[5] = np.inf
        for keepdim in (False, True):
            dims = () if dim is None else (dim if isinstance(dim, tuple) else (dim,))
            ashape = np.sum(np.zeros(shape), axis=dims or None, keepdims=keepdim).shape
            want = ref("aten::amax", x, dims, keepdim, out=garbage(ashape, dtype))
            for p in prov("aten::amax"):
                assert_close(call("aten::amax", p, x, dims, keepdim, out=garbage(ashape, dtype)), want)
            if isinstance(dim, tuple):
                continue
            want = ref("aten::argmax", x, dim, keepdim, out=garbage(ashape, np.int64))
            for p in prov("aten::argmax"):
                assert_close(call("aten::argmax", p, x, dim, keepdim, out=garbage(ashape, np.int64)), want)
                if x.ndim == 3:
                    assert_close(call("aten::argmax", p, noncontig(x), dim, keepdim,
                                      out=garbage(ashape, np.int64)), want)


def test_argmax_lane_kernel_ties_and_nan():
    for p in prov("aten::argmax"):
        x = np.zeros(1000, np.float32)
        x[[40, 41, 900]] = 5
        assert call("aten::argmax", p, x, out=garbage((), np.int64)) == 40
        x[[77, 600]] = np.nan
        assert call("aten::argmax", p, x, out=garbage((), np.int64)) == 77
        x = np.full((3, 100), -np.inf)
        assert call("aten::argmax", p, x, 1, out=garbage(3, np.int64)).tolist() == [0, 0, 0]


# softmax ----------------------------------------------------------------

@pytest.mark.parametrize("op", ["aten::_softmax", "aten::_log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_providers(op, dtype):
    for shape, dim in (((7, 33), 1), ((7, 33), 0), ((2, 5, 3, 4), 1), ((1, 1000), -1), ((5,), 0),
                       ((), 0), ((3, 0), 1)):
        x = rand(shape, dtype, 4)
        if x.ndim == 2 and x.shape[0] > 5 and x.shape[1] > 8:
            x[1, 3] = np.nan
            x[2, :] = -np.inf
            x[3, 5] = np.inf
            x[4, 7] = 60.0
        want = ref(op, x, dim, False, out=garbage(shape, dtype))
        for p in prov(op):
            assert_close(call(op, p, x, dim, False, out=garbage(shape, dtype)), want)
            if x.ndim == 2:
                assert_close(call(op, p, noncontig(x), dim, False, out=garbage(shape, dtype)), want)
            if dtype is np.float16:
                got = call(op, p, x, dim, True, out=garbage(shape, np.float32))
                want32 = ref(op, x, dim, True, out=garbage(shape, np.float32))
                assert_close(got, want32)


@pytest.mark.parametrize("op", ["aten::_softmax_backward_data", "aten::_log_softmax_backward_data"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_providers(op, dtype):
    fwd = "aten::_softmax" if op == "aten::_softmax_backward_data" else "aten::_log_softmax"
    for shape, dim in (((6, 37), 1), ((6, 37), 0), ((2, 3, 4, 5), -3), ((1, 300), 1), ((), 0)):
        x = rand(shape, dtype)
        y = ref(fwd, x, dim, False, out=np.empty(shape, dtype))
        g = rand(shape, dtype)
        want = ref(op, g, y, dim, dtype, out=garbage(shape, dtype))
        for p in prov(op):
            assert_close(call(op, p, g, y, dim, dtype, out=garbage(shape, dtype)), want)
            if g.ndim >= 2:
                assert_close(call(op, p, noncontig(g), noncontig(y), dim, dtype,
                                  out=garbage(shape, dtype)), want)
    if dtype is np.float16:  # grads of a half_to_float forward are float32, the result float16
        g32, y32 = rand((4, 9), np.float32), ref(fwd, rand((4, 9), np.float16), 1, True,
                                                 out=np.empty((4, 9), np.float32))
        want = ref(op, g32, y32, 1, np.float16, out=garbage((4, 9), np.float16))
        for p in prov(op):
            assert_close(call(op, p, g32, y32, 1, np.float16, out=garbage((4, 9), np.float16)), want)


# nll loss ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nll_loss_providers(dtype):
    N, C = 37, 11
    x = rand((N, C), dtype)
    t = RNG.integers(0, C, N)
    t[0] = t[5] = -100
    x[0, :] = np.nan                   # sample 0 is ignored: its NaN must not leak
    w = RNG.random(C).astype(dtype)
    for weight, red, self_ in itertools.product((None, w), ("none", "mean", "sum", 1), (x, x[3])):
        tt = t if self_.ndim == 2 else np.array(t[3])
        oshape = (N,) if red == "none" and self_.ndim == 2 else ()
        want_o, want_w = ref("aten::nll_loss_forward", self_, tt, weight, red, -100,
                             output=garbage(oshape, dtype), total_weight=garbage((), dtype))
        assert not np.isnan(want_o).any()
        g = rand(oshape, dtype)
        want_g = ref("aten::nll_loss_backward", g, self_, tt, weight, red, -100, want_w,
                     grad_input=garbage(self_.shape, dtype))
        for p in prov("aten::nll_loss_forward"):
            o, tw = call("aten::nll_loss_forward", p, self_, tt, weight, red, -100,
                         output=garbage(oshape, dtype), total_weight=garbage((), dtype))
            assert_close(o, want_o)
            assert_close(tw, want_w)
            gi = call("aten::nll_loss_backward", p, g, self_, tt, weight, red, -100, tw,
                      grad_input=garbage(self_.shape, dtype))
            assert_close(gi, want_g)
            if self_.ndim == 2:                        # strided self and grad_input
                o, tw = call("aten::nll_loss_forward", p, noncontig(self_), tt, weight, red,
                             -100, output=garbage(oshape, dtype), total_weight=garbage((), dtype))
                assert_close(o, want_o)
                gi = noncontig(garbage(self_.shape, dtype))
                call("aten::nll_loss_backward", p, g, noncontig(self_), tt, weight, red, -100,
                     tw, grad_input=gi)
                assert_close(np.ascontiguousarray(gi), want_g)


# pooling -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_avg_pool_providers(dtype):
    for shape, osz in (((2, 3, 9, 7), (4, 3)), ((1, 1, 5, 5), 1), ((3, 6, 6), (6, 6)),
                       ((2, 2, 4, 5), (7, 9)), ((1, 2, 3, 3), (0, 2))):
        x = rand(shape, dtype)
        oh, ow = (osz, osz) if isinstance(osz, int) else osz
        oshape = shape[:-2] + (oh, ow)
        want = ref("aten::_adaptive_avg_pool2d", x, osz, out=garbage(oshape, dtype))
        g = rand(oshape, dtype)
        want_g = ref("aten::_adaptive_avg_pool2d_backward", g, x, out=garbage(shape, dtype))
        for p in prov("aten::_adaptive_avg_pool2d"):
            assert_close(call("aten::_adaptive_avg_pool2d", p, x, osz, out=garbage(oshape, dtype)), want)
            assert_close(call("aten::_adaptive_avg_pool2d", p, noncontig(x), osz,
                              out=garbage(oshape, dtype)), want)
            assert_close(call("aten::_adaptive_avg_pool2d_backward", p, g, x,
                              out=garbage(shape, dtype)), want_g)


MAXPOOL_CASES = [((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
                 ((2, 3, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), True),
                 ((1, 1, 11, 10), (3, 2), (), (1, 1), (2, 3), True),
                 ((4, 7, 7), 2, 1, 0, 1, False),
                 ((1, 2, 6, 6), (2, 2), (2, 2), (1, 1), (1, 1), True),
                 ((2, 3, 11, 9), (2, 3), (3, 4), (1, 1), (1, 1), False),    # stride > kernel
                 ((1, 1, 7, 7), (3, 3), (5, 5), (1, 0), (2, 1), True)]      # dilation, ceil


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_providers(dtype):
    for shape, k, s, p_, d, ceil in MAXPOOL_CASES:
        x = rand(shape, dtype)
        x.reshape(-1)[[2, 3, 40]] = [np.nan, np.nan, -np.inf]
        args = (k, s, p_, d, ceil)
        kk = (k, k) if isinstance(k, int) else k
        ss = kk if s == () else ((s, s) if isinstance(s, int) else s)
        pp = (p_, p_) if isinstance(p_, int) else p_
        dd = (d, d) if isinstance(d, int) else d
        pool = streamq.kernels.aten_ops.pool_output_size
        oshape = shape[:-2] + (pool(shape[-2], kk[0], ss[0], pp[0], dd[0], ceil),
                               pool(shape[-1], kk[1], ss[1], pp[1], dd[1], ceil))
        wv, wi = ref("aten::max_pool2d_with_indices", x, *args, out=garbage(oshape, dtype),
                     indices=garbage(oshape, np.int64))
        g = rand(oshape, dtype)
        wg = ref("aten::max_pool2d_with_indices_backward", g, x, *args, wi,
                 grad_input=garbage(shape, dtype))
        for pv in prov("aten::max_pool2d_with_indices"):
            v, i = call("aten::max_pool2d_with_indices", pv, noncontig(x), *args,
                        out=garbage(oshape, dtype), indices=garbage(oshape, np.int64))
            assert_close(v, wv)
            assert_close(i, wi)
            gi = call("aten::max_pool2d_with_indices_backward", pv, g, x, *args, i,
                      grad_input=garbage(shape, dtype))
            assert_close(gi, wg)


# ================================================================= torch ====

@needs_torch
def test_against_torch_ops():
    x32 = rand((6, 9, 10, 11), np.float32, 3)
    tx = torch.from_numpy(x32)
    aten = torch.ops.aten
    get = lambda op: K.get(op)  # noqa: E731  best provider in the default order
    checks = [
        (get("aten::_softmax")(x32, 1, False, out=garbage(x32.shape, np.float32)), aten._softmax(tx, 1, False)),
        (get("aten::_log_softmax")(x32, -1, False, out=garbage(x32.shape, np.float32)),
         aten._log_softmax(tx, -1, False)),
        (get("aten::sigmoid")(x32, out=garbage(x32.shape, np.float32)), torch.sigmoid(tx)),
        (get("aten::tanh")(x32, out=garbage(x32.shape, np.float32)), torch.tanh(tx)),
        (get("aten::sum")(x32, (0, 2), True, out=garbage((1, 9, 1, 11), np.float32)),
         torch.sum(tx.double(), (0, 2), True).float()),
        (get("aten::_adaptive_avg_pool2d")(x32, (3, 4), out=garbage((6, 9, 3, 4), np.float32)),
         aten._adaptive_avg_pool2d(tx, [3, 4])),
        (get("aten::argmax")(x32, 2, out=garbage((6, 9, 11), np.int64)), torch.argmax(tx, 2)),
    ]
    for got, want in checks:
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-6, atol=1e-6)
    v, i = get("aten::max_pool2d_with_indices")(x32, [3, 3], [2, 2], [1, 1], [1, 1], True,
                                                 out=garbage((6, 9, 6, 6), np.float32),
                                                 indices=garbage((6, 9, 6, 6), np.int64))
    tv, ti = aten.max_pool2d_with_indices(tx, [3, 3], [2, 2], [1, 1], [1, 1], True)
    np.testing.assert_array_equal(v, tv.numpy())
    np.testing.assert_array_equal(i, ti.numpy())
    logp = aten._log_softmax(torch.from_numpy(x32[0, :, 0, :].T.copy()), 1, False)
    t = np.array([1, 2, 3, -100, 4, 0, 8, 8, 1, 2, 3])
    o, tw = get("aten::nll_loss_forward")(logp.numpy(), t, None, "mean", -100,
                                          output=garbage((), np.float32), total_weight=garbage((), np.float32))
    to, ttw = aten.nll_loss_forward(logp, torch.from_numpy(t), None, 1, -100)
    np.testing.assert_allclose(o, to.numpy(), rtol=1e-6)
    assert tw == ttw.item()
    a = np.array([-7, 7, 5], np.int64)
    np.testing.assert_array_equal(get("aten::div")(a, -2, rounding_mode="floor", out=garbage(3, np.int64)),
                                  torch.div(torch.from_numpy(a), -2, rounding_mode="floor").numpy())


# ================================================================ errors ====

def _o(shape, dtype=np.float32):
    return np.empty(shape, dtype)


ERROR_CASES = [
    ("aten::add", (np.ones(3, np.float32), np.ones(4, np.float32)), dict(out=_o(3)), ValueError, "other"),
    ("aten::add", (np.ones(3, np.float32), 1.0), dict(out=_o(4)), ValueError, "out"),
    ("aten::add", (np.ones(3, np.float32), 1.0), dict(out=_o(3, np.float64)), TypeError, "out"),
    ("aten::add", ([1.0], 1.0), dict(out=_o(1)), TypeError, "self"),
    ("aten::add", (np.ones(3, np.int32), 1), dict(alpha=0.5, out=_o(3, np.int32)), TypeError, "alpha"),
    ("aten::add", (np.ones(3, np.complex64), 1), dict(out=_o(3)), TypeError, "self"),
    ("aten::add", (np.ones(3, np.float32), "x"), dict(out=_o(3)), TypeError, "other"),
    ("aten::sub", (np.ones(3, bool), True), dict(out=_o(3, bool)), TypeError, "bool"),
    ("aten::div", (np.ones(3, np.float32), 2.0), dict(rounding_mode="round", out=_o(3)), ValueError,
     "rounding_mode"),
    ("aten::relu", (np.ones(3, bool),), dict(out=_o(3, bool)), TypeError, "self"),
    ("aten::relu", (np.ones(3, np.float32),), dict(out=_o((1, 3))), ValueError, "out"),
    ("aten::threshold", (np.ones(3, np.float32), "a", 0.0), dict(out=_o(3)), TypeError, "threshold"),
    ("aten::threshold", (np.ones(3, np.float32), 0.0, None), dict(out=_o(3)), TypeError, "value"),
    ("aten::sigmoid_backward", (np.ones(3, np.float32), np.ones(3)), dict(out=_o(3)), TypeError, "output"),
    ("aten::tanh_backward", (np.ones(3, np.int32), np.ones(3, np.int32)), dict(out=_o(3)), TypeError,
     "grad_output"),
    ("aten::threshold_backward", (np.ones(3), np.ones(4), 0.0), dict(out=_o(3, np.float64)), ValueError,
     "self"),
    ("aten::fill_", (np.ones(3, np.int32), 1e20), {}, ValueError, "value"),
    ("aten::fill_", (np.ones(3, np.int32), float("nan")), {}, ValueError, "value"),
    ("aten::fill_", (np.ones(3, np.float32), 1e300), {}, ValueError, "value"),
    ("aten::fill_", (np.ones(3, np.float32), np.ones(2)), {}, ValueError, "value"),
    ("aten::copy_", (np.ones(3, np.float32), np.ones(4)), {}, ValueError, "src"),
    ("aten::copy_", (np.ones(3, np.float32), 1.0), {}, TypeError, "src"),
    ("aten::sum", (np.ones((2, 3)), 2), dict(out=_o(2)), ValueError, "dim"),
    ("aten::sum", (np.ones((2, 3)), (0, -2)), dict(out=_o(3)), ValueError, "dim"),
    ("aten::sum", (np.ones((2, 3)), 1.5), dict(out=_o(2)), TypeError, "dim"),
    ("aten::sum", (np.ones((2, 3)), 1, "yes"), dict(out=_o(2)), TypeError, "keepdim"),
    ("aten::sum", (np.ones((2, 3), np.float32), 1), dict(out=_o(2, np.float64)), TypeError, "out"),
    ("aten::amax", (np.ones((0, 3)), 0), dict(out=_o(3, np.float64)), ValueError, "dim 0"),
    ("aten::argmax", (np.ones(0),), dict(out=_o((), np.int64)), ValueError, "self"),
    ("aten::argmax", (np.ones(3),), dict(out=_o((), np.int32)), TypeError, "out"),
    ("aten::argmax", (np.ones((2, 3)), (0, 1)), dict(out=_o((), np.int64)), TypeError, "dim"),
    ("aten::_softmax", (np.ones((2, 3)), 2, False), dict(out=_o((2, 3), np.float64)), ValueError, "dim"),
    ("aten::_softmax", (np.ones((2, 3)), 1, True), dict(out=_o((2, 3))), ValueError, "half_to_float"),
    ("aten::_softmax", (np.ones((2, 3), np.int64), 1, False), dict(out=_o((2, 3))), TypeError, "self"),
    ("aten::_softmax_backward_data", (np.ones((2, 3)), np.ones((2, 3)), 1, np.float32),
     dict(out=_o((2, 3))), TypeError, "input_dtype"),
    ("aten::_log_softmax_backward_data", (np.ones((2, 3)), np.ones((3, 3)), 1, np.float64),
     dict(out=_o((2, 3), np.float64)), ValueError, "output"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0, 3])),
     dict(output=_o(()), total_weight=_o(())), ValueError, "target"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0, -1])),
     dict(output=_o((), np.float64), total_weight=_o((), np.float64)), ValueError, "target"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0.0, 1.0])),
     dict(output=_o(()), total_weight=_o(())), TypeError, "target"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0, 1]), None, "avg"),
     dict(output=_o(()), total_weight=_o(())), ValueError, "reduction"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0, 1]), np.ones(2)),
     dict(output=_o(()), total_weight=_o(())), ValueError, "weight"),
    ("aten::nll_loss_forward", (np.ones((2, 3)), np.array([0, 1])),
     dict(output=_o((), np.float64), total_weight=_o(2, np.float64)), ValueError, "total_weight"),
    ("aten::nll_loss_forward", (np.ones((2, 3, 4)), np.array([0, 1])),
     dict(output=_o(()), total_weight=_o(())), ValueError, "self"),
    ("aten::nll_loss_backward", (np.ones(()), np.ones((2, 3)), np.array([0, 1]), None, "mean", -100,
                                 np.ones(())), dict(grad_input=_o((2, 3))), TypeError, "grad_input"),
    ("aten::nll_loss_backward", (np.ones(2), np.ones((2, 3)), np.array([0, 1]), None, "mean", -100,
                                 np.ones(())), dict(grad_input=_o((2, 3), np.float64)), ValueError,
     "grad_output"),
    ("aten::_adaptive_avg_pool2d", (np.ones((2, 3)), 2), dict(out=_o((2, 2))), ValueError, "self"),
    ("aten::_adaptive_avg_pool2d", (np.ones((1, 2, 3)), (-1, 2)), dict(out=_o((1, 2, 2))), ValueError,
     "output_size"),
    ("aten::_adaptive_avg_pool2d", (np.ones((1, 2, 0)), (1, 2)), dict(out=_o((1, 1, 2))), ValueError, "self"),
    ("aten::_adaptive_avg_pool2d_backward", (np.ones((2, 2, 2)), np.ones((1, 4, 4))),
     dict(out=_o((1, 4, 4), np.float64)), ValueError, "grad_output"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 0, 1, 0, 1, False),
     dict(out=_o((1, 4, 4)), indices=_o((1, 4, 4), np.int64)), ValueError, "kernel_size"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 2, 0, 0, 1, False),
     dict(out=_o((1, 4, 4)), indices=_o((1, 4, 4), np.int64)), ValueError, "stride"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 2, 2, 2, 1, False),
     dict(out=_o((1, 4, 4)), indices=_o((1, 4, 4), np.int64)), ValueError, "padding"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 2, 2, 0, 0, False),
     dict(out=_o((1, 4, 4)), indices=_o((1, 4, 4), np.int64)), ValueError, "dilation"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 2, 2, 0, 1, 1),
     dict(out=_o((1, 4, 4)), indices=_o((1, 4, 4), np.int64)), TypeError, "ceil_mode"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 2, 2)), 3, 1, 0, 2, False),
     dict(out=_o((1, 1, 1)), indices=_o((1, 1, 1), np.int64)), ValueError, "kernel_size"),
    ("aten::max_pool2d_with_indices", (np.ones((1, 4, 4)), 2, 2, 0, 1, False),
     dict(out=_o((1, 2, 2), np.float64), indices=_o((1, 2, 2), np.int32)), TypeError, "indices"),
    ("aten::max_pool2d_with_indices_backward", (np.ones((1, 2, 2)), np.ones((1, 4, 4)), 2, 2, 0, 1, False,
                                                np.full((1, 2, 2), 16)),
     dict(grad_input=_o((1, 4, 4), np.float64)), ValueError, "indices"),
    ("aten::max_pool2d_with_indices_backward", (np.ones((1, 3, 3)), np.ones((1, 4, 4)), 2, 2, 0, 1, False,
                                                np.zeros((1, 2, 2), np.int64)),
     dict(grad_input=_o((1, 4, 4), np.float64)), ValueError, "grad_output"),
]


@pytest.mark.parametrize("op, args, kwargs, exc, word", ERROR_CASES,
                         ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(ERROR_CASES)])
def test_bad_arguments_raise_naming_the_parameter(op, args, kwargs, exc, word):
    for p in prov(op):
        # outputs hold a pattern; a failed call must leave every byte of them alone
        outs = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
        for k, v in outs.items():
            v[...] = 7
        kw = dict(kwargs, **outs)
        before = {k: v.tobytes() for k, v in outs.items()}
        with pytest.raises(exc, match=word):
            call(op, p, *args, **kw)
        assert all(outs[k].tobytes() == before[k] for k in outs), "a failed call wrote its output"


def test_read_only_out_is_refused():
    out = np.empty(3, np.float32)
    out.flags.writeable = False
    for p in prov("aten::relu"):
        with pytest.raises(ValueError, match="out"):
            call("aten::relu", p, np.ones(3, np.float32), out=out)


def test_every_op_has_reference_and_a_fast_provider():
    for op in streamq.kernels.aten_ops.OPS:
        have = prov(op)
        assert "reference" in have and ("numba" in have), (op, have)
        fn = K.get(op, "numba")
        assert fn.__doc__ and op in fn.__doc__


def test_adaptive_and_max_pool_batch1_strided_odd():
    """Batch 1, odd planes, strided input and output views, NaN and inf, every provider."""
    x = rand((1, 3, 13, 7), np.float32)
    x[0, 0, 0, :2] = [np.nan, np.inf]
    x[0, 2, 5, 5] = -np.inf
    want = ref("aten::_adaptive_avg_pool2d", x, (5, 3), out=garbage((1, 3, 5, 3), np.float32))
    wv, wi = ref("aten::max_pool2d_with_indices", x, 3, 2, 1, 1, True,
                 out=garbage((1, 3, 7, 4), np.float32), indices=garbage((1, 3, 7, 4), np.int64))
    for p in prov("aten::_adaptive_avg_pool2d"):
        out = noncontig(garbage((1, 3, 5, 3), np.float32))
        call("aten::_adaptive_avg_pool2d", p, noncontig(x), (5, 3), out=out)
        assert_close(np.ascontiguousarray(out), want)
        v, i = noncontig(garbage((1, 3, 7, 4), np.float32)), noncontig(garbage((1, 3, 7, 4), np.int64))
        call("aten::max_pool2d_with_indices", p, noncontig(x), 3, 2, 1, 1, True, out=v, indices=i)
        assert_close(np.ascontiguousarray(v), wv)
        assert_close(np.ascontiguousarray(i), wi)


@pytest.mark.parametrize("op", ["aten::_softmax", "aten::_log_softmax"])
def test_softmax_in_place_and_overlapping_out(op):
    # out may be self (the kernels are in-place safe) or overlap it partly (self is copied first).
    x = rand((6, 40), np.float32, 3)
    want = ref(op, x, 1, False, out=garbage(x.shape, np.float32))
    for p in prov(op):
        y = x.copy()
        assert call(op, p, y, 1, False, out=y) is y
        assert_close(y, want)
        buf = np.concatenate([x.reshape(-1), np.zeros(40, np.float32)])
        src, dst = buf[40:].reshape(6, 40), buf[:-40].reshape(6, 40)   # dst lags src by a row
        src[...] = x
        call(op, p, src, 1, False, out=dst)
        assert_close(dst, want)


def test_nll_loss_edge_cases():
    x = rand((4, 5), np.float32)
    for p in prov("aten::nll_loss_forward"):
        o, tw = garbage((), np.float32), garbage((), np.float32)
        call("aten::nll_loss_forward", p, x, np.full(4, 7, np.int32), None, "mean", 7,
             output=o, total_weight=tw)                 # every target ignored: 0 / 0
        assert np.isnan(o) and tw == 0
        t = np.array([4, 0, 2, 0], np.int32)              # int32 targets, numpy reduction code
        call("aten::nll_loss_forward", p, x, t, None, np.int64(2), -100, output=o, total_weight=tw)
        assert o == pytest.approx(-float(x[0, 4] + x[1, 0] + x[2, 2] + x[3, 0]), rel=1e-6)
        with pytest.raises(ValueError, match="target value 5 is out of bounds"):
            call("aten::nll_loss_forward", p, x, np.array([0, 1, 5, -100]), None, "sum", -100,
                 output=o, total_weight=tw)
        with pytest.raises(TypeError, match="ignore_index"):
            call("aten::nll_loss_forward", p, x, t, None, "sum", True, output=o, total_weight=tw)
        with pytest.raises(TypeError, match="self"):
            call("aten::nll_loss_forward", p, list(x), t, None, "sum", -100, output=o,
                 total_weight=tw)
        with pytest.raises(TypeError, match="grad_input"):
            call("aten::nll_loss_backward", p, np.ones((), np.float32), x, t, None, "sum", -100,
                 tw, grad_input=np.empty((4, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_adaptive_avg_pool(dtype):
    # output_size 1 takes a streaming whole-plane mean: ResNet's 2048x7x7 head shape.
    x = rand((2, 300, 7, 7), dtype)
    x[1, 5, 3, 3] = np.nan
    want = x.astype(np.float64).mean(axis=(-2, -1), keepdims=True)
    for p in prov("aten::_adaptive_avg_pool2d"):
        got = call("aten::_adaptive_avg_pool2d", p, x, 1, out=garbage((2, 300, 1, 1), dtype))
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13,
                                   atol=1e-7, equal_nan=True)
        got = call("aten::_adaptive_avg_pool2d", p, x[0], (1, 1), out=garbage((300, 1, 1), dtype))
        np.testing.assert_allclose(got, want[0], rtol=1e-6, atol=1e-7)
