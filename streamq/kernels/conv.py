"""cuDNN convolution kernels: forward, backward data, backward filter, backward bias.

Ops (all NCHW, 2-D, grouped, dilated; see ``docs/kernels/conv.md``):

* ``cudnn.convolution_forward(x, w, y, *, pad, stride, dilation, groups, mode, alpha, beta)``
* ``cudnn.convolution_backward_data(w, dy, dx, *, ...same...)``
* ``cudnn.convolution_backward_filter(x, dy, dw, *, ...same...)``
* ``cudnn.convolution_backward_bias(dy, db, *, alpha, beta)``
* ``cudnn.convolution_output_shape(x_shape, w_shape, pad, stride, dilation, *, groups)``

Shapes: x (N, C, H, W), w (K, C/groups, R, S), y (N, K, P, Q) with cuDNN's
``P = (H + 2*pad_h - dilation_h*(R-1) - 1) // stride_h + 1`` (same for Q).
``mode="cross_correlation"`` (CUDNN_CROSS_CORRELATION, what deep-learning
frameworks call convolution) or ``"convolution"`` (CUDNN_CONVOLUTION, the
filter is flipped in both spatial axes). Every op writes
``out = alpha * result + beta * out`` into its output; ``beta == 0`` never
reads the output, so NaN already there does not leak.

Dtypes: float16, float32 or float64, the same for every array of a call.
``reference`` computes in float64; ``blas`` and ``numba`` compute float16 and
float32 in float32, float64 in float64; each rounds once into the output.
Inputs may be any strided arrays; outputs any writable arrays that do not
overlap the inputs. Bad arguments raise ValueError/TypeError naming the
parameter, before anything is written.

Providers: ``reference`` (numpy einsum over a padded sliding-window view, the
oracle), ``blas`` (the GEMM engine of ``_conv_fast`` with im2col/col2im by
numpy slicing), ``numba`` (the same engine with im2col/col2im by numba
kernels, plus Winograd F(2x2, 3x3) / F(4x4, 3x3) for wide 3x3 stride-1 layers in
float32 (``_conv_winograd``, ``_conv_winograd4``), direct numba loops for depthwise convolution and the bias
reduction). The engine runs images (or blocks of them) as parallel work items
on as many threads as OpenBLAS uses, each with single-threaded GEMMs.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _conv_fast
from ._common import blend, check_array, check_float
from .registry import register

MODES = ("cross_correlation", "convolution")
PROVIDERS = ("reference", "blas", "numba")


# --------------------------------------------------------------------------- #
# Parameters and geometry
# --------------------------------------------------------------------------- #

def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            a, b = value
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if not all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
                   for v in (a, b)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (int(a), int(b))
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return pair


def _scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one 2-D convolution (cuDNN names: N C H W, K R S, P Q)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    ph: int
    pw: int
    sh: int
    sw: int
    dh: int
    dw: int
    G: int

    @property
    def Cg(self) -> int:
        """Input channels per group."""
        return self.C // self.G

    @property
    def Kg(self) -> int:
        """Filters (output channels) per group."""
        return self.K // self.G


def _geometry(x_name: str, x_shape, w_name: str, w_shape, pad, stride, dilation,
              groups) -> ConvGeometry:
    """Validate shapes and parameters; raise naming the offending argument."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    for name, shape in ((x_name, x_shape), (w_name, w_shape)):
        if len(shape) != 4:
            raise ValueError(f"{name} must have 4 dimensions, got shape {shape}")
        if not all(isinstance(d, (numbers.Integral, np.integer)) and d > 0 for d in shape):
            raise ValueError(f"{name} must have positive dimensions, got shape {shape}")
    ph, pw = _pair("pad", pad, 0)
    sh, sw = _pair("stride", stride, 1)
    dh, dw = _pair("dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, (numbers.Integral, np.integer)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    N, C, H, W = (int(d) for d in x_shape)
    K, Cg, R, S = (int(d) for d in w_shape)
    if C % groups:
        raise ValueError(f"groups={groups} does not divide the channel count of {x_name} (C={C})")
    if K % groups:
        raise ValueError(f"groups={groups} does not divide the filter count of {w_name} (K={K})")
    if Cg != C // groups:
        raise ValueError(f"{w_name} must have C/groups = {C // groups} input channels "
                         f"(shape[1]), got shape {w_shape}")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(
            f"{w_name}'s dilated filter ({dh * (R - 1) + 1}x{dw * (S - 1) + 1}) is larger than "
            f"{x_name}'s padded image ({H + 2 * ph}x{W + 2 * pw}): no output (check pad, dilation)")
    return ConvGeometry(N, C, H, W, K, R, S, P, Q, ph, pw, sh, sw, dh, dw, int(groups))


def convolution_output_shape(x_shape, w_shape, pad=(0, 0), stride=(1, 1), dilation=(1, 1), *,
                             groups: int = 1) -> tuple[int, int, int, int]:
    """(N, K, P, Q) of convolving x_shape (N,C,H,W) with w_shape (K,C/groups,R,S).

    Like cudnnGetConvolution2dForwardOutputDim; raises ValueError/TypeError
    naming the bad argument (x_shape, w_shape, pad, stride, dilation, groups).
    """
    g = _geometry("x_shape", x_shape, "w_shape", w_shape, pad, stride, dilation, groups)
    return (g.N, g.K, g.P, g.Q)


def _check_mode(mode) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'cross_correlation' or 'convolution', got {mode!r}")


def _check_dtypes(arrays) -> np.dtype:
    """All arrays float16/32/64 and of the first one's dtype."""
    (first_name, first), *rest = arrays
    check_float(first_name, first)
    for name, arr in rest:
        if arr.dtype != first.dtype:
            raise TypeError(f"{name} must have the same dtype as {first_name} ({first.dtype}), "
                            f"got {arr.dtype}")
    return first.dtype


def _check_no_overlap(out_name, out, inputs) -> None:
    for name, arr in inputs:
        if np.may_share_memory(out, arr):
            raise ValueError(f"{out_name} must not overlap {name}")


@dataclass(frozen=True)
class _Call:
    g: ConvGeometry
    mode: str
    alpha: float
    beta: float


def _validate(kind: str, a, b, out, pad, stride, dilation, groups, mode, alpha, beta) -> _Call:
    """Validate one forward/backward call; names follow the op's signature."""
    names = {"forward": ("x", "w", "y"), "data": ("w", "dy", "dx"),
             "filter": ("x", "dy", "dw")}[kind]
    for name, arr in zip(names, (a, b, out)):
        check_array(name, arr, ndim=4)
    check_array(names[2], out, writable=True)
    _check_dtypes(list(zip(names, (a, b, out))))
    _check_mode(mode)
    alpha, beta = _scalar("alpha", alpha), _scalar("beta", beta)
    if kind == "forward":
        g = _geometry("x", a.shape, "w", b.shape, pad, stride, dilation, groups)
        check_array("y", out, shape=(g.N, g.K, g.P, g.Q))
    elif kind == "data":
        g = _geometry("dx", out.shape, "w", a.shape, pad, stride, dilation, groups)
        check_array("dy", b, shape=(g.N, g.K, g.P, g.Q))
    else:
        g = _geometry("x", a.shape, "dw", out.shape, pad, stride, dilation, groups)
        check_array("dy", b, shape=(g.N, g.K, g.P, g.Q))
    _check_no_overlap(names[2], out, zip(names[:2], (a, b)))
    return _Call(g, mode, alpha, beta)


def _oriented(w: np.ndarray, mode: str) -> np.ndarray:
    """The filter as cross-correlation uses it: flipped for true convolution."""
    return w[:, :, ::-1, ::-1] if mode == "convolution" else w


def _validate_bias(dy, db, alpha, beta) -> tuple[float, float]:
    check_array("dy", dy, ndim=4)
    check_array("db", db, writable=True)
    _check_dtypes([("dy", dy), ("db", db)])
    K = dy.shape[1]
    if db.shape not in ((1, K, 1, 1), (K,)):
        raise ValueError(f"db must have shape (1, {K}, 1, 1) or ({K},), got {db.shape}")
    if min(dy.shape) < 1:
        raise ValueError(f"dy must have positive dimensions, got shape {dy.shape}")
    _check_no_overlap("db", db, [("dy", dy)])
    return _scalar("alpha", alpha), _scalar("beta", beta)


# --------------------------------------------------------------------------- #
# reference: readable float64 numpy, independent of the im2col/GEMM code
# --------------------------------------------------------------------------- #

def _windows(x64: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """View (N, G, Cg, P, Q, R, S) of the zero-padded input under each filter tap."""
    xp = np.pad(x64, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw)))
    span = (g.dh * (g.R - 1) + 1, g.dw * (g.S - 1) + 1)
    win = sliding_window_view(xp, span, axis=(2, 3))  # (N, C, Hp-span+1, Wp-span+1, *span)
    win = win[:, :, ::g.sh, ::g.sw, ::g.dh, ::g.dw][:, :, :g.P, :g.Q]
    return win.reshape(g.N, g.G, g.Cg, g.P, g.Q, g.R, g.S)


def _reference_forward_value(x, w, g: ConvGeometry, mode: str) -> np.ndarray:
    win = _windows(x.astype(np.float64), g)
    wg = _oriented(w, mode).astype(np.float64).reshape(g.G, g.Kg, g.Cg, g.R, g.S)
    with np.errstate(invalid="ignore"):  # NaN/inf inputs propagate silently
        out = np.einsum("ngcpqrs,gkcrs->ngkpq", win, wg, optimize=True)
    return out.reshape(g.N, g.K, g.P, g.Q)


def _reference_backward_data_value(w, dy, g: ConvGeometry, mode: str) -> np.ndarray:
    wg = _oriented(w, mode).astype(np.float64).reshape(g.G, g.Kg, g.Cg, g.R, g.S)
    dyg = dy.astype(np.float64).reshape(g.N, g.G, g.Kg, g.P, g.Q)
    dxp = np.zeros((g.N, g.C, g.H + 2 * g.ph, g.W + 2 * g.pw))
    for r in range(g.R):
        for s in range(g.S):
            # Every output pixel (p, q) read input pixel (p*sh + r*dh, q*sw + s*dw)
            # of the padded image through tap (r, s): send its gradient back there.
            with np.errstate(invalid="ignore"):
                part = np.einsum("ngkpq,gkc->ngcpq", dyg, wg[..., r, s]).reshape(g.N, g.C, g.P, g.Q)
            dxp[:, :, r * g.dh:r * g.dh + (g.P - 1) * g.sh + 1:g.sh,
                s * g.dw:s * g.dw + (g.Q - 1) * g.sw + 1:g.sw] += part
    return dxp[:, :, g.ph:g.ph + g.H, g.pw:g.pw + g.W]


def _reference_backward_filter_value(x, dy, g: ConvGeometry, mode: str) -> np.ndarray:
    win = _windows(x.astype(np.float64), g)
    dyg = dy.astype(np.float64).reshape(g.N, g.G, g.Kg, g.P, g.Q)
    with np.errstate(invalid="ignore"):
        dwg = np.einsum("ngcpqrs,ngkpq->gkcrs", win, dyg, optimize=True)
    return _oriented(dwg.reshape(g.K, g.Cg, g.R, g.S), mode)


@register("cudnn.convolution_forward", "reference")
def convolution_forward_reference(x, w, y, *, pad=(0, 0), stride=(1, 1), dilation=(1, 1),
                                  groups=1, mode="cross_correlation", alpha=1.0, beta=0.0):
    """y = alpha * conv(x, w) + beta * y, computed in float64 (the test oracle)."""
    c = _validate("forward", x, w, y, pad, stride, dilation, groups, mode, alpha, beta)
    blend(y, _reference_forward_value(x, w, c.g, mode), c.alpha, c.beta)


@register("cudnn.convolution_backward_data", "reference")
def convolution_backward_data_reference(w, dy, dx, *, pad=(0, 0), stride=(1, 1),
                                        dilation=(1, 1), groups=1, mode="cross_correlation",
                                        alpha=1.0, beta=0.0):
    """dx = alpha * (gradient of the forward output w.r.t. x, given dy) + beta * dx; float64."""
    c = _validate("data", w, dy, dx, pad, stride, dilation, groups, mode, alpha, beta)
    blend(dx, _reference_backward_data_value(w, dy, c.g, mode), c.alpha, c.beta)


@register("cudnn.convolution_backward_filter", "reference")
def convolution_backward_filter_reference(x, dy, dw, *, pad=(0, 0), stride=(1, 1),
                                          dilation=(1, 1), groups=1, mode="cross_correlation",
                                          alpha=1.0, beta=0.0):
    """dw = alpha * (gradient of the forward output w.r.t. w, given dy) + beta * dw; float64."""
    c = _validate("filter", x, dy, dw, pad, stride, dilation, groups, mode, alpha, beta)
    blend(dw, _reference_backward_filter_value(x, dy, c.g, mode), c.alpha, c.beta)


@register("cudnn.convolution_backward_bias", "reference")
def convolution_backward_bias_reference(dy, db, *, alpha=1.0, beta=0.0):
    """db = alpha * dy summed over N, P, Q + beta * db; float64 sum."""
    alpha, beta = _validate_bias(dy, db, alpha, beta)
    total = dy.astype(np.float64).sum(axis=(0, 2, 3))
    blend(db, total.reshape(db.shape), alpha, beta)


# --------------------------------------------------------------------------- #
# blas and numba: the GEMM engine (_conv_fast), numba direct depthwise
# --------------------------------------------------------------------------- #

def _depthwise(g: ConvGeometry) -> bool:
    return g.G > 1 and g.Cg == 1


def _numba_direct(kernel, out, args, g, alpha, beta):
    """Run a depthwise numba kernel into out (via a compute-dtype temp if needed)."""
    cdt = _conv_fast.compute_dtype(out.dtype)
    args = [np.ascontiguousarray(a, dtype=cdt) for a in args]
    params = (g.ph, g.pw, g.sh, g.sw, g.dh, g.dw)
    if out.dtype == cdt and out.flags.c_contiguous:
        kernel(*args, out, *params, alpha, beta)
    else:
        tmp = _conv_fast.workspace("conv.direct", out.shape, cdt)
        kernel(*args, tmp, *params, 1.0, 0.0)
        blend(out, tmp, alpha, beta)


def _forward(lowering_name):
    lower = _conv_fast.NumbaLowering if lowering_name == "numba" else _conv_fast.NumpyLowering

    def convolution_forward(x, w, y, *, pad=(0, 0), stride=(1, 1), dilation=(1, 1), groups=1,
                            mode="cross_correlation", alpha=1.0, beta=0.0):
        c = _validate("forward", x, w, y, pad, stride, dilation, groups, mode, alpha, beta)
        if lowering_name == "numba" and _depthwise(c.g):
            from . import _conv_numba
            _numba_direct(_conv_numba.depthwise_forward, y, (x, _oriented(w, mode)), c.g,
                          c.alpha, c.beta)
            return
        _conv_fast.forward(lower, x, _oriented(w, mode), y, c.g, c.alpha, c.beta)

    convolution_forward.__doc__ = (
        f"y = alpha * conv(x, w) + beta * y by implicit or im2col GEMM ({lowering_name} provider).")
    return convolution_forward


def _backward_data(lowering_name):
    lower = _conv_fast.NumbaLowering if lowering_name == "numba" else _conv_fast.NumpyLowering

    def convolution_backward_data(w, dy, dx, *, pad=(0, 0), stride=(1, 1), dilation=(1, 1),
                                  groups=1, mode="cross_correlation", alpha=1.0, beta=0.0):
        c = _validate("data", w, dy, dx, pad, stride, dilation, groups, mode, alpha, beta)
        if lowering_name == "numba" and _depthwise(c.g):
            from . import _conv_numba
            _numba_direct(_conv_numba.depthwise_backward_data, dx, (_oriented(w, mode), dy),
                          c.g, c.alpha, c.beta)
            return
        _conv_fast.backward_data(lower, _oriented(w, mode), dy, dx, c.g, c.alpha, c.beta)

    convolution_backward_data.__doc__ = (
        f"dx = alpha * grad_x + beta * dx by phase-split GEMM or GEMM + col2im "
        f"({lowering_name} provider).")
    return convolution_backward_data


def _backward_filter(lowering_name):
    lower = _conv_fast.NumbaLowering if lowering_name == "numba" else _conv_fast.NumpyLowering

    def convolution_backward_filter(x, dy, dw, *, pad=(0, 0), stride=(1, 1), dilation=(1, 1),
                                    groups=1, mode="cross_correlation", alpha=1.0, beta=0.0):
        c = _validate("filter", x, dy, dw, pad, stride, dilation, groups, mode, alpha, beta)
        if lowering_name == "numba" and _depthwise(c.g):
            from . import _conv_numba
            cdt = _conv_fast.compute_dtype(dw.dtype)
            tmp = _conv_fast.workspace("conv.direct", dw.shape, cdt)
            _numba_direct(_conv_numba.depthwise_backward_filter, tmp, (x, dy), c.g, 1.0, 0.0)
            blend(dw, _oriented(tmp, mode), c.alpha, c.beta)
            return
        _conv_fast.backward_filter(lower, x, dy, dw, c.g, c.alpha, c.beta, mode == "convolution")

    convolution_backward_filter.__doc__ = (
        f"dw = alpha * grad_w + beta * dw by implicit or im2col GEMM ({lowering_name} provider).")
    return convolution_backward_filter


convolution_forward_blas = register("cudnn.convolution_forward", "blas", _forward("blas"))
convolution_forward_numba = register("cudnn.convolution_forward", "numba", _forward("numba"))
convolution_backward_data_blas = register(
    "cudnn.convolution_backward_data", "blas", _backward_data("blas"))
convolution_backward_data_numba = register(
    "cudnn.convolution_backward_data", "numba", _backward_data("numba"))
convolution_backward_filter_blas = register(
    "cudnn.convolution_backward_filter", "blas", _backward_filter("blas"))
convolution_backward_filter_numba = register(
    "cudnn.convolution_backward_filter", "numba", _backward_filter("numba"))


@register("cudnn.convolution_backward_bias", "numba")
def convolution_backward_bias_numba(dy, db, *, alpha=1.0, beta=0.0):
    """db = alpha * dy summed over N, P, Q + beta * db; parallel over K, float64 sums."""
    alpha, beta = _validate_bias(dy, db, alpha, beta)
    from . import _conv_numba
    cdt = _conv_fast.compute_dtype(dy.dtype)
    total = np.empty(dy.shape[1], dtype=np.float64)
    _conv_numba.bias_sum(np.ascontiguousarray(dy, dtype=cdt), total)
    blend(db, total.reshape(db.shape), alpha, beta)


for _name in PROVIDERS:
    register("cudnn.convolution_output_shape", _name, convolution_output_shape)
del _name
