"""numba kernels behind the ``numba`` provider of the ATen ops.

Every kernel works on C-contiguous arrays whose sizes the caller has already
validated; none of them checks bounds. All are compiled with
``cache=True, nogil=True, fastmath=False``; the big ones are ``parallel=True``.

Vectorisation without fastmath: a reduction ``s += x[i]`` cannot be
vectorised by LLVM without reassociation, so reductions keep :data:`LANES`
independent partial results (``acc[j] += x[i + j]``), which LLVM can vectorise
while the order of operations stays fixed and deterministic. ``exp`` from libm
is not vectorisable either, so :func:`vexp` is a Cephes-style range reduction
plus polynomial built only from vectorisable operations (2**n is made by
writing the exponent bits directly), accurate to ~1 ulp in float32 and ~2 ulp
in float64, with inf/NaN/underflow handled as libm does.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

LANES = 16
_JIT = dict(cache=True, nogil=True, fastmath=False)
_PAR = dict(_JIT, parallel=True)


# ---------------------------------------------------------------- exp, tanh --

@intrinsic
def _pow2_f32(typingctx, n):
    """float32 2**n for int32 n in [-126, 127], by writing the exponent bits."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())
    return sig, codegen


@intrinsic
def _pow2_f64(typingctx, n):
    """float64 2**n for int32 n in [-1022, 1023], by writing the exponent bits."""
    sig = types.float64(types.int32)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        wide = builder.sext(args[0], i64)
        bits = builder.shl(builder.add(wide, ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())
    return sig, codegen


_f4 = np.float32
_E32_HI, _E32_LO = _f4(88.72283), _f4(-103.97208)
_E32_LOG2E, _E32_C1, _E32_C2 = _f4(1.4426950408889634), _f4(0.693359375), _f4(-2.12194440e-4)
_E32_P = (_f4(1.9875691500e-4), _f4(1.3981999507e-3), _f4(8.3334519073e-3),
          _f4(4.1665795894e-2), _f4(1.6666665459e-1), _f4(5.0000001201e-1))
_F4_HALF, _F4_ONE, _F4_TWO, _F4_INF = _f4(0.5), _f4(1.0), _f4(2.0), _f4(np.inf)


@njit(inline="always", **_JIT)
def _vexp32(x):
    xc = x if x < _E32_HI else _E32_HI          # NaN and overflow are fixed below
    xc = xc if xc > _E32_LO else _E32_LO
    fx = np.floor(xc * _E32_LOG2E + _F4_HALF)
    r = xc - fx * _E32_C1
    r = r - fx * _E32_C2
    p = ((((_E32_P[0] * r + _E32_P[1]) * r + _E32_P[2]) * r + _E32_P[3]) * r + _E32_P[4]) * r
    p = (p + _E32_P[5]) * (r * r) + r + _F4_ONE
    h = np.floor(fx * _F4_HALF)                # 2**fx = 2**h * 2**(fx-h): both normal
    y = p * _pow2_f32(np.int32(h)) * _pow2_f32(np.int32(fx - h))
    y = _F4_INF if x > _E32_HI else y
    return x if x != x else y


_E64_HI, _E64_LO = 709.782712893384, -745.1332191019412
_E64_LOG2E, _E64_C1, _E64_C2 = 1.4426950408889634, 6.93145751953125e-1, 1.42860682030941723212e-6
_E64_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_E64_Q = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
          2.27265548208155028766e-1, 2.00000000000000000009e0)


@njit(inline="always", **_JIT)
def _vexp64(x):
    xc = x if x < _E64_HI else _E64_HI
    xc = xc if xc > _E64_LO else _E64_LO
    fx = np.floor(xc * _E64_LOG2E + 0.5)
    r = xc - fx * _E64_C1
    r = r - fx * _E64_C2
    rr = r * r
    px = r * ((_E64_P[0] * rr + _E64_P[1]) * rr + _E64_P[2])
    qx = ((_E64_Q[0] * rr + _E64_Q[1]) * rr + _E64_Q[2]) * rr + _E64_Q[3]
    p = 1.0 + 2.0 * (px / (qx - px))
    h = np.floor(fx * 0.5)
    y = p * _pow2_f64(np.int32(h)) * _pow2_f64(np.int32(fx - h))
    y = np.inf if x > _E64_HI else y
    return x if x != x else y


def vexp(x):
    """exp(x) in x's float type, vectorisable (numba only)."""
    raise NotImplementedError("vexp is only callable from numba code")


@overload(vexp, inline="always")
def _vexp_overload(x):
    if x == types.float32:
        return lambda x: _vexp32(x)
    if x == types.float64:
        return lambda x: _vexp64(x)
    return None


_T32 = (_f4(-5.70498872745e-3), _f4(2.06390887954e-2), _f4(-5.37397155531e-2),
        _f4(1.33314422036e-1), _f4(-3.33332819422e-1))
_T_SMALL32 = _f4(0.625)
_T64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_T64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@njit(inline="always", **_JIT)
def _vtanh32(x):
    z = x * x
    small = ((((_T32[0] * z + _T32[1]) * z + _T32[2]) * z + _T32[3]) * z + _T32[4]) * z * x + x
    ax = abs(x)
    big = _F4_ONE - _F4_TWO / (_vexp32(_F4_TWO * ax) + _F4_ONE)
    big = big if x >= 0 else -big
    y = small if ax < _T_SMALL32 else big
    return x if x != x else y


@njit(inline="always", **_JIT)
def _vtanh64(x):
    z = x * x
    small = x + x * z * (((_T64_P[0] * z + _T64_P[1]) * z + _T64_P[2]) /
                         (((z + _T64_Q[0]) * z + _T64_Q[1]) * z + _T64_Q[2]))
    ax = abs(x)
    big = 1.0 - 2.0 / (_vexp64(2.0 * ax) + 1.0)
    big = big if x >= 0 else -big
    y = small if ax < 0.625 else big
    return x if x != x else y


def vtanh(x):
    """tanh(x) in x's float type, vectorisable (numba only)."""
    raise NotImplementedError("vtanh is only callable from numba code")


@overload(vtanh, inline="always")
def _vtanh_overload(x):
    if x == types.float32:
        return lambda x: _vtanh32(x)
    if x == types.float64:
        return lambda x: _vtanh64(x)
    return None


# ------------------------------------------------------------- elementwise --
# 1-d contiguous arrays of one dtype; scalars already converted to that dtype.

@njit(**_PAR)
def fill(out, value):
    for i in prange(out.size):
        out[i] = value


@njit(**_PAR)
def copy_cast(src, out):
    """out[i] = src[i] converted as C does (float -> int truncates toward zero)."""
    for i in prange(out.size):
        out[i] = src[i]

@njit(**_PAR)
def add_aa(a, b, alpha, out):
    for i in prange(out.size):
        out[i] = a[i] + alpha * b[i]


@njit(**_PAR)
def add_as(a, s, out):
    for i in prange(out.size):
        out[i] = a[i] + s


@njit(**_PAR)
def mul_aa(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] * b[i]


@njit(**_PAR)
def mul_as(a, s, out):
    for i in prange(out.size):
        out[i] = a[i] * s


@njit(**_PAR)
def div_aa(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] / b[i]


@njit(**_PAR)
def div_as(a, s, out):
    for i in prange(out.size):
        out[i] = a[i] / s


@njit(**_PAR)
def threshold(x, th, value, out):
    """out = value where x <= th else x (NaN passes through, as torch)."""
    for i in prange(out.size):
        v = x[i]
        out[i] = value if v <= th else v


@njit(**_PAR)
def threshold_backward(g, x, th, out):
    """out = 0 where x <= th else g."""
    zero = out.dtype.type(0)
    for i in prange(out.size):
        out[i] = zero if x[i] <= th else g[i]


@njit(**_PAR)
def sigmoid(x, out):
    one = out.dtype.type(1)
    for i in prange(out.size):
        out[i] = one / (one + vexp(-x[i]))


@njit(**_PAR)
def sigmoid_backward(g, y, out):
    one = out.dtype.type(1)
    for i in prange(out.size):
        out[i] = g[i] * (one - y[i]) * y[i]


@njit(**_PAR)
def tanh(x, out):
    for i in prange(out.size):
        out[i] = vtanh(x[i])


@njit(**_PAR)
def tanh_backward(g, y, out):
    one = out.dtype.type(1)
    for i in prange(out.size):
        out[i] = g[i] * (one - y[i] * y[i])


# --------------------------------------------------------------- reductions --
# Input viewed as (A, K, B) in C order, reduced over K. "rows" kernels are the
# B == 1 case; they split long rows into ``nsplit`` pieces so that even a full
# reduction (A == 1) uses every thread.

@njit(**_JIT)
def _sum_span(x, lo, hi):
    """float64 sum of x[lo:hi] with LANES independent partial sums."""
    acc = np.zeros(LANES, np.float64)
    stop = lo + (hi - lo) // LANES * LANES
    for i in range(lo, stop, LANES):
        for j in range(LANES):
            acc[j] += x[i + j]
    s = 0.0
    for j in range(LANES):
        s += acc[j]
    for i in range(stop, hi):
        s += x[i]
    return s


@njit(**_JIT)
def _max_span(x, lo, hi):
    """max of x[lo:hi] (hi > lo), NaN-propagating."""
    m = x[lo]
    if hi - lo >= 2 * LANES:
        acc = x[lo:lo + LANES].copy()
        stop = lo + (hi - lo) // LANES * LANES
        for i in range(lo + LANES, stop, LANES):
            for j in range(LANES):
                v = x[i + j]
                a = acc[j]
                acc[j] = v if (v > a or v != v) else a
        for j in range(LANES):
            v = acc[j]
            m = v if (v > m or v != v) else m
        lo = stop
    for i in range(lo, hi):
        v = x[i]
        m = v if (v > m or v != v) else m
    return m


@njit(**_PAR)
def sum_akb(x, A, K, B, nsplit, bchunk, res):
    """float64 sums over k of x viewed as (A, K, B).

    B == 1: res[a * nsplit + c] = sum of piece c of row a (rows are split in
    ``nsplit`` pieces so that a full reduction still uses every thread).
    B > 1: res[a * B + b], computed ``bchunk`` columns per task.
    """
    nb = 1 if B == 1 else (B + bchunk - 1) // bchunk
    ntasks = A * nsplit if B == 1 else A * nb
    piece = (K + nsplit - 1) // nsplit
    for t in prange(ntasks):
        if B == 1:
            a = t // nsplit
            lo = min((t - a * nsplit) * piece, K)
            hi = min(lo + piece, K)
            res[t] = _sum_span(x, a * K + lo, a * K + hi)
        else:
            a = t // nb
            b0 = (t - a * nb) * bchunk
            b1 = min(b0 + bchunk, B)
            acc = np.zeros(b1 - b0, np.float64)
            for k in range(K):
                row = (a * K + k) * B
                for b in range(b0, b1):
                    acc[b - b0] += x[row + b]
            for b in range(b0, b1):
                res[a * B + b] = acc[b - b0]


@njit(**_PAR)
def max_akb(x, A, K, B, nsplit, res):
    """NaN-propagating max over k of x viewed as (A, K, B); K > 0.

    B == 1: res[a * nsplit + c] = max of piece c of row a (pieces never empty).
    B > 1: res[a * B + b].
    """
    ntasks = A * nsplit if B == 1 else A
    piece = (K + nsplit - 1) // nsplit
    for t in prange(ntasks):
        if B == 1:
            a = t // nsplit
            lo = min((t - a * nsplit) * piece, K - 1)
            hi = min(lo + piece, K)
            res[t] = _max_span(x, a * K + lo, a * K + hi)
        else:
            base = t * K * B
            for b in range(B):
                res[t * B + b] = x[base + b]
            for k in range(1, K):
                row = base + k * B
                for b in range(B):
                    v = x[row + b]
                    m = res[t * B + b]
                    res[t * B + b] = v if (v > m or v != v) else m


@njit(**_JIT)
def _beats(v, i, bv, bi):
    # torch's argmax order: NaN is the largest value, ties go to the lower index.
    if bv != bv:
        return v != v and i < bi
    if v != v:
        return True
    return v > bv or (v == bv and i < bi)


@njit(**_JIT)
def _argmax_span(x, lo, K):
    """First index (0-based from lo) of the max of x[lo:lo+K], NaN counting as max; K > 0."""
    best = x[lo]
    bi = 0
    start = 1
    if K >= 2 * LANES:
        vals = x[lo:lo + LANES].copy()
        idx = np.arange(LANES)
        stop = K // LANES * LANES
        for i in range(LANES, stop, LANES):
            for j in range(LANES):
                v = x[lo + i + j]
                bv = vals[j]
                better = v > bv or (v != v and bv == bv)
                vals[j] = v if better else bv
                idx[j] = i + j if better else idx[j]
        for j in range(LANES):
            if _beats(vals[j], idx[j], best, bi):
                best = vals[j]
                bi = idx[j]
        start = stop
    for i in range(start, K):
        v = x[lo + i]
        if v > best or (v != v and best == best):
            best = v
            bi = i
    return bi


@njit(**_PAR)
def argmax_akb(x, A, K, B, out):
    """out[a * B + b] = first k of the max of x[a, :, b] (NaN counts as max); K > 0."""
    for a in prange(A):
        if B == 1:
            out[a] = _argmax_span(x, a * K, K)
        else:
            base = a * K * B
            best = x[base:base + B].copy()
            for b in range(B):
                out[a * B + b] = 0
            for k in range(1, K):
                row = base + k * B
                for b in range(B):
                    v = x[row + b]
                    bv = best[b]
                    if v > bv or (v != v and bv == bv):
                        best[b] = v
                        out[a * B + b] = k


# ------------------------------------------------------------------ softmax --
# x, out: (A, K, B) flattened, same float dtype, not aliased (the caller copies).

@njit(**_PAR)
def softmax(x, A, K, B, bchunk, log, out):
    """Softmax (or log-softmax) over k of x viewed as (A, K, B); out serves as scratch.

    B == 1: one task per row, lane-vectorised max and sum. B > 1: tasks of
    ``bchunk`` columns, vectorised along b.
    """
    nb = 1 if B == 1 else (B + bchunk - 1) // bchunk
    for t in prange(A * nb):
        if B == 1:
            lo = t * K
            hi = lo + K
            m = _max_span(x, lo, hi)
            for i in range(lo, hi):
                out[i] = vexp(x[i] - m)
            s = _sum_span(out, lo, hi)
            if log:
                shift = m + out.dtype.type(math.log(s))
                for i in range(lo, hi):
                    out[i] = x[i] - shift
            else:
                inv = out.dtype.type(1.0 / s)
                for i in range(lo, hi):
                    out[i] = out[i] * inv
            continue
        a = t // nb
        b0 = (t - a * nb) * bchunk
        n = min(b0 + bchunk, B) - b0
        base = a * K * B + b0
        mx = x[base:base + n].copy()
        for k in range(1, K):
            row = base + k * B
            for j in range(n):
                v = x[row + j]
                mj = mx[j]
                mx[j] = v if (v > mj or v != v) else mj
        sm = np.zeros(n, np.float64)
        for k in range(K):
            row = base + k * B
            for j in range(n):
                e = vexp(x[row + j] - mx[j])
                out[row + j] = e
                sm[j] += e
        fix = np.empty(n, out.dtype)
        for j in range(n):
            fix[j] = mx[j] + math.log(sm[j]) if log else 1.0 / sm[j]
        for k in range(K):
            row = base + k * B
            for j in range(n):
                out[row + j] = x[row + j] - fix[j] if log else out[row + j] * fix[j]


@njit(**_PAR)
def softmax_backward(g, y, A, K, B, log, out):
    """grad_input of softmax (y*(g - sum(g*y))) or log-softmax (g - exp(y)*sum(g)) over k."""
    for t in prange(A if B == 1 else A * B):
        if B == 1:
            lo = t * K
            hi = lo + K
            if log:
                s = _sum_span(g, lo, hi)
            else:
                acc = np.zeros(LANES, np.float64)
                stop = lo + K // LANES * LANES
                for i in range(lo, stop, LANES):
                    for j in range(LANES):
                        acc[j] += g[i + j] * np.float64(y[i + j])
                s = 0.0
                for j in range(LANES):
                    s += acc[j]
                for i in range(stop, hi):
                    s += g[i] * np.float64(y[i])
            step = 1
        else:
            a = t // B
            lo = a * K * B + (t - a * B)
            hi = lo + K * B
            step = B
            s = 0.0
            for i in range(lo, hi, step):
                s += g[i] if log else g[i] * np.float64(y[i])
        sd = out.dtype.type(s)
        for i in range(lo, hi, step):
            out[i] = g[i] - vexp(y[i]) * sd if log else y[i] * (g[i] - sd)


# ----------------------------------------------------------------- nll loss --

@njit(**_JIT)
def nll_forward(x, target, weight, ignore_index, per_sample):
    """(sum of -w[t]*x[n,t], sum of w[t]) over n, ignoring ignore_index; writes per_sample[n].

    x is (N, C); weight is a length-C float64 array; per_sample (length N or
    0 to skip) receives each sample's loss.
    """
    total = 0.0
    wsum = 0.0
    for n in range(x.shape[0]):
        t = target[n]
        loss = 0.0
        if t != ignore_index:
            w = weight[t]
            loss = -w * x[n, t]
            wsum += w
        total += loss
        if per_sample.size:
            per_sample[n] = loss
    return total, wsum


@njit(**_JIT)
def nll_backward(grad, target, weight, ignore_index, gi):
    """gi[n, t] = -w[t] * grad[n] (grad broadcast when it has one element); gi zeroed by caller."""
    one = grad.size == 1
    for n in range(gi.shape[0]):
        t = target[n]
        if t != ignore_index:
            g = grad[0] if one else grad[n]
            gi[n, t] = -weight[t] * g


# ------------------------------------------------------------------ pooling --

@njit(**_PAR)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, out, idx):
    """x (P, H, W) -> out, idx (P, OH, OW); torch's window walk and NaN rule."""
    P, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for t in prange(P * OH):
        p = t // OH
        oh = t - p * OH
        h0 = oh * sh - ph
        h1 = min(h0 + (kh - 1) * dh + 1, H)
        while h0 < 0:
            h0 += dh
        for ow in range(OW):
            w0 = ow * sw - pw
            w1 = min(w0 + (kw - 1) * dw + 1, W)
            while w0 < 0:
                w0 += dw
            bi = h0 * W + w0
            best = x.dtype.type(-np.inf)
            for ih in range(h0, h1, dh):
                for iw in range(w0, w1, dw):
                    v = x[p, ih, iw]
                    if v > best or v != v:
                        best = v
                        bi = ih * W + iw
            out[p, oh, ow] = best
            idx[p, oh, ow] = bi


@njit(**_PAR)
def max_pool2d_backward(go, idx, gi):
    """gi[p].flat[idx[p, o]] += go[p, o]; gi is (P, H*W) and zeroed by the caller."""
    P = go.shape[0]
    for p in prange(P):
        for o in range(go.shape[1]):
            gi[p, idx[p, o]] += go[p, o]


@njit(**_PAR)
def adaptive_avg_pool2d(x, out):
    """x (P, H, W) -> out (P, OH, OW), windows [floor(i*H/OH), ceil((i+1)*H/OH))."""
    P, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for t in prange(P * OH):
        p = t // OH
        oh = t - p * OH
        h0 = oh * H // OH
        h1 = ((oh + 1) * H + OH - 1) // OH
        for ow in range(OW):
            w0 = ow * W // OW
            w1 = ((ow + 1) * W + OW - 1) // OW
            s = 0.0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    s += x[p, ih, iw]
            out[p, oh, ow] = s / ((h1 - h0) * (w1 - w0))


@njit(**_PAR)
def adaptive_avg_pool2d_backward(go, H, W, gi):
    """gi (P, H, W) from go (P, OH, OW): each window cell receives go / window size."""
    P, OH, OW = go.shape
    for p in prange(P):
        acc = np.zeros((H, W), np.float64)
        for oh in range(OH):
            h0 = oh * H // OH
            h1 = ((oh + 1) * H + OH - 1) // OH
            for ow in range(OW):
                w0 = ow * W // OW
                w1 = ((ow + 1) * W + OW - 1) // OW
                g = go[p, oh, ow] / ((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc[ih, iw] += g
        for ih in range(H):
            for iw in range(W):
                gi[p, ih, iw] = acc[ih, iw]
