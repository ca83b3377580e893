"""Winograd F(4x4, 3x3) for wide 3x3 stride-1 convolutions: 4x fewer multiplications.

Private engine behind the ``numba`` provider (chosen by ``_conv_winograd.forward``
and ``.backward_filter`` when :func:`applies`; arguments arrive validated). Same
scheme as the F(2x2, 3x3) module ``_conv_winograd`` with 6x6 input tiles and 4x4
output tiles (Lavin & Gray 2016): every output tile is
``A^T [ (G g G^T) * (B^T d B) ] A``, so a block of T tiles costs 36 GEMMs
``U[e] (Kg, Cg) @ V[e] (Cg, T)``: 2.25 GEMM columns per output pixel instead of
F(2x2)'s 4 (1.78x fewer GEMM flops), and a smaller V.

Used for the forward pass, through ``_conv_fast._transposed_forward`` the
backward-data pass, and for the filter gradient (:func:`backward_filter`, the
adjoint of :func:`forward` in the filters); float32 compute, finite inputs
(callers check). On 56x56 and 28x28 layers it measured 1.15-1.6x faster per
core than F(2x2); at 14x14 (16 tiles plus a junk column for 196 outputs)
1.4-1.7x slower, hence :data:`MAX_TILE_WASTE`. Rounding: B^T and A^T have
coefficients up to 5 and 8 (G has 1/6, 1/24), so float32 errors are a few
times F(2x2)'s (~1e-6 of the largest output in the tests); the filter
transforms are computed in float64.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, uint64

from ._conv_winograd import Variant, run_backward_filter, run_forward, tiles_fit

_JIT = dict(cache=True, nogil=True, fastmath=False)

#: Take this path for 3x3 stride-1 layers (see ``_conv_winograd.applies``) whose
#: 4x4 tiles (plus one junk tile per tile row) compute at most this many times
#: the outputs needed: 56x56 (1.07x) and 28x28 (1.14x) do, 14x14 (1.63x) does not.
MAX_TILE_WASTE = 1.2
#: Work items hold whole images until they have about this many tiles (64x64
#: GEMMs ran at 33 / 40 / 49 GFLOP/s per core with 210 / 420 / 840 tiles) ...
TARGET_TILES = 1024
#: ... and their V (and M) blocks at most this many elements (else bands of tile rows).
BLOCK_ELEMS = 1 << 21

#: G (6x3) of F(4x4, 3x3): U = G g G^T.
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def applies(g) -> bool:
    """Whether a geometry that suits Winograd (``_conv_winograd.applies``) takes F(4x4)."""
    return tiles_fit(g, 4, MAX_TILE_WASTE)


def transform_filters(w: np.ndarray, cdt, U: np.ndarray | None = None) -> np.ndarray:
    """w (K, Cg, 3, 3) as U (36, K, Cg): U[a*6+b] = (G w G^T)[a, b], computed in float64."""
    K, Cg = w.shape[:2]
    if U is None:
        U = np.empty((36, K, Cg), dtype=cdt)
    _filter_transform(np.ascontiguousarray(w, dtype=cdt).reshape(K * Cg, 9),
                      U.reshape(36, K * Cg))
    return U


@njit(inline="always")
def _g6(g0, g1, g2):
    """G @ (g0, g1, g2) for the G of F(4x4, 3x3)."""
    s = g0 + g2
    u = g0 * (1.0 / 24.0) + g2 * (1.0 / 6.0)
    v = g1 * (1.0 / 12.0)
    return 0.25 * g0, (s + g1) * (-1.0 / 6.0), (s - g1) * (-1.0 / 6.0), u + v, u - v, g2


@njit(**_JIT)
def _filter_transform(w, U):
    """U[:, j] = G w_j G^T for every 3x3 filter w_j (row j of w, row-major), in float64.

    Filters go in chunks through a small buffer, so U is written in runs (36
    scattered stores per filter measured 5x slower).
    """
    n = w.shape[0]
    B = 64
    buf = np.empty((36, B))
    for j0 in range(0, n, B):
        nb = min(B, n - j0)
        for jj in range(nb):
            j = j0 + jj
            f0, f1, f2 = np.float64(w[j, 0]), np.float64(w[j, 1]), np.float64(w[j, 2])
            f3, f4, f5 = np.float64(w[j, 3]), np.float64(w[j, 4]), np.float64(w[j, 5])
            f6, f7, f8 = np.float64(w[j, 6]), np.float64(w[j, 7]), np.float64(w[j, 8])
            c0 = _g6(f0, f3, f6)  # t = G g, column by column
            c1 = _g6(f1, f4, f7)
            c2 = _g6(f2, f5, f8)
            for a in range(6):  # U = t G^T, row by row
                r = _g6(c0[a], c1[a], c2[a])
                for b in range(6):
                    buf[a * 6 + b, jj] = r[b]
        for e in range(36):
            for jj in range(nb):
                U[e, j0 + jj] = buf[e, jj]


@njit(**_JIT)
def _bt6(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5):
    """(o0..o5) = B^T (i0..i5) elementwise, B^T of F(4x4, 3x3)."""
    for t in range(o0.size):
        a1 = i1[t]
        a2 = i2[t]
        a3 = i3[t]
        a4 = i4[t]
        o0[t] = 4 * i0[t] - 5 * a2 + a4
        o1[t] = a3 + a4 - 4 * (a1 + a2)
        o2[t] = 4 * (a1 - a2) + a4 - a3
        o3[t] = 2 * (a3 - a1) + a4 - a2
        o4[t] = 2 * (a1 - a3) + a4 - a2
        o5[t] = 4 * a1 - 5 * a3 + i5[t]


@njit(**_JIT)
def _at6(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3):
    """(o0..o3) = A^T (m0..m5) elementwise, A^T of F(4x4, 3x3)."""
    for t in range(o0.size):
        a1 = m1[t]
        a2 = m2[t]
        a3 = m3[t]
        a4 = m4[t]
        s12, d12 = a1 + a2, a1 - a2
        s34, d34 = a3 + a4, a3 - a4
        o0[t] = m0[t] + s12 + s34
        o1[t] = d12 + 2 * d34
        o2[t] = s12 + 4 * s34
        o3[t] = d12 + 8 * d34 + m5[t]


# Layout as in _conv_winograd, with four column phases instead of two: tiles
# numbered (image i, tile row tr, tile column j) -> (i*ntr + tr)*Wt + j with
# Wt = tQ + 1 (one junk tile per row); X[a*4 + b] holds the padded input at row
# 4*(t0 + r) + a, column 4*j + b, flat (ntr + 1, Wt) (+1), so input row u and
# column v of tile (tr, j) is X[(u%4)*4 + v%4] at (tr + u//4)*Wt + j + v//4.

@njit(inline="always")
def _xoff(u, v, psize, Wt):
    """Flat offset in X of input row u, column v of tile (0, 0)."""
    return uint64((u % 4) * 4 + v % 4) * psize + uint64((u // 4) * Wt + v // 4)


@njit(**_JIT)
def input_transform(x, V, n0, nb, t0, ntr, tQ, ph, pw):
    """V (36, C, nb*ntr*(tQ+1)) <- B^T d B of the 6x6 input tiles of images n0.., tile rows t0...

    x and V must be C-contiguous.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wt = tQ + 1
    L = uint64(ntr * Wt)
    T = uint64(nb * ntr * Wt)
    psize = uint64((ntr + 1) * Wt + 1)
    xf = x.reshape(-1)
    vf = V.reshape(-1)
    X = np.zeros(16 * psize, dtype=V.dtype)
    E = np.empty(36 * L, dtype=V.dtype)  # E[u*6 + b]: (d B)[u, b]
    plane = uint64(C) * T
    for c in range(C):
        for i in range(nb):
            for a in range(4):
                for r in range(ntr + 1):
                    h = 4 * (t0 + r) + a - ph
                    row = uint64(r * Wt)
                    for b in range(4):
                        o = uint64(a * 4 + b) * psize + row
                        for j in range(Wt):
                            X[o + uint64(j)] = 0
                    if h < 0 or h >= H:
                        continue
                    src = uint64((((n0 + i) * C + c) * H + h) * W)
                    base = uint64(a * 4) * psize + row
                    for j in range(W):
                        col = j + pw
                        X[base + uint64(col & 3) * psize + uint64(col >> 2)] = xf[src + uint64(j)]
            for u in range(6):
                s0 = _xoff(u, 0, psize, Wt)
                s1 = _xoff(u, 1, psize, Wt)
                s2 = _xoff(u, 2, psize, Wt)
                s3 = _xoff(u, 3, psize, Wt)
                s4 = _xoff(u, 4, psize, Wt)
                s5 = _xoff(u, 5, psize, Wt)
                e = uint64(6 * u) * L
                _bt6(X[s0:s0 + L], X[s1:s1 + L], X[s2:s2 + L], X[s3:s3 + L],
                     X[s4:s4 + L], X[s5:s5 + L], E[e:e + L], E[e + L:e + 2 * L],
                     E[e + 2 * L:e + 3 * L], E[e + 3 * L:e + 4 * L], E[e + 4 * L:e + 5 * L],
                     E[e + 5 * L:e + 6 * L])
            o = uint64(c) * T + uint64(i) * L
            for b in range(6):
                r0 = uint64(b) * L
                six = uint64(6) * L
                v0 = o + uint64(b) * plane
                v6 = uint64(6) * plane
                _bt6(E[r0:r0 + L], E[r0 + six:r0 + six + L], E[r0 + 2 * six:r0 + 2 * six + L],
                     E[r0 + 3 * six:r0 + 3 * six + L], E[r0 + 4 * six:r0 + 4 * six + L],
                     E[r0 + 5 * six:r0 + 5 * six + L],
                     vf[v0:v0 + L], vf[v0 + v6:v0 + v6 + L], vf[v0 + 2 * v6:v0 + 2 * v6 + L],
                     vf[v0 + 3 * v6:v0 + 3 * v6 + L], vf[v0 + 4 * v6:v0 + 4 * v6 + L],
                     vf[v0 + 5 * v6:v0 + 5 * v6 + L])


@njit(**_JIT)
def output_transform(M, y, n0, nb, t0, ntr, tQ, alpha, beta):
    """y[n0.., :, tile rows t0..] = alpha * A^T M A + beta * y (beta == 0: y not read).

    M (36, K, nb*ntr*(tQ+1)) and y (N, K, P, Q) must be C-contiguous.
    """
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    Wt = tQ + 1
    L = uint64(ntr * Wt)
    T = uint64(nb * ntr * Wt)
    mf = M.reshape(-1)
    yf = y.reshape(-1)
    plane = uint64(K) * T
    F = np.empty(24 * L, dtype=M.dtype)  # F[a*4 + v]: (M A)[a, v]
    O = np.empty(16 * L, dtype=M.dtype)  # O[u*4 + v]: output (u, v) of each tile
    for k in range(K):
        for i in range(nb):
            base = uint64(k) * T + uint64(i) * L
            for a in range(6):
                s = base + uint64(6 * a) * plane
                f = uint64(4 * a) * L
                _at6(mf[s:s + L], mf[s + plane:s + plane + L],
                     mf[s + 2 * plane:s + 2 * plane + L], mf[s + 3 * plane:s + 3 * plane + L],
                     mf[s + 4 * plane:s + 4 * plane + L], mf[s + 5 * plane:s + 5 * plane + L],
                     F[f:f + L], F[f + L:f + 2 * L], F[f + 2 * L:f + 3 * L], F[f + 3 * L:f + 4 * L])
            for v in range(4):
                f = uint64(v) * L
                four = uint64(4) * L
                _at6(F[f:f + L], F[f + four:f + four + L], F[f + 2 * four:f + 2 * four + L],
                     F[f + 3 * four:f + 3 * four + L], F[f + 4 * four:f + 4 * four + L],
                     F[f + 5 * four:f + 5 * four + L],
                     O[f:f + L], O[f + four:f + four + L], O[f + 2 * four:f + 2 * four + L],
                     O[f + 3 * four:f + 3 * four + L])
            for tr in range(ntr):
                for u in range(4):
                    p = 4 * (t0 + tr) + u
                    if p >= P:
                        break
                    dst = uint64((((n0 + i) * K + k) * P + p) * Q)
                    src = uint64(u * 4) * L + uint64(tr * Wt)
                    for q in range(Q):
                        val = alpha * O[src + uint64(q & 3) * L + uint64(q >> 2)]
                        if beta == 0:
                            yf[dst + uint64(q)] = val
                        else:
                            yf[dst + uint64(q)] = val + beta * yf[dst + uint64(q)]


# --------------------------------------------------------------------------- #
# Filter gradient: the adjoint of forward in the filters
# --------------------------------------------------------------------------- #

@njit(**_JIT)
def _adjoint_A(y0, y1, y2, y3, o0, o1, o2, o3, o4, o5):
    """(o0..o5) = A (y0..y3) elementwise, A = (A^T)^T of F(4x4, 3x3)."""
    for t in range(o0.size):
        a0 = y0[t]
        a1 = y1[t]
        a2 = y2[t]
        a3 = y3[t]
        s02, s13 = a0 + a2, a1 + a3
        q02, q13 = a0 + 4 * a2, 2 * a1 + 8 * a3
        o0[t] = a0
        o1[t] = s02 + s13
        o2[t] = s02 - s13
        o3[t] = q02 + q13
        o4[t] = q02 - q13
        o5[t] = a3


@njit(**_JIT)
def gradient_transform(dy, M, n0, nb, t0, ntr, tQ):
    """M (36, K, nb*ntr*(tQ+1)) <- A dy_tile A^T for the 4x4 tiles of dy: the adjoint of
    :func:`output_transform`, zero for junk tiles and outputs past P or Q.

    dy (N, K, P, Q) and M must be C-contiguous.
    """
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    Wt = tQ + 1
    L = uint64(ntr * Wt)
    T = uint64(nb * ntr * Wt)
    yf = dy.reshape(-1)
    mf = M.reshape(-1)
    plane = uint64(K) * T
    Y = np.empty(16 * L, dtype=M.dtype)  # Y[u*4 + v]: dy at tile row u, column phase v
    Z = np.empty(24 * L, dtype=M.dtype)  # Z[u*6 + b]: (A y_u)[b]
    for k in range(K):
        for i in range(nb):
            for tr in range(ntr):
                for u in range(4):
                    p = 4 * (t0 + tr) + u
                    o = uint64(u * 4) * L + uint64(tr * Wt)
                    if p >= P:
                        for v in range(4):
                            for m in range(Wt):
                                Y[o + uint64(v) * L + uint64(m)] = 0
                        continue
                    src = uint64((((n0 + i) * K + k) * P + p) * Q)
                    for v in range(4):
                        for m in range(Wt):
                            q = 4 * m + v
                            Y[o + uint64(v) * L + uint64(m)] = yf[src + uint64(q)] if q < Q else 0
            for u in range(4):
                e, z = uint64(4 * u) * L, uint64(6 * u) * L
                _adjoint_A(Y[e:e + L], Y[e + L:e + 2 * L], Y[e + 2 * L:e + 3 * L],
                           Y[e + 3 * L:e + 4 * L], Z[z:z + L], Z[z + L:z + 2 * L],
                           Z[z + 2 * L:z + 3 * L], Z[z + 3 * L:z + 4 * L], Z[z + 4 * L:z + 5 * L],
                           Z[z + 5 * L:z + 6 * L])
            base = uint64(k) * T + uint64(i) * L
            six = uint64(6) * L
            p6 = uint64(6) * plane
            for b in range(6):
                z = uint64(b) * L
                o = base + uint64(b) * plane
                _adjoint_A(Z[z:z + L], Z[z + six:z + six + L], Z[z + 2 * six:z + 2 * six + L],
                           Z[z + 3 * six:z + 3 * six + L], mf[o:o + L], mf[o + p6:o + p6 + L],
                           mf[o + 2 * p6:o + 2 * p6 + L], mf[o + 3 * p6:o + 3 * p6 + L],
                           mf[o + 4 * p6:o + 4 * p6 + L], mf[o + 5 * p6:o + 5 * p6 + L])


@njit(**_JIT)
def _filter_gradient(dU, Gm, dW):
    """dW[j] = G^T dU[:, j] G (3x3 from 6x6, float64): the adjoint of :func:`_filter_transform`.

    dU is read in runs of 64 filters through a small buffer.
    """
    n = dU.shape[1]
    B = 64
    buf = np.empty((36, B))
    t = np.empty((6, 3))
    for j0 in range(0, n, B):
        nb = min(B, n - j0)
        for e in range(36):
            for jj in range(nb):
                buf[e, jj] = dU[e, j0 + jj]
        for jj in range(nb):
            for a in range(6):  # t = dU G
                for s in range(3):
                    acc = 0.0
                    for b in range(6):
                        acc += buf[a * 6 + b, jj] * Gm[b, s]
                    t[a, s] = acc
            for r in range(3):  # dW = G^T t
                for s in range(3):
                    acc = 0.0
                    for a in range(6):
                        acc += Gm[a, r] * t[a, s]
                    dW[j0 + jj, r * 3 + s] = acc


# --------------------------------------------------------------------------- #
# The variant and its entry points (drivers shared with F(2x2) in _conv_winograd)
# --------------------------------------------------------------------------- #

def _filter_gradient_g(dU, dW):
    """:func:`_filter_gradient` with this module's G (the variant's ``filter_gradient``)."""
    _filter_gradient(dU, G, dW)


#: F(4x4, 3x3): 6x6 input tiles, 36 transform points.
F4 = Variant(m=4, points=36, ws="conv.wino4", tunables=sys.modules[__name__],
             transform_filters=transform_filters, input_transform=input_transform,
             output_transform=output_transform, gradient_transform=gradient_transform,
             filter_gradient=_filter_gradient_g)


def forward(xc, w, y, g, alpha, beta):
    """y = alpha * conv(xc, w) + beta * y by F(4x4, 3x3); xc C-contiguous in the compute dtype.

    w is oriented (flipped if needed), shape (K, Cg, 3, 3) (``_conv_winograd.run_forward``).
    """
    run_forward(F4, xc, w, y, g, alpha, beta)


def backward_filter(xc, dyc, dw, g, alpha, beta, flip):
    """dw = alpha * grad_w + beta * dw by F(4x4, 3x3); xc, dyc C-contiguous float32.

    As ``_conv_winograd.backward_filter`` (``_conv_winograd.run_backward_filter``).
    """
    run_backward_filter(F4, xc, dyc, dw, g, alpha, beta, flip)
