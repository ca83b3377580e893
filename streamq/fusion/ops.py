"""The fusable elementwise ops: how each call reads, writes and computes one element.

:func:`parse` turns one kernel-registry call (op name, args, kwargs, exactly as
the facade would pass them to ``streamq.kernels.get(op)``) into a :class:`Step`,
or returns None when the call is not fusable. A call is fusable only when the
fused kernel is certain to produce the bits the unfused call would:

* the op's implementation in force is the ``numba`` provider's (the default);
  with another provider (``reference`` rounds once from float64) the op runs
  unfused;
* every array is float32 or float64, all of one dtype, non-empty, with
  non-negative strides that are multiples of the item size, and written arrays
  do not overlap themselves; scalars are real numbers (no type promotion
  beyond what the op does to scalars);
* the arguments pass the op's own checks (anything unusual is left to the
  real kernel, which raises its error when the op is launched normally).

Each step's scalar semantics is a short list of statements over the operand
values (``{0}``, ``{1}``, ...), temporaries (``{t0}`` ...) and the result
``{r}``, written as the numba provider computes the op, in the op's dtype, so
every intermediate is rounded to that dtype after every operation. ``ONE`` and
``ZERO`` are constants of the step's dtype in the generated module; the
transcendental helpers are the numba provider's own (``vmath_sigmoid``,
``vmath_tanh``, ``vmath_expm1_neg``: ``vsigmoid``, ``vtanh``, ``vexpm1_neg`` from
``streamq.kernels._vmath``).

``aten::sigmoid``/``aten::tanh`` (and their ``_`` forms) are fused only where
the unfused numba provider runs its own kernel (same-shape C-contiguous
operands of at least ``_aten_elementwise._JIT_MIN`` elements): elsewhere it
calls numpy's ``exp``/``tanh``, which can differ from the numba helpers in the
last bit, and those calls are left unfused so fused results stay bit-exact.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Step", "parse", "FUSABLE_OPS", "same_view", "view_key"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True, eq=False)
class Step:
    """One fusable op call: the array it writes and how one element of it is computed.

    ``operands`` are numpy arrays (read elementwise, broadcast to ``out.shape``)
    or numpy scalars of ``out.dtype`` (kernel parameters); ``body`` holds the
    statements computing ``{r}`` from them; ``helpers`` the numba helpers the
    body calls. ``impl``, ``args`` and ``kwargs`` run the op unfused.
    """

    op: str
    impl: Callable
    args: tuple
    kwargs: dict
    out: np.ndarray
    operands: tuple
    body: tuple
    helpers: frozenset = field(default_factory=frozenset)
    out_key: tuple = field(init=False)
    operand_keys: tuple = field(init=False)

    def __post_init__(self):
        # Identities of the views, computed once: chains compare them a lot.
        object.__setattr__(self, "out_key", view_key(self.out))
        object.__setattr__(self, "operand_keys", tuple(
            view_key(o) if isinstance(o, np.ndarray) else None for o in self.operands))

    @property
    def reads(self) -> list:
        """The arrays the op reads (its array operands), in operand order."""
        return [o for o in self.operands if isinstance(o, np.ndarray)]

    @property
    def read_keys(self) -> list:
        """:func:`view_key` of each array in :attr:`reads`."""
        return [k for k in self.operand_keys if k is not None]

    @property
    def dtype(self) -> np.dtype:
        """The dtype the op computes and writes in."""
        return self.out.dtype

    @property
    def shape(self) -> tuple:
        """The shape of the written array: the iteration space of the op."""
        return self.out.shape


# ------------------------------------------------------------------ checks ---

def view_key(a: np.ndarray) -> tuple:
    """What identifies a view: data address, dtype, shape and strides."""
    return (a.__array_interface__["data"][0], a.dtype.str, a.shape, a.strides)


def same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two arrays are the very same view (equal :func:`view_key`)."""
    return view_key(a) == view_key(b)


def _tensor(x, dtype=None) -> bool:
    """A non-empty float32/float64 array (of ``dtype`` if given) with plain strides."""
    if not isinstance(x, np.ndarray) or x.dtype not in _FLOATS or x.size == 0:
        return False
    if dtype is not None and x.dtype != dtype:
        return False
    return all(s >= 0 and s % x.itemsize == 0 for s in x.strides)


def _no_self_overlap(x: np.ndarray) -> bool:
    """True when no two elements of ``x`` share memory (sorted-stride test)."""
    dims = sorted((s, n) for s, n in zip(x.strides, x.shape) if n > 1)
    reach = x.itemsize
    for stride, n in dims:
        if stride < reach:
            return False
        reach = stride * n
    return True


def _output(x, dtype, shape) -> bool:
    return (_tensor(x, dtype) and x.shape == tuple(shape) and x.flags.writeable
            and _no_self_overlap(x))


def _real(v) -> bool:
    """A real Python/numpy number that is not a bool."""
    return (isinstance(v, (numbers.Real, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_, np.ndarray)))


def _finite_real(v) -> bool:
    return _real(v) and math.isfinite(float(v))


def _broadcast(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _c_contiguous_like(out: np.ndarray, *arrays) -> bool:
    return out.flags.c_contiguous and all(
        a.shape == out.shape and a.dtype == out.dtype and a.flags.c_contiguous for a in arrays)


def _scalar(dtype, value):
    """``value`` as a scalar of ``dtype``, converted as the numba provider converts it."""
    with np.errstate(all="ignore"):
        return dtype.type(value)


# --------------------------------------------------------------- ATen ops ---
# Each parser mirrors the registry op's signature; a TypeError from binding
# means a call the real kernel will reject, so parse() returns None.

_ADD = ("{r} = {0} + {2} * {1}",)       # self + alpha * other (tensor other)
_ADD_S = ("{r} = {0} + {1}",)           # self + (alpha * other) (scalar folded)
_MUL = ("{r} = {0} * {1}",)
_DIV = ("{r} = {0} / {1}",)
_RELU = ("{r} = ZERO if {0} <= ZERO else {0}",)
_THRESHOLD = ("{r} = {2} if {0} <= {1} else {0}",)
_THRESHOLD_BW = ("{r} = ZERO if {1} <= {2} else {0}",)
_SIGMOID = ("{r} = vmath_sigmoid({0})",)
_TANH = ("{r} = vmath_tanh({0})",)
_SIGMOID_BW = ("{r} = {0} * (ONE - {1}) * {1}",)
_TANH_BW = ("{r} = {0} * (ONE - {1} * {1})",)


def _binary(kind, self, other, alpha, out, inplace):
    """add/sub/mul/div with a tensor or scalar ``other``: (out, operands, body)."""
    if not _tensor(self):
        return None
    dt = self.dtype
    if isinstance(other, np.ndarray):
        if not _tensor(other, dt):
            return None
        shape = _broadcast(self.shape, other.shape)
    elif _real(other):
        shape = self.shape
    else:
        return None
    if shape is None:
        return None
    if inplace:
        if shape != self.shape or not _output(self, dt, shape):
            return None
        out = self
    elif not _output(out, dt, shape):
        return None
    if kind in ("add", "sub"):
        if not _real(alpha):
            return None
        alpha = -alpha if kind == "sub" else alpha
        if isinstance(other, np.ndarray):
            return out, (self, other, _scalar(dt, alpha)), _ADD
        with np.errstate(all="ignore"):
            folded = _scalar(dt, _scalar(dt, alpha) * _scalar(dt, other))
        return out, (self, folded), _ADD_S
    operand = other if isinstance(other, np.ndarray) else _scalar(dt, other)
    return out, (self, operand), _MUL if kind == "mul" else _DIV


def _add(self, other, *, alpha=1, out):
    return _binary("add", self, other, alpha, out, False)


def _add_(self, other, *, alpha=1):
    return _binary("add", self, other, alpha, None, True)


def _sub(self, other, *, alpha=1, out):
    return _binary("sub", self, other, alpha, out, False)


def _sub_(self, other, *, alpha=1):
    return _binary("sub", self, other, alpha, None, True)


def _mul(self, other, *, out):
    return _binary("mul", self, other, 1, out, False)


def _mul_(self, other):
    return _binary("mul", self, other, 1, None, True)


def _div(self, other, *, rounding_mode=None, out):
    if rounding_mode is not None:       # trunc/floor are not fused
        return None
    return _binary("div", self, other, 1, out, False)


def _div_(self, other, *, rounding_mode=None):
    if rounding_mode is not None:
        return None
    return _binary("div", self, other, 1, None, True)


def _unary_out(self, out, inplace):
    if not _tensor(self):
        return None
    if inplace:
        return self if _output(self, self.dtype, self.shape) else None
    return out if _output(out, self.dtype, self.shape) else None


def _relu(self, *, out):
    out = _unary_out(self, out, False)
    return None if out is None else (out, (self,), _RELU)


def _relu_(self):
    out = _unary_out(self, None, True)
    return None if out is None else (out, (self,), _RELU)


def _threshold_common(self, threshold, value, out, inplace):
    out = _unary_out(self, out, inplace)
    if out is None or not (_real(threshold) and _real(value)):
        return None
    dt = self.dtype
    return out, (self, _scalar(dt, threshold), _scalar(dt, value)), _THRESHOLD


def _threshold(self, threshold, value, *, out):
    return _threshold_common(self, threshold, value, out, False)


def _threshold_(self, threshold, value):
    return _threshold_common(self, threshold, value, None, True)


def _pair(first, second, out):
    """Two float tensors of one dtype, broadcast together, and their ``out``."""
    if not (_tensor(first) and _tensor(second, first.dtype)):
        return None
    shape = _broadcast(first.shape, second.shape)
    if shape is None or not _output(out, first.dtype, shape):
        return None
    return out


def _threshold_backward(grad_output, self, threshold, *, out):
    out = _pair(grad_output, self, out)
    if out is None or not _real(threshold):
        return None
    return out, (grad_output, self, _scalar(self.dtype, threshold)), _THRESHOLD_BW


def _jit_min() -> int:
    from streamq.kernels import _aten_elementwise
    return _aten_elementwise._JIT_MIN


def _transcendental(body, self, out, inplace):
    out = _unary_out(self, out, inplace)
    if out is None or out.size < _jit_min() or not _c_contiguous_like(out, self):
        return None     # the unfused op would use numpy's exp/tanh here
    return out, (self,), body


def _sigmoid(self, *, out):
    return _transcendental(_SIGMOID, self, out, False)


def _sigmoid_(self):
    return _transcendental(_SIGMOID, self, None, True)


def _tanh(self, *, out):
    return _transcendental(_TANH, self, out, False)


def _tanh_(self):
    return _transcendental(_TANH, self, None, True)


def _sigmoid_backward(grad_output, output, *, out):
    out = _pair(grad_output, output, out)
    return None if out is None else (out, (grad_output, output), _SIGMOID_BW)


def _tanh_backward(grad_output, output, *, out):
    out = _pair(grad_output, output, out)
    return None if out is None else (out, (grad_output, output), _TANH_BW)


# --------------------------------------------------------------- cuDNN ops ---
# The numba provider computes ``alpha * f(x)``, then ``+ beta * y`` only when
# beta != 0 (beta == 0 never reads y). Scalars go through float() first.

_ACT_FORWARD = {
    "relu": ("{t0} = {0} if not ({0} <= ZERO) else ZERO",),
    "sigmoid": ("{t0} = vmath_sigmoid({0})",),
    "tanh": ("{t0} = vmath_tanh({0})",),
    "clipped_relu": ("{t0} = ZERO if {0} <= ZERO else ({2} if {0} >= {2} else {0})",),
    "elu": ("{t0} = {0} if {0} > ZERO else {2} * vmath_expm1_neg({0})",),
    "swish": ("{t0} = {0} * vmath_sigmoid({2} * {0})",),
    "identity": ("{t0} = {0}",),
}
_OP_TENSOR = {
    "add": "{t2} = {t0} + {t1}",
    "mul": "{t2} = {t0} * {t1}",
    "min": "{t2} = {t0} if ({t0} < {t1} or {t0} != {t0}) else {t1}",
    "max": "{t2} = {t0} if ({t0} > {t1} or {t0} != {t0}) else {t1}",
    "sqrt": "{t2} = np.sqrt({t0})",
    "not": "{t2} = ONE - {t0}",
}


def _dnn_scalar(dtype, value):
    return _scalar(dtype, float(value))


def _blend(operands, body, out, beta, last):
    """Append ``{r} = last + beta * out`` when beta != 0, else ``{r} = last``."""
    if float(beta) != 0:
        n = len(operands)
        operands = operands + (out, _dnn_scalar(out.dtype, beta))
        return out, operands, body + (f"{{r}} = {last} + {{{n + 1}}} * {{{n}}}",)
    return out, operands, body + (f"{{r}} = {last}",)


def _cudnn_broadcast(a, c) -> bool:
    return (_tensor(a, c.dtype) and a.ndim == c.ndim
            and all(s in (1, t) for s, t in zip(a.shape, c.shape)))


def _activation_forward(x, y, *, mode, coef=0.0, alpha=1.0, beta=0.0):
    if not (_tensor(x) and _output(y, x.dtype, x.shape)) or mode not in _ACT_FORWARD:
        return None
    if not all(_finite_real(v) for v in (coef, alpha, beta)):
        return None
    if mode == "clipped_relu" and float(coef) < 0:
        return None
    dt = x.dtype
    operands = (x, _dnn_scalar(dt, alpha), _dnn_scalar(dt, coef))
    body = _ACT_FORWARD[mode] + ("{t1} = {1} * {t0}",)
    return _blend(operands, body, y, beta, "{t1}")


def _add_tensor(a, c, *, alpha, beta):
    if not (isinstance(c, np.ndarray) and _output(c, c.dtype, c.shape) and _cudnn_broadcast(a, c)):
        return None
    if not (_finite_real(alpha) and _finite_real(beta)):
        return None
    operands = (a, _dnn_scalar(c.dtype, alpha))
    return _blend(operands, ("{t0} = {1} * {0}",), c, beta, "{t0}")


def _op_tensor(op, a, b, c, *, alpha1, alpha2, beta):
    if op not in _OP_TENSOR or not isinstance(c, np.ndarray) or not _output(c, c.dtype, c.shape):
        return None
    unary = op in ("sqrt", "not")
    if not _cudnn_broadcast(a, c) or (not (unary and b is None) and not _cudnn_broadcast(b, c)):
        return None
    if not all(_finite_real(v) for v in (alpha1, alpha2, beta)):
        return None
    dt = c.dtype
    if unary:
        operands = (a, _dnn_scalar(dt, alpha1))
        body = ("{t0} = {1} * {0}", _OP_TENSOR[op].replace("{t2}", "{t1}"))
        return _blend(operands, body, c, beta, "{t1}")
    operands = (a, _dnn_scalar(dt, alpha1), b, _dnn_scalar(dt, alpha2))
    body = ("{t0} = {1} * {0}", "{t1} = {3} * {2}", _OP_TENSOR[op])
    return _blend(operands, body, c, beta, "{t2}")


def _scale_tensor(y, alpha):
    if not (isinstance(y, np.ndarray) and _output(y, y.dtype, y.shape) and _real(alpha)):
        return None
    return y, (y, _dnn_scalar(y.dtype, alpha)), ("{r} = {1} * {0}",)


_PARSERS: dict[str, Callable] = {
    "aten::add": _add, "aten::add_": _add_, "aten::sub": _sub, "aten::sub_": _sub_,
    "aten::mul": _mul, "aten::mul_": _mul_, "aten::div": _div, "aten::div_": _div_,
    "aten::relu": _relu, "aten::relu_": _relu_,
    "aten::threshold": _threshold, "aten::threshold_": _threshold_,
    "aten::threshold_backward": _threshold_backward,
    "aten::sigmoid": _sigmoid, "aten::sigmoid_": _sigmoid_,
    "aten::tanh": _tanh, "aten::tanh_": _tanh_,
    "aten::sigmoid_backward": _sigmoid_backward, "aten::tanh_backward": _tanh_backward,
    "cudnn.activation_forward": _activation_forward,
    "cudnn.add_tensor": _add_tensor,
    "cudnn.op_tensor": _op_tensor,
    "cudnn.scale_tensor": _scale_tensor,
}

#: Every op name :func:`parse` may accept.
FUSABLE_OPS: frozenset = frozenset(_PARSERS)

_HELPERS = ("vmath_sigmoid", "vmath_tanh", "vmath_expm1_neg")


def _impl_in_force(op: str):
    """The implementation the registry picks for ``op``, if it is the numba provider's."""
    from streamq.kernels import registry
    try:
        impl = registry.get(op)
        numba_impl = registry.get(op, "numba")
    except registry.KernelNotFoundError:
        return None
    return impl if impl is numba_impl else None


def parse(op: str, args: tuple = (), kwargs: dict | None = None) -> Step | None:
    """The :class:`Step` for one call of a fusable op, or None if it must run unfused."""
    parser = _PARSERS.get(op)
    if parser is None:
        return None
    kwargs = {} if kwargs is None else kwargs
    try:
        parsed = parser(*args, **kwargs)
    except (TypeError, ValueError, OverflowError):   # the real kernel rejects it: raise there
        return None
    if parsed is None:
        return None
    impl = _impl_in_force(op)
    if impl is None:
        return None
    out, operands, body = parsed
    text = " ".join(body)
    helpers = frozenset(h for h in _HELPERS if h + "(" in text)
    return Step(op, impl, tuple(args), dict(kwargs), out, operands, body, helpers)
