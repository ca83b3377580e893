"""cuDNN softmax forward/backward (``cudnn.softmax_forward``/``_backward``).

``x``/``y``/``dy``/``dx`` are (N, C, *spatial) (NCHW for 4-D), one float dtype,
any strides. ``mode="instance"`` normalises over C*H*W for each n;
``mode="channel"`` over C for each (n, h, w). ``algorithm``:

* ``"accurate"``: ``y = exp(x - max) / sum(exp(x - max))``.
* ``"fast"``: cuDNN skips the max subtraction (and may overflow); here it is
  computed exactly like ``"accurate"`` -- same values in exact arithmetic,
  never overflows.
* ``"log"``: ``y = x - max - log(sum(exp(x - max)))``.

Backward takes the forward output ``y``: ``dx = y * (dy - sum(dy * y))``, or
for ``"log"`` ``dx = dy - exp(y) * sum(dy)`` (sums over the same axes).
NaN anywhere in a softmax group makes that whole group NaN. Blending
``y = alpha*softmax(x) + beta*y`` (``beta == 0``: y not read). ``y`` may be
``x`` and ``dx`` may be ``dy`` (in place, as cuDNN allows).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._common import FLOAT_DTYPES, blend
from ._dnn_common import _fma, _sel, K, quiet, JIT, JIT_PAR, check_array, check_choice, \
    check_float, check_like, check_scalar, compute_dtype, vexp, vexp_le0
from .registry import register

ALGORITHMS = ("fast", "accurate", "log")
MODES = ("instance", "channel")
_SERIAL_BELOW = 1 << 15     # elements; smaller calls skip the thread-pool launch
_JIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check(algorithm, mode, alpha, beta, arrays):
    """Validate everything; return (alpha, beta) as floats. The last array is the output.

    The common call (string choices, float scalars, arrays of one float dtype
    and shape) passes a few cheap tests; anything else takes the full checks,
    which name the offending argument.
    """
    ref = arrays[0][1]
    if (type(algorithm) is str and algorithm in ALGORITHMS and type(mode) is str
            and mode in MODES and type(alpha) is float and type(beta) is float
            and math.isfinite(alpha) and math.isfinite(beta) and type(ref) is np.ndarray
            and ref.ndim >= 2 and ref.dtype in FLOAT_DTYPES):
        for _, arr in arrays[1:]:
            if not (type(arr) is np.ndarray and arr.shape == ref.shape and arr.dtype == ref.dtype):
                break
        else:
            if arrays[-1][1].flags.writeable:
                return alpha, beta
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("mode", mode, MODES)
    alpha, beta = check_scalar("alpha", alpha), check_scalar("beta", beta)
    ref_name, ref = arrays[0]
    check_array(ref_name, ref)
    check_float(ref_name, ref)
    if ref.ndim < 2:
        raise ValueError(f"{ref_name} must have at least 2 dimensions (N, C, ...), "
                         f"got shape {ref.shape}")
    for name, arr in arrays[1:]:
        check_like(name, arr, ref, ref_name, writable=name in ("y", "dx"))
    return alpha, beta


def _axes(mode, a):
    return tuple(range(1, a.ndim)) if mode == "instance" else (1,)


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

@register("cudnn.softmax_forward", "reference")
@quiet
def softmax_forward_reference(x, y, *, algorithm, mode, alpha=1.0, beta=0.0):
    """``y = alpha * softmax(x) + beta * y`` (or log-softmax), over ``mode``'s axes."""
    alpha, beta = _check(algorithm, mode, alpha, beta, [("x", x), ("y", y)])
    x64 = x.astype(np.float64)
    axes = _axes(mode, x)
    shifted = x64 - x64.max(axis=axes, keepdims=True)
    total = np.exp(shifted).sum(axis=axes, keepdims=True)
    value = shifted - np.log(total) if algorithm == "log" else np.exp(shifted) / total
    blend(y, value, alpha, beta)


@register("cudnn.softmax_backward", "reference")
@quiet
def softmax_backward_reference(y, dy, dx, *, algorithm, mode, alpha=1.0, beta=0.0):
    """``dx = alpha * dL/dx + beta * dx`` from the forward output ``y`` and ``dy``."""
    alpha, beta = _check(algorithm, mode, alpha, beta, [("y", y), ("dy", dy), ("dx", dx)])
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    axes = _axes(mode, y)
    if algorithm == "log":
        value = dy64 - np.exp(y64) * dy64.sum(axis=axes, keepdims=True)
    else:
        value = y64 * (dy64 - (dy64 * y64).sum(axis=axes, keepdims=True))
    blend(dx, value, alpha, beta)


# --------------------------------------------------------------------------
# numba: rows (reduction over a contiguous run) and channel blocks (M > 1)
# --------------------------------------------------------------------------

@njit(**JIT)
def _max8(v):
    """Max of a non-empty 1-D array over 8 lanes (select chains that vectorise).

    NaN is not sticky here: a group holding a NaN gets a NaN sum, which makes
    every output of the group NaN whatever the max (an all-NaN group keeps NaN).
    """
    n8 = v.size - v.size % 8
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = v[0]
    for i in range(0, n8, 8):
        e0, e1, e2, e3 = v[i], v[i + 1], v[i + 2], v[i + 3]
        e4, e5, e6, e7 = v[i + 4], v[i + 5], v[i + 6], v[i + 7]
        m0 = _sel(e0 > m0, e0, m0)
        m1 = _sel(e1 > m1, e1, m1)
        m2 = _sel(e2 > m2, e2, m2)
        m3 = _sel(e3 > m3, e3, m3)
        m4 = _sel(e4 > m4, e4, m4)
        m5 = _sel(e5 > m5, e5, m5)
        m6 = _sel(e6 > m6, e6, m6)
        m7 = _sel(e7 > m7, e7, m7)
    for i in range(n8, v.size):
        e = v[i]
        m0 = _sel(e > m0, e, m0)
    out = m0
    for m in (m1, m2, m3, m4, m5, m6, m7):
        out = _sel(m > out, m, out)
    return out


# Sums may be reassociated (fastmath "reassoc" + "contract" only: NaN and inf still
# propagate), so LLVM runs these float64 reductions several lanes wide.
_RJIT = dict(JIT, fastmath={"reassoc", "contract"})


@njit(**_RJIT)
def _sum64(v):
    """sum(v) accumulated in float64."""
    s = 0.0
    for i in range(v.size):
        s += np.float64(v[i])
    return s


@njit(**_RJIT)
def _dot64(u, v):
    """sum(u * v) accumulated in float64."""
    s = 0.0
    for i in range(u.size):
        s += np.float64(u[i]) * np.float64(v[i])
    return s


@njit(**JIT)
def _row_forward(xr, yr, buf, log, alpha, beta):
    """One softmax group; ``buf`` is scratch of the row's size. yr may be xr (in place):
    every pass reads x[i] before y[i] is written, and the exps go to buf unless y can
    hold them (not log, beta == 0)."""
    mx = _max8(xr)
    b = yr if (beta == 0 and not log) else buf
    for i in range(xr.size):
        b[i] = vexp_le0(xr[i] - mx)
    total = _sum64(b)
    if log:
        shift = mx + math.log(total)
        for i in range(xr.size):
            v = alpha * (xr[i] - shift)
            if beta != 0:
                v += beta * yr[i]
            yr[i] = v
    else:
        scale = alpha / total
        for i in range(xr.size):
            v = scale * b[i]
            if beta != 0:
                v += beta * yr[i]
            yr[i] = v


@njit(**JIT)
def _row_backward(yr, gr, dxr, log, alpha, beta):
    """One group's gradient; dxr may be gr (in place: the sum is taken first)."""
    if log and beta == 0:
        # In the data dtype: dy - e*sum as fma(-e, sh, dy) - e*sl with the float64 sum
        # split in two (sh + sl), so a difference near zero keeps its precision.
        total = _sum64(gr)
        th = K(total, dxr)
        tl, a = K(total - np.float64(th), dxr), K(alpha, dxr)
        for i in range(yr.size):
            e = vexp(yr[i])
            dxr[i] = a * (_fma(-e, th, gr[i]) - e * tl)
    elif log:
        total = _sum64(gr)
        for i in range(yr.size):
            dxr[i] = alpha * (gr[i] - vexp(yr[i]) * total) + beta * dxr[i]
    elif beta == 0:
        # In the data dtype (twice the lanes of float64) with the float64 sum split into
        # two parts, th + tl: g - th is exact when g is near the sum, so the difference
        # keeps its precision; <= ~2 ulp from the float64 result.
        total = _dot64(gr, yr)
        th = K(total, dxr)
        tl, a = K(total - np.float64(th), dxr), K(alpha, dxr)
        for i in range(yr.size):
            dxr[i] = a * (yr[i] * ((gr[i] - th) - tl))
    else:
        total = _dot64(gr, yr)
        for i in range(yr.size):
            dxr[i] = alpha * (yr[i] * (gr[i] - total)) + beta * dxr[i]


@njit(**JIT_PAR)
def _rows_forward_par(x2, y2, log, alpha, beta):
    for r in prange(x2.shape[0]):
        _row_forward(x2[r], y2[r], np.empty(x2.shape[1], x2.dtype), log, alpha, beta)


@njit(**JIT)
def _rows_forward_serial(x2, y2, log, alpha, beta):
    buf = np.empty(x2.shape[1], x2.dtype)
    for r in range(x2.shape[0]):
        _row_forward(x2[r], y2[r], buf, log, alpha, beta)


@njit(**JIT_PAR)
def _rows_backward_par(y2, g2, dx2, log, alpha, beta):
    for r in prange(y2.shape[0]):
        _row_backward(y2[r], g2[r], dx2[r], log, alpha, beta)


@njit(**JIT)
def _rows_backward_serial(y2, g2, dx2, log, alpha, beta):
    for r in range(y2.shape[0]):
        _row_backward(y2[r], g2[r], dx2[r], log, alpha, beta)


_MB = 256   # spatial positions per task in channel mode


@njit(**JIT_PAR)
def _channel_forward(x3, y3, log, alpha, beta):
    """Softmax over axis 1 of (N, C, M), vectorised along M in blocks of _MB."""
    n_, c_, m_ = x3.shape
    nb = (m_ + _MB - 1) // _MB
    for t in prange(n_ * nb):
        n = t // nb
        m0 = (t % nb) * _MB
        m1 = min(m0 + _MB, m_)
        mx = x3[n, 0, m0:m1].copy()
        for c in range(1, c_):
            for i in range(m1 - m0):
                e = x3[n, c, m0 + i]
                mx[i] = e if (e > mx[i] or e != e) else mx[i]
        total = np.zeros(m1 - m0)
        for c in range(c_):
            for i in range(m1 - m0):
                total[i] += vexp(x3[n, c, m0 + i] - mx[i])
        for i in range(m1 - m0):
            total[i] = math.log(total[i]) if log else 1.0 / total[i]
        for c in range(c_):
            for i in range(m1 - m0):
                d = x3[n, c, m0 + i] - mx[i]
                v = alpha * (d - total[i]) if log else alpha * (vexp(d) * total[i])
                if beta != 0:
                    v += beta * y3[n, c, m0 + i]
                y3[n, c, m0 + i] = v


@njit(**JIT_PAR)
def _channel_backward(y3, g3, dx3, log, alpha, beta):
    n_, c_, m_ = y3.shape
    nb = (m_ + _MB - 1) // _MB
    for t in prange(n_ * nb):
        n = t // nb
        m0 = (t % nb) * _MB
        m1 = min(m0 + _MB, m_)
        total = np.zeros(m1 - m0)
        for c in range(c_):
            for i in range(m1 - m0):
                g = np.float64(g3[n, c, m0 + i])
                total[i] += g if log else g * y3[n, c, m0 + i]
        for c in range(c_):
            for i in range(m1 - m0):
                yv = y3[n, c, m0 + i]
                g = g3[n, c, m0 + i]
                v = alpha * (g - vexp(yv) * total[i]) if log else alpha * (yv * (g - total[i]))
                if beta != 0:
                    v += beta * dx3[n, c, m0 + i]
                dx3[n, c, m0 + i] = v


def _view3(mode, a, *, read=True):
    """(staged, view): instance -> (N, K) rows; channel -> (N, C, M) (rows if M == 1)."""
    rows = mode == "instance" or a.size == a.shape[0] * a.shape[1]
    shape = (a.shape[0], -1) if rows else (a.shape[0], a.shape[1], -1)
    if a.dtype in _JIT_DTYPES:
        if a.flags.c_contiguous:
            return a, a.reshape(shape)
        try:
            return a, np.reshape(a, shape, copy=False)
        except ValueError:
            pass
    cdt = compute_dtype(a.dtype)
    staged = np.ascontiguousarray(a, dtype=cdt) if read else np.empty(a.shape, dtype=cdt)
    return staged, staged.reshape(shape)


def _copy_back(out, staged):
    """Round a staged result into the caller's output (float16 may overflow to inf)."""
    if staged is not out:
        with np.errstate(over="ignore"):
            np.copyto(out, staged, casting="unsafe")


@register("cudnn.softmax_forward", "numba")
def softmax_forward_numba(x, y, *, algorithm, mode, alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel over softmax groups. May run in place."""
    alpha, beta = _check(algorithm, mode, alpha, beta, [("x", x), ("y", y)])
    if y.size == 0:
        return
    _, xv = _view3(mode, x)
    ys, yv = _view3(mode, y, read=beta != 0)
    log = algorithm == "log"
    if xv.ndim == 2:
        kernel = _rows_forward_serial if x.size < _SERIAL_BELOW else _rows_forward_par
        kernel(xv, yv, log, alpha, beta)
    else:
        _channel_forward(xv, yv, log, alpha, beta)
    _copy_back(y, ys)


@register("cudnn.softmax_backward", "numba")
def softmax_backward_numba(y, dy, dx, *, algorithm, mode, alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel over softmax groups. dx may be dy."""
    alpha, beta = _check(algorithm, mode, alpha, beta, [("y", y), ("dy", dy), ("dx", dx)])
    if dx.size == 0:
        return
    _, yv = _view3(mode, y)
    _, gv = _view3(mode, dy)
    dxs, dxv = _view3(mode, dx, read=beta != 0)
    log = algorithm == "log"
    if yv.ndim == 2:
        kernel = _rows_backward_serial if y.size < _SERIAL_BELOW else _rows_backward_par
        kernel(yv, gv, dxv, log, alpha, beta)
    else:
        _channel_backward(yv, gv, dxv, log, alpha, beta)
    _copy_back(dx, dxs)
