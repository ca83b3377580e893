"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions: 2.25x fewer multiplications.

Private engine behind the ``numba`` provider of :mod:`streamq.kernels.conv`
(arguments arrive validated; chosen by ``_conv_fast``). Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks" (2016): every 2x2 output tile is
``A^T [ (G g G^T) * (B^T d B) ] A`` for its 4x4 input tile ``d`` and filter
``g``. Over a block of tiles the elementwise product becomes 16 GEMMs, one per
transform position e::

    U[e] (K, Cg) = (G g G^T)[e]       weights, transformed once per call
    V[e] (C, T)  = (B^T d B)[e]       T tiles of the block (numba kernel)
    M[e] (K, T)  = U[e] @ V[e]        per group, single-threaded BLAS
    y tile       = A^T M A            (numba kernel, alpha/beta blended here)

Images large enough for 4x4 output tiles (56x56, 28x28) run F(4x4, 3x3) instead
(``_conv_winograd4``, dispatched from :func:`forward` and :func:`backward_filter`).
Both run on the same drivers (:func:`run_forward`, :func:`run_backward_filter`),
given a :class:`Variant`: tile size, number of transform points, transform
kernels and workspace names (:data:`F2` here, ``_conv_winograd4.F4``).

The backward-data pass of a 3x3 stride-1 convolution is itself such a
forward convolution (of dy with the filters flipped and K/C swapped, padding
2 - pad), so it runs here too; the backward-filter pass is the adjoint of
:func:`forward` in the filters (:func:`backward_filter`).

Used for float32 computation only (float16 and float32 data; see
``_conv_fast._winograd``). The transforms add and subtract inputs: an inf
among them would turn into NaN in outputs the direct sum keeps at inf (inf - inf), so callers check
:func:`all_finite` first and take the GEMM engine otherwise. Rounding: the
float32 transforms add up to 9 terms before and after the GEMMs (their 0.5
factors are exact), errors of the same order as the direct GEMM's; the
weight transform is computed in float64.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Callable

import numpy as np
from numba import njit, uint64

from ._common import blend

_JIT = dict(cache=True, nogil=True, fastmath=False)

#: Take this path when each group has at least this many input and output
#: channels (smaller GEMMs lose more to BLAS overhead than Winograd saves) ...
MIN_CHANNELS = 16

#: ... and when the 2x2 tiles (plus one junk tile per tile row) compute at most
#: this many times the outputs needed: 7x7 outputs (4x5 tiles, 1.6x) lose to
#: the direct GEMM, 14x14 (1.14x) and larger win.
MAX_TILE_WASTE = 1.25

#: Work items hold whole images until they have about this many tiles (more
#: tiles: longer, faster GEMMs; fewer: more items to balance over threads, and
#: large images alone measured faster than in pairs) ...
TARGET_TILES = 512
#: ... and their V (and M) blocks at most this many elements (else bands of tile rows).
BLOCK_ELEMS = 1 << 21


def applies(g) -> bool:
    """Whether geometry ``g`` is a 3x3 stride-1 undilated convolution suited to Winograd."""
    return (g.R == 3 and g.S == 3 and g.sh == 1 and g.sw == 1 and g.dh == 1 and g.dw == 1
            and min(g.Cg, g.Kg) >= MIN_CHANNELS and tiles_fit(g, 2, MAX_TILE_WASTE))


def tiles_fit(g, m: int, max_waste: float) -> bool:
    """Whether m x m output tiles (plus one junk tile per tile row) compute at most
    ``max_waste`` times the P x Q outputs of ``g``."""
    tP, tQ = -(-g.P // m), -(-g.Q // m)
    return m * m * tP * (tQ + 1) <= max_waste * g.P * g.Q


def transform_filters(w: np.ndarray, cdt, U: np.ndarray | None = None) -> np.ndarray:
    """w (K, Cg, 3, 3) as U (16, K, Cg) in ``cdt``: U[a*4+b] = (G w G^T)[a, b], in float64.

    Writes into ``U`` (C-contiguous, that shape and dtype) when given.
    """
    K, Cg = w.shape[:2]
    if U is None:
        U = np.empty((16, K, Cg), dtype=cdt)
    _filter_transform(np.ascontiguousarray(w, dtype=cdt).reshape(K * Cg, 9), U.reshape(16, K * Cg))
    return U


@njit(inline="always")
def _g_rows(g0, g1, g2):
    """G @ (g0, g1, g2) with G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    return g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2


#: Filters per chunk of the filter transforms: U is written (and dU read) in runs of
#: this many, through a small buffer (16 scattered accesses per filter measured 1.1-1.2x
#: slower at 128-256 channels, 2.6x at 512).
_CHUNK = 64


@njit(**_JIT)
def _filter_transform(w, U):
    """U[:, j] = G w_j G^T for every 3x3 filter w_j (row j of w, row-major), in float64."""
    n = w.shape[0]
    buf = np.empty((16, _CHUNK))
    for j0 in range(0, n, _CHUNK):
        nb = min(_CHUNK, n - j0)
        for jj in range(nb):
            j = j0 + jj
            f0, f1, f2 = np.float64(w[j, 0]), np.float64(w[j, 1]), np.float64(w[j, 2])
            f3, f4, f5 = np.float64(w[j, 3]), np.float64(w[j, 4]), np.float64(w[j, 5])
            f6, f7, f8 = np.float64(w[j, 6]), np.float64(w[j, 7]), np.float64(w[j, 8])
            # t = G g, column by column
            t00, t10, t20, t30 = _g_rows(f0, f3, f6)
            t01, t11, t21, t31 = _g_rows(f1, f4, f7)
            t02, t12, t22, t32 = _g_rows(f2, f5, f8)
            # U = t G^T, row by row
            buf[0, jj], buf[1, jj], buf[2, jj], buf[3, jj] = _g_rows(t00, t01, t02)
            buf[4, jj], buf[5, jj], buf[6, jj], buf[7, jj] = _g_rows(t10, t11, t12)
            buf[8, jj], buf[9, jj], buf[10, jj], buf[11, jj] = _g_rows(t20, t21, t22)
            buf[12, jj], buf[13, jj], buf[14, jj], buf[15, jj] = _g_rows(t30, t31, t32)
        for e in range(16):
            for jj in range(nb):
                U[e, j0 + jj] = buf[e, jj]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _finite_sum(a):
    acc = a.dtype.type(0)
    for i in range(a.size):
        acc += a[i] * 0  # NaN for NaN or +-inf, 0 otherwise; reassoc lets LLVM vectorise
    return acc


def all_finite(a: np.ndarray) -> bool:
    """Whether a C-contiguous float array holds no NaN or inf (one vectorised read)."""
    return bool(_finite_sum(a.reshape(-1)) == 0)


# Layout: a block's tiles are numbered (image i, tile row tr, tile column j)
# -> (i*ntr + tr)*Wt + j with Wt = tQ + 1: each tile row carries one junk
# tile (j = tQ), so that tile (tr, j) reads the even/odd-split input planes at
# flat offset tr*Wt + j plus a constant per tap, and every loop below runs
# over a whole band of tiles at unit stride (LLVM vectorises it). The junk
# tiles cost 1/(tQ+1) extra GEMM columns and are never written out (the
# gradient transform makes them zero). Offsets into flat views are unsigned
# (no negative-index wrap-around code); the arithmetic stages are helpers
# taking one 1-D slice per stream and looping with plain indices: that form
# LLVM vectorises (flat offsets into one array it does not, needing too many
# runtime alias checks).

@njit(**_JIT)
def _rows_dB(xe, xo, e0, e1, e2, e3):
    """One tile row of d B: (x0 - x2, x1 + x2, x2 - x1, x1 - x3), x = even/odd columns."""
    for t in range(e0.size):
        x0 = xe[t]
        x1 = xo[t]
        x2 = xe[t + 1]
        x3 = xo[t + 1]
        e0[t] = x0 - x2
        e1[t] = x1 + x2
        e2[t] = x2 - x1
        e3[t] = x1 - x3


@njit(**_JIT)
def _cols_BtdB(e0, e1, e2, e3, v0, v1, v2, v3):
    """B^T (d B) down one transform column: (e0 - e2, e1 + e2, e2 - e1, e1 - e3)."""
    for t in range(v0.size):
        a1 = e1[t]
        a2 = e2[t]
        v0[t] = e0[t] - a2
        v1[t] = a1 + a2
        v2[t] = a2 - a1
        v3[t] = a1 - e3[t]


@njit(**_JIT)
def _rows_MA(m0, m1, m2, m3, f0, f1):
    """M A along one transform row: (m0 + m1 + m2, m1 - m2 - m3)."""
    for t in range(f0.size):
        a1 = m1[t]
        a2 = m2[t]
        f0[t] = m0[t] + a1 + a2
        f1[t] = a1 - a2 - m3[t]


@njit(**_JIT)
def input_transform(x, V, n0, nb, t0, ntr, tQ, ph, pw):
    """V (16, C, nb*ntr*(tQ+1)) <- B^T d B of the 4x4 input tiles of images n0.., tile rows t0...

    Tile (tr, j) of image n0+i reads the zero-padded input at rows
    2*(t0+tr) - ph .. +3, columns 2*j - pw .. +3. x and V must be C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wt = tQ + 1
    L = uint64(ntr * Wt)
    T = uint64(nb * ntr * Wt)
    psize = uint64((ntr + 1) * Wt + 1)
    xf = x.reshape(-1)
    vf = V.reshape(-1)
    # X[a*2+b] flat (ntr+1, Wt) (+1): padded input at row 2*(t0+r) + a, column 2*j + b.
    X = np.zeros(4 * psize, dtype=V.dtype)
    E = np.empty(16 * L, dtype=V.dtype)
    for c in range(C):
        for i in range(nb):
            for a in range(2):
                for r in range(ntr + 1):
                    h = 2 * (t0 + r) + a - ph
                    ev = uint64(2 * a) * psize + uint64(r * Wt)
                    od = ev + psize
                    for j in range(Wt):
                        X[ev + uint64(j)] = 0
                        X[od + uint64(j)] = 0
                    if h < 0 or h >= H:
                        continue
                    src = uint64((((n0 + i) * C + c) * H + h) * W)
                    for j in range(W):
                        col = j + pw  # padded column: even -> X[a*2], odd -> X[a*2+1]
                        X[(od if col & 1 else ev) + uint64(col >> 1)] = xf[src + uint64(j)]
            # Rows of d B: (x0 - x2, x1 + x2, x2 - x1, x1 - x3) for each tile row u.
            for u in range(4):
                ev = uint64(2 * (u & 1)) * psize + uint64((u >> 1) * Wt)
                od = ev + psize
                e = uint64(4 * u) * L
                _rows_dB(X[ev:ev + L + 1], X[od:od + L + 1], E[e:e + L], E[e + L:e + 2 * L],
                         E[e + 2 * L:e + 3 * L], E[e + 3 * L:e + 4 * L])
            # B^T (d B): the same combination down the columns.
            base = uint64(c) * T + uint64(i) * L
            plane = uint64(C) * T
            for b in range(4):
                r = uint64(b) * L
                o = base + uint64(b) * plane
                o4, o8, o12 = o + 4 * plane, o + 8 * plane, o + 12 * plane
                _cols_BtdB(E[r:r + L], E[r + 4 * L:r + 5 * L], E[r + 8 * L:r + 9 * L],
                           E[r + 12 * L:r + 13 * L], vf[o:o + L], vf[o4:o4 + L],
                           vf[o8:o8 + L], vf[o12:o12 + L])


@njit(**_JIT)
def output_transform(M, y, n0, nb, t0, ntr, tQ, alpha, beta):
    """y[n0.., :, tile rows t0..] = alpha * A^T M A + beta * y (beta == 0: y not read).

    M (16, K, nb*ntr*(tQ+1)) and y (N, K, P, Q) must be C-contiguous.
    """
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    Wt = tQ + 1
    L = uint64(ntr * Wt)
    T = uint64(nb * ntr * Wt)
    mf = M.reshape(-1)
    yf = y.reshape(-1)
    plane = uint64(K) * T
    F = np.empty(8 * L, dtype=M.dtype)
    O = np.empty(4 * L, dtype=M.dtype)  # output rows 0/1 of each tile, even/odd columns
    half = Q // 2
    for k in range(K):
        for i in range(nb):
            base = uint64(k) * T + uint64(i) * L
            # M A along each row a: (m0 + m1 + m2, m1 - m2 - m3)
            for a in range(4):
                s0 = base + uint64(4 * a) * plane
                s1, s2, s3 = s0 + plane, s0 + 2 * plane, s0 + 3 * plane
                f = uint64(2 * a) * L
                _rows_MA(mf[s0:s0 + L], mf[s1:s1 + L], mf[s2:s2 + L], mf[s3:s3 + L],
                         F[f:f + L], F[f + L:f + 2 * L])
            # A^T (M A), the same combination down the columns: rows 0 + 1 + 2, 1 - 2 - 3.
            for v in range(2):
                f = uint64(v) * L
                _rows_MA(F[f:f + L], F[f + 2 * L:f + 3 * L], F[f + 4 * L:f + 5 * L],
                         F[f + 6 * L:f + 7 * L], O[f:f + L], O[f + 2 * L:f + 3 * L])
            for tr in range(ntr):
                for u in range(2):
                    p = 2 * (t0 + tr) + u
                    if p >= P:
                        break
                    dst = uint64((((n0 + i) * K + k) * P + p) * Q)
                    ev = uint64(2 * u) * L + uint64(tr * Wt)
                    od = ev + L
                    if beta == 0:
                        for m in range(half):
                            mm = uint64(m)
                            yf[dst + 2 * mm] = alpha * O[ev + mm]
                            yf[dst + 2 * mm + 1] = alpha * O[od + mm]
                        if Q & 1:
                            yf[dst + uint64(Q - 1)] = alpha * O[ev + uint64(half)]
                    else:
                        for m in range(half):
                            mm = uint64(m)
                            yf[dst + 2 * mm] = alpha * O[ev + mm] + beta * yf[dst + 2 * mm]
                            yf[dst + 2 * mm + 1] = (alpha * O[od + mm]
                                                    + beta * yf[dst + 2 * mm + 1])
                        if Q & 1:
                            q = dst + uint64(Q - 1)
                            yf[q] = alpha * O[ev + uint64(half)] + beta * yf[q]


@njit(**_JIT)
def _adjoint_A(p0, p1, o0, o1, o2, o3):
    """A @ (p0, p1) with A = [[1, 0], [1, 1], [1, -1], [0, -1]] (the adjoint of A^T)."""
    for t in range(o0.size):
        a = p0[t]
        b = p1[t]
        o0[t] = a
        o1[t] = a + b
        o2[t] = a - b
        o3[t] = -b


@njit(**_JIT)
def gradient_transform(dy, M, n0, nb, t0, ntr, tQ):
    """M (16, K, nb*ntr*(tQ+1)) <- A dy_tile A^T for the 2x2 tiles of dy: the adjoint of
    :func:`output_transform`, zero for junk tiles and outputs past P or Q.

    dy (N, K, P, Q) and M must be C-contiguous.
    """
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    Wt = tQ + 1
    L = ntr * Wt
    T = nb * L
    yf = dy.reshape(-1)
    mf = M.reshape(-1)
    plane = K * T
    Y = np.zeros(4 * L, dtype=M.dtype)  # rows 0/1 of each tile, even/odd columns
    Z = np.empty(8 * L, dtype=M.dtype)  # Z[u*4 + b]: (A y_u)[b]
    for k in range(K):
        for i in range(nb):
            for tr in range(ntr):
                for u in range(2):
                    p = 2 * (t0 + tr) + u
                    ev = uint64(2 * u * L + tr * Wt)
                    od = ev + uint64(L)
                    if p >= P:
                        for m in range(Wt):
                            Y[ev + uint64(m)] = 0
                            Y[od + uint64(m)] = 0
                        continue
                    src = uint64((((n0 + i) * K + k) * P + p) * Q)
                    for m in range(Wt):
                        q = 2 * m
                        Y[ev + uint64(m)] = yf[src + uint64(q)] if q < Q else 0
                        Y[od + uint64(m)] = yf[src + uint64(q + 1)] if q + 1 < Q else 0
            for u in range(2):
                e, z = 2 * u * L, 4 * u * L
                _adjoint_A(Y[e:e + L], Y[e + L:e + 2 * L], Z[z:z + L], Z[z + L:z + 2 * L],
                           Z[z + 2 * L:z + 3 * L], Z[z + 3 * L:z + 4 * L])
            base = k * T + i * L
            for b in range(4):
                o = base + b * plane
                _adjoint_A(Z[b * L:(b + 1) * L], Z[(4 + b) * L:(5 + b) * L], mf[o:o + L],
                           mf[o + 4 * plane:o + 4 * plane + L], mf[o + 8 * plane:o + 8 * plane + L],
                           mf[o + 12 * plane:o + 12 * plane + L])


@njit(**_JIT)
def _filter_gradient(dU, dW):
    """dW[j] = G^T dU[:, j] G (3x3 from 4x4, float64): the adjoint of :func:`_filter_transform`.

    G^T rows: (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1).
    """
    n = dU.shape[1]
    buf = np.empty((16, _CHUNK))
    for j in range(n):
        jj = j % _CHUNK
        if jj == 0:  # read dU in runs (see _CHUNK)
            nb = min(_CHUNK, n - j)
            for e in range(16):
                for i in range(nb):
                    buf[e, i] = dU[e, j + i]
        for a in range(4):  # t = dU G, row a: 4 -> 3 columns
            u0, u1 = buf[a * 4, jj], buf[a * 4 + 1, jj]
            u2, u3 = buf[a * 4 + 2, jj], buf[a * 4 + 3, jj]
            c0 = u0 + 0.5 * (u1 + u2)
            c1 = 0.5 * (u1 - u2)
            c2 = 0.5 * (u1 + u2) + u3
            if a == 0:
                t00, t01, t02 = c0, c1, c2
            elif a == 1:
                t10, t11, t12 = c0, c1, c2
            elif a == 2:
                t20, t21, t22 = c0, c1, c2
            else:
                t30, t31, t32 = c0, c1, c2
        dW[j, 0] = t00 + 0.5 * (t10 + t20)
        dW[j, 1] = t01 + 0.5 * (t11 + t21)
        dW[j, 2] = t02 + 0.5 * (t12 + t22)
        dW[j, 3] = 0.5 * (t10 - t20)
        dW[j, 4] = 0.5 * (t11 - t21)
        dW[j, 5] = 0.5 * (t12 - t22)
        dW[j, 6] = 0.5 * (t10 + t20) + t30
        dW[j, 7] = 0.5 * (t11 + t21) + t31
        dW[j, 8] = 0.5 * (t12 + t22) + t32


def backward_filter(xc, dyc, dw, g, alpha, beta, flip):
    """dw = alpha * grad_w + beta * dw by F(2x2, 3x3); xc, dyc C-contiguous float32.

    The adjoint of :func:`forward` in the filters (:func:`run_backward_filter`).
    Flipped in R and S when ``flip``. Images large enough for 4x4 tiles run
    F(4x4, 3x3) instead (``_conv_winograd4``).
    """
    from . import _conv_winograd4

    if _conv_winograd4.applies(g):
        return _conv_winograd4.backward_filter(xc, dyc, dw, g, alpha, beta, flip)
    run_backward_filter(F2, xc, dyc, dw, g, alpha, beta, flip)


def forward(xc, w, y, g, alpha, beta):
    """y = alpha * conv(xc, w) + beta * y by F(2x2, 3x3); xc C-contiguous in the compute dtype.

    w is oriented (flipped if needed), shape (K, Cg, 3, 3) (:func:`run_forward`).
    Images large enough for 4x4 tiles run F(4x4, 3x3) instead (``_conv_winograd4``).
    """
    from . import _conv_winograd4

    if _conv_winograd4.applies(g):
        return _conv_winograd4.forward(xc, w, y, g, alpha, beta)
    run_forward(F2, xc, w, y, g, alpha, beta)


# --------------------------------------------------------------------------- #
# Drivers shared by F(2x2, 3x3) and F(4x4, 3x3)
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Variant:
    """One Winograd F(m x m, 3x3) algorithm: what the shared drivers need of it.

    The kernels take the same arguments in both variants; ``points`` is the number
    of transform positions ((m + 2)^2: the GEMMs per block and U/V/M's first axis).
    """

    m: int  #: output tile size
    points: int
    ws: str  #: workspace name prefix
    tunables: ModuleType  #: module whose TARGET_TILES and BLOCK_ELEMS apply (read per call)
    transform_filters: Callable  #: (w, cdt, U) -> U (points, K, Cg)
    input_transform: Callable  #: (x, V, n0, nb, t0, ntr, tQ, ph, pw)
    output_transform: Callable  #: (M, y, n0, nb, t0, ntr, tQ, alpha, beta)
    gradient_transform: Callable  #: (dy, M, n0, nb, t0, ntr, tQ)
    filter_gradient: Callable  #: (dU (points, K*Cg), dW (K*Cg, 9) float64)


def _blocks(v: Variant, g, tP, tQ):
    """Work items (n0, nb, t0, ntr) over images and tile rows (see ``_conv_fast.plan``)."""
    from . import _conv_fast as cf
    from ._conv_gemm import threads
    rows = v.points * max(g.C, g.K)  # V or M elements per tile
    limit = min(v.tunables.BLOCK_ELEMS, rows * max(tP * tQ, v.tunables.TARGET_TILES))
    tiles = SimpleNamespace(N=g.N, P=tP, Q=tQ, R=3, S=3, ph=0, pw=0, sh=1, sw=1)
    return cf.plan(tiles, rows, threads(), limit)


def run_forward(v: Variant, xc, w, y, g, alpha, beta):
    """y = alpha * conv(xc, w) + beta * y by variant ``v`` (see :func:`forward`).

    Work items are blocks of whole images or bands of tile rows (:func:`_blocks`):
    V = B^T d B, then M[e] = U[e] @ V[e] per group, then y = A^T M A.
    """
    from . import _conv_fast as cf
    from ._conv_gemm import gemm, parallel_for

    cdt = xc.dtype
    E = v.points
    U = v.transform_filters(w, cdt, cf.workspace(v.ws + ".u", (E, g.K, g.Cg), cdt))
    tP, tQ = -(-g.P // v.m), -(-g.Q // v.m)
    blocks = _blocks(v, g, tP, tQ)
    direct = cf._direct(y, cdt)
    out = y if direct else cf.workspace(v.ws + ".y", y.shape, cdt)
    a0, b0 = (alpha, beta) if direct else (1.0, 0.0)

    def block(i):
        n0, nb, t0, ntr = blocks[i]
        T = nb * ntr * (tQ + 1)
        V = cf.workspace(v.ws + ".v", (E, g.C, T), cdt)
        M = cf.workspace(v.ws + ".m", (E, g.K, T), cdt)
        v.input_transform(xc, V, n0, nb, t0, ntr, tQ, g.ph, g.pw)
        for e in range(E):
            for gi in range(g.G):
                k0, c0 = gi * g.Kg, gi * g.Cg
                gemm(U[e, k0:k0 + g.Kg], V[e, c0:c0 + g.Cg], M[e, k0:k0 + g.Kg])
        v.output_transform(M, out, n0, nb, t0, ntr, tQ, a0, b0)

    parallel_for(len(blocks), block)
    if not direct:
        blend(y, out, alpha, beta)


def run_backward_filter(v: Variant, xc, dyc, dw, g, alpha, beta, flip):
    """dw = alpha * grad_w + beta * dw by variant ``v`` (see :func:`backward_filter`).

    Per block V from x as in :func:`run_forward`, dM = A dy_tile A^T, then
    dU[e] += dM[e] @ V[e]^T (per-thread partial sums); finally dw = G^T dU G.
    """
    from . import _conv_fast as cf
    from ._conv_gemm import gemm, parallel_for

    cdt = xc.dtype
    E = v.points
    tP, tQ = -(-g.P // v.m), -(-g.Q // v.m)
    blocks = _blocks(v, g, tP, tQ)
    acc = cf._Partials(v.ws + ".du", (E, g.K, g.Cg, 1), cdt)

    def block(i):
        n0, nb, t0, ntr = blocks[i]
        T = nb * ntr * (tQ + 1)
        V = cf.workspace(v.ws + ".v", (E, g.C, T), cdt)
        M = cf.workspace(v.ws + ".m", (E, g.K, T), cdt)
        v.input_transform(xc, V, n0, nb, t0, ntr, tQ, g.ph, g.pw)
        v.gradient_transform(dyc, M, n0, nb, t0, ntr, tQ)
        part = acc.mine().reshape(E, g.K, g.Cg)
        for e in range(E):
            for gi in range(g.G):
                k0, c0 = gi * g.Kg, gi * g.Cg
                gemm(M[e, k0:k0 + g.Kg], V[e, c0:c0 + g.Cg], part[e, k0:k0 + g.Kg], 1.0, 1.0,
                     trans_b=True)

    parallel_for(len(blocks), block)
    parts = list(acc.parts.values())
    total = parts[0]
    with np.errstate(invalid="ignore", over="ignore"):
        for p in parts[1:]:
            total += p
    grad = cf.workspace(v.ws + ".grad", (g.K * g.Cg, 9), np.float64)
    v.filter_gradient(total.reshape(E, g.K * g.Cg), grad)
    grad = grad.reshape(g.K, g.Cg, 3, 3)
    blend(dw, grad[:, :, ::-1, ::-1] if flip else grad, alpha, beta)


#: F(2x2, 3x3): 4x4 input tiles, 16 transform points.
F2 = Variant(m=2, points=16, ws="conv.wino", tunables=sys.modules[__name__],
             transform_filters=transform_filters, input_transform=input_transform,
             output_transform=output_transform, gradient_transform=gradient_transform,
             filter_gradient=_filter_gradient)
