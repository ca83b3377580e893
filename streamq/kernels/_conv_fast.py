"""The GEMM formulation of convolution (im2col + GEMM), blocked to stay in cache.

Private engine behind the ``blas`` and ``numba`` providers of
:mod:`streamq.kernels.conv`. Arguments arrive validated (see ``conv.py``).

Per group ``g`` the forward pass is ``Y_g (Kg, cols) = W_g (Kg, Cg*R*S) @ col``
where ``col`` holds one column per output pixel (layout in ``_conv_numba``).
The full column matrix of a batch is never materialised: the work is cut into
*blocks* (several whole images when images are small, else bands of output
rows of one image) whose column matrix holds at most ``COL_BLOCK_ELEMS``
elements and stays in cache while BLAS consumes it. When a block is one
image, the GEMM writes straight into the strided band of ``y`` with BLAS's
own alpha/beta. 1x1/stride-1/unpadded convolutions of large images need no
column matrix at all (``x[n]`` already is one).

Backward data is ``col = W_g^T @ dY_g`` followed by a scatter-add (col2im);
backward filter accumulates ``dW_g += dY_g @ col^T`` over blocks.

Geometries with enough channels and output columns skip the column matrix
altogether: the *phase-split implicit GEMM* (``shift_*`` below) runs one GEMM
per filter tap straight on a phase of the padded input.

A *lowering* supplies the im2col/col2im moves: :class:`NumpyLowering` (plain
numpy slicing, used by the ``blas`` provider) or :class:`NumbaLowering`
(serial numba kernels, used by the ``numba`` provider; serial so that they
never compete with OpenBLAS's own threads, which run the GEMMs). Workspaces are
cached per thread and only grow, so steady-state calls do not allocate big
buffers.
"""

from __future__ import annotations

import threading

import numpy as np

from ._common import blend
from ._conv_gemm import gemm

#: Largest column block (elements). 1 Mi float32 = 4 MiB, a fraction of L3.
COL_BLOCK_ELEMS = 1 << 20
#: A 1x1 stride-1 conv uses x[n] as its column matrix when an image has at
#: least this many pixels; smaller images are batched into one wider GEMM.
POINTWISE_MIN_COLS = 512

_tls = threading.local()


def workspace(name: str, shape: tuple, dtype) -> np.ndarray:
    """A C-contiguous scratch array of ``shape``, cached per thread and name."""
    cache = getattr(_tls, "buffers", None)
    if cache is None:
        cache = _tls.buffers = {}
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    key = (name, dtype)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(max(size, 1), dtype=dtype)
    return buf[:size].reshape(shape)


def compute_dtype(dtype) -> np.dtype:
    """float64 stays float64; float16 and float32 compute in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _valid(off: int, step: int, size: int, count: int) -> tuple[int, int]:
    """Indices i in [0, count) with 0 <= i*step + off < size, as [lo, hi)."""
    lo = 0 if off >= 0 else (-off + step - 1) // step
    last = size - 1 - off
    hi = 0 if last < 0 else min(count, last // step + 1)
    return lo, max(lo, hi)


class NumpyLowering:
    """im2col / col2im by numpy slicing, one (r, s) filter tap at a time."""

    @staticmethod
    def im2col(x, col, n0, nb, c0, p0, np_, g):
        cv = col.reshape(g.Cg, g.R, g.S, nb, np_, g.Q)
        cv.fill(0)
        for r in range(g.R):
            plo, phi = _valid(p0 * g.sh - g.ph + r * g.dh, g.sh, g.H, np_)
            if plo >= phi:
                continue
            h0 = (p0 + plo) * g.sh - g.ph + r * g.dh
            for s in range(g.S):
                qlo, qhi = _valid(s * g.dw - g.pw, g.sw, g.W, g.Q)
                if qlo >= qhi:
                    continue
                w0 = qlo * g.sw - g.pw + s * g.dw
                src = x[n0:n0 + nb, c0:c0 + g.Cg,
                        h0:h0 + (phi - plo - 1) * g.sh + 1:g.sh,
                        w0:w0 + (qhi - qlo - 1) * g.sw + 1:g.sw]
                cv[:, r, s, :, plo:phi, qlo:qhi] = src.transpose(1, 0, 2, 3)

    @staticmethod
    def col2im_add(col, acc, nb, c0, p0, np_, g):
        cv = col.reshape(g.Cg, g.R, g.S, nb, np_, g.Q)
        for r in range(g.R):
            plo, phi = _valid(p0 * g.sh - g.ph + r * g.dh, g.sh, g.H, np_)
            if plo >= phi:
                continue
            h0 = (p0 + plo) * g.sh - g.ph + r * g.dh
            for s in range(g.S):
                qlo, qhi = _valid(s * g.dw - g.pw, g.sw, g.W, g.Q)
                if qlo >= qhi:
                    continue
                w0 = qlo * g.sw - g.pw + s * g.dw
                dst = acc[0:nb, c0:c0 + g.Cg,
                          h0:h0 + (phi - plo - 1) * g.sh + 1:g.sh,
                          w0:w0 + (qhi - qlo - 1) * g.sw + 1:g.sw]
                dst += cv[:, r, s, :, plo:phi, qlo:qhi].transpose(1, 0, 2, 3)

    @staticmethod
    def gather(a, buf, n0, nb, c0, cn):
        """buf (cn, nb*HW) <- a[n0:n0+nb, c0:c0+cn] with images side by side."""
        n, c, h, w = a.shape
        buf.reshape(cn, nb, h * w)[...] = a[n0:n0 + nb, c0:c0 + cn].reshape(nb, cn, h * w).transpose(1, 0, 2)


class NumbaLowering:
    """im2col / col2im by serial numba kernels (``_conv_numba``)."""

    @staticmethod
    def im2col(x, col, n0, nb, c0, p0, np_, g):
        from . import _conv_numba as nk
        nk.im2col(x, col, n0, nb, c0, g.Cg, p0, np_, g.Q, g.R, g.S,
                  g.ph, g.pw, g.sh, g.sw, g.dh, g.dw)

    @staticmethod
    def col2im_add(col, acc, nb, c0, p0, np_, g):
        from . import _conv_numba as nk
        nk.col2im_add(col, acc, nb, c0, g.Cg, p0, np_, g.Q, g.R, g.S,
                      g.ph, g.pw, g.sh, g.sw, g.dh, g.dw)

    @staticmethod
    def gather(a, buf, n0, nb, c0, cn):
        from . import _conv_numba as nk
        n, c, h, w = a.shape
        nk.im2col(a, buf, n0, nb, c0, cn, 0, h, w, 1, 1, 0, 0, 1, 1, 1, 1)


def _pointwise(g) -> bool:
    return g.R == 1 and g.S == 1 and g.ph == 0 and g.pw == 0 and g.sh == 1 and g.sw == 1


def plan(g, rows: int) -> list[tuple[int, int, int, int]]:
    """Blocks (n0, nb, p0, np_) covering all images and output rows, in order.

    A block is either ``nb >= 1`` whole images or a band of ``np_`` output rows
    of one image, sized so its column matrix (``rows`` x ``nb*np_*Q``) stays
    within :data:`COL_BLOCK_ELEMS` (a single output row may exceed it).
    """
    per_image = rows * g.P * g.Q
    if _pointwise(g) and g.P * g.Q >= POINTWISE_MIN_COLS:
        return [(n, 1, 0, g.P) for n in range(g.N)]
    if per_image <= COL_BLOCK_ELEMS:
        nb = max(1, min(g.N, COL_BLOCK_ELEMS // per_image))
        nblocks = -(-g.N // nb)
        nb = -(-g.N // nblocks)
        return [(n0, min(nb, g.N - n0), 0, g.P) for n0 in range(0, g.N, nb)]
    band = max(1, COL_BLOCK_ELEMS // (rows * g.Q))
    nbands = -(-g.P // band)
    band = -(-g.P // nbands)
    return [(n, 1, p0, min(band, g.P - p0)) for n in range(g.N) for p0 in range(0, g.P, band)]


def _direct(out: np.ndarray, cdt: np.dtype) -> bool:
    """Whether GEMMs may write straight into ``out`` (with BLAS alpha/beta)."""
    return out.dtype == cdt and out.flags.c_contiguous


# --------------------------------------------------------------------------- #
# Phase-split implicit GEMM: no column matrix at all
# --------------------------------------------------------------------------- #
#
# Split the zero-padded image into sh*sw *phases*, x_ab[c, i, j] =
# xpad[c, i*sh + a, j*sw + b], each flattened to one row of Hph*Wph pixels per
# channel. Filter tap (r, s) then reads, for output pixel (p, q), phase
# (r*dh % sh, s*dw % sw) at flat index p*Wph + q + off_rs: for all outputs at
# once that is the plain (Cg, L) slice [off_rs, off_rs + L) of the phase, with
# L = (P-1)*Wph + Q. So each tap is one GEMM reading x in place (BLAS's leading
# dimension does the striding); the output lives on a P x Wph grid whose last
# Wph - Q columns are junk and are dropped (or, for gradients, zeroed).

#: Use the phase-split path when a group has at least this many channels
#: (each tap's GEMM has inner dimension Cg) ...
SHIFT_MIN_CHANNELS = 16
#: ... and an image gives at least this many GEMM columns (L).
SHIFT_MIN_COLS = 512


class _Taps:
    """Phase layout and the (tap index, phase, flat offset) of each filter tap."""

    def __init__(self, g):
        self.Hph = -(-(g.H + 2 * g.ph) // g.sh)
        self.Wph = -(-(g.W + 2 * g.pw) // g.sw)
        self.L = (g.P - 1) * self.Wph + g.Q
        self.taps = []
        for r in range(g.R):
            for s in range(g.S):
                a, ioff = divmod(r * g.dh, g.sh)[::-1]
                b, joff = divmod(s * g.dw, g.sw)[::-1]
                self.taps.append((r * g.S + s, a * g.sw + b, ioff * self.Wph + joff))
        self.phases = sorted({t[1] for t in self.taps})


def use_shift(g) -> bool:
    """Whether the phase-split path suits this geometry (enough channels and columns)."""
    if _pointwise(g) or g.Cg < SHIFT_MIN_CHANNELS:
        return False
    t = _Taps(g)
    return t.L >= SHIFT_MIN_COLS and t.Wph * g.P <= 1.25 * g.P * g.Q


def _all_finite(a: np.ndarray) -> bool:
    """No NaN/inf in a (one summing pass; a huge finite sum just says False).

    The phase-split gradients multiply the zeroed junk columns of dY by real
    pixels of x (filter gradient) or by w (data gradient); 0 * inf would put a
    NaN where the definition has none, so non-finite operands take the
    im2col path, whose zeros only meet padding as in the reference.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum(dtype=np.float32 if a.dtype == np.float16 else a.dtype)))


def _phase_split(xn, buf, t, g, phases):
    """buf[phase] (C, Hph*Wph) <- the phases of padded image xn (C, H, W)."""
    for ph in phases:
        a, b = divmod(ph, g.sw)
        dst = buf[ph].reshape(g.C, t.Hph, t.Wph)
        ilo, ihi = _valid(a - g.ph, g.sh, g.H, t.Hph)
        jlo, jhi = _valid(b - g.pw, g.sw, g.W, t.Wph)
        # Zero only the border the image does not cover.
        dst[:, :ilo] = 0
        dst[:, ihi:] = 0
        dst[:, ilo:ihi, :jlo] = 0
        dst[:, ilo:ihi, jhi:] = 0
        h0, w0 = ilo * g.sh + a - g.ph, jlo * g.sw + b - g.pw
        dst[:, ilo:ihi, jlo:jhi] = xn[:, h0:h0 + (ihi - ilo - 1) * g.sh + 1:g.sh,
                                     w0:w0 + (jhi - jlo - 1) * g.sw + 1:g.sw]


def _packed_taps(w, cdt):
    """w (K, Cg, R, S) as (R*S, K, Cg): one contiguous (K, Cg) matrix per tap."""
    K, Cg, R, S = w.shape
    out = workspace("conv.wtaps", (R * S, K, Cg), cdt)
    out.reshape(R, S, K, Cg)[...] = w.transpose(2, 3, 0, 1)
    return out


def _dy_extended(dyn, t, g, cdt):
    """dy[n] (K, P, Q) on the P x Wph grid, junk columns zeroed: (K, P*Wph)."""
    buf = workspace("conv.dyx", (g.K, g.P * t.Wph), cdt)
    grid = buf.reshape(g.K, g.P, t.Wph)
    grid[:, :, :g.Q] = dyn
    grid[:, :, g.Q:] = 0
    return buf


def shift_forward(x, w, y, g, alpha, beta):
    """Forward pass by phase-split implicit GEMM (see the section comment)."""
    cdt = compute_dtype(y.dtype)
    t = _Taps(g)
    wt = _packed_taps(w, cdt)
    xph = workspace("conv.phases", (g.sh * g.sw, g.C, t.Hph * t.Wph), cdt)
    direct = _direct(y, cdt) and t.Wph == g.Q
    for n in range(g.N):
        _phase_split(x[n], xph, t, g, t.phases)
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            if direct:
                out = y[n, k0:k0 + g.Kg].reshape(g.Kg, -1)
                a0, b0 = alpha, beta
            else:
                out = workspace("conv.out", (g.Kg, g.P * t.Wph), cdt)
                a0, b0 = 1.0, 0.0
            for i, (rs, ph, off) in enumerate(t.taps):
                gemm(wt[rs, k0:k0 + g.Kg], xph[ph, c0:c0 + g.Cg, off:off + t.L], out[:, :t.L],
                     a0, b0 if i == 0 else 1.0)
            if not direct:
                blend(y[n, k0:k0 + g.Kg], out.reshape(g.Kg, g.P, t.Wph)[:, :, :g.Q], alpha, beta)


def shift_backward_data(w, dy, dx, g, alpha, beta):
    """Backward data: each tap's W^T @ dY is accumulated straight into the phases of dx."""
    cdt = compute_dtype(dx.dtype)
    t = _Taps(g)
    wt = _packed_taps(w, cdt)
    nph = g.sh * g.sw
    dxph = workspace("conv.phases", (nph, g.C, t.Hph * t.Wph), cdt)
    for n in range(g.N):
        dyx = _dy_extended(dy[n], t, g, cdt)
        dxph.fill(0)
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            for rs, ph, off in t.taps:
                gemm(wt[rs, k0:k0 + g.Kg], dyx[k0:k0 + g.Kg, :t.L],
                     dxph[ph, c0:c0 + g.Cg, off:off + t.L], 1.0, 1.0, trans_a=True)
        for ph in range(nph):  # every pixel of dx lies in exactly one phase
            a, b = divmod(ph, g.sw)
            ilo, ihi = _valid(a - g.ph, g.sh, g.H, t.Hph)
            jlo, jhi = _valid(b - g.pw, g.sw, g.W, t.Wph)
            if ilo >= ihi or jlo >= jhi:
                continue
            h0, w0 = ilo * g.sh + a - g.ph, jlo * g.sw + b - g.pw
            blend(dx[n, :, h0:h0 + (ihi - ilo - 1) * g.sh + 1:g.sh,
                     w0:w0 + (jhi - jlo - 1) * g.sw + 1:g.sw],
                  dxph[ph].reshape(g.C, t.Hph, t.Wph)[:, ilo:ihi, jlo:jhi], alpha, beta)


def shift_backward_filter(x, dy, g):
    """Filter gradient (K, Cg, R, S) by per-tap dY @ phase^T GEMMs; a per-thread workspace."""
    cdt = compute_dtype(x.dtype)
    t = _Taps(g)
    acc = workspace("conv.dw", (g.R * g.S, g.K, g.Cg), cdt)
    xph = workspace("conv.phases", (g.sh * g.sw, g.C, t.Hph * t.Wph), cdt)
    for n in range(g.N):
        _phase_split(x[n], xph, t, g, t.phases)
        dyx = _dy_extended(dy[n], t, g, cdt)
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            for rs, ph, off in t.taps:
                gemm(dyx[k0:k0 + g.Kg, :t.L], xph[ph, c0:c0 + g.Cg, off:off + t.L],
                     acc[rs, k0:k0 + g.Kg], 1.0, 0.0 if n == 0 else 1.0, trans_b=True)
    return acc.reshape(g.R, g.S, g.K, g.Cg).transpose(2, 3, 0, 1)


def forward(lower, x, w, y, g, alpha, beta):
    """y = alpha * conv(x, w) + beta * y; w already oriented (flipped if needed)."""
    cdt = compute_dtype(y.dtype)
    if use_shift(g):
        return shift_forward(x, w, y, g, alpha, beta)
    xc = np.ascontiguousarray(x, dtype=cdt)
    wm = np.ascontiguousarray(w, dtype=cdt).reshape(g.K, -1)
    rows = g.Cg * g.R * g.S
    direct = _direct(y, cdt)
    pointwise = _pointwise(g)
    for n0, nb, p0, np_ in plan(g, rows):
        cols = nb * np_ * g.Q
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            if pointwise and nb == 1 and np_ == g.P:
                b = xc[n0, c0:c0 + g.Cg].reshape(g.Cg, cols)
            else:
                b = workspace("conv.col", (rows, cols), cdt)
                lower.im2col(xc, b, n0, nb, c0, p0, np_, g)
            a = wm[k0:k0 + g.Kg]
            if direct and nb == 1:
                c = y[n0, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)[:, p0 * g.Q:(p0 + np_) * g.Q]
                gemm(a, b, c, alpha, beta)
            else:
                c = workspace("conv.out", (g.Kg, cols), cdt)
                gemm(a, b, c)
                blend(y[n0:n0 + nb, k0:k0 + g.Kg, p0:p0 + np_],
                      c.reshape(g.Kg, nb, np_, g.Q).transpose(1, 0, 2, 3), alpha, beta)


def _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt):
    """dY_g for one block as a (Kg, cols) matrix (a view when the block is one image)."""
    if nb == 1:
        return dyc[n0, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)[:, p0 * g.Q:(p0 + np_) * g.Q]
    buf = workspace("conv.dy", (g.Kg, nb * g.P * g.Q), cdt)
    lower.gather(dyc, buf, n0, nb, k0, g.Kg)
    return buf


def backward_data(lower, w, dy, dx, g, alpha, beta):
    """dx = alpha * conv_transpose(dy, w) + beta * dx; w already oriented."""
    cdt = compute_dtype(dx.dtype)
    if use_shift(g) and _all_finite(w):
        return shift_backward_data(w, dy, dx, g, alpha, beta)
    dyc = np.ascontiguousarray(dy, dtype=cdt)
    wm = np.ascontiguousarray(w, dtype=cdt).reshape(g.K, -1)
    rows = g.Cg * g.R * g.S
    direct = _direct(dx, cdt)
    blocks = plan(g, rows)
    if _pointwise(g) and blocks[0][1] == 1:
        # dx[n] = W^T @ dy[n]: no col2im at all.
        for n in range(g.N):
            for gi in range(g.G):
                k0, c0 = gi * g.Kg, gi * g.Cg
                b = dyc[n, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)
                if direct:
                    gemm(wm[k0:k0 + g.Kg], b, dx[n, c0:c0 + g.Cg].reshape(g.Cg, -1),
                         alpha, beta, trans_a=True)
                else:
                    c = workspace("conv.out", (g.Cg, g.H * g.W), cdt)
                    gemm(wm[k0:k0 + g.Kg], b, c, trans_a=True)
                    blend(dx[n, c0:c0 + g.Cg], c.reshape(g.Cg, g.H, g.W), alpha, beta)
        return
    i = 0
    while i < len(blocks):
        n0, nb = blocks[i][:2]
        j = i
        while j < len(blocks) and blocks[j][0] == n0:
            j += 1
        into_dx = direct and beta == 0
        acc = dx[n0:n0 + nb] if into_dx else workspace("conv.dx", (nb, g.C, g.H, g.W), cdt)
        acc.fill(0)
        for _, _, p0, np_ in blocks[i:j]:
            cols = nb * np_ * g.Q
            for gi in range(g.G):
                k0, c0 = gi * g.Kg, gi * g.Cg
                b = _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt)
                col = workspace("conv.col", (rows, cols), cdt)
                gemm(wm[k0:k0 + g.Kg], b, col, trans_a=True)
                lower.col2im_add(col, acc, nb, c0, p0, np_, g)
        if into_dx:
            if alpha != 1:
                acc *= alpha
        else:
            blend(dx[n0:n0 + nb], acc, alpha, beta)
        i = j


def backward_filter(lower, x, dy, g):
    """The filter gradient sum_n dY @ col(x)^T as a (K, Cg, R, S) array in the compute dtype.

    Returned array is a per-thread workspace: the caller blends it into dw
    (and flips it for true convolution) before the next call.
    """
    cdt = compute_dtype(x.dtype)
    if use_shift(g) and _all_finite(x):
        return shift_backward_filter(x, dy, g)
    xc = np.ascontiguousarray(x, dtype=cdt)
    dyc = np.ascontiguousarray(dy, dtype=cdt)
    rows = g.Cg * g.R * g.S
    acc = workspace("conv.dw", (g.K, rows), cdt)
    pointwise = _pointwise(g)
    first = True
    for n0, nb, p0, np_ in plan(g, rows):
        cols = nb * np_ * g.Q
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            if pointwise and nb == 1 and np_ == g.P:
                b = xc[n0, c0:c0 + g.Cg].reshape(g.Cg, cols)
            else:
                b = workspace("conv.col", (rows, cols), cdt)
                lower.im2col(xc, b, n0, nb, c0, p0, np_, g)
            a = _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt)
            gemm(a, b, acc[k0:k0 + g.Kg], 1.0, 0.0 if first else 1.0, trans_b=True)
        first = False
    return acc.reshape(g.K, g.Cg, g.R, g.S)
