"""The GEMM formulation of convolution, run as parallel work items.

Private engine behind the ``blas`` and ``numba`` providers of
:mod:`streamq.kernels.conv`. Arguments arrive validated (see ``conv.py``).

Formulations, chosen per call from the geometry:

* **Winograd F(2x2, 3x3) / F(4x4, 3x3)** (``_conv_winograd``,
  ``_conv_winograd4`` for images large enough for 4x4 tiles; numba lowering,
  float32 compute, finite inputs): all three passes of wide 3x3 stride-1
  convolutions (see :func:`_winograd` and ``_conv_winograd.applies``);
  backward data runs as the forward conv of dy with transposed, flipped
  filters (:func:`_transposed_forward`).
* **pointwise** (1x1, stride 1, no padding): ``Y[n] = W @ X[n]``; an image
  already is its column matrix, so large images need no copy at all.
* **phase-split implicit GEMM** (:func:`shift_forward`, forward pass only;
  see :func:`use_shift` for when): the padded image is split into
  ``stride_h*stride_w`` phases and every filter tap is one GEMM reading a
  plain slice of a phase, accumulating with beta=1. No column matrix; the
  output lives on a slightly wider grid whose junk columns are dropped.
* **im2col + GEMM** otherwise: per group ``Y_g (Kg, cols) = W_g (Kg, Cg*R*S) @
  col`` with one column per output pixel (layout in ``_conv_numba``). The
  column matrix of a batch is never materialised whole: the work is cut into
  *blocks* (several whole images when images are small, else bands of output
  rows of one image) of at most ``COL_BLOCK_ELEMS`` elements. Backward data is
  ``col = W_g^T @ dY_g`` and a scatter-add (col2im); backward filter
  accumulates ``dW_g += dY_g @ col^T`` (for small images split by input
  channels over the threads instead, :func:`use_filter_split`).

Parallelism: the blocks (or images) are *work items* run by
:func:`~._conv_gemm.parallel_for` on as many threads as OpenBLAS would use,
each item doing its own lowering and single-threaded GEMMs into its own part
of the output; so lowering and GEMM of different images overlap, and no BLAS
pool spins or synchronises between short calls. Items of the filter gradient
sum into a partial per thread, added up at the end.

A *lowering* supplies the im2col/col2im moves: :class:`NumpyLowering` (plain
numpy slicing, used by the ``blas`` provider) or :class:`NumbaLowering`
(serial ``nogil`` numba kernels, used by the ``numba`` provider; for wide
strided filters they split input rows into column phases first, so every
copy is unit-stride). Workspaces
are cached per thread and only grow, so steady-state calls do not allocate
big buffers.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading

import numpy as np

from ._common import blend
from ._conv_gemm import gemm, parallel_for, threads

#: Largest column block (elements) of one work item. 1 Mi float32 = 4 MiB.
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

    #: Whether the numba Winograd kernels may be used (the ``blas`` provider runs without numba).
    winograd = False

    @staticmethod
    def im2col(x, col, n0, nb, c0, p0, np_, g, cn=None):
        """col <- the column block of channels c0 .. c0+cn (default: a group's Cg)."""
        cn = g.Cg if cn is None else cn
        cv = col.reshape(cn, g.R, g.S, nb, np_, g.Q)
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
                src = x[n0:n0 + nb, c0:c0 + cn,
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
        src = a[n0:n0 + nb, c0:c0 + cn].reshape(nb, cn, h * w)
        buf.reshape(cn, nb, h * w)[...] = src.transpose(1, 0, 2)


class NumbaLowering:
    """im2col / col2im by serial numba kernels (``_conv_numba``)."""

    winograd = True

    @staticmethod
    def im2col(x, col, n0, nb, c0, p0, np_, g, cn=None):
        """col <- the column block of channels c0 .. c0+cn (default: a group's Cg)."""
        from . import _conv_numba as nk
        # Splitting rows into column phases pays for wide strided filters (the 7x7/s2 stem:
        # im2col 2.5x faster); for 3x3/s2 it measured even.
        kernel = nk.im2col_strided if 1 < g.sw and 2 * g.sw < g.S else nk.im2col
        kernel(x, col, n0, nb, c0, g.Cg if cn is None else cn, p0, np_, g.Q, g.R, g.S,
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


def _per_image(g) -> bool:
    """Whether a pointwise image is big enough to be its own column matrix."""
    return _pointwise(g) and g.P * g.Q >= POINTWISE_MIN_COLS


def plan(g, rows: int, parts: int = 1, limit: int | None = None) -> list[tuple[int, int, int, int]]:
    """Blocks (n0, nb, p0, np_) covering all images and output rows, in order.

    A block is either ``nb >= 1`` whole images or a band of ``np_`` output rows
    of one image, sized so its column matrix (``rows`` x ``nb*np_*Q``) stays
    within ``limit`` elements, by default :data:`COL_BLOCK_ELEMS` (a single
    output row may exceed it). Whole-
    image blocks are balanced over ``parts`` threads: their count is a multiple
    of ``parts`` where the batch allows. Large pointwise images are one block
    each, split into column bands when there are fewer images than ``parts``.
    """
    if _per_image(g):
        nbands = -(-parts // g.N) if g.N < parts else 1
        band = -(-g.P // min(nbands, g.P))
        return [(n, 1, p0, min(band, g.P - p0)) for n in range(g.N) for p0 in range(0, g.P, band)]
    limit = COL_BLOCK_ELEMS if limit is None else limit
    per_image = rows * g.P * g.Q
    if per_image <= limit:
        nb = max(1, min(g.N, limit // per_image, -(-g.N // parts)))
        nblocks = -(-g.N // nb)
        nblocks = min(g.N, -(-nblocks // parts) * parts)
        nb = -(-g.N // nblocks)
        return [(n0, min(nb, g.N - n0), 0, g.P) for n0 in range(0, g.N, nb)]
    band = max(1, limit // (rows * g.Q))
    nbands = -(-g.P // band)
    band = -(-g.P // nbands)
    return [(n, 1, p0, min(band, g.P - p0)) for n in range(g.N) for p0 in range(0, g.P, band)]


def _direct(out: np.ndarray, cdt: np.dtype) -> bool:
    """Whether GEMMs may write straight into ``out`` (with BLAS alpha/beta)."""
    return out.dtype == cdt and out.flags.c_contiguous


#: Filter gradients of at least this many elements are summed and blended by
#: all threads (row chunks); smaller ones by the calling thread.
FINISH_PARALLEL_MIN = 1 << 16


class _Partials:
    """Per-thread partial sums of a filter gradient, one buffer per participating thread.

    The buffers are workspaces of the thread that creates this object (the
    caller of the op), not of the helpers: a pool thread may move on to
    another call while this one still sums its partial. A partial is a
    (K, Cg*R*S) matrix; :meth:`finish` adds them up and blends the total into
    the (K, Cg, R, S) output.
    """

    def __init__(self, name: str, kcrs: tuple, dtype):
        K, Cg, R, S = kcrs
        self.kcrs, self.dtype = kcrs, dtype
        self.spare = [workspace(f"{name}.{i}", (K, Cg * R * S), dtype) for i in range(threads())]
        self.claims = itertools.count()
        self.parts: dict[int, np.ndarray] = {}

    def mine(self) -> np.ndarray:
        """The calling thread's partial, zeroed when it first asks during this call."""
        key = threading.get_ident()
        part = self.parts.get(key)
        if part is None:
            i = next(self.claims)  # atomic under the GIL
            if i < len(self.spare):
                part = self.spare[i]
            else:  # more threads than planned for (the thread count changed meanwhile)
                part = np.empty(self.spare[0].shape, self.dtype)
            part.fill(0)
            self.parts[key] = part  # one thread per key: no race
        return part

    def finish(self, out: np.ndarray, alpha: float, beta: float, flip: bool) -> None:
        """out = alpha * (sum of the partials, flipped in R and S if asked) + beta * out.

        Row chunks of K run in parallel for large gradients; the sum is formed
        in place in one of the partials.
        """
        views = [p.reshape(self.kcrs) for p in (list(self.parts.values()) or [self.mine()])]
        K = out.shape[0]
        nchunks = min(K, threads()) if out.size >= FINISH_PARALLEL_MIN else 1
        bounds = [K * i // nchunks for i in range(nchunks + 1)]

        def chunk(i):
            k0, k1 = bounds[i], bounds[i + 1]
            total = views[0][k0:k1]
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf sums stay silent
                for v in views[1:]:
                    total += v[k0:k1]
            blend(out[k0:k1], total[:, :, ::-1, ::-1] if flip else total, alpha, beta)

        parallel_for(nchunks, chunk)


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
# Wph - Q columns are junk and are dropped.

#: Use the phase-split path when a group has at least this many channels
#: (each tap's GEMM has inner dimension Cg) ...
SHIFT_MIN_CHANNELS = 16
#: ... and, for several taps, an image gives at least this many GEMM columns (L).
SHIFT_MIN_COLS = 2048


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
    """Whether the forward pass takes the phase-split path.

    A strided 1x1 convolution (one tap, one phase, no junk columns) does when
    an image gives >= ``POINTWISE_MIN_COLS`` columns: its phase is then the
    column matrix and the GEMM writes straight into y. Several taps only pay
    at stride 1 with >= ``SHIFT_MIN_COLS`` columns per image: per-tap GEMMs
    have inner dimension Cg only, and beat im2col (one GEMM with Cg*R*S)
    where the column matrix would be large. The gradients always use im2col:
    per-tap GEMMs of the filter gradient have a tiny (Kg, Cg) output, and
    measured no faster for the data gradient.
    """
    if _pointwise(g) or g.Cg < SHIFT_MIN_CHANNELS:
        return False
    t = _Taps(g)
    if g.R * g.S == 1:
        return t.Wph == g.Q and t.L >= POINTWISE_MIN_COLS
    return (g.sh == g.sw == 1 and t.L >= SHIFT_MIN_COLS
            and t.Wph * g.P <= 1.25 * g.P * g.Q)


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


def shift_forward(x, w, y, g, alpha, beta):
    """Forward pass by phase-split implicit GEMM (see the section comment), one item per image."""
    cdt = compute_dtype(y.dtype)
    t = _Taps(g)
    wt = _packed_taps(w, cdt)
    direct = _direct(y, cdt) and t.Wph == g.Q

    def image(n):
        xph = workspace("conv.phases", (g.sh * g.sw, g.C, t.Hph * t.Wph), cdt)
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

    parallel_for(g.N, image)


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #

def _winograd(lower, g, cdt):
    """The Winograd module when ``lower`` may use it and ``g`` suits it, else None.

    float32 compute only: float64 callers want the direct sums' accuracy, and
    one dtype keeps the cold numba compile short.
    """
    if not lower.winograd or cdt != np.float32:
        return None
    from . import _conv_winograd
    return _conv_winograd if _conv_winograd.applies(g) else None


def forward(lower, x, w, y, g, alpha, beta):
    """y = alpha * conv(x, w) + beta * y; w already oriented (flipped if needed)."""
    cdt = compute_dtype(y.dtype)
    wino = _winograd(lower, g, cdt)
    if wino is not None:
        xc = np.ascontiguousarray(x, dtype=cdt)
        if wino.all_finite(xc):  # else inf - inf in the transforms would make NaN
            return wino.forward(xc, w, y, g, alpha, beta)
    if use_shift(g):
        return shift_forward(x, w, y, g, alpha, beta)
    xc = np.ascontiguousarray(x, dtype=cdt)
    wm = np.ascontiguousarray(w, dtype=cdt).reshape(g.K, -1)
    rows = g.Cg * g.R * g.S
    direct = _direct(y, cdt)
    blocks = plan(g, rows, threads())
    zero_copy = _per_image(g)

    def block(i):
        n0, nb, p0, np_ = blocks[i]
        cols = nb * np_ * g.Q
        span = slice(p0 * g.Q, (p0 + np_) * g.Q)
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            if zero_copy:
                b = xc[n0, c0:c0 + g.Cg].reshape(g.Cg, g.P * g.Q)[:, span]
            else:
                b = workspace("conv.col", (rows, cols), cdt)
                lower.im2col(xc, b, n0, nb, c0, p0, np_, g)
            a = wm[k0:k0 + g.Kg]
            if direct and nb == 1:
                gemm(a, b, y[n0, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)[:, span], alpha, beta)
            else:
                c = workspace("conv.out", (g.Kg, cols), cdt)
                gemm(a, b, c)
                blend(y[n0:n0 + nb, k0:k0 + g.Kg, p0:p0 + np_],
                      c.reshape(g.Kg, nb, np_, g.Q).transpose(1, 0, 2, 3), alpha, beta)

    parallel_for(len(blocks), block)


def _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt):
    """dY_g for one block as a (Kg, cols) matrix (a view when the block is one image)."""
    if nb == 1:
        return dyc[n0, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)[:, p0 * g.Q:(p0 + np_) * g.Q]
    buf = workspace("conv.dy", (g.Kg, nb * g.P * g.Q), cdt)
    lower.gather(dyc, buf, n0, nb, k0, g.Kg)
    return buf


def _by_images(blocks):
    """Blocks grouped into items of whole images: [(n0, nb, [(p0, np_), ...]), ...]."""
    items: list = []
    for n0, nb, p0, np_ in blocks:
        if items and items[-1][0] == n0:
            items[-1][2].append((p0, np_))
        else:
            items.append((n0, nb, [(p0, np_)]))
    return items


def _transposed_forward(dyc, w, dx, g, alpha, beta) -> bool:
    """Backward data of a 3x3 stride-1 conv as a Winograd forward conv; False if dy is not finite.

    dx[n, c] = sum over k of dy[n, k] cross-correlated with w[k, c] flipped in
    both axes, padded by 2 - pad: a forward convolution with filters
    (C, Kg, 3, 3) per group, input channels and output channels swapped.
    """
    from . import _conv_winograd
    if not _conv_winograd.all_finite(dyc):
        return False
    wt = (w.reshape(g.G, g.Kg, g.Cg, g.R, g.S).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
          .reshape(g.C, g.Kg, g.R, g.S))
    gt = dataclasses.replace(g, C=g.K, H=g.P, W=g.Q, K=g.C, P=g.H, Q=g.W,
                             ph=g.dh * (g.R - 1) - g.ph, pw=g.dw * (g.S - 1) - g.pw)
    _conv_winograd.forward(dyc, wt, dx, gt, alpha, beta)
    return True


def backward_data(lower, w, dy, dx, g, alpha, beta):
    """dx = alpha * conv_transpose(dy, w) + beta * dx; w already oriented."""
    cdt = compute_dtype(dx.dtype)
    dyc = np.ascontiguousarray(dy, dtype=cdt)
    if _winograd(lower, g, cdt) is not None and g.ph <= 2 and g.pw <= 2 and _transposed_forward(
            dyc, w, dx, g, alpha, beta):
        return
    wm = np.ascontiguousarray(w, dtype=cdt).reshape(g.K, -1)
    rows = g.Cg * g.R * g.S
    direct = _direct(dx, cdt)
    blocks = plan(g, rows, threads())
    if _per_image(g):
        # dx[n] = W^T @ dy[n], band by band: no col2im at all.
        def band(i):
            n, _, p0, np_ = blocks[i]
            span = slice(p0 * g.Q, (p0 + np_) * g.Q)
            for gi in range(g.G):
                k0, c0 = gi * g.Kg, gi * g.Cg
                b = dyc[n, k0:k0 + g.Kg].reshape(g.Kg, g.P * g.Q)[:, span]
                if direct:
                    gemm(wm[k0:k0 + g.Kg], b, dx[n, c0:c0 + g.Cg].reshape(g.Cg, -1)[:, span],
                         alpha, beta, trans_a=True)
                else:
                    c = workspace("conv.out", (g.Cg, np_ * g.Q), cdt)
                    gemm(wm[k0:k0 + g.Kg], b, c, trans_a=True)
                    blend(dx[n, c0:c0 + g.Cg, p0:p0 + np_], c.reshape(g.Cg, np_, g.W), alpha, beta)

        parallel_for(len(blocks), band)
        return
    items = _by_images(blocks)  # col2im of one image's bands overlap: one thread per image

    def image_block(i):
        n0, nb, bands = items[i]
        into_dx = direct and beta == 0
        acc = dx[n0:n0 + nb] if into_dx else workspace("conv.dx", (nb, g.C, g.H, g.W), cdt)
        acc.fill(0)
        for p0, np_ in bands:
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

    parallel_for(len(items), image_block)


#: The filter gradient is split by input channels over the threads (see
#: :func:`use_filter_split`) when images have at most this many output pixels ...
FILTER_SPLIT_MAX_PIXELS = 256
#: ... the gradient has at least this many elements (smaller partials are cheap to sum) ...
FILTER_SPLIT_MIN_ELEMS = 1 << 20
#: ... and each thread's slice of the gradient has at least this many columns.
FILTER_SPLIT_MIN_ROWS = 128


def use_filter_split(g, parts: int) -> bool:
    """Whether the filter gradient splits its columns (input channels) over ``parts`` threads.

    Small images (7x7, 14x14) give few GEMM columns per image: summing per-thread
    partials means short inner dimensions and a read-modify-write of a whole
    (K, Cg*R*S) partial per block, plus the final sum. Split by channels, each
    thread covers every image for its own slice of dw: inner dimension the whole
    batch's columns, each element written once, no partials. But every thread
    then gathers all of dy (Kg rows), so a thread's slice of the column matrix
    must be at least as tall. Measured (2 threads, batch 16, loaded machine)
    1.05-1.6x on ResNet's 3x3 layers at 7x7 and 14x14/s2 (9 MiB gradients),
    even on 2048->512 at 7x7; 0.8-0.9x on 512->2048 and 1024->2048/s2 (dy
    twice as tall as the slice) and even on the 1 MiB gradients of the 14x14
    1x1 layers, hence the size floor.
    """
    return (parts > 1 and g.P * g.Q <= FILTER_SPLIT_MAX_PIXELS
            and g.K * g.Cg * g.R * g.S >= FILTER_SPLIT_MIN_ELEMS
            and g.Cg * g.R * g.S >= max(FILTER_SPLIT_MIN_ROWS, g.Kg) * parts)


def _filter_split(lower, xc, dyc, dw, g, alpha, beta, flip, parts):
    """backward_filter by input-channel slices, one work item per (group, slice)."""
    cdt = xc.dtype
    RS = g.R * g.S
    bounds = [g.Cg * i // parts for i in range(parts + 1)]
    items = [(gi, bounds[i], bounds[i + 1]) for gi in range(g.G) for i in range(parts)]
    chunks = plan(g, max(b - a for a, b in zip(bounds, bounds[1:])) * RS, 1)
    direct = _direct(dw, cdt) and not flip
    out = dw.reshape(g.K, -1) if direct else workspace("conv.dwsplit", (g.K, g.Cg * RS), cdt)
    a0, b0 = (alpha, beta) if direct else (1.0, 0.0)

    def item(i):
        gi, c_lo, c_hi = items[i]
        k0 = gi * g.Kg
        dst = out[k0:k0 + g.Kg, c_lo * RS:c_hi * RS]
        for j, (n0, nb, p0, np_) in enumerate(chunks):
            col = workspace("conv.col", ((c_hi - c_lo) * RS, nb * np_ * g.Q), cdt)
            lower.im2col(xc, col, n0, nb, gi * g.Cg + c_lo, p0, np_, g, c_hi - c_lo)
            a = _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt)
            gemm(a, col, dst, a0, b0 if j == 0 else 1.0, trans_b=True)

    parallel_for(len(items), item)
    if not direct:
        v = out.reshape(g.K, g.Cg, g.R, g.S)
        blend(dw, v[:, :, ::-1, ::-1] if flip else v, alpha, beta)


def backward_filter(lower, x, dy, dw, g, alpha, beta, flip):
    """dw = alpha * sum_n dY @ col(x)^T + beta * dw, flipped in R and S when ``flip``."""
    cdt = compute_dtype(x.dtype)
    xc = np.ascontiguousarray(x, dtype=cdt)
    dyc = np.ascontiguousarray(dy, dtype=cdt)
    wino = _winograd(lower, g, cdt)
    if wino is not None and wino.all_finite(xc) and wino.all_finite(dyc):
        return wino.backward_filter(xc, dyc, dw, g, alpha, beta, flip)
    parts = threads()
    if use_filter_split(g, parts):
        return _filter_split(lower, xc, dyc, dw, g, alpha, beta, flip, parts)
    rows = g.Cg * g.R * g.S
    acc = _Partials("conv.dw", (g.K, g.Cg, g.R, g.S), cdt)
    blocks = plan(g, rows, threads())
    zero_copy = _per_image(g)

    def block(i):
        n0, nb, p0, np_ = blocks[i]
        cols = nb * np_ * g.Q
        part = acc.mine()
        for gi in range(g.G):
            k0, c0 = gi * g.Kg, gi * g.Cg
            if zero_copy:
                b = xc[n0, c0:c0 + g.Cg].reshape(g.Cg, g.P * g.Q)[:, p0 * g.Q:(p0 + np_) * g.Q]
            else:
                b = workspace("conv.col", (rows, cols), cdt)
                lower.im2col(xc, b, n0, nb, c0, p0, np_, g)
            a = _dy_block(lower, dyc, n0, nb, k0, p0, np_, g, cdt)
            gemm(a, b, part[k0:k0 + g.Kg], 1.0, 1.0, trans_b=True)

    parallel_for(len(blocks), block)
    acc.finish(dw, alpha, beta, flip)
