"""cuDNN 2-D pooling: ``cudnn.pooling_forward`` and ``cudnn.pooling_backward``.

Layout NCHW. ``x`` is (N, C, H, W); ``y``/``dy`` are (N, C, P, Q) with cuDNN's
output size ``P = (H + 2*ph - R) // sh + 1``, ``Q = (W + 2*pw - S) // sw + 1``
(checked, never inferred). ``window=(R, S)``, ``pad=(ph, pw)`` with
``0 <= pad < window``, ``stride=(sh, sw) >= 1``; the window may not exceed the
padded input. All arrays share one float dtype (float16/32/64); any strides.

Modes (cuDNN's): ``"max"`` (``"max_deterministic"`` is an alias),
``"average_count_include_padding"`` (divide by R*S) and
``"average_count_exclude_padding"`` (divide by the in-bounds count). Padded
positions never win a max and add 0 to an average.

NaN (CUDNN_PROPAGATE_NAN, as PyTorch): a window holding a NaN has max NaN.
Backward max sends each ``dy`` to one input, the *first* maximum in row-major
window order (cuDNN's deterministic max; on NaN, the first NaN); the winner is
recomputed from ``x``, ``y`` is checked for shape but not read. Overlapping
windows accumulate.

Blending: ``y = alpha*pool(x) + beta*y``, ``dx = alpha*grad + beta*dx``; with
``beta == 0`` the output is not read. Providers: ``reference`` (float64 numpy,
rounded once) and ``numba`` (parallel over N*C planes; float accumulation in
float64, float16 computed via float32).
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

from ._common import blend
from ._dnn_common import JIT_PAR, check_array, check_choice, check_float, check_like, \
    check_scalar, compute_dtype
from .registry import register

MODES = ("max", "max_deterministic", "average_count_include_padding",
         "average_count_exclude_padding")
_MAX, _AVG_INCLUDE, _AVG_EXCLUDE = 0, 1, 2
_MODE_ID = {"max": _MAX, "max_deterministic": _MAX,
            "average_count_include_padding": _AVG_INCLUDE,
            "average_count_exclude_padding": _AVG_EXCLUDE}


def _pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of integers, got {value!r}") from None
    out = []
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
            raise TypeError(f"{name} must be a pair of integers, got {value!r}")
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name} must be {what}, got {tuple(value)}")
        out.append(int(v))
    return out[0], out[1]


def output_shape(x_shape, window, pad, stride) -> tuple[int, int, int, int]:
    """cuDNN's pooling output shape (N, C, P, Q) for an NCHW input shape."""
    n, c, h, w = x_shape
    (r, s), (ph, pw), (sh, sw) = window, pad, stride
    return n, c, (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1


def _check(mode, window, pad, stride, alpha, beta, x, outs):
    """Validate everything; return (mode_id, window, pad, stride, alpha, beta)."""
    check_choice("mode", mode, MODES)
    window = _pair("window", window, minimum=1)
    pad = _pair("pad", pad, minimum=0)
    stride = _pair("stride", stride, minimum=1)
    if pad[0] >= window[0] or pad[1] >= window[1]:
        raise ValueError(f"pad must be smaller than window in each dimension, got pad={pad}, "
                         f"window={window}")
    alpha = check_scalar("alpha", alpha)
    beta = check_scalar("beta", beta)
    check_array("x", x, ndim=4)
    check_float("x", x)
    h, w = x.shape[2:]
    if window[0] > h + 2 * pad[0] or window[1] > w + 2 * pad[1]:
        raise ValueError(f"window {window} is larger than the padded input "
                         f"({h + 2 * pad[0]}, {w + 2 * pad[1]})")
    expect = output_shape(x.shape, window, pad, stride)
    for name, arr, ref in outs:
        check_array(name, arr, ndim=4, writable=name in ("y", "dx"))
        want = x.shape if ref == "x" else expect
        if arr.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
        if arr.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {arr.dtype}")
    return _MODE_ID[mode], window, pad, stride, alpha, beta


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

def _window_offsets(x_shape, window, pad, stride):
    """For each window offset (r, s): the input rows/cols it touches and their validity."""
    _, _, h, w = x_shape
    _, _, p, q = output_shape(x_shape, window, pad, stride)
    for r in range(window[0]):
        rows = np.arange(p) * stride[0] - pad[0] + r
        for s in range(window[1]):
            cols = np.arange(q) * stride[1] - pad[1] + s
            valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
            yield np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1), valid


def _avg_divisor(mode_id, x_shape, window, pad, stride):
    """(P, Q) divisor of each window: R*S, or the number of in-bounds elements."""
    if mode_id == _AVG_INCLUDE:
        return float(window[0] * window[1])
    count = 0
    for _, _, valid in _window_offsets(x_shape, window, pad, stride):
        count = count + valid
    return count.astype(np.float64)


def _max_selection(x64, window, pad, stride):
    """Per window: max value and the flat offset r*S+s of the first maximum (or first NaN)."""
    best = sel = None
    for k, (rows, cols, valid) in enumerate(_window_offsets(x64.shape, window, pad, stride)):
        v = x64[:, :, rows[:, None], cols[None, :]]
        if best is None:       # offset (0, 0) may be padding; give it -inf and no claim
            best = np.where(valid, v, -np.inf)
            have = np.broadcast_to(valid, v.shape).copy()
            sel = np.zeros(v.shape, dtype=np.int64)
            continue
        with np.errstate(invalid="ignore"):
            better = valid & (~have | (v > best) | (np.isnan(v) & ~np.isnan(best)))
        best = np.where(better, v, best)
        sel = np.where(better, k, sel)
        have |= valid
    return best, sel


@register("cudnn.pooling_forward", "reference")
def pooling_forward_reference(x, y, *, mode, window, pad=(0, 0), stride=(1, 1),
                              alpha=1.0, beta=0.0):
    """``y = alpha * pool(x) + beta * y`` (NCHW; see the module doc for the contract)."""
    mode_id, window, pad, stride, alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x, [("y", y, "y")])
    x64 = x.astype(np.float64)
    if mode_id == _MAX:
        value, _ = _max_selection(x64, window, pad, stride)
    else:
        total = 0.0
        for rows, cols, valid in _window_offsets(x.shape, window, pad, stride):
            total = total + np.where(valid, x64[:, :, rows[:, None], cols[None, :]], 0.0)
        value = total / _avg_divisor(mode_id, x.shape, window, pad, stride)
    blend(y, value, alpha, beta)


@register("cudnn.pooling_backward", "reference")
def pooling_backward_reference(y, dy, x, dx, *, mode, window, pad=(0, 0), stride=(1, 1),
                               alpha=1.0, beta=0.0):
    """``dx = alpha * dL/dx + beta * dx`` given ``dy = dL/dy`` (y is not read)."""
    mode_id, window, pad, stride, alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x,
        [("y", y, "y"), ("dy", dy, "y"), ("dx", dx, "x")])
    dy64 = dy.astype(np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    if mode_id == _MAX:
        _, sel = _max_selection(x.astype(np.float64), window, pad, stride)
        share = [np.where(sel == k, dy64, 0.0) for k in range(window[0] * window[1])]
    else:
        g = dy64 / _avg_divisor(mode_id, x.shape, window, pad, stride)
        share = [g] * (window[0] * window[1])
    for k, (rows, cols, valid) in enumerate(_window_offsets(x.shape, window, pad, stride)):
        contrib = np.where(valid, share[k], 0.0)
        # For one offset (r, s) distinct windows hit distinct inputs, except
        # clipped padding positions, which contribute 0: np.add.at is exact.
        np.add.at(grad, (slice(None), slice(None), rows[:, None], cols[None, :]), contrib)
    blend(dx, grad, alpha, beta)


# --------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------

@njit(**JIT_PAR)
def _forward_kernel(mode, x, y, r_, s_, ph, pw, sh, sw, alpha, beta):
    n_, c_, h_, w_ = x.shape
    p_, q_ = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for p in range(p_):
            h0 = p * sh - ph
            hs = max(h0, 0)
            he = min(h0 + r_, h_)
            for q in range(q_):
                w0 = q * sw - pw
                ws = max(w0, 0)
                we = min(w0 + s_, w_)
                if mode == 0:
                    m = x[n, c, hs, ws]
                    for h in range(hs, he):
                        for w in range(ws, we):
                            v = x[n, c, h, w]
                            if v > m or (v != v and m == m):
                                m = v
                    val = np.float64(m)
                else:
                    acc = 0.0
                    for h in range(hs, he):
                        for w in range(ws, we):
                            acc += x[n, c, h, w]
                    div = r_ * s_ if mode == 1 else (he - hs) * (we - ws)
                    val = acc / div
                out = alpha * val
                if beta != 0:
                    out += beta * y[n, c, p, q]
                y[n, c, p, q] = out


@njit(**JIT_PAR)
def _backward_kernel(mode, dy, x, dx, r_, s_, ph, pw, sh, sw, alpha, beta):
    n_, c_, h_, w_ = x.shape
    p_, q_ = dy.shape[2], dy.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        acc = np.zeros((h_, w_), dtype=np.float64)
        for p in range(p_):
            h0 = p * sh - ph
            hs = max(h0, 0)
            he = min(h0 + r_, h_)
            for q in range(q_):
                w0 = q * sw - pw
                ws = max(w0, 0)
                we = min(w0 + s_, w_)
                g = np.float64(dy[n, c, p, q])
                if mode == 0:
                    m = x[n, c, hs, ws]
                    bh = hs
                    bw = ws
                    for h in range(hs, he):
                        for w in range(ws, we):
                            v = x[n, c, h, w]
                            if v > m or (v != v and m == m):
                                m = v
                                bh = h
                                bw = w
                    acc[bh, bw] += g
                else:
                    div = r_ * s_ if mode == 1 else (he - hs) * (we - ws)
                    g = g / div
                    for h in range(hs, he):
                        for w in range(ws, we):
                            acc[h, w] += g
        for h in range(h_):
            for w in range(w_):
                out = alpha * acc[h, w]
                if beta != 0:
                    out += beta * dx[n, c, h, w]
                dx[n, c, h, w] = out


def _staged(arr: np.ndarray, beta: float, *, read: bool = True) -> np.ndarray:
    """``arr`` itself when numba can use it, else a float32 staging copy (float16 data)."""
    cdt = compute_dtype(arr.dtype)
    if cdt == arr.dtype:
        return arr
    if read or beta != 0:
        return arr.astype(cdt)
    return np.empty(arr.shape, dtype=cdt)


@register("cudnn.pooling_forward", "numba")
def pooling_forward_numba(x, y, *, mode, window, pad=(0, 0), stride=(1, 1),
                          alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel over the N*C planes."""
    mode_id, (r, s), (ph, pw), (sh, sw), alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x, [("y", y, "y")])
    if y.size == 0:
        return
    ys = _staged(y, beta, read=False)
    _forward_kernel(mode_id, _staged(x, beta), ys, r, s, ph, pw, sh, sw, alpha, beta)
    if ys is not y:
        np.copyto(y, ys, casting="unsafe")


@register("cudnn.pooling_backward", "numba")
def pooling_backward_numba(y, dy, x, dx, *, mode, window, pad=(0, 0), stride=(1, 1),
                           alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel over the N*C planes."""
    mode_id, (r, s), (ph, pw), (sh, sw), alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x,
        [("y", y, "y"), ("dy", dy, "y"), ("dx", dx, "x")])
    if dx.size == 0:
        return
    dxs = _staged(dx, beta, read=False)
    _backward_kernel(mode_id, _staged(dy, beta), _staged(x, beta), dxs,
                     r, s, ph, pw, sh, sw, alpha, beta)
    if dxs is not dx:
        np.copyto(dx, dxs, casting="unsafe")
