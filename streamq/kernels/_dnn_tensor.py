"""cuDNN tensor ops: add_tensor, op_tensor, transform_tensor, scale_tensor, set_tensor.

Broadcasting follows cuDNN: an input has the output's number of dimensions
and each of its dimensions is 1 or equal to the output's (the bias-add case
is a (1, C, 1, 1) ``a`` against an (N, C, H, W) ``c``). All arrays share one
float dtype; any strides. Blending: the output is ``... + beta*out`` and
``beta == 0`` never reads it (``scale_tensor``/``set_tensor`` have none).

* ``add_tensor(a, c, *, alpha, beta)``: ``c = alpha*a + beta*c``.
* ``op_tensor(op, a, b, c, *, alpha1, alpha2, beta)``:
  ``c = op(alpha1*a, alpha2*b) + beta*c`` with op in add, mul, min, max and
  the unary sqrt and not (``1 - alpha1*a``); unary ops ignore ``b`` (it may be
  None). min/max propagate NaN.
* ``transform_tensor(x, y, *, alpha=1, beta=0)``: same shape, any layouts
  (e.g. an NHWC-strided view), ``y = alpha*x + beta*y``.
* ``scale_tensor(y, alpha)``: ``y *= alpha``; ``set_tensor(y, value)``: fill.

numba: the output (C order) is split into rows of a contiguous trailing block
in which every input is either full or a broadcast scalar, so inner loops
are unit-stride and vectorise; parallel over row chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import blend
from ._dnn_common import quiet, JIT, JIT_PAR, K, check_array, check_choice, check_float, check_like, \
    check_scalar, compute_dtype
from .registry import register

OPS = ("add", "mul", "min", "max", "sqrt", "not")
UNARY_OPS = ("sqrt", "not")
_OP_ID = {op: i for i, op in enumerate(OPS)}
_COPY = len(OPS)          # internal op: plain alpha1*a (add_tensor)
_CHUNK = 1 << 15


def _check_out(name, out):
    check_array(name, out, writable=True)
    check_float(name, out)
    return out


def _check_broadcast(name, a, out, out_name):
    check_array(name, a)
    if a.dtype != out.dtype:
        raise TypeError(f"{name} must have the dtype of {out_name} ({out.dtype}), got {a.dtype}")
    if a.ndim != out.ndim or any(s not in (1, t) for s, t in zip(a.shape, out.shape)):
        raise ValueError(f"{name} of shape {a.shape} cannot be broadcast to {out_name} "
                         f"{out.shape}: each dimension must be 1 or equal")
    return a


# --------------------------------------------------------------------------
# reference (float64 numpy)
# --------------------------------------------------------------------------

def _op64(op, a, b):
    if op == "add":
        return a + b
    if op == "mul":
        return a * b
    if op == "min":
        return np.minimum(a, b)
    if op == "max":
        return np.maximum(a, b)
    if op == "sqrt":
        with np.errstate(invalid="ignore"):
            return np.sqrt(a)
    return 1.0 - a


def _check_op_tensor(op, a, b, c, alpha1, alpha2, beta):
    check_choice("op", op, OPS)
    _check_out("c", c)
    _check_broadcast("a", a, c, "c")
    if op not in UNARY_OPS or b is not None:
        _check_broadcast("b", b, c, "c")
    return (check_scalar("alpha1", alpha1), check_scalar("alpha2", alpha2),
            check_scalar("beta", beta))


@register("cudnn.add_tensor", "reference")
@quiet
def add_tensor_reference(a, c, *, alpha, beta):
    """``c = alpha*a + beta*c`` with ``a`` broadcast to ``c`` (cuDNN's rule)."""
    _check_out("c", c)
    _check_broadcast("a", a, c, "c")
    alpha, beta = check_scalar("alpha", alpha), check_scalar("beta", beta)
    blend(c, np.broadcast_to(a.astype(np.float64), c.shape), alpha, beta)


@register("cudnn.op_tensor", "reference")
@quiet
def op_tensor_reference(op, a, b, c, *, alpha1, alpha2, beta):
    """``c = op(alpha1*a, alpha2*b) + beta*c`` (see the module doc for ops)."""
    alpha1, alpha2, beta = _check_op_tensor(op, a, b, c, alpha1, alpha2, beta)
    a64 = alpha1 * a.astype(np.float64)
    b64 = None if op in UNARY_OPS else alpha2 * b.astype(np.float64)
    blend(c, np.broadcast_to(_op64(op, a64, b64), c.shape), 1.0, beta)


def _check_transform(x, y, alpha, beta):
    _check_out("y", y)
    check_array("x", x)
    check_like("x", x, y, "y")
    return check_scalar("alpha", alpha), check_scalar("beta", beta)


@register("cudnn.transform_tensor", "reference")
@quiet
def transform_tensor_reference(x, y, *, alpha=1.0, beta=0.0):
    """``y = alpha*x + beta*y`` elementwise by logical index, whatever the layouts."""
    alpha, beta = _check_transform(x, y, alpha, beta)
    blend(y, x.astype(np.float64), alpha, beta)


@register("cudnn.scale_tensor", "reference")
@quiet
def scale_tensor_reference(y, alpha):
    """``y = alpha * y`` in place (rounded once from float64)."""
    _check_out("y", y)
    alpha = check_scalar("alpha", alpha, finite=False)
    np.copyto(y, y.astype(np.float64) * alpha, casting="unsafe")


@register("cudnn.set_tensor", "reference")
@quiet
def set_tensor_reference(y, value):
    """Every element of ``y`` = ``value`` (rounded to y's dtype)."""
    _check_out("y", y)
    value = check_scalar("value", value, finite=False)
    y[...] = value


# --------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------

@njit(**JIT)
def _op_values(op, a, b, alpha1, alpha2, dst):
    """dst[i] = op(alpha1*a[i], alpha2*b[i]) over equal-length contiguous runs.

    The op is chosen outside the element loops, so each loop vectorises.
    """
    if op == 0:
        for i in range(dst.size):
            dst[i] = alpha1 * a[i] + alpha2 * b[i]
    elif op == 1:
        for i in range(dst.size):
            dst[i] = (alpha1 * a[i]) * (alpha2 * b[i])
    elif op == 2:                                   # NaN-propagating min
        for i in range(dst.size):
            u, v = alpha1 * a[i], alpha2 * b[i]
            dst[i] = u if (u < v) | (u != u) else v
    elif op == 3:                                   # NaN-propagating max
        for i in range(dst.size):
            u, v = alpha1 * a[i], alpha2 * b[i]
            dst[i] = u if (u > v) | (u != u) else v
    elif op == 4:
        for i in range(dst.size):
            dst[i] = np.sqrt(alpha1 * a[i])
    elif op == 5:
        for i in range(dst.size):
            dst[i] = K(1.0, dst) - alpha1 * a[i]
    else:                                           # _COPY: add_tensor's alpha*a
        for i in range(dst.size):
            dst[i] = alpha1 * a[i]


@njit(**JIT_PAR)
def _rows_kernel(op, a, a_off, a_full, b, b_off, b_full, c, inner, alpha1, alpha2, beta):
    """c[r*inner + l] = op(alpha1*a[..], alpha2*b[..]) + beta*c[..] for every row r.

    An input is read at ``off[r] + l`` when ``full`` else at ``off[r]`` (a
    broadcast scalar, expanded into a chunk-sized buffer). Rows are split
    into chunks of _CHUNK so a single huge row still runs in parallel;
    ``beta == 0`` never reads c.
    """
    rows = a_off.size
    per_row = (inner + _CHUNK - 1) // _CHUNK
    for t in prange(rows * per_row):
        r = t // per_row
        l0 = (t % per_row) * _CHUNK
        l1 = min(l0 + _CHUNK, inner)
        n = l1 - l0
        ao = a_off[r]
        bo = b_off[r]
        av = a[ao + l0:ao + l1] if a_full else np.full(n, a[ao])
        bv = b[bo + l0:bo + l1] if b_full else np.full(n, b[bo])
        cv = c[r * inner + l0:r * inner + l1]
        if beta == 0:
            _op_values(op, av, bv, alpha1, alpha2, cv)
        else:
            tmp = np.empty(n, c.dtype)
            _op_values(op, av, bv, alpha1, alpha2, tmp)
            for i in range(n):
                cv[i] = tmp[i] + beta * cv[i]


def _split(out_shape, inputs):
    """Index d where the trailing block starts: every input is full or all-ones there."""
    d = len(out_shape)
    while d > 0:
        ok = all(a.shape[d - 1:] == out_shape[d - 1:] or all(s == 1 for s in a.shape[d - 1:])
                 for a in inputs)
        if not ok:
            break
        d -= 1
    return d


def _row_plan(a, out_shape, d, cdt):
    """(flat compact a, row offsets, full?) for the split at d."""
    compact = np.ascontiguousarray(a, dtype=cdt)
    full = a.shape[d:] == out_shape[d:] and any(s != 1 for s in out_shape[d:])
    inner_a = int(np.prod(a.shape[d:]))
    lead = out_shape[:d]
    offsets = np.zeros(lead, dtype=np.int64)
    step = inner_a
    for k in range(d - 1, -1, -1):          # row-major strides of compact's lead dims
        if a.shape[k] != 1:
            shape = [1] * d
            shape[k] = lead[k]
            offsets = offsets + (np.arange(lead[k], dtype=np.int64) * step).reshape(shape)
        step *= a.shape[k]
    return compact.reshape(-1), np.ascontiguousarray(offsets).reshape(-1), full


def _run_rows(op, a, b, c, alpha1, alpha2, beta):
    """Drive _rows_kernel for output c (any layout; staged if not C-contiguous)."""
    if c.size == 0:
        return
    cdt = compute_dtype(c.dtype)
    inputs = [a] if b is None else [a, b]
    d = _split(c.shape, inputs)
    inner = int(np.prod(c.shape[d:]))
    pa = _row_plan(a, c.shape, d, cdt)
    pb = pa if b is None else _row_plan(b, c.shape, d, cdt)
    direct = c.dtype == cdt and c.flags.c_contiguous
    if direct:
        cf = c.reshape(-1)
    elif beta != 0:
        cf = np.ascontiguousarray(c, dtype=cdt).reshape(-1)
    else:
        cf = np.empty(c.size, dtype=cdt)
    t = cdt.type
    _rows_kernel(op, pa[0], pa[1], pa[2], pb[0], pb[1], pb[2], cf, inner,
                 t(alpha1), t(alpha2), t(beta))
    if not direct:
        np.copyto(c, cf.reshape(c.shape), casting="unsafe")


@register("cudnn.add_tensor", "numba")
@quiet
def add_tensor_numba(a, c, *, alpha, beta):
    """Same contract as the reference; parallel, unit-stride inner loops."""
    _check_out("c", c)
    _check_broadcast("a", a, c, "c")
    alpha, beta = check_scalar("alpha", alpha), check_scalar("beta", beta)
    _run_rows(_COPY, a, None, c, alpha, 0.0, beta)


@register("cudnn.op_tensor", "numba")
@quiet
def op_tensor_numba(op, a, b, c, *, alpha1, alpha2, beta):
    """Same contract as the reference; parallel, unit-stride inner loops."""
    alpha1, alpha2, beta = _check_op_tensor(op, a, b, c, alpha1, alpha2, beta)
    _run_rows(_OP_ID[op], a, None if op in UNARY_OPS else b, c, alpha1, alpha2, beta)


@njit(**JIT_PAR)
def _transform4(x, y, alpha, beta):
    """y = alpha*x + beta*y over 4-D arrays of any strides, parallel over dims 0-1."""
    d0, d1, d2, d3 = y.shape
    for t in prange(d0 * d1):
        i = t // d1
        j = t % d1
        for k in range(d2):
            for l in range(d3):
                v = alpha * x[i, j, k, l]
                if beta != 0:
                    v += beta * y[i, j, k, l]
                y[i, j, k, l] = v


def _transform_nd(x, y, alpha, beta):
    if y.ndim > 4:
        for i in range(y.shape[0]):
            _transform_nd(x[i], y[i], alpha, beta)
        return
    pad = (1,) * (4 - y.ndim)
    # Prepending unit dimensions is always a view.
    _transform4(x.reshape(pad + x.shape), y.reshape(pad + y.shape), alpha, beta)


@register("cudnn.transform_tensor", "numba")
@quiet
def transform_tensor_numba(x, y, *, alpha=1.0, beta=0.0):
    """Same contract as the reference; strided parallel copy with blending."""
    alpha, beta = _check_transform(x, y, alpha, beta)
    if y.size == 0:
        return
    cdt = compute_dtype(y.dtype)
    if cdt != y.dtype:                      # float16: stage through float32
        ys = y.astype(cdt) if beta != 0 else np.empty(y.shape, cdt)
        _transform_nd(x.astype(cdt), ys, cdt.type(alpha), cdt.type(beta))
        np.copyto(y, ys, casting="unsafe")
        return
    _transform_nd(x, y, cdt.type(alpha), cdt.type(beta))


@njit(**JIT_PAR)
def _scale_flat(y, alpha):
    for i in prange(y.size):
        y[i] = alpha * y[i]


@njit(**JIT_PAR)
def _fill_flat(y, value):
    for i in prange(y.size):
        y[i] = value


@register("cudnn.scale_tensor", "numba")
@quiet
def scale_tensor_numba(y, alpha):
    """``y = alpha * y``; parallel when y is C-contiguous float32/64, else numpy."""
    _check_out("y", y)
    alpha = check_scalar("alpha", alpha, finite=False)
    if y.flags.c_contiguous and y.dtype != np.float16:
        _scale_flat(y.reshape(-1), y.dtype.type(alpha))
    else:
        np.multiply(y, np.float32(alpha) if y.dtype == np.float16 else alpha, out=y,
                    casting="unsafe")


@register("cudnn.set_tensor", "numba")
@quiet
def set_tensor_numba(y, value):
    """Fill ``y`` with ``value``; parallel when y is C-contiguous float32/64, else numpy."""
    _check_out("y", y)
    value = check_scalar("value", value, finite=False)
    if y.flags.c_contiguous and y.dtype != np.float16:
        _fill_flat(y.reshape(-1), y.dtype.type(value))
    else:
        y[...] = value
