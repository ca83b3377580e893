"""cuDNN activation forward/backward (``cudnn.activation_forward``/``_backward``).

Elementwise over arrays of any shape; ``y``/``dx`` have the shape and dtype of
``x``. Modes (``coef`` as in ``cudnnSetActivationDescriptor``):

=============  ===========================  ===================================
mode           forward f(x)                 backward dx = dy * f'(.)
=============  ===========================  ===================================
relu           max(x, 0)                    dy if x > 0 else 0
sigmoid        1 / (1 + exp(-x))            dy * y * (1 - y)        (reads y)
tanh           tanh(x)                      dy * (1 - y*y)          (reads y)
clipped_relu   min(max(x, 0), coef)         dy if 0 < x < coef else 0
elu            x if x > 0 else coef*expm1   dy if x > 0 else dy*coef*exp(x)
swish          x * sigmoid(coef*x)          dy * (s + coef*x*s*(1-s)), s=sigmoid(coef*x)
identity       x                            dy
=============  ===========================  ===================================

NaN: forward propagates NaN for every mode (CUDNN_PROPAGATE_NAN; relu(NaN) is
NaN). Backward of relu/clipped_relu/elu selects on ``x > 0``, so a NaN ``x``
gives a zero gradient for relu/clipped_relu and NaN for elu.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import blend
from ._dnn_common import quiet, JIT, JIT_PAR, K, check_array, check_choice, check_float, check_like, \
    check_scalar, vexp
from ._dnn_elementwise import run_flat
from ._vmath import vexpm1_neg, vsigmoid, vtanh
from .registry import register

MODES = ("relu", "sigmoid", "tanh", "clipped_relu", "elu", "swish", "identity")


def _check(mode, coef, alpha, beta, arrays):
    """Validate mode/coef/alpha/beta and the (name, array) list, first is the reference."""
    check_choice("mode", mode, MODES)
    coef = check_scalar("coef", coef)
    if mode == "clipped_relu" and coef < 0:
        raise ValueError(f"coef (the clipped_relu ceiling) must be >= 0, got {coef}")
    alpha = check_scalar("alpha", alpha)
    beta = check_scalar("beta", beta)
    ref_name, ref = arrays[0]
    check_array(ref_name, ref)
    check_float(ref_name, ref)
    for name, arr in arrays[1:]:
        check_like(name, arr, ref, ref_name, writable=name in ("y", "dx"))
    return coef, alpha, beta


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

def _sigmoid64(v):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


def _forward64(mode, x, coef):
    if mode == "relu":
        return np.maximum(x, 0.0)
    if mode == "sigmoid":
        return _sigmoid64(x)
    if mode == "tanh":
        return np.tanh(x)
    if mode == "clipped_relu":
        return np.minimum(np.maximum(x, 0.0), coef)
    if mode == "elu":
        return np.where(x > 0, x, coef * np.expm1(np.minimum(x, 0.0)))
    if mode == "swish":
        with np.errstate(invalid="ignore"):       # -inf * sigmoid(-inf) = -inf * 0 = NaN
            return x * _sigmoid64(coef * x)
    return x.copy()


def _backward64(mode, y, dy, x, coef):
    with np.errstate(invalid="ignore"):
        if mode == "relu":
            return np.where(x > 0, dy, 0.0)
        if mode == "sigmoid":
            return dy * y * (1.0 - y)
        if mode == "tanh":
            return dy * (1.0 - y * y)
        if mode == "clipped_relu":
            return np.where((x > 0) & (x < coef), dy, 0.0)
        if mode == "elu":
            return np.where(x > 0, dy, dy * coef * np.exp(np.minimum(x, 0.0)))
        if mode == "swish":
            s = _sigmoid64(coef * x)
            return dy * (s + coef * x * s * (1.0 - s))
        return dy.copy()


@register("cudnn.activation_forward", "reference")
@quiet
def activation_forward_reference(x, y, *, mode, coef=0.0, alpha=1.0, beta=0.0):
    """``y = alpha * f(x) + beta * y`` for activation ``mode`` (see module doc)."""
    coef, alpha, beta = _check(mode, coef, alpha, beta, [("x", x), ("y", y)])
    blend(y, _forward64(mode, x.astype(np.float64), coef), alpha, beta)


@register("cudnn.activation_backward", "reference")
@quiet
def activation_backward_reference(y, dy, x, dx, *, mode, coef=0.0, alpha=1.0, beta=0.0):
    """``dx = alpha * dy * f'(x) + beta * dx`` (sigmoid/tanh read ``y``, others ``x``)."""
    coef, alpha, beta = _check(mode, coef, alpha, beta,
                               [("x", x), ("y", y), ("dy", dy), ("dx", dx)])
    f64 = np.float64
    blend(dx, _backward64(mode, y.astype(f64), dy.astype(f64), x.astype(f64), coef),
          alpha, beta)


# --------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------

# One serial chunk loop per mode (each vectorises on its own; a mode switch
# inside the element loop would not), driven by one parallel kernel per
# direction that dispatches per chunk -- two parfor kernels in all, which
# keeps first-call JIT time down. Each chunk loop gets slices, so its index
# starts at 0 and needs no negative-index wraparound. ``if beta != 0`` is
# loop-invariant: LLVM unswitches it, and the beta == 0 version never reads
# the output (so NaN there cannot leak).

@njit(**JIT)
def _fwd_relu(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * (xv if not (xv <= zero) else zero)
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_sigmoid(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * vsigmoid(xv)
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_tanh(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * vtanh(xv)
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_clipped_relu(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * (zero if xv <= zero else (coef if xv >= coef else xv))
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_elu(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        # vexpm1_neg's value for x > 0 is discarded by the select
        v = alpha * (xv if xv > zero else coef * vexpm1_neg(xv))
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_swish(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * (xv * vsigmoid(coef * xv))
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _fwd_identity(x, y, coef, alpha, beta):
    one, zero = K(1.0, y), K(0.0, y)
    for i in range(y.size):
        xv = x[i]
        v = alpha * (xv)
        if beta != 0:
            v += beta * y[i]
        y[i] = v


@njit(**JIT)
def _bwd_relu(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g if xv > zero else zero)
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_sigmoid(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g * yv * (one - yv))
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_tanh(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g * (one - yv * yv))
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_clipped_relu(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g if (xv > zero and xv < coef) else zero)
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_elu(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g if xv > zero else g * coef * vexp(xv))
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_swish(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        s = vsigmoid(coef * xv)
        v = alpha * (g * (s + coef * xv * s * (one - s)))
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


@njit(**JIT)
def _bwd_identity(y, dy, x, dx, coef, alpha, beta):
    one, zero = K(1.0, dx), K(0.0, dx)
    for i in range(dx.size):
        yv, g, xv = y[i], dy[i], x[i]
        v = alpha * (g)
        if beta != 0:
            v += beta * dx[i]
        dx[i] = v


_CHUNK = 1 << 14      # elements per parallel task


@njit(**JIT_PAR)
def _forward_kernel(mode, x, y, coef, alpha, beta):
    """Parallel over chunks; the mode is dispatched per chunk, outside the vector loop."""
    for t in prange((y.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, y.size)
        if mode == 0:
            _fwd_relu(x[lo:hi], y[lo:hi], coef, alpha, beta)
        elif mode == 1:
            _fwd_sigmoid(x[lo:hi], y[lo:hi], coef, alpha, beta)
        elif mode == 2:
            _fwd_tanh(x[lo:hi], y[lo:hi], coef, alpha, beta)
        elif mode == 3:
            _fwd_clipped_relu(x[lo:hi], y[lo:hi], coef, alpha, beta)
        elif mode == 4:
            _fwd_elu(x[lo:hi], y[lo:hi], coef, alpha, beta)
        elif mode == 5:
            _fwd_swish(x[lo:hi], y[lo:hi], coef, alpha, beta)
        else:
            _fwd_identity(x[lo:hi], y[lo:hi], coef, alpha, beta)


@njit(**JIT_PAR)
def _backward_kernel(mode, y, dy, x, dx, coef, alpha, beta):
    """Parallel over chunks; the mode is dispatched per chunk, outside the vector loop."""
    for t in prange((dx.size + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(lo + _CHUNK, dx.size)
        if mode == 0:
            _bwd_relu(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        elif mode == 1:
            _bwd_sigmoid(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        elif mode == 2:
            _bwd_tanh(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        elif mode == 3:
            _bwd_clipped_relu(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        elif mode == 4:
            _bwd_elu(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        elif mode == 5:
            _bwd_swish(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)
        else:
            _bwd_identity(y[lo:hi], dy[lo:hi], x[lo:hi], dx[lo:hi], coef, alpha, beta)


_MODE_ID = {m: i for i, m in enumerate(MODES)}   # must match the dispatch above


@register("cudnn.activation_forward", "numba")
@quiet
def activation_forward_numba(x, y, *, mode, coef=0.0, alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel, computes in x's dtype (float16 as float32)."""
    coef, alpha, beta = _check(mode, coef, alpha, beta, [("x", x), ("y", y)])
    run_flat(_forward_kernel, (_MODE_ID[mode],), (x,), y, (coef, alpha, beta), beta)


@register("cudnn.activation_backward", "numba")
@quiet
def activation_backward_numba(y, dy, x, dx, *, mode, coef=0.0, alpha=1.0, beta=0.0):
    """Same contract as the reference; parallel, computes in x's dtype (float16 as float32)."""
    coef, alpha, beta = _check(mode, coef, alpha, beta,
                               [("x", x), ("y", y), ("dy", dy), ("dx", dx)])
    run_flat(_backward_kernel, (_MODE_ID[mode],), (y, dy, x), dx, (coef, alpha, beta), beta)
