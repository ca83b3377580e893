"""The vectorisable sigmoid/tanh/expm1 of ``streamq.kernels._vmath`` and the kernels built on them.

Accuracy is measured against float64 numpy in units of the float32 (or float64)
ulp of the correctly rounded result, denormals included; semantics (NaN, +-inf,
signed zero, underflow) against the values cuDNN and ATen document; alpha/beta
blending of ``cudnn.activation_forward`` against a float64 formula computed here.
"""

import re

import numpy as np
import pytest
import numba
from numba import njit

import streamq.kernels as K
from streamq.kernels._vmath import vexpm1_neg, vsigmoid, vtanh

F32, F64 = np.float32, np.float64
SIGMOID, TANH, EXPM1_NEG = 0, 1, 2


@njit(cache=False, nogil=True, error_model="numpy")
def _apply(op, x, y):
    # One unit-stride loop per function, as the production kernels have them.
    if op == SIGMOID:
        for i in range(x.size):
            y[i] = vsigmoid(x[i])
    elif op == TANH:
        for i in range(x.size):
            y[i] = vtanh(x[i])
    else:
        for i in range(x.size):
            y[i] = vexpm1_neg(x[i])


def run(op, x):
    y = np.empty_like(x)
    _apply(op, x, y)
    return y


def reference(op, x):
    """float64 numpy: sigmoid split on the sign so that exp never overflows."""
    with np.errstate(all="ignore"):         # (signalling NaNs of the bit sweep warn in the cast)
        x = x.astype(F64)
        if op == SIGMOID:
            e = np.exp(-np.abs(x))
            return np.where(x >= 0, 1.0, e) / (1.0 + e)
        if op == TANH:
            return np.tanh(x)
        return np.expm1(x)


def ulps(y, want, dtype):
    """|y - want| in ulps of ``want`` rounded to ``dtype`` (the denormal spacing below the normals)."""
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(F64)
    return np.abs(y.astype(F64) - want) / spacing


def float32_sweep():
    """~2.1M float32 values: a stride through every bit pattern (both signs, all exponents,
    denormals, inf, NaN) plus dense runs where the formulas switch or underflow."""
    bits = np.arange(0, 2**32, 2039, dtype=np.uint64).astype(np.uint32)
    dense = [np.linspace(-1.0, 1.0, 200001), np.linspace(-110.0, -80.0, 100001),
             np.linspace(-20.0, 20.0, 400001), np.linspace(-1e-6, 1e-6, 2001)]
    return np.concatenate([bits.view(F32)] + [d.astype(F32) for d in dense])


# Max error measured on every float32 (see docs/kernels/dnn.md): sigmoid 2.4 ulp,
# tanh 2.5 ulp, expm1 on x <= 0 1.0 ulp. The bounds leave a little room.
MAX_ULP32 = {SIGMOID: 2.5, TANH: 3.0, EXPM1_NEG: 1.5}
MAX_ULP64 = {SIGMOID: 3.0, TANH: 4.0, EXPM1_NEG: 2.0}   # numpy's float64 itself is ~1 ulp


@pytest.mark.parametrize("op", [SIGMOID, TANH, EXPM1_NEG])
def test_float32_accuracy_over_the_whole_range(op):
    x = float32_sweep()
    if op == EXPM1_NEG:
        x = -np.abs(x)
    y, want = run(op, x), reference(op, x)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(y), nan)
    err = ulps(y[~nan], want[~nan], F32)
    assert err.max() <= MAX_ULP32[op], (err.max(), x[~nan][np.argmax(err)])
    assert err.mean() < 0.3      # a correctly rounded function averages 0.25


@pytest.mark.parametrize("op", [SIGMOID, TANH, EXPM1_NEG])
def test_float64_accuracy(op):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(0, 2**64, 300000, dtype=np.uint64).view(F64),
                        rng.uniform(-760, 760, 300000), rng.uniform(-2, 2, 300000),
                        rng.uniform(-1e-9, 1e-9, 1000)])
    if op == EXPM1_NEG:
        x = -np.abs(x)
    y, want = run(op, x), reference(op, x)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(y), nan)
    err = ulps(y[~nan], want[~nan], F64)
    assert err.max() <= MAX_ULP64[op], (err.max(), x[~nan][np.argmax(err)])


@pytest.mark.parametrize("dtype", [F32, F64])
def test_special_values(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    big = np.finfo(dtype).max
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, big, -big],
                 dtype)
    s, t = run(SIGMOID, x), run(TANH, x)
    assert np.isnan(s[:2]).all() and np.isnan(t[:2]).all()
    np.testing.assert_array_equal(s[2:], [1, 0, 0.5, 0.5, 0.5, 0.5, 1, 0])
    np.testing.assert_array_equal(t[2:], [1, -1, 0, 0, tiny, -tiny, 1, -1])
    np.testing.assert_array_equal(np.signbit(t[4:8]), [False, True, False, True])
    m = run(EXPM1_NEG, np.array([-np.inf, -big, -0.0, -tiny, np.nan], dtype))
    np.testing.assert_array_equal(m[:4], [-1, -1, 0.0, -tiny])
    assert np.isnan(m[4])


def test_sigmoid_underflows_gradually():
    # sigmoid(x) ~ exp(x) for x << 0: float32 denormals from x = -87.3 down to -103.3,
    # then 0; each result is the float64 value rounded, give or take an ulp of the denormal.
    x = np.array([-87.0, -88.0, -90.0, -95.0, -100.0, -103.0, -103.9, -104.0, -120.0, -1e30],
                 F32)
    y = run(SIGMOID, x)
    want = np.exp(x.astype(F64))
    assert np.all(np.abs(y - want) <= np.spacing(want.astype(F32)) * 1.01)
    assert y[4] > 0 and y[-3:].tolist() == [0.0, 0.0, 0.0]
    x64 = np.array([-700.0, -708.0, -720.0, -740.0, -745.0, -800.0])
    y64 = run(SIGMOID, x64)
    assert np.all(np.abs(y64 - np.exp(x64)) <= np.spacing(np.exp(x64)) * 2)


def test_tanh_keeps_relative_accuracy_near_zero():
    x = np.array([1e-30, -1e-20, 3e-8, -1e-4, 1e-3, 0.01, -0.1], F32)
    want = np.tanh(x.astype(F64))
    assert ulps(run(TANH, x), want, F32).max() <= 1.5     # no 1 - exp(-2|x|) cancellation


def test_loops_are_vectorised():
    """The helpers compile to packed AVX/AVX-512 arithmetic, with no libm call in the loop."""
    import llvmlite.binding as llvm
    import platform
    if platform.machine() not in ("x86_64", "AMD64") or not llvm.get_host_cpu_features().get("avx2"):
        pytest.skip("the packed-register check is written for x86-64 with AVX2")
    for dtype, suffix in ((F32, "ps"), (F64, "pd")):
        x = np.linspace(-5, 5, 64).astype(dtype)
        _apply(SIGMOID, x, np.empty_like(x))
        sig = next(s for s in _apply.signatures if s[1].dtype == numba.from_dtype(dtype))
        asm = _apply.inspect_asm(sig)
        packed_fma = re.findall(rf"vfn?m(?:add|sub)\d+{suffix}\s+[^\n]*%[yz]mm", asm)
        packed_div = re.findall(rf"vdiv{suffix}\s+[^\n]*%[yz]mm", asm)
        assert len(packed_fma) >= 20 and len(packed_div) >= 2, (dtype, len(packed_fma), len(packed_div))
        assert not re.search(r"\b(?:expf?|tanhf?|expm1f?)\b", asm)


# ------------------------------------------------------- through the kernels --

def specials_and_randoms(dtype, n=50000):
    """Above the ATen numba provider's size threshold; specials at the front."""
    x = (np.random.default_rng(5).standard_normal(n) * 8).astype(dtype)
    x[:12] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 1e30, -1e30, 20.0]
    return x


def activation64(mode, x, coef):
    """Independent float64 formulas for the four transcendental cuDNN modes (swish's
    coef * x rounded to x's dtype first, as the kernel computes in that dtype)."""
    z = (x * x.dtype.type(coef)).astype(F64)
    x = x.astype(F64)
    with np.errstate(all="ignore"):
        if mode == "sigmoid":
            return reference(SIGMOID, x)
        if mode == "tanh":
            return np.tanh(x)
        if mode == "elu":
            return np.where(x > 0, x, coef * np.expm1(np.minimum(x, 0.0)))
        return x * reference(SIGMOID, z)       # swish; -inf * sigmoid(-inf) is NaN


def assert_close_ulps(y, want, dtype, max_ulp):
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(y), nan)
    inf = np.isinf(want)
    assert np.array_equal(y[inf], want[inf])
    fin = ~nan & ~inf
    err = ulps(y[fin], want[fin], dtype)
    assert err.max() <= max_ulp, (err.max(), np.argmax(err))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("mode", ["sigmoid", "tanh", "elu", "swish"])
def test_cudnn_activation_forward_values_and_blend(mode, dtype):
    fwd = K.get("cudnn.activation_forward", "numba")
    x = specials_and_randoms(dtype)
    coef = 1.5
    f = activation64(mode, x, coef)
    y = np.full_like(x, np.nan)                       # beta == 0: y is never read
    fwd(x, y, mode=mode, coef=coef)
    assert_close_ulps(y, f, dtype, 4)
    y0 = np.random.default_rng(6).standard_normal(x.size).astype(dtype)
    y = y0.copy()
    fwd(x, y, mode=mode, coef=coef, alpha=2.0, beta=0.5)
    with np.errstate(invalid="ignore"):
        want = 2.0 * f + 0.5 * y0.astype(F64)
    # alpha * f + beta * y rounds twice more than f alone; near cancellation the
    # error is relative to the terms, not to their sum.
    scale = np.abs(2.0 * f) + np.abs(0.5 * y0)
    ok = np.isfinite(want)
    assert np.all(np.abs(y[ok] - want[ok]) <= 8 * np.finfo(dtype).eps * scale[ok])
    assert np.array_equal(np.isnan(y), np.isnan(want))


def test_cudnn_activation_forward_documented_limits():
    fwd = K.get("cudnn.activation_forward", "numba")
    x = np.array([np.inf, -np.inf, np.nan, -0.0], F32)
    y = np.empty_like(x)
    fwd(x, y, mode="sigmoid")
    np.testing.assert_array_equal(y, [1, 0, np.nan, 0.5])
    fwd(x, y, mode="tanh")
    np.testing.assert_array_equal(y, [1, -1, np.nan, -0.0])
    assert np.signbit(y[3])
    fwd(x, y, mode="elu", coef=0.7)
    np.testing.assert_array_equal(y, [np.inf, F32(-0.7), np.nan, -0.0])


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_aten_sigmoid_tanh_numba_provider(op, dtype):
    fn = K.get(f"aten::{op}", "numba")
    x = specials_and_randoms(dtype)
    out = np.empty_like(x)
    fn(x, out=out)
    want = reference(SIGMOID, x) if op == "sigmoid" else np.tanh(x.astype(F64))
    assert_close_ulps(out, want, dtype, MAX_ULP32[SIGMOID if op == "sigmoid" else TANH]
                      if dtype == F32 else 4)
    np.testing.assert_array_equal(out[1:3], [1, 0] if op == "sigmoid" else [1, -1])
