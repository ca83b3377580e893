"""cuDNN 2-D pooling: ``cudnn.pooling_forward`` and ``cudnn.pooling_backward``.

Layout NCHW. ``x`` is (N, C, H, W); ``y``/``dy`` are (N, C, P, Q) with cuDNN's
output size ``P = (H + 2*ph - R) // sh + 1``, ``Q = (W + 2*pw - S) // sw + 1``
(checked, never inferred). ``window=(R, S) >= 1``, ``pad=(ph, pw) >= 0`` (any
size, as cuDNN: padding may exceed the window), ``stride=(sh, sw) >= 1`` (may
exceed the window); the window may not exceed the padded input (P, Q >= 1).
All arrays share one float dtype (float16/32/64); any strides.

Modes (cuDNN's): ``"max"`` (``"max_deterministic"`` is an alias),
``"average_count_include_padding"`` (divide by R*S) and
``"average_count_exclude_padding"`` (divide by the in-bounds count). Padded
positions never win a max and add 0 to an average. A window lying wholly in
the padding (possible when pad >= window) has max = the dtype's lowest finite
value (cuDNN's -FLT_MAX), average 0 in both modes, and passes no gradient.

NaN (CUDNN_PROPAGATE_NAN, as PyTorch): a window holding a NaN has max NaN.
Backward max sends each ``dy`` to one input, the *first* maximum in row-major
window order (cuDNN's deterministic max; on NaN, the first NaN); the winner is
recomputed from ``x``, ``y`` is checked for shape but not read. Overlapping
windows accumulate.

Blending: ``y = alpha*pool(x) + beta*y``, ``dx = alpha*grad + beta*dx``; with
``beta == 0`` the output is not read. Providers: ``reference`` (float64 numpy,
rounded once) and ``numba`` (separable row/column passes per plane, parallel
over N*C planes; sums in float64, float16 computed via float32; the backward
max recomputes the winners in one fused separable argmax pass). Full
contract: ``docs/kernels/pooling.md``.
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

from ._common import blend
from ._dnn_common import _sel, K, quiet, JIT, JIT_PAR, check_array, check_choice, check_float, \
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
    """Per window: max value, flat offset r*S+s of the first maximum (or first NaN), and
    whether the window holds any input element at all."""
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
    return best, sel, have


@register("cudnn.pooling_forward", "reference")
@quiet
def pooling_forward_reference(x, y, *, mode, window, pad=(0, 0), stride=(1, 1),
                              alpha=1.0, beta=0.0):
    """``y = alpha * pool(x) + beta * y`` (NCHW; see the module doc for the contract)."""
    mode_id, window, pad, stride, alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x, [("y", y, "y")])
    x64 = x.astype(np.float64)
    if mode_id == _MAX:
        value, _, have = _max_selection(x64, window, pad, stride)
        value = np.where(have, value, np.finfo(x.dtype).min)   # all-padding windows
        with np.errstate(over="ignore"):                           # alpha * lowest: -inf
            blend(y, value, alpha, beta)
        return
    else:
        total = 0.0
        for rows, cols, valid in _window_offsets(x.shape, window, pad, stride):
            total = total + np.where(valid, x64[:, :, rows[:, None], cols[None, :]], 0.0)
        div = np.broadcast_to(_avg_divisor(mode_id, x.shape, window, pad, stride), y.shape)
        value = np.divide(total, div, out=np.zeros(y.shape), where=div > 0)
    blend(y, value, alpha, beta)


@register("cudnn.pooling_backward", "reference")
@quiet
def pooling_backward_reference(y, dy, x, dx, *, mode, window, pad=(0, 0), stride=(1, 1),
                               alpha=1.0, beta=0.0):
    """``dx = alpha * dL/dx + beta * dx`` given ``dy = dL/dy`` (y is not read)."""
    mode_id, window, pad, stride, alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x,
        [("y", y, "y"), ("dy", dy, "y"), ("dx", dx, "x")])
    dy64 = dy.astype(np.float64)
    grad = np.zeros(x.shape, dtype=np.float64)
    if mode_id == _MAX:
        _, sel, _ = _max_selection(x.astype(np.float64), window, pad, stride)
        share = [np.where(sel == k, dy64, 0.0) for k in range(window[0] * window[1])]
    else:
        div = np.broadcast_to(_avg_divisor(mode_id, x.shape, window, pad, stride), dy.shape)
        g = np.divide(dy64, div, out=np.zeros(dy.shape), where=div > 0)
        share = [g] * (window[0] * window[1])
    for k, (rows, cols, valid) in enumerate(_window_offsets(x.shape, window, pad, stride)):
        contrib = np.where(valid, share[k], 0.0)
        # For one offset (r, s) distinct windows hit distinct inputs, except
        # clipped padding positions, which contribute 0: np.add.at is exact.
        np.add.at(grad, (slice(None), slice(None), rows[:, None], cols[None, :]), contrib)
    blend(dx, grad, alpha, beta)


# --------------------------------------------------------------------------
# numba: separable passes per (n, c) plane, parallel over the N*C planes
# --------------------------------------------------------------------------
# A window is a rectangle, so its max (or sum) is the max (sum) over its rows
# of the per-row maxima (sums) over its columns. The row pass reduces each
# input row at stride 1 over the window columns (unit-stride, branch-free
# loops that vectorise) and keeps every sw-th window start in tmp[h, q]; the
# column pass reduces tmp's rows over each output row's window rows,
# vectorised along q. Max comparisons run in the data dtype, sums in float64
# (the row pass sums at most S terms in the data dtype first). The backward
# max recomputes each window's winner -- its first maximum (or first NaN) in
# row-major order -- by a fused vertical-then-horizontal argmax per output row
# (``_plane_backward_max``).

@njit(**JIT)
def _op(mode, m, v):
    """One reduction step: NaN-sticky max, or sum."""
    if mode == _MAX:
        return v if (v > m) | (v != v) else m
    return m + v


@njit(**JIT)
def _max_terms(dst, a, b, c, count):
    """dst[k] = NaN-sticky max of a[k], b[k] (count >= 2), c[k] (count >= 3)."""
    if count == 1:
        for k in range(dst.size):
            dst[k] = a[k]
    elif count == 2:
        for k in range(dst.size):
            u, v = a[k], b[k]
            dst[k] = v if (v > u) | (v != v) else u
    else:
        for k in range(dst.size):
            u, v, w = a[k], b[k], c[k]
            u = v if (v > u) | (v != v) else u
            dst[k] = w if (w > u) | (w != w) else u


@njit(**JIT)
def _sum_terms(dst, a, b, c, count):
    """dst[k] = a[k] + b[k] (count >= 2) + c[k] (count >= 3)."""
    if count == 1:
        for k in range(dst.size):
            dst[k] = a[k]
    elif count == 2:
        for k in range(dst.size):
            dst[k] = a[k] + b[k]
    else:
        for k in range(dst.size):
            dst[k] = a[k] + b[k] + c[k]


@njit(**JIT)
def _reduce_window(mode, src, start, step, count, dst):
    """dst[k] = op over i < count of src[start + i*step + k] (count >= 1).

    Up to three terms are combined without reading dst, in loops free of
    branches on ``mode`` (so LLVM vectorises them); wider windows add a
    read-modify-write loop per extra term.
    """
    n = dst.size
    a = src[start:start + n]
    b = src[start + step:start + step + n] if count >= 2 else a
    c = src[start + 2 * step:start + 2 * step + n] if count >= 3 else a
    if mode == _MAX:
        _max_terms(dst, a, b, c, min(count, 3))
        for i in range(3, count):
            e = src[start + i * step:start + i * step + n]
            for k in range(n):
                u, v = dst[k], e[k]
                dst[k] = v if (v > u) | (v != v) else u
    else:
        _sum_terms(dst, a, b, c, min(count, 3))
        for i in range(3, count):
            e = src[start + i * step:start + i * step + n]
            for k in range(n):
                dst[k] += e[k]


@njit(**JIT)
def _row_pass(xp, tmp, full, mode, s_, pw, sw):
    """tmp[h, q] = max (or sum) of row h over window q's in-bounds columns (-inf / 0 if none)."""
    h_, w_ = xp.shape
    q_ = tmp.shape[1]
    nj = full.size                 # window starts at stride 1: window q starts at j = q * sw
    init = -np.inf if mode == _MAX else 0.0
    jlo = min(pw, nj)              # [jlo, jhi): windows whose S columns all lie in the row
    jhi = max(jlo, min(nj, w_ + pw - s_ + 1))
    for h in range(h_):
        row = xp[h]
        if jhi > jlo:
            _reduce_window(mode, row, jlo - pw, 1, s_, full[jlo:jhi])
        for j in range(nj - (jhi - jlo)):     # windows clipped by the padding
            j = j if j < jlo else j + (jhi - jlo)
            m = full.dtype.type(init)
            for c in range(max(j - pw, 0), min(j - pw + s_, w_)):
                m = _op(mode, m, row[c])
            full[j] = m
        t = tmp[h]
        for q in range(q_):
            t[q] = full[q * sw]


@njit(**JIT)
def _column_pass(mode, tmp, acc, hs, he):
    """acc[q] = max (or sum) of tmp[hs:he, q]; -inf (0) when hs >= he."""
    if he <= hs:
        acc[:] = -np.inf if mode == _MAX else 0.0
        return
    _reduce_window(mode, tmp.reshape(-1), hs * tmp.shape[1], tmp.shape[1], he - hs, acc)


@njit(**JIT)
def _plane_forward(mode, xp, yp, tmp, full, r_, s_, ph, pw, sh, sw, alpha, beta, lowest):
    h_, w_ = xp.shape
    p_, q_ = yp.shape
    _row_pass(xp, tmp, full, mode, s_, pw, sw)
    acc = np.empty(q_, tmp.dtype)
    for p in range(p_):
        h0 = p * sh - ph
        hs = max(h0, 0)
        he = min(h0 + r_, h_)
        _column_pass(mode, tmp, acc, hs, he)
        for q in range(q_):
            w0 = q * sw - pw
            cols = min(w0 + s_, w_) - max(w0, 0)
            rows = he - hs
            if rows <= 0 or cols <= 0:          # the window lies in the padding
                val = lowest if mode == _MAX else 0.0
            elif mode == _MAX:
                val = np.float64(acc[q])
            elif mode == _AVG_INCLUDE:
                val = np.float64(acc[q]) / (r_ * s_)
            else:
                val = np.float64(acc[q]) / (rows * cols)
            out = alpha * val
            if beta != 0:
                out += beta * yp[p, q]
            yp[p, q] = out


@njit(**JIT)
def _global_max(row):
    """NaN-sticky max of one contiguous run (whole-plane max pooling)."""
    m = row[0]
    for i in range(1, row.size):
        v = row[i]
        m = v if (v > m) | (v != v) else m
    return np.float64(m)


# Whole-plane averages are plain float64 sums of contiguous runs: with reassociation
# allowed (fastmath "reassoc" + "contract" only: NaN and inf still propagate) LLVM
# runs them several lanes wide, so the global average pool streams at memory speed.
_RJIT_PAR = dict(JIT_PAR, fastmath={"reassoc", "contract"})


@njit(**_RJIT_PAR)
def global_mean(x2, y1, alpha, beta):
    """y1[i] = alpha * mean(x2[i]) + beta * y1[i] over the rows of x2 (N*C, H*W), sums in
    float64 (``beta == 0``: y1 is not read)."""
    m_ = x2.shape[1]
    for i in prange(x2.shape[0]):
        row = x2[i]
        s = 0.0
        for k in range(m_):
            s += np.float64(row[k])
        out = alpha * (s / m_)
        if beta != 0:
            out += beta * y1[i]
        y1[i] = out


@njit(**JIT_PAR)
def _forward_kernel(mode, whole, x3, y3, r_, s_, ph, pw, sh, sw, alpha, beta, lowest):
    """Every plane of x3 (N*C, H, W) into y3 (N*C, P, Q); ``whole``: global pooling."""
    nc_, h_, w_ = x3.shape
    q_ = y3.shape[2]
    if whole:                      # max over the whole unpadded plane (averages: global_mean)
        x2 = x3.reshape(nc_, h_ * w_)
        y1 = y3.reshape(nc_)
        for nc in prange(nc_):
            out = alpha * _global_max(x2[nc])
            if beta != 0:
                out += beta * y1[nc]
            y1[nc] = out
        return
    for nc in prange(nc_):
        tmp = np.empty((h_, q_), x3.dtype)
        full = np.empty(w_ + 2 * pw - s_ + 1, x3.dtype)
        _plane_forward(mode, x3[nc], y3[nc], tmp, full, r_, s_, ph, pw, sh, sw,
                       alpha, beta, lowest)


@njit(**JIT)
def _global_backward(mode, row, g, out, alpha, beta):
    """Backward of one whole-plane window: out = alpha * dL/drow + beta * out."""
    m_ = row.size
    best = -1                                  # mean: every element receives g / m_
    if mode == _MAX:
        best = 0
        m = row[0]
        for i in range(1, m_):                 # first max (or first NaN)
            v = row[i]
            if (v > m) | ((v != v) & (m == m)):
                m = v
                best = i
    share = g if mode == _MAX else g / m_
    for i in range(m_):
        d = alpha * share if (best < 0 or i == best) else 0.0
        if beta != 0:
            d += beta * out[i]
        out[i] = d


@njit(**JIT)
def _first_max(v, u):
    """Whether a later candidate v replaces the running max u: larger, or the first NaN."""
    return (v > u) | ((v != v) & (u == u))


@njit(**JIT)
def _before(v, i, u, j):
    """Whether candidate (v, i) beats (u, j) for the max's gradient: a larger value (NaN
    above all), ties to the smaller flat index i (the first in row-major order)."""
    vn, un = v != v, u != u
    return (v > u) | (vn & ~un) | (((v == u) | (vn & un)) & (i < j))


@njit(**JIT)
def _argmax_step(dm, di, sm, si, sb, e1, i1, b1, e2, i2, b2, count, later):
    """(dm, di) = the running (max, flat index) pairs (sm, sb + si) merged with the
    candidates e1[k] (index b1 + i1[k]) and, when count == 2, e2[k] (b2 + i2[k]).

    Indices travel in the data dtype, so the loops are all same-width compares
    and selects that vectorise; (dm, di) must not alias (sm, si) (a select into
    the array it reads compiles to slow masked stores). ``later``: every candidate
    has a larger index than the running pair it meets (ties then need no index test).
    """
    if later:
        if count == 1:
            for k in range(dm.size):
                u, v = sm[k], e1[k]
                t = _first_max(v, u)
                dm[k] = _sel(t, v, u)
                di[k] = _sel(t, b1 + i1[k], sb + si[k])
        else:
            for k in range(dm.size):
                u, v, w = sm[k], e1[k], e2[k]
                t = _first_max(v, u)
                u = _sel(t, v, u)
                j = _sel(t, b1 + i1[k], sb + si[k])
                t = _first_max(w, u)
                dm[k] = _sel(t, w, u)
                di[k] = _sel(t, b2 + i2[k], j)
    elif count == 1:
        for k in range(dm.size):
            u, j, v, i = sm[k], sb + si[k], e1[k], b1 + i1[k]
            t = _before(v, i, u, j)
            dm[k] = _sel(t, v, u)
            di[k] = _sel(t, i, j)
    else:
        for k in range(dm.size):
            u, j, v, i = sm[k], sb + si[k], e1[k], b1 + i1[k]
            t = _before(v, i, u, j)
            u, j = _sel(t, v, u), _sel(t, i, j)
            v, i = e2[k], b2 + i2[k]
            t = _before(v, i, u, j)
            dm[k] = _sel(t, v, u)
            di[k] = _sel(t, i, j)


@njit(**JIT)
def _plane_backward_max(xp, dyp, acc, r_, s_, ph, pw, sh, sw):
    """acc (H, W) float64 = dL/dx of one max-pooled plane (overwritten).

    cuDNN's API gives no indices, so each window's winner -- its first maximum
    (or first NaN) in row-major order -- is recomputed, separably, per output
    row p: a vertical pass takes each column's winner over the window rows,
    then a horizontal pass the winner over each window's columns, by value and
    then flat index h*W + w (carried in the data dtype: exact while H*W <= 2**24
    in float32, which the caller ensures). Both passes run at stride 1 in
    unit-stride vectorised loops; each dy is then added at its winner.
    """
    h_, w_ = xp.shape
    p_, q_ = dyp.shape
    z = K(0, xp)
    iota = np.arange(w_).astype(xp.dtype)      # column indices
    va, ia, vb, ib = (np.empty(w_, xp.dtype), np.empty(w_, xp.dtype),
                      np.empty(w_, xp.dtype), np.empty(w_, xp.dtype))
    ha, ja, hb, jb = (np.empty(w_, xp.dtype), np.empty(w_, xp.dtype),
                      np.empty(w_, xp.dtype), np.empty(w_, xp.dtype))
    nj = w_ + 2 * pw - s_ + 1      # window starts at stride 1
    jlo = min(pw, nj)              # [jlo, jhi): starts whose S columns all lie in the row
    jhi = max(jlo, min(nj, w_ + pw - s_ + 1))
    n = jhi - jlo
    c0 = jlo - pw                  # column of start jlo's first element
    qa = min((jlo + sw - 1) // sw, q_)     # [qa, qb): windows q with q*sw in [jlo, jhi)
    qb = max(qa, min((jhi + sw - 1) // sw, q_))
    acc[:, :] = 0.0
    accf = acc.reshape(-1)
    for p in range(p_):
        h0 = p * sh - ph
        hs = max(h0, 0)
        he = min(h0 + r_, h_)
        if he <= hs:                           # the window rows lie in the padding
            continue
        cv, ci, cb = xp[hs], iota, K(hs * w_, xp)   # vertical: rows hs..he-1, per column
        r = hs + 1
        flip = False
        while r < he:
            cnt = min(2, he - r)
            dm, di = (vb, ib) if flip else (va, ia)
            r2 = r + 1 if cnt == 2 else r
            _argmax_step(dm, di, cv, ci, cb, xp[r], iota, K(r * w_, xp),
                         xp[r2], iota, K(r2 * w_, xp), cnt, True)
            cv, ci, cb = dm, di, z
            flip = not flip
            r += cnt
        wv, wi, wb = cv[c0:c0 + n], ci[c0:c0 + n], cb   # horizontal: window starts jlo..jhi-1
        s = 1
        flip = False
        while s < s_:
            cnt = min(2, s_ - s)
            dm, di = (hb[:n], jb[:n]) if flip else (ha[:n], ja[:n])
            s2 = s + 1 if cnt == 2 else s
            _argmax_step(dm, di, wv, wi, wb, cv[c0 + s:c0 + s + n], ci[c0 + s:c0 + s + n], cb,
                         cv[c0 + s2:c0 + s2 + n], ci[c0 + s2:c0 + s2 + n], cb, cnt, False)
            wv, wi, wb = dm, di, z
            flip = not flip
            s += cnt
        g = dyp[p]
        for q in range(qa, qb):
            k = q * sw - jlo
            accf[int(wb + wi[k])] += g[q]
        for q in range(q_ - (qb - qa)):        # windows clipped by the padding
            q = q if q < qa else q + (qb - qa)
            lo, hi = max(q * sw - pw, 0), min(q * sw - pw + s_, w_)
            if lo >= hi:                       # the window columns lie in the padding
                continue
            u, j = cv[lo], cb + ci[lo]
            for c in range(lo + 1, hi):
                v, i = cv[c], cb + ci[c]
                if _before(v, i, u, j):
                    u, j = v, i
            accf[int(j)] += g[q]


@njit(**JIT)
def _plane_backward(mode, xp, dyp, acc, r_, s_, ph, pw, sh, sw):
    """acc (H, W) float64 = dL/dx of one plane (overwritten)."""
    h_, w_ = xp.shape
    p_, q_ = dyp.shape
    if mode == _MAX:
        _plane_backward_max(xp, dyp, acc, r_, s_, ph, pw, sh, sw)
        return
    acc[:, :] = 0.0
    grad = np.zeros((h_, q_))                         # gradient reaching row h of window q
    for p in range(p_):
        h0 = p * sh - ph
        hs = max(h0, 0)
        he = min(h0 + r_, h_)
        for q in range(q_):
            w0 = q * sw - pw
            cols = min(w0 + s_, w_) - max(w0, 0)
            if he <= hs or cols <= 0:
                continue
            div = r_ * s_ if mode == _AVG_INCLUDE else (he - hs) * cols
            g = dyp[p, q] / div
            for h in range(hs, he):
                grad[h, q] += g
    for h in range(h_):
        for q in range(q_):
            w0 = q * sw - pw
            g = grad[h, q]
            for w in range(max(w0, 0), min(w0 + s_, w_)):
                acc[h, w] += g


@njit(**JIT_PAR)
def _backward_kernel(mode, whole, dy3, x3, dx3, r_, s_, ph, pw, sh, sw, alpha, beta):
    """dx3 (N*C, H, W) from dy3 (N*C, P, Q) and x3; ``whole``: global pooling."""
    nc_, h_, w_ = x3.shape
    if whole:
        x2 = x3.reshape(nc_, h_ * w_)
        dx2 = dx3.reshape(nc_, h_ * w_)
        dy1 = dy3.reshape(nc_)
        for nc in prange(nc_):
            _global_backward(mode, x2[nc], np.float64(dy1[nc]), dx2[nc], alpha, beta)
        return
    for nc in prange(nc_):
        acc = np.empty((h_, w_))
        _plane_backward(mode, x3[nc], dy3[nc], acc, r_, s_, ph, pw, sh, sw)
        dxp = dx3[nc]
        for h in range(h_):
            a, d = acc[h], dxp[h]
            if beta == 0:
                for w in range(w_):
                    d[w] = alpha * a[w]
            else:
                for w in range(w_):
                    d[w] = alpha * a[w] + beta * d[w]


#: The max backward carries flat plane indices in the data dtype: float32 holds
#: integers exactly up to 2**24; bigger float32 planes are searched in float64.
_F32_EXACT_INDEX = 1 << 24


def _planes3(arr: np.ndarray, *, read: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(staged, (N*C, H, W) view of it): ``arr`` itself when C-contiguous in the compute dtype.

    Otherwise a C-contiguous compute-dtype copy (left empty when ``read`` is
    false) that the caller copies back into ``arr`` if it is an output.
    """
    cdt = compute_dtype(arr.dtype)
    if arr.dtype == cdt and arr.flags.c_contiguous:
        staged = arr
    elif read:
        staged = np.ascontiguousarray(arr, dtype=cdt)
    else:
        staged = np.empty(arr.shape, dtype=cdt)
    return staged, staged.reshape((-1,) + arr.shape[2:])


def _lowest(dtype: np.dtype) -> float:
    """The max of a window lying wholly in the padding: the dtype's lowest finite value."""
    return float(np.finfo(dtype).min)


@register("cudnn.pooling_forward", "numba")
@quiet
def pooling_forward_numba(x, y, *, mode, window, pad=(0, 0), stride=(1, 1),
                          alpha=1.0, beta=0.0):
    """Same contract as the reference; separable passes, parallel over the N*C planes."""
    mode_id, (r, s), (ph, pw), (sh, sw), alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x, [("y", y, "y")])
    if y.size == 0:
        return
    _, x3 = _planes3(x)
    ys, y3 = _planes3(y, read=beta != 0)
    whole = (r, s, ph, pw) == tuple(x.shape[2:]) + (0, 0)   # global pooling
    if whole and mode_id != _MAX:
        global_mean(x3.reshape(x3.shape[0], -1), y3.reshape(-1), alpha, beta)
        if ys is not y:
            np.copyto(y, ys, casting="unsafe")
        return
    with np.errstate(over="ignore"):           # alpha * lowest may round to -inf
        _forward_kernel(mode_id, whole, x3, y3, r, s, ph, pw, sh, sw, alpha, beta,
                        _lowest(x.dtype))
        if ys is not y:
            np.copyto(y, ys, casting="unsafe")


@register("cudnn.pooling_backward", "numba")
@quiet
def pooling_backward_numba(y, dy, x, dx, *, mode, window, pad=(0, 0), stride=(1, 1),
                           alpha=1.0, beta=0.0):
    """Same contract as the reference; separable passes, parallel over the N*C planes."""
    mode_id, (r, s), (ph, pw), (sh, sw), alpha, beta = _check(
        mode, window, pad, stride, alpha, beta, x,
        [("y", y, "y"), ("dy", dy, "y"), ("dx", dx, "x")])
    if dx.size == 0:
        return
    _, dy3 = _planes3(dy)
    _, x3 = _planes3(x)
    dxs, dx3 = _planes3(dx, read=beta != 0)
    whole = (r, s, ph, pw) == tuple(x.shape[2:]) + (0, 0)   # global pooling
    if mode_id == _MAX and not whole and x3.dtype == np.float32 and x3[0].size > _F32_EXACT_INDEX:
        x3 = x3.astype(np.float64)             # flat indices would round in float32
    _backward_kernel(mode_id, whole, dy3, x3, dx3, r, s, ph, pw, sh, sw, alpha, beta)
    if dxs is not dx:
        np.copyto(dx, dxs, casting="unsafe")
