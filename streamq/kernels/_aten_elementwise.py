"""ATen elementwise ops: add/sub/mul/div, relu/threshold, sigmoid, tanh, their backwards, fill_, copy_.

Contract shared by every provider (see docs/kernels/aten_ops.md):

* ``self`` is a numpy array; ``other`` an array or a real scalar. Shapes
  broadcast as in torch; ``out`` must already have the broadcast shape and
  the dtype torch would give the result (``result_type`` below), else
  ValueError/TypeError naming ``out``. The result is written into ``out``,
  which is returned. In-place variants (``aten::add_`` ...) write into
  ``self`` and require the result dtype to be castable to ``self.dtype``.
* ``reference`` computes in float64 (int64 for integer results) and rounds
  once into ``out``; ``numpy`` uses ufuncs with ``out=`` in the result dtype;
  ``numba`` runs parallel kernels for float32/float64 C-contiguous operands of
  one shape (or a scalar ``other``) and uses the ``numpy`` path otherwise.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import _aten_jit as jit
from ._dnn_common import serial_below
from ._aten_common import (
    BOOL, DEFAULT_FLOAT, FLOAT64, INT64, JIT_FLOATS, broadcast_shape, can_cast,
    check_out, check_scalar, check_tensor, is_float, result_type, scalar_dtype, separate,
)
from .registry import register

# Below this many elements the numba kernels are not worth their call overhead.
_JIT_MIN = 4096


# ------------------------------------------------------------ binary ops ----

@dataclass
class _Binary:
    kind: str           # "add", "mul" or "div" (sub is add with -alpha)
    self: np.ndarray
    other: object       # ndarray or Python scalar
    alpha: object
    rounding: str | None
    calc: np.dtype      # dtype the op is computed in (torch's common dtype)
    out: np.ndarray


def _other(other):
    if isinstance(other, np.ndarray):
        return check_tensor("other", other)
    return check_scalar("other", other)


def _prep_binary(kind, self, other, alpha, rounding, out, inplace=False) -> _Binary:
    check_tensor("self", self)
    other = _other(other)
    calc = result_type(self, other)
    other_dtype = other.dtype if isinstance(other, np.ndarray) else scalar_dtype(other)
    if kind in ("add", "sub"):
        check_scalar("alpha", alpha)
        if kind == "sub" and BOOL in (self.dtype, other_dtype):
            raise TypeError("sub with a bool self or other is not supported "
                            "(use logical_xor / logical_not)")
        # torch's alpha_check: a bool alpha only for bool results, no float alpha for
        # integer or bool results.
        if isinstance(alpha, (bool, np.bool_)) and calc != BOOL:
            raise TypeError(f"alpha may be a bool only for bool inputs, got {alpha!r}")
        if not is_float(calc) and not isinstance(alpha, (numbers.Integral, np.bool_)):
            raise TypeError(f"alpha must be an integer for integer or bool inputs, got {alpha!r}")
    if kind == "div":
        if rounding not in (None, "trunc", "floor"):
            raise ValueError(f"rounding_mode must be None, 'trunc' or 'floor', got {rounding!r}")
        if rounding is not None and calc == BOOL:
            raise TypeError(f"div with rounding_mode={rounding!r} does not support bool inputs")
        if rounding is None and not is_float(calc):
            calc = DEFAULT_FLOAT
    other_shape = other.shape if isinstance(other, np.ndarray) else ()
    shape = broadcast_shape("self", self.shape, "other", other_shape)
    if inplace:
        if shape != self.shape:
            raise ValueError(f"other with shape {other_shape} cannot be broadcast to self's "
                             f"shape {self.shape} in an in-place op")
        if not can_cast(calc, self.dtype):
            raise TypeError(f"result type {calc} can't be cast to self's dtype {self.dtype}")
        out = self
        check_out(out, shape, self.dtype, "self")
    else:
        check_out(out, shape, calc)
    if kind == "sub":
        kind, alpha = "add", -alpha
    return _Binary(kind, self, other, alpha, rounding, calc, out)


def _int_zero_check(b):
    if np.any(np.asarray(b) == 0):
        raise ZeroDivisionError("other contains zero in an integer division")


def _reference_binary(p: _Binary) -> np.ndarray:
    wide = FLOAT64 if is_float(p.calc) else INT64
    a = p.self.astype(wide)
    b = np.asarray(p.other).astype(wide)
    with np.errstate(all="ignore"):
        if p.kind == "add":
            r = a + np.asarray(p.alpha).astype(wide) * b
        elif p.kind == "mul":
            r = a * b
        elif wide == FLOAT64:
            if p.rounding is None:
                r = a / b
            elif p.rounding == "trunc":
                r = np.trunc(a / b)
            else:  # Python's floor division: floor(a / b) computed exactly via fmod
                r = np.floor_divide(a, b)
                r = np.where(b == 0, a / b, r)
        else:
            _int_zero_check(b)
            if p.rounding == "floor":
                r = a // b
            else:  # truncation toward zero
                r = (a - np.fmod(a, b)) // b
    np.copyto(p.out, r, casting="unsafe")
    return p.out


def _numpy_binary(p: _Binary) -> np.ndarray:
    calc, out = p.calc, p.out
    a = p.self
    b = np.asarray(p.other, dtype=calc) if not isinstance(p.other, np.ndarray) else p.other
    kw = dict(out=out, dtype=calc, casting="unsafe")
    with np.errstate(all="ignore"):
        if p.kind == "add":
            if p.alpha != 1:
                b = np.multiply(b, np.asarray(p.alpha, dtype=calc), dtype=calc, casting="unsafe")
            if calc == BOOL:
                np.logical_or(a, b, **kw)
            else:
                np.add(a, b, **kw)
        elif p.kind == "mul":
            (np.logical_and if calc == BOOL else np.multiply)(a, b, **kw)
        elif p.rounding is None:
            np.divide(a, b, **kw)
        elif is_float(calc):
            if p.rounding == "trunc":
                np.divide(a, b, **kw)
                np.trunc(out, out=out)
            else:
                np.floor_divide(a, b, **kw)
        else:
            _int_zero_check(b)
            if p.rounding == "floor":
                np.floor_divide(a, b, **kw)
            else:
                a_c, b_c = a.astype(calc, copy=False), b.astype(calc, copy=False)
                np.floor_divide(a_c - np.fmod(a_c, b_c), b_c, **kw)
    return out


def _numba_binary(p: _Binary) -> np.ndarray:
    out = p.out
    other = p.other
    same = (isinstance(other, np.ndarray) and other.dtype == out.dtype and
            other.shape == out.shape and other.flags.c_contiguous)
    scalar = not isinstance(other, np.ndarray)
    if (out.dtype not in JIT_FLOATS or p.calc != out.dtype or out.size < _JIT_MIN
            or p.rounding is not None or not out.flags.c_contiguous
            or p.self.dtype != out.dtype or p.self.shape != out.shape
            or not p.self.flags.c_contiguous or not (same or scalar)):
        return _numpy_binary(p)
    t = out.dtype.type
    a = separate(p.self, out).reshape(-1)
    o = out.reshape(-1)
    if scalar:
        s = t(other)
        if p.kind == "add":
            with serial_below(o.size):
                jit.binary_scalar(jit.ADD, a, t(t(p.alpha) * s), o)
        else:
            with serial_below(o.size):
                jit.binary_scalar(jit.MUL if p.kind == "mul" else jit.DIV, a, s, o)
        return out
    b = separate(other, out).reshape(-1)
    op = {"add": jit.ADD, "mul": jit.MUL}.get(p.kind, jit.DIV)
    with serial_below(o.size):
        jit.binary(op, a, b, t(p.alpha), o)
    return out


_RUNNERS = {"reference": _reference_binary, "numpy": _numpy_binary, "numba": _numba_binary}


def _register_binary(op: str, kind: str, doc: str):
    """Register out= and in-place forms of one binary op under every provider."""
    for provider, run in _RUNNERS.items():
        if kind in ("add", "sub"):
            def fn(self, other, *, alpha=1, out, _run=run, _kind=kind):
                return _run(_prep_binary(_kind, self, other, alpha, None, out))

            def fn_(self, other, *, alpha=1, _run=run, _kind=kind):
                return _run(_prep_binary(_kind, self, other, alpha, None, None, inplace=True))
        elif kind == "mul":
            def fn(self, other, *, out, _run=run):
                return _run(_prep_binary("mul", self, other, 1, None, out))

            def fn_(self, other, *, _run=run):
                return _run(_prep_binary("mul", self, other, 1, None, None, inplace=True))
        else:
            def fn(self, other, *, rounding_mode=None, out, _run=run):
                return _run(_prep_binary("div", self, other, 1, rounding_mode, out))

            def fn_(self, other, *, rounding_mode=None, _run=run):
                return _run(_prep_binary("div", self, other, 1, rounding_mode, None, inplace=True))
        for f, name, text in ((fn, op, doc), (fn_, op + "_", doc + " In place: writes into and returns self.")):
            f.__name__ = f"{name.split('::')[1]}_{provider}"
            f.__qualname__ = f.__name__
            f.__doc__ = f"{name} ({provider} provider). {text}"
            register(name, provider, f)


_register_binary("aten::add", "add",
                 "out = self + alpha * other, torch broadcasting and type promotion; "
                 "alpha must be integral for integer results and bool for bool results.")
_register_binary("aten::sub", "sub",
                 "out = self - alpha * other; bool operands are refused as in torch.")
_register_binary("aten::mul", "mul", "out = self * other (logical and for bool).")
_register_binary("aten::div", "div",
                 "out = self / other. rounding_mode None: true division (integers give "
                 "float32); 'trunc': toward zero; 'floor': Python floor division. Integer "
                 "division by zero raises ZeroDivisionError.")


# -------------------------------------------------------------- unary ops ---

def _prep_unary(self, out, *, floating_out: bool, allow_bool: bool, inplace: bool):
    check_tensor("self", self)
    if not allow_bool and self.dtype == BOOL:
        raise TypeError("self must not be bool for this op")
    dtype = self.dtype
    if floating_out and not is_float(dtype):
        dtype = DEFAULT_FLOAT
    if inplace:
        if dtype != self.dtype:
            raise TypeError(f"result type {dtype} can't be cast to self's dtype {self.dtype}")
        out = self
        check_out(out, self.shape, dtype, "self")
    else:
        check_out(out, self.shape, dtype)
    return out


def _jit_ok(out, *arrays) -> bool:
    """True when the numba kernels can run: one float dtype, one shape, C order, big enough."""
    return (out.dtype in JIT_FLOATS and out.size >= _JIT_MIN and out.flags.c_contiguous and
            all(a.dtype == out.dtype and a.shape == out.shape and a.flags.c_contiguous
                for a in arrays))


def _threshold_scalars(name_t, threshold, name_v, value, dtype):
    check_scalar(name_t, threshold)
    check_scalar(name_v, value)
    with np.errstate(all="ignore"):
        return dtype.type(threshold), dtype.type(value)


def _threshold_ref(x, th, value, out):
    x64 = x.astype(FLOAT64) if is_float(x.dtype) else x.astype(INT64)
    np.copyto(out, np.where(x64 <= th, value, x64), casting="unsafe")
    return out


def _threshold_np(x, th, value, out):
    np.copyto(out, np.where(x <= th, value, x), casting="unsafe")
    return out


def _threshold_jit(x, th, value, out):
    if out.dtype.kind not in "fiu" or out.dtype == np.float16 or out.size < _JIT_MIN or \
            not out.flags.c_contiguous or not x.flags.c_contiguous:
        return _threshold_np(x, th, value, out)
    with serial_below(out.size):
        jit.threshold(separate(x, out).reshape(-1), th, value, out.reshape(-1))
    return out


_THRESH = {"reference": _threshold_ref, "numpy": _threshold_np, "numba": _threshold_jit}


def _register_threshold():
    for provider, run in _THRESH.items():
        def relu(self, *, out, _run=run):
            out = _prep_unary(self, out, floating_out=False, allow_bool=False, inplace=False)
            return _run(self, self.dtype.type(0), self.dtype.type(0), out)

        def relu_(self, *, _run=run):
            out = _prep_unary(self, None, floating_out=False, allow_bool=False, inplace=True)
            return _run(self, self.dtype.type(0), self.dtype.type(0), out)

        def threshold(self, threshold, value, *, out, _run=run):
            out = _prep_unary(self, out, floating_out=False, allow_bool=False, inplace=False)
            th, v = _threshold_scalars("threshold", threshold, "value", value, self.dtype)
            return _run(self, th, v, out)

        def threshold_(self, threshold, value, *, _run=run):
            out = _prep_unary(self, None, floating_out=False, allow_bool=False, inplace=True)
            th, v = _threshold_scalars("threshold", threshold, "value", value, self.dtype)
            return _run(self, th, v, out)

        docs = {
            "relu": "out = max(self, 0); NaN propagates. Integer and float dtypes; out has self's dtype.",
            "threshold": "out = value where self <= threshold else self (NaN passes through); "
                         "threshold and value are cast to self's dtype first.",
        }
        for f, base in ((relu, "relu"), (relu_, "relu"), (threshold, "threshold"),
                        (threshold_, "threshold")):
            name = f"aten::{f.__name__}"
            f.__name__ = f.__qualname__ = f"{f.__name__}_{provider}"
            f.__doc__ = f"{name} ({provider} provider). {docs[base]}" + (
                " In place: writes into and returns self." if name.endswith("_") else "")
            register(name, provider, f)


_register_threshold()


def _prep_pair(grad_output, second, name2, out):
    """grad_output and a float partner of the same dtype, broadcast; out of that shape/dtype."""
    check_tensor("grad_output", grad_output, floating=True)
    check_tensor(name2, second, floating=True)
    if second.dtype != grad_output.dtype:
        raise TypeError(f"{name2} must have grad_output's dtype {grad_output.dtype}, got {second.dtype}")
    shape = broadcast_shape("grad_output", grad_output.shape, name2, second.shape)
    return check_out(out, shape, grad_output.dtype)


def _register(op, provider, fn, doc):
    fn.__name__ = fn.__qualname__ = f"{op.split('::')[1]}_{provider}"
    fn.__doc__ = f"{op} ({provider} provider). {doc}"
    register(op, provider, fn)


_TB_DOC = ("out = 0 where self <= threshold else grad_output (NaN in self passes the "
           "gradient; NaN in grad_output is zeroed where self <= threshold). Float dtypes, "
           "grad_output and self of one dtype, broadcast together.")


def threshold_backward_reference(grad_output, self, threshold, *, out):
    out = _prep_pair(grad_output, self, "self", out)
    check_scalar("threshold", threshold)
    th = float(self.dtype.type(threshold))
    r = np.where(self.astype(FLOAT64) <= th, 0.0, grad_output.astype(FLOAT64))
    np.copyto(out, r, casting="unsafe")
    return out


def threshold_backward_numpy(grad_output, self, threshold, *, out):
    out = _prep_pair(grad_output, self, "self", out)
    check_scalar("threshold", threshold)
    np.copyto(out, np.where(self <= self.dtype.type(threshold), out.dtype.type(0), grad_output))
    return out


def threshold_backward_numba(grad_output, self, threshold, *, out):
    out = _prep_pair(grad_output, self, "self", out)
    check_scalar("threshold", threshold)
    if not _jit_ok(out, grad_output, self):
        np.copyto(out, np.where(self <= self.dtype.type(threshold), out.dtype.type(0), grad_output))
        return out
    with serial_below(out.size):
        jit.backward(jit.THRESHOLD_BACKWARD, separate(grad_output, out).reshape(-1),
                     separate(self, out).reshape(-1), self.dtype.type(threshold), out.reshape(-1))
    return out


for _p, _f in (("reference", threshold_backward_reference), ("numpy", threshold_backward_numpy),
               ("numba", threshold_backward_numba)):
    _register("aten::threshold_backward", _p, _f, _TB_DOC)


# sigmoid / tanh and their backwards ------------------------------------------

def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


_TRANSCENDENTAL = {
    "sigmoid": (_sigmoid64, jit.sigmoid,
                "out = 1 / (1 + exp(-self)). Integer/bool input gives float32 out."),
    "tanh": (np.tanh, jit.tanh, "out = tanh(self). Integer/bool input gives float32 out."),
}


def _register_transcendental(name, f64, kernel, doc):
    def run_reference(self, out):
        np.copyto(out, f64(self.astype(FLOAT64)), casting="unsafe")
        return out

    def run_numpy(self, out):
        # float16 is computed in float32, integers in the float32 result dtype.
        calc = np.float32 if out.dtype == np.float16 else out.dtype
        if name == "tanh":
            np.tanh(self, out=out, dtype=calc, casting="unsafe")
        else:
            with np.errstate(over="ignore"):
                t = np.exp(np.negative(self, dtype=calc, casting="unsafe"))
                t += 1
                np.divide(1, t, out=out, casting="unsafe")
        return out

    def run_numba(self, out):
        if not _jit_ok(out, self):
            return run_numpy(self, out)
        with serial_below(out.size):
            kernel(separate(self, out).reshape(-1), out.reshape(-1))
        return out

    for provider, run in (("reference", run_reference), ("numpy", run_numpy), ("numba", run_numba)):
        def fn(self, *, out, _run=run):
            return _run(self, _prep_unary(self, out, floating_out=True, allow_bool=True, inplace=False))

        def fn_(self, *, _run=run):
            if not is_float(check_tensor("self", self).dtype):
                raise TypeError(f"result type float32 can't be cast to self's dtype {self.dtype}")
            return _run(self, _prep_unary(self, None, floating_out=True, allow_bool=True, inplace=True))

        _register(f"aten::{name}", provider, fn, doc)
        _register(f"aten::{name}_", provider, fn_, doc + " In place: writes into and returns self.")


for _name, (_f64, _kernel, _doc) in _TRANSCENDENTAL.items():
    _register_transcendental(_name, _f64, _kernel, _doc)


_BACKWARD = {
    "sigmoid_backward": (lambda g, y: g * (1.0 - y) * y, jit.SIGMOID_BACKWARD,
                         "out = grad_output * (1 - output) * output, where output = sigmoid(x)."),
    "tanh_backward": (lambda g, y: g * (1.0 - y * y), jit.TANH_BACKWARD,
                      "out = grad_output * (1 - output**2), where output = tanh(x)."),
}


def _register_backward(name, formula, op_code, doc):
    doc += " Float dtypes; grad_output and output of one dtype, broadcast together."

    def reference(grad_output, output, *, out):
        out = _prep_pair(grad_output, output, "output", out)
        np.copyto(out, formula(grad_output.astype(FLOAT64), output.astype(FLOAT64)), casting="unsafe")
        return out

    def numpy_(grad_output, output, *, out):
        out = _prep_pair(grad_output, output, "output", out)
        calc = np.float32 if out.dtype == np.float16 else out.dtype
        np.copyto(out, formula(grad_output.astype(calc, copy=False), output.astype(calc, copy=False)),
                  casting="unsafe")
        return out

    def numba_(grad_output, output, *, out):
        out = _prep_pair(grad_output, output, "output", out)
        if not _jit_ok(out, grad_output, output):
            return numpy_(grad_output, output, out=out)
        with serial_below(out.size):
            jit.backward(op_code, separate(grad_output, out).reshape(-1),
                         separate(output, out).reshape(-1), out.dtype.type(0), out.reshape(-1))
        return out

    for provider, fn in (("reference", reference), ("numpy", numpy_), ("numba", numba_)):
        _register(f"aten::{name}", provider, fn, doc)


for _name, (_formula, _kernel, _doc) in _BACKWARD.items():
    _register_backward(_name, _formula, _kernel, _doc)


# ---------------------------------------------------------------- fill_, copy_

def _fill_value(self, value):
    """value converted to self's dtype with torch's overflow checks."""
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise ValueError(f"value must be a scalar or a 0-d array, got shape {value.shape}")
        value = value.item()
    check_scalar("value", value)
    dt = self.dtype
    if dt == BOOL:
        return np.bool_(value != 0)
    if dt.kind in "ui":
        v = float(value) if not isinstance(value, numbers.Integral) else int(value)
        info = np.iinfo(dt)
        low = -int(info.max) if dt.kind == "u" else info.min   # torch lets unsigned wrap
        if isinstance(v, float) and not np.isfinite(v) or not low <= int(v) <= info.max:
            raise ValueError(f"value {value!r} cannot be converted to {dt} without overflow")
        return dt.type(np.int64(int(v)).astype(dt))
    v = float(value)
    if np.isfinite(v) and abs(v) > float(np.finfo(dt).max):
        raise ValueError(f"value {value!r} cannot be converted to {dt} without overflow")
    return dt.type(v)


def _prep_fill(self, value):
    check_tensor("self", self)
    check_out(self, self.shape, self.dtype, "self")
    return _fill_value(self, value)


def fill__reference(self, value):
    """aten::fill_ (reference provider). Every element of self = value cast to self's dtype.

    Integers truncate toward zero; values that overflow the dtype (or NaN/inf
    for integers) raise ValueError naming value, as torch does. Returns self.
    """
    v = _prep_fill(self, value)
    self[...] = v
    return self


def fill__numba(self, value):
    """aten::fill_ (numba provider): a parallel store loop for big C-contiguous float32/64 arrays."""
    v = _prep_fill(self, value)
    if self.size >= _JIT_MIN and self.flags.c_contiguous and self.dtype in JIT_FLOATS:
        with serial_below(self.size):
            jit.fill(self.reshape(-1), v)
    else:
        self[...] = v
    return self


register("aten::fill_", "reference", fill__reference)
register("aten::fill_", "numba", fill__numba)


def _prep_copy(self, src):
    check_tensor("self", self)
    check_out(self, self.shape, self.dtype, "self")
    check_tensor("src", src)
    if broadcast_shape("self", self.shape, "src", src.shape) != self.shape:
        raise ValueError(f"src with shape {src.shape} cannot be broadcast to self's shape {self.shape}")


def copy__reference(self, src):
    """aten::copy_ (reference provider). self[...] = src broadcast to self's shape and cast.

    Casting as torch: float -> integer truncates toward zero, anything -> bool
    is ``!= 0`` (NaN is True), bool -> number is 0/1, integer narrowing wraps.
    src may overlap self. Returns self.
    """
    _prep_copy(self, src)
    if self.dtype == BOOL:
        vals = src != 0
    elif self.dtype.kind in "ui" and is_float(src.dtype):
        with np.errstate(invalid="ignore"):
            vals = np.trunc(src.astype(FLOAT64))
    else:
        vals = src.copy()
    with np.errstate(invalid="ignore"):
        np.copyto(self, vals, casting="unsafe")
    return self


def copy__numba(self, src):
    """aten::copy_ (numba provider): a parallel copy between float32/float64 arrays of one shape.

    Other dtypes, broadcasting and strided layouts use numpy's copyto, which
    casts the same way.
    """
    _prep_copy(self, src)
    if (self.size >= _JIT_MIN and self.shape == src.shape and self.flags.c_contiguous and
            src.flags.c_contiguous and self.dtype in JIT_FLOATS and src.dtype in JIT_FLOATS):
        with serial_below(self.size):
            jit.copy_cast(separate(src, self).reshape(-1), self.reshape(-1))
    else:
        with np.errstate(invalid="ignore"):
            np.copyto(self, src, casting="unsafe")
    return self


register("aten::copy_", "reference", copy__reference)
register("aten::copy_", "numba", copy__numba)
