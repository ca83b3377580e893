"""numba kernels behind the ``numba`` provider of the ATen ops.

Every kernel works on C-contiguous arrays whose sizes the caller has already
validated; none of them checks bounds. All are compiled with
``cache=True, nogil=True, fastmath=False, error_model="numpy"`` (division by
zero gives inf/NaN without a check that would block vectorisation); the big
ones are ``parallel=True``. Softmax uses the cuDNN kernels of ``_dnn_softmax``.

Vectorisation without fastmath: a reduction ``s += x[i]`` cannot be
vectorised by LLVM without reassociation, so reductions keep :data:`LANES`
independent partial results (``acc[j] += x[i + j]``), which LLVM can vectorise
while the order of operations stays fixed and deterministic. ``exp`` from libm
is not vectorisable either, so :func:`vexp` is a Cephes-style range reduction
plus polynomial built only from vectorisable operations (2**n is made by
writing the exponent bits directly), accurate to ~1 ulp in float32 and ~2 ulp
in float64, with inf/NaN/underflow handled as libm does. sigmoid and tanh use
``vsigmoid``/``vtanh`` from :mod:`._vmath` (sign-split, nothing overflows).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import _dnn_common  # noqa: F401
from ._vmath import vsigmoid, vtanh

LANES = 16
_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
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
_F4_HALF, _F4_ONE, _F4_INF = _f4(0.5), _f4(1.0), _f4(np.inf)
# Adding then subtracting 1.5 * 2**(mantissa bits) rounds to the nearest integer
# (|t| < 2**22 resp. 2**51) with plain arithmetic, which vectorises where
# np.floor (a libm call) does not; fastmath is off, so LLVM keeps both operations.
_RND32, _RND64 = _f4(12582912.0), 6755399441055744.0


@intrinsic
def _sel(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM select (no branch, so loops around it vectorise)."""
    if cond != types.boolean or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)
    return a(cond, a, b), codegen


@njit(inline="always", **_JIT)
def _vexp32(x):
    xc = _sel(x < _E32_HI, x, _E32_HI)          # NaN and overflow are fixed below
    xc = _sel(xc > _E32_LO, xc, _E32_LO)
    fx = (xc * _E32_LOG2E + _RND32) - _RND32    # round to nearest, branch- and call-free
    r = xc - fx * _E32_C1
    r = r - fx * _E32_C2
    p = ((((_E32_P[0] * r + _E32_P[1]) * r + _E32_P[2]) * r + _E32_P[3]) * r + _E32_P[4]) * r
    p = (p + _E32_P[5]) * (r * r) + r + _F4_ONE
    h = (fx * _F4_HALF + _RND32) - _RND32      # 2**fx = 2**h * 2**(fx-h): both normal
    y = p * _pow2_f32(np.int32(h)) * _pow2_f32(np.int32(fx - h))
    y = _sel(x > _E32_HI, _F4_INF, y)
    return _sel(x != x, x, y)


_E64_HI, _E64_LO = 709.782712893384, -745.1332191019412
_E64_LOG2E, _E64_C1, _E64_C2 = 1.4426950408889634, 6.93145751953125e-1, 1.42860682030941723212e-6
_E64_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_E64_Q = (3.00198505138664455042e-6, 2.52448340349684104192e-3,
          2.27265548208155028766e-1, 2.00000000000000000009e0)


@njit(inline="always", **_JIT)
def _vexp64(x):
    xc = _sel(x < _E64_HI, x, _E64_HI)
    xc = _sel(xc > _E64_LO, xc, _E64_LO)
    fx = (xc * _E64_LOG2E + _RND64) - _RND64
    r = xc - fx * _E64_C1
    r = r - fx * _E64_C2
    rr = r * r
    px = r * ((_E64_P[0] * rr + _E64_P[1]) * rr + _E64_P[2])
    qx = ((_E64_Q[0] * rr + _E64_Q[1]) * rr + _E64_Q[2]) * rr + _E64_Q[3]
    p = 1.0 + 2.0 * (px / (qx - px))
    h = (fx * 0.5 + _RND64) - _RND64
    y = p * _pow2_f64(np.int32(h)) * _pow2_f64(np.int32(fx - h))
    y = _sel(x > _E64_HI, np.inf, y)
    return _sel(x != x, x, y)


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

# Binary, transcendental and backward ops share one parallel kernel per family
# (fewer parfor specialisations to compile); each parallel task runs a serial,
# unit-stride loop over one chunk with the op chosen outside the loop, which
# LLVM vectorises.
_CHUNK = 1 << 14
ADD, MUL, DIV = 0, 1, 2
SIGMOID, TANH = 0, 1
THRESHOLD_BACKWARD, SIGMOID_BACKWARD, TANH_BACKWARD = 0, 1, 2


@njit(**_JIT)
def _binary_chunk(op, a, b, alpha, out):
    if op == ADD:
        for i in range(out.size):
            out[i] = a[i] + alpha * b[i]
    elif op == MUL:
        for i in range(out.size):
            out[i] = a[i] * b[i]
    else:
        for i in range(out.size):
            out[i] = a[i] / b[i]


@njit(**_PAR)
def binary(op, a, b, alpha, out):
    """out = a + alpha*b (ADD), a*b (MUL) or a/b (DIV), elementwise."""
    for t in prange((out.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, out.size)
        _binary_chunk(op, a[lo:hi], b[lo:hi], alpha, out[lo:hi])


@njit(**_JIT)
def _scalar_chunk(op, a, s, out):
    if op == ADD:
        for i in range(out.size):
            out[i] = a[i] + s
    elif op == MUL:
        for i in range(out.size):
            out[i] = a[i] * s
    else:
        for i in range(out.size):
            out[i] = a[i] / s


@njit(**_PAR)
def binary_scalar(op, a, s, out):
    """out = a + s (ADD; fold alpha into s), a*s (MUL) or a/s (DIV), elementwise."""
    for t in prange((out.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, out.size)
        _scalar_chunk(op, a[lo:hi], s, out[lo:hi])


@njit(**_PAR)
def threshold(x, th, value, out):
    """out = value where x <= th else x (NaN passes through, as torch); any numeric dtype."""
    for i in prange(out.size):
        v = x[i]
        out[i] = value if v <= th else v


@njit(**_JIT)
def _unary_chunk(op, x, out):
    if op == SIGMOID:
        for i in range(out.size):
            out[i] = vsigmoid(x[i])
    else:
        for i in range(out.size):
            out[i] = vtanh(x[i])


@njit(**_PAR)
def unary(op, x, out):
    """out = sigmoid(x) (SIGMOID) or tanh(x) (TANH), elementwise."""
    for t in prange((out.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, out.size)
        _unary_chunk(op, x[lo:hi], out[lo:hi])


def sigmoid(x, out):
    """out = 1 / (1 + exp(-x)) over 1-d contiguous float arrays."""
    unary(SIGMOID, x, out)


def tanh(x, out):
    """out = tanh(x) over 1-d contiguous float arrays."""
    unary(TANH, x, out)


@njit(**_JIT)
def _backward_chunk(op, g, y, th, out):
    one, zero = out.dtype.type(1), out.dtype.type(0)
    if op == THRESHOLD_BACKWARD:
        for i in range(out.size):
            out[i] = zero if y[i] <= th else g[i]
    elif op == SIGMOID_BACKWARD:
        for i in range(out.size):
            out[i] = g[i] * (one - y[i]) * y[i]
    else:
        for i in range(out.size):
            out[i] = g[i] * (one - y[i] * y[i])


@njit(**_PAR)
def backward(op, g, y, th, out):
    """out = 0 if y <= th else g (THRESHOLD_BACKWARD; y is the forward input),
    g*(1-y)*y (SIGMOID_BACKWARD) or g*(1-y*y) (TANH_BACKWARD; y the forward output)."""
    for t in prange((out.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, out.size)
        _backward_chunk(op, g[lo:hi], y[lo:hi], th, out[lo:hi])


# --------------------------------------------------------------- reductions --
# Input viewed as (A, K, B) in C order, reduced over K. "rows" kernels are the
# B == 1 case; they split long rows into ``nsplit`` pieces so that even a full
# reduction (A == 1) uses every thread.

@njit(**_JIT)
def _sum_span(x, lo, hi):
    """float64 sum of x[lo:hi] with LANES independent partial sums."""
    s = 0.0
    stop = lo + (hi - lo) // LANES * LANES if hi - lo >= 16 * LANES else lo
    if stop > lo:                              # long spans: LANES vectorised chains
        acc = np.zeros(LANES, np.float64)
        for i in range(lo, stop, LANES):
            for j in range(LANES):
                acc[j] += x[i + j]
        for j in range(LANES):
            s += acc[j]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0   # short spans: 8 chains, no allocation
    i = stop
    while i + 8 <= hi:
        s0 += x[i]
        s1 += x[i + 1]
        s2 += x[i + 2]
        s3 += x[i + 3]
        s4 += x[i + 4]
        s5 += x[i + 5]
        s6 += x[i + 6]
        s7 += x[i + 7]
        i += 8
    while i < hi:
        s0 += x[i]
        i += 1
    return s + (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)))


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
def adaptive_avg_pool2d(x, out):
    """x (P, H, W) -> out (P, OH, OW), windows [floor(i*H/OH), ceil((i+1)*H/OH))."""
    P, H, W = x.shape
    OH, OW = out.shape[1], out.shape[2]
    if OH == 1 and OW == 1:                    # global average: one contiguous run per plane
        flat = x.reshape(-1)
        for p in prange(P):
            out[p, 0, 0] = _sum_span(flat, p * H * W, (p + 1) * H * W) / (H * W)
        return
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
                s += _sum_span(x[p, ih], w0, w1)
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
