"""numba kernels behind the convolution ops: im2col/col2im blocks, depthwise, bias.

Private helpers of :mod:`streamq.kernels.conv`. im2col/col2im are serial (the
GEMMs between them use OpenBLAS's threads); the depthwise and bias kernels are
``parallel=True``. Callers validate every shape
and parameter before calling (these kernels do not bound-check). All arrays
are C-contiguous and of one float dtype (float32 or float64), except the
accumulators named below.

Column-matrix layout (shared with the numpy lowering in ``_conv_fast``): the
column block of images ``n0 .. n0+nb`` and output rows ``p0 .. p0+np_`` has
one row per filter tap ``(c, r, s)`` -> ``(c*R + r)*S + s`` and one column per
output pixel ``(i, p, q)`` -> ``(i*np_ + (p - p0))*Q + q``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

_JIT = dict(cache=True, nogil=True, fastmath=False)


@njit(inline="always")
def _q_range(off, sw, W, Q):
    """Output columns q with 0 <= q*sw + off < W, as [lo, hi)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    last = W - 1 - off
    hi = 0 if last < 0 else min(Q, last // sw + 1)
    return lo, max(lo, hi)


# The lowering kernels index flat views with unsigned integers: numba then
# emits no negative-index wrap-around code and LLVM vectorises the copies
# (about 3x faster than 4-D signed indexing).

@njit(inline="always")
def _copy_run(dst, d0, src, s0, n, step):
    """dst[d0 + i] = src[s0 + i*step] for i < n (all unsigned offsets)."""
    d0, s0, n = uint64(d0), uint64(s0), uint64(n)
    if step == 1:
        for i in range(n):
            dst[d0 + i] = src[s0 + i]
    else:
        st = uint64(step)
        for i in range(n):
            dst[d0 + i] = src[s0 + i * st]


@njit(inline="always")
def _add_run(dst, d0, src, s0, n, step):
    """dst[d0 + i*step] += src[s0 + i] for i < n (the adjoint of _copy_run)."""
    d0, s0, n = uint64(d0), uint64(s0), uint64(n)
    if step == 1:
        for i in range(n):
            dst[d0 + i] += src[s0 + i]
    else:
        st = uint64(step)
        for i in range(n):
            dst[d0 + i * st] += src[s0 + i]


@njit(inline="always")
def _zero_run(dst, d0, n):
    d0, n = uint64(d0), uint64(n)
    for i in range(n):
        dst[d0 + i] = 0


@njit(**_JIT)
def im2col(x, col, n0, nb, c0, cg, p0, np_, Q, R, S, ph, pw, sh, sw, dh, dw):
    """Fill ``col`` (cg*R*S, nb*np_*Q) from x (N, C, H, W); zero where padded.

    x and col must be C-contiguous (flat views are indexed).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    ncols = nb * np_ * Q
    for c in range(cg):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - pw
                lo, hi = _q_range(off, sw, W, Q)
                for i in range(nb):
                    plane = ((n0 + i) * C + c0 + c) * H
                    for pp in range(np_):
                        h = (p0 + pp) * sh - ph + r * dh
                        d = row * ncols + (i * np_ + pp) * Q
                        if h < 0 or h >= H:
                            _zero_run(cf, d, Q)
                            continue
                        _zero_run(cf, d, lo)
                        _copy_run(cf, d + lo, xf, (plane + h) * W + lo * sw + off, hi - lo, sw)
                        _zero_run(cf, d + hi, Q - hi)


@njit(**_JIT)
def im2col_strided(x, col, n0, nb, c0, cg, p0, np_, Q, R, S, ph, pw, sh, sw, dh, dw):
    """:func:`im2col` for column stride ``sw > 1``, by unit-stride copies.

    Each input row the block reads is first split once into its ``sw`` column
    phases (zero-padded: phase b, column j holds padded column j*sw + b);
    tap (r, s) of an output row is then one contiguous run of Q values of
    phase (s*dw) % sw from column (s*dw) // sw. Same layout and result as
    :func:`im2col`; x and col must be C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wph = (W + 2 * pw + sw - 1) // sw
    hlo = p0 * sh - ph
    nh = (np_ - 1) * sh + (R - 1) * dh + 1  # input rows the band spans (some may be padding)
    buf = np.zeros(nh * sw * Wph, dtype=col.dtype)
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    ncols = nb * np_ * Q
    for c in range(cg):
        for i in range(nb):
            plane = ((n0 + i) * C + c0 + c) * H
            for hh in range(nh):
                h = hlo + hh
                if h < 0 or h >= H:
                    continue  # never read: rows outside the image are zero-filled below
                for b in range(sw):
                    # phase b, column j <- x column j*sw + b - pw where inside the image
                    lo, hi = _q_range(b - pw, sw, W, Wph)
                    d = (hh * sw + b) * Wph
                    _zero_run(buf, d, lo)
                    _copy_run(buf, d + lo, xf, (plane + h) * W + lo * sw + b - pw, hi - lo, sw)
                    _zero_run(buf, d + hi, Wph - hi)
            for r in range(R):
                for s in range(S):
                    row = (c * R + r) * S + s
                    b, off = (s * dw) % sw, (s * dw) // sw
                    for pp in range(np_):
                        hh = pp * sh + r * dh
                        d = row * ncols + (i * np_ + pp) * Q
                        if hlo + hh < 0 or hlo + hh >= H:
                            _zero_run(cf, d, Q)
                        else:
                            _copy_run(cf, d, buf, (hh * sw + b) * Wph + off, Q, 1)


@njit(**_JIT)
def col2im_add(col, dx, nb, c0, cg, p0, np_, Q, R, S, ph, pw, sh, sw, dh, dw):
    """Scatter-add ``col`` (cg*R*S, nb*np_*Q) into dx[0:nb, c0:c0+cg] (the adjoint of im2col).

    col and dx must be C-contiguous.
    """
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    xf = dx.reshape(-1)
    cf = col.reshape(-1)
    ncols = nb * np_ * Q
    for c in range(cg):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - pw
                lo, hi = _q_range(off, sw, W, Q)
                for i in range(nb):
                    plane = (i * C + c0 + c) * H
                    for pp in range(np_):
                        h = (p0 + pp) * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        d = row * ncols + (i * np_ + pp) * Q
                        _add_run(xf, (plane + h) * W + lo * sw + off, cf, d + lo, hi - lo, sw)


@njit(parallel=True, **_JIT)
def depthwise_forward(x, w, y, ph, pw, sh, sw, dh, dw, alpha, beta):
    """y = alpha*conv(x, w) + beta*y for groups == C (w: (K, 1, R, S), K = C*M)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = y.shape[2], y.shape[3]
    M = K // C
    for t in prange(N * K):
        n = t // K
        k = t % K
        c = k // M
        acc = np.zeros((P, Q), dtype=y.dtype)
        for r in range(R):
            for s in range(S):
                wv = w[k, 0, r, s]
                off = s * dw - pw
                lo, hi = _q_range(off, sw, W, Q)
                for p in range(P):
                    h = p * sh - ph + r * dh
                    if h < 0 or h >= H:
                        continue
                    for q in range(lo, hi):
                        acc[p, q] += wv * x[n, c, h, q * sw + off]
        for p in range(P):
            for q in range(Q):
                if beta == 0:
                    y[n, k, p, q] = alpha * acc[p, q]
                else:
                    y[n, k, p, q] = alpha * acc[p, q] + beta * y[n, k, p, q]


@njit(parallel=True, **_JIT)
def depthwise_backward_data(w, dy, dx, ph, pw, sh, sw, dh, dw, alpha, beta):
    """dx = alpha*conv_transpose(dy, w) + beta*dx for groups == C."""
    N, C, H, W = dx.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2], dy.shape[3]
    M = K // C
    for t in prange(N * C):
        n = t // C
        c = t % C
        acc = np.zeros((H, W), dtype=dx.dtype)
        for m in range(M):
            k = c * M + m
            for r in range(R):
                for s in range(S):
                    wv = w[k, 0, r, s]
                    off = s * dw - pw
                    lo, hi = _q_range(off, sw, W, Q)
                    for p in range(P):
                        h = p * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        for q in range(lo, hi):
                            acc[h, q * sw + off] += wv * dy[n, k, p, q]
        for h in range(H):
            for ww in range(W):
                if beta == 0:
                    dx[n, c, h, ww] = alpha * acc[h, ww]
                else:
                    dx[n, c, h, ww] = alpha * acc[h, ww] + beta * dx[n, c, h, ww]


@njit(parallel=True, **_JIT)
def depthwise_backward_filter(x, dy, dwt, ph, pw, sh, sw, dh, dw, alpha, beta):
    """dwt = alpha*grad_w + beta*dwt for groups == C; sums in float64."""
    N, C, H, W = x.shape
    K, _, R, S = dwt.shape
    P, Q = dy.shape[2], dy.shape[3]
    M = K // C
    for k in prange(K):
        c = k // M
        for r in range(R):
            for s in range(S):
                off = s * dw - pw
                lo, hi = _q_range(off, sw, W, Q)
                acc = 0.0
                for n in range(N):
                    for p in range(P):
                        h = p * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        for q in range(lo, hi):
                            acc += np.float64(dy[n, k, p, q]) * np.float64(x[n, c, h, q * sw + off])
                if beta == 0:
                    dwt[k, 0, r, s] = alpha * acc
                else:
                    dwt[k, 0, r, s] = alpha * acc + beta * dwt[k, 0, r, s]


@njit(parallel=True, **_JIT)
def bias_sum(dy, out):
    """out[k] = sum over n, p, q of dy[n, k, p, q], accumulated in float64."""
    N, K, P, Q = dy.shape
    for k in prange(K):
        acc = 0.0
        for n in range(N):
            for p in range(P):
                for q in range(Q):
                    acc += dy[n, k, p, q]
        out[k] = acc
