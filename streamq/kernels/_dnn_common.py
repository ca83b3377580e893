"""Shared pieces of the cuDNN-style kernels: argument checks and numba math.

Private to ``pooling`` and ``dnn_ops``. Two halves:

* Python-side validation helpers that raise ``ValueError``/``TypeError``
  naming the offending parameter, so that no numba kernel ever sees an
  array it could index out of bounds.
* ``@njit``-callable scalar math that LLVM can vectorise without fastmath:
  ``vexp`` and ``vexp_le0`` (Cody-Waite range reduction plus a polynomial,
  ~1 ulp in float32 and ~2 ulp in float64; results below the smallest normal
  are flushed to 0; sigmoid, tanh and expm1 live in ``_vmath``) and
  ``K(c, arr)``, which turns a Python constant into ``arr``'s dtype so one
  kernel source serves float32 and float64 without silent promotion to float64.

numba's own ``math.exp`` calls libm per element (no SVML here), which makes
transcendental activations compute-bound; these versions vectorise to AVX2.
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._common import check_array, check_float

__all__ = [
    "JIT", "JIT_PAR", "K", "quiet", "serial_below", "SERIAL_BELOW", "vexp", "vexp_le0",
    "check_array", "check_float", "check_like", "check_scalar", "check_choice",
    "compute_dtype", "real_scalar",
]

# GOMP_SPINCOUNT (libgomp's idle spin, which decides what a parallel launch costs) is set by
# streamq._limits when streamq is imported, before numba can load its OpenMP layer.

# Every numba kernel in these modules uses one of these two option sets.
# error_model="numpy": float division by zero gives inf/nan instead of a
# Python exception check, which otherwise blocks vectorisation.
JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
JIT_PAR = dict(JIT, parallel=True)

#: Work below this many elements runs its parallel kernel on the calling thread
#: alone, as torch does below its 32 Ki grain: waking the pool costs more than the
#: work, and under CPU contention a wake-up can take milliseconds.
SERIAL_BELOW = 1 << 15


class serial_below:
    """``with serial_below(n):`` numba kernels launched in the block use one thread
    when ``n < SERIAL_BELOW`` (numba's thread count is per calling thread; the
    previous count is restored on exit)."""

    __slots__ = ("_small", "_prev")

    def __init__(self, n: int):
        self._small = n < SERIAL_BELOW

    def __enter__(self):
        if self._small:
            self._prev = numba.get_num_threads()
            if self._prev > 1:
                numba.set_num_threads(1)
            else:
                self._small = False
        return self

    def __exit__(self, *exc):
        if self._small:
            numba.set_num_threads(self._prev)
        return False


#: Decorator for the float64 reference kernels: IEEE results (NaN/inf) come out
#: silently, as on the GPU, without numpy RuntimeWarnings for the user's data.
quiet = np.errstate(all="ignore")


# --------------------------------------------------------------------------
# numba helpers
# --------------------------------------------------------------------------

def K(c, like):
    """``c`` converted to the dtype of ``like`` (an array or a float scalar)."""
    return np.asarray(like).dtype.type(c)


@overload(K, inline="always")
def _K_overload(c, like):
    ty = like.dtype if isinstance(like, types.Array) else like

    def impl(c, like):
        return ty(c)
    return impl


@intrinsic
def _fma(typingctx, a, b, c):
    """Exact fused multiply-add ``a*b + c`` (one rounding), any float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return a(a, a, a), codegen


@intrinsic
def _f32_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_F32 = np.float32


@intrinsic
def _sel(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM select: no branch, so loops around it vectorise."""
    if cond != types.boolean or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)
    return a(cond, a, b), codegen


@njit(**JIT)
def _exp32(x):
    # exp(x) = 2**n * exp(r), |r| <= ln2/2; Cephes expf polynomial. Branch-free.
    big = x > _F32(88.3)
    tiny = x < _F32(-87.3)
    x = _sel(big, _F32(88.3), _sel(tiny, _F32(-87.3), x))
    n = np.floor(_fma(x, _F32(1.4426950408889634), _F32(0.5)))
    r = _fma(n, _F32(-0.693359375), x)
    r = _fma(n, _F32(2.12194440e-4), r)
    p = _F32(1.9875691500e-4)
    p = _fma(p, r, _F32(1.3981999507e-3))
    p = _fma(p, r, _F32(8.3334519073e-3))
    p = _fma(p, r, _F32(4.1665795894e-2))
    p = _fma(p, r, _F32(1.6666665459e-1))
    p = _fma(p, r, _F32(5.0000001201e-1))
    p = _fma(p, r * r, r + _F32(1.0))
    e = p * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return _sel(big, _F32(np.inf), _sel(tiny, _F32(0.0), e))


@njit(**JIT)
def _exp64(x):
    big = x > 709.0
    tiny = x < -708.3
    x = _sel(big, 709.0, _sel(tiny, -708.3, x))
    n = np.floor(_fma(x, 1.4426950408889634, 0.5))
    r = _fma(n, -6.93147180369123816490e-01, x)
    r = _fma(n, -1.90821492927058770002e-10, r)
    # Taylor series to degree 13: truncation < 1e-17 relative for |r| <= 0.347.
    p = 1.0 / 6227020800.0
    p = _fma(p, r, 1.0 / 479001600.0)
    p = _fma(p, r, 1.0 / 39916800.0)
    p = _fma(p, r, 1.0 / 3628800.0)
    p = _fma(p, r, 1.0 / 362880.0)
    p = _fma(p, r, 1.0 / 40320.0)
    p = _fma(p, r, 1.0 / 5040.0)
    p = _fma(p, r, 1.0 / 720.0)
    p = _fma(p, r, 1.0 / 120.0)
    p = _fma(p, r, 1.0 / 24.0)
    p = _fma(p, r, 1.0 / 6.0)
    p = _fma(p, r, 0.5)
    p = _fma(p, r * r, r + 1.0)
    e = p * _f64_from_bits(np.int64((np.int64(n) + np.int64(1023)) << np.int64(52)))
    return _sel(big, np.inf, _sel(tiny, 0.0, e))


def vexp(x):
    """Vectorisable exp (float32 or float64 scalar, result in the same type)."""
    return math.exp(x)


@overload(vexp)
def _vexp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@intrinsic
def _pow2_magic32(typingctx, t):
    """2**n from t = n + 127 + 1.5 * 2**23 (rounded in float32): t's low mantissa bits
    hold n + 127, which shifted by 23 is the float32 exponent field of 2**n."""
    if t != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i = builder.bitcast(args[0], ir.IntType(32))
        i = builder.shl(i, ir.Constant(ir.IntType(32), 23))
        return builder.bitcast(i, ir.FloatType())
    return types.float32(types.float32), codegen


@njit(**JIT)
def _exp32_le0(x):
    # exp for x <= 0 (or NaN): x is clamped below at -87.3 (so exp(x) < 1.2e-38 comes
    # out as about 1.2e-38, not 0 or a denormal) and no overflow can occur, which drops
    # vexp's two result selects; n = round(x / ln2) by the 1.5 * 2**23 shifter.
    x = _sel(x < _F32(-87.3), _F32(-87.3), x)
    t = _fma(x, _F32(1.4426950408889634), _F32(12583039.0))    # 1.5 * 2**23 + 127
    n = t - _F32(12583039.0)
    r = _fma(n, _F32(-0.693359375), x)
    r = _fma(n, _F32(2.12194440e-4), r)
    p = _F32(1.9875691500e-4)
    p = _fma(p, r, _F32(1.3981999507e-3))
    p = _fma(p, r, _F32(8.3334519073e-3))
    p = _fma(p, r, _F32(4.1665795894e-2))
    p = _fma(p, r, _F32(1.6666665459e-1))
    p = _fma(p, r, _F32(5.0000001201e-1))
    p = _fma(p, r * r, r + _F32(1.0))
    return p * _pow2_magic32(t)


def vexp_le0(x):
    """Vectorisable exp for x <= 0 or NaN (softmax's x - max): cheaper than ``vexp``;
    float32 results below 1.2e-38 come out as about 1.2e-38 (float64: ``vexp``)."""
    return math.exp(x)


@overload(vexp_le0)
def _vexp_le0_overload(x):
    if x == types.float32:
        return lambda x: _exp32_le0(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


# --------------------------------------------------------------------------
# Python-side validation
# --------------------------------------------------------------------------

def check_like(name: str, arr, ref: np.ndarray, ref_name: str, *,
               writable: bool = False) -> np.ndarray:
    """``arr`` must be an array with ``ref``'s shape and dtype."""
    check_array(name, arr, writable=writable)
    if arr.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {arr.shape}")
    if arr.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {arr.dtype}")
    return arr


def real_scalar(name: str, value) -> float:
    """A finite-or-not real Python/numpy scalar, as float; TypeError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_scalar(name: str, value, *, finite: bool = True, minimum: float | None = None,
                 maximum: float | None = None, min_inclusive: bool = True) -> float:
    """Validate a real scalar parameter and return it as float."""
    v = real_scalar(name, value)
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and (v < minimum or (not min_inclusive and v == minimum)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_choice(name: str, value, choices) -> str:
    """``value`` must be one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype numba kernels compute in: float16 data is processed as float32."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)
