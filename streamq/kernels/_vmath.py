"""Vectorisable sigmoid, tanh and exp/expm1 on x <= 0, for numba kernels.

numba calls libm per element for ``math.exp``/``math.tanh`` (no SVML here),
which keeps transcendental activations compute-bound. These are built from
plain arithmetic, FMAs, selects and one integer shift, so LLVM vectorises a
loop around them (AVX2/AVX-512/SVE) with ``fastmath`` off.

All three rest on one kernel for y <= 0: y = n*ln2 + r (Cody-Waite, |r| <= ln2/2,
n rounded by the 1.5 * 2**k shifter), expm1(r) = r + r*r*q(r) (q a minimax
polynomial, degree 4 in float32 and 9 in float64, relative error < 0.3 ulp),
and 2**n written straight into a float's exponent bits. Only x <= 0 is ever
fed to it (sigmoid and tanh split on the sign), so nothing can overflow:

* ``vsigmoid(x)``: e = exp(-|x|); x >= 0 gives 1/(1+e), x < 0 gives e/(1+e).
  Underflows gradually: e is carried 64 binades high (so 2**n stays normal) and
  the quotient scales it back with one rounding, so sigmoid(-100) is the float32
  denormal it should be.
* ``vtanh(x)``: |tanh x| = -m/(2+m) with m = expm1(-2|x|), sign copied from x;
  expm1 keeps tanh's relative accuracy near 0 (no 1 - e cancellation).
* ``vexpm1_neg(x)``: expm1 for x <= 0 or NaN (elu).

NaN propagates; sigmoid(+-inf) = 1 / 0, tanh(+-inf) = +-1, tanh(-0.0) = -0.0.
Measured against float64 numpy on every float32 (tests/kernels/test_vector_math.py):
see docs/kernels/dnn.md for the max ulp figures.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._dnn_common import JIT, _fma, _pow2_magic32, _sel

__all__ = ["vsigmoid", "vtanh", "vexpm1_neg"]


@intrinsic
def _pow2_magic64(typingctx, t):
    """float64 twin of ``_pow2_magic32``: t's low mantissa bits shifted into the exponent."""
    if t != types.float64:
        return None

    def codegen(context, builder, signature, args):
        i = builder.bitcast(args[0], ir.IntType(64))
        i = builder.shl(i, ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(i, ir.DoubleType())
    return types.float64(types.float64), codegen


_F = np.float32

# float32: 1.5 * 2**23 plus the exponent bias; t = y*log2(e) + that holds n + bias in
# its low mantissa bits. vsigmoid adds 64 to the bias so that 2**n stays normal
# down to n = -150.
_SH32 = _F(12582912.0 + 127.0)
_SH32_LOW = _F(12582912.0 + 127.0 + 64.0)
_TWO_64_32 = _F(2.0 ** 64)
_LOG2E32 = _F(1.4426950408889634)
_LN2_HI32, _LN2_LO32 = _F(0.693359375), _F(-2.12194440e-4)     # hi + lo = ln 2
# expm1(r) ~ r + r*r*q(r): minimax on |r| <= 0.3473 for expm1's relative error (0.29 ulp).
_Q32 = (_F(0.0013882497), _F(0.008366648), _F(0.041667204), _F(0.16666542), _F(0.49999997))

_SH64 = 6755399441055744.0 + 1023.0
_SH64_LOW = 6755399441055744.0 + 1023.0 + 64.0
_LOG2E64 = 1.4426950408889634
_LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_Q64 = (2.5100571070027502e-08, 2.7620329761415886e-07, 2.75572680691036e-06,
        2.4801520787648847e-05, 0.0001984126986330567, 0.0013888888917541478,
        0.008333333333330011, 0.04166666666662347, 0.16666666666666669, 0.5000000000000001)


@njit(**JIT)
def _core32(y, shift):
    """(2**n as built from t, expm1(r)) for y = n*ln2 + r; y already clamped."""
    t = _fma(y, _LOG2E32, shift)
    n = t - shift
    r = _fma(n, -_LN2_HI32, y)
    r = _fma(n, -_LN2_LO32, r)
    r2 = r * r
    # Estrin's scheme: same FMA count as Horner, a shorter dependency chain.
    q = _fma(_fma(_Q32[0], r2, _fma(_Q32[1], r, _Q32[2])), r2, _fma(_Q32[3], r, _Q32[4]))
    return _pow2_magic32(t), _fma(q, r2, r)


@njit(**JIT)
def _core64(y, shift):
    t = _fma(y, _LOG2E64, shift)
    n = t - shift
    r = _fma(n, -_LN2_HI64, y)
    r = _fma(n, -_LN2_LO64, r)
    r2 = r * r
    r4 = r2 * r2
    a = _fma(_fma(_Q64[0], r, _Q64[1]), r2, _fma(_Q64[2], r, _Q64[3]))
    b = _fma(_fma(_Q64[4], r, _Q64[5]), r2, _fma(_Q64[6], r, _Q64[7]))
    q = _fma(_fma(a, r4, b), r2, _fma(_Q64[8], r, _Q64[9]))
    return _pow2_magic64(t), _fma(q, r2, r)


@njit(**JIT)
def _expm1_neg32(x):
    # expm1(-40) is -1 to float32 (and float64) precision; the clamp keeps 2**n normal.
    s, p = _core32(_sel(x < _F(-40.0), _F(-40.0), x), _SH32)
    return _fma(s, p, s - _F(1.0))


@njit(**JIT)
def _expm1_neg64(x):
    s, p = _core64(_sel(x < -40.0, -40.0, x), _SH64)
    return _fma(s, p, s - 1.0)


@njit(**JIT)
def _sigmoid32(x):
    # E = exp(-|x|) * 2**64, so that E is normal wherever exp(-|x|) is not: the
    # quotient cancels the 2**64 and rounds once, also into the denormal range.
    # exp(-104) rounds to 0 in float32; the clamp keeps n + 191 > 0.
    a = -abs(x)
    s, p = _core32(_sel(a < _F(-104.0), _F(-104.0), a), _SH32_LOW)
    e = _fma(s, p, s)
    return _sel(x >= _F(0.0), _TWO_64_32, e) / (_TWO_64_32 + e)


@njit(**JIT)
def _sigmoid64(x):
    a = -abs(x)
    s, p = _core64(_sel(a < -746.0, -746.0, a), _SH64_LOW)
    e = _fma(s, p, s)
    return _sel(x >= 0.0, 2.0 ** 64, e) / (2.0 ** 64 + e)


@njit(**JIT)
def _tanh32(x):
    m = _expm1_neg32(_F(-2.0) * abs(x))
    return math.copysign(m / (_F(-2.0) - m), x)


@njit(**JIT)
def _tanh64(x):
    m = _expm1_neg64(-2.0 * abs(x))
    return math.copysign(m / (-2.0 - m), x)


def _dispatch(f32, f64):
    def typer(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None
    return typer


def vsigmoid(x):
    """1 / (1 + exp(-x)) for a float32/float64 scalar, vectorisable (numba only)."""
    raise NotImplementedError("vsigmoid is only callable from numba code")


def vtanh(x):
    """tanh(x) for a float32/float64 scalar, vectorisable (numba only)."""
    raise NotImplementedError("vtanh is only callable from numba code")


def vexpm1_neg(x):
    """expm1(x) for x <= 0 or NaN (float32/float64), vectorisable (numba only)."""
    raise NotImplementedError("vexpm1_neg is only callable from numba code")


overload(vsigmoid)(_dispatch(_sigmoid32, _sigmoid64))
overload(vtanh)(_dispatch(_tanh32, _tanh64))
overload(vexpm1_neg)(_dispatch(_expm1_neg32, _expm1_neg64))
