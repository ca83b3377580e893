"""ATen softmax, NLL loss and 2-d pooling ops (forward and backward).

Layouts are torch's: row-major arrays; pooling takes (N, C, H, W) or (C, H, W)
and pools the last two dims. Every result goes into a preallocated output
(``out``, ``output``/``total_weight``, ``indices``, ``grad_input``) whose shape
and dtype are checked, and is returned. ``reference`` computes in float64 with
numpy; ``numba`` runs parallel kernels on float32/float64 (float16 is widened
to float32 and rounded once at the end).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit, prange

from . import _aten_jit as jit
from . import _dnn_softmax as dsm
from ._dnn_common import JIT, JIT_PAR, serial_below
from ._aten_common import (
    FLOAT16, FLOAT32, FLOAT64, INT64, as_c_float, check_out, check_tensor, pair, wrap_dim,
)
from ._common import check_array
from .pooling import global_mean
from .registry import register

_JIT_FLOATS = (FLOAT32, FLOAT64)


def _finish(out: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Copy a kernel's result into out unless the kernel wrote out itself."""
    if res is not out:
        np.copyto(out, res.reshape(out.shape), casting="unsafe")
    return out


def _scratch_for(out: np.ndarray, dtype) -> np.ndarray:
    """out itself when a kernel can write it directly, else a C-contiguous scratch array."""
    if out.dtype == dtype and out.flags.c_contiguous:
        return out
    return np.empty(out.shape, dtype)


def _regs(op, doc, **impls):
    for provider, fn in impls.items():
        fn.__name__ = fn.__qualname__ = f"{op.split('::')[1]}_{provider}"
        fn.__doc__ = f"{op} ({provider} provider). {doc}"
        register(op, provider, fn)


# ----------------------------------------------------------------- softmax --

def _akb(shape, d):
    """(A, K, B): sizes before, at and after dim d (a 0-d array is one element)."""
    if not shape:
        return 1, 1, 1
    return math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:])


def _dim_if_plain(self, dim, out, dtype):
    """dim made non-negative when the call is of the common kind -- ndarrays, float32/64
    self, an int dim in range, out of self's shape and ``dtype`` and writable -- else
    None (the caller then runs the full checks, which name what is wrong)."""
    if (type(self) is np.ndarray and type(out) is np.ndarray and type(dim) is int
            and self.dtype in _JIT_FLOATS and out.dtype == dtype and out.shape == self.shape
            and out.flags.writeable):
        nd = max(self.ndim, 1)
        if -nd <= dim < nd:
            return dim % nd
    return None


def _prep_softmax(self, dim, half_to_float, out):
    if half_to_float is False:
        d = _dim_if_plain(self, dim, out, getattr(self, "dtype", None))
        if d is not None:
            return d
    check_tensor("self", self, floating=True)
    d = wrap_dim(dim, self.ndim)
    if not isinstance(half_to_float, (bool, np.bool_)):
        raise TypeError(f"half_to_float must be a bool, got {type(half_to_float).__name__}")
    if half_to_float and self.dtype != FLOAT16:
        raise ValueError(f"half_to_float=True needs a float16 self, got {self.dtype}")
    check_out(out, self.shape, FLOAT32 if half_to_float else self.dtype)
    return d


def _softmax_reference(self, dim, half_to_float, out, log):
    d = _prep_softmax(self, dim, half_to_float, out)
    if self.size == 0:
        return out
    x = self.astype(FLOAT64).reshape(self.shape or (1,))
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x - np.max(x, axis=d, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=d, keepdims=True)
        r = shifted - np.log(s) if log else e / s
    np.copyto(out, r.reshape(self.shape), casting="unsafe")
    return out


def _softmax_numba(self, dim, half_to_float, out, log):
    d = _prep_softmax(self, dim, half_to_float, out)
    if self.size == 0:
        return out
    x = as_c_float(self)
    if x is not out and np.may_share_memory(x, out):   # the kernels are in-place safe
        x = x.copy()
    A, K, B = _akb(self.shape, d)
    res = _scratch_for(out, x.dtype)
    # The cuDNN softmax kernels compute exactly this: rows (B == 1) or (A, K, B) blocks.
    if B == 1:
        rows = dsm._rows_forward_serial if x.size < dsm._SERIAL_BELOW else dsm._rows_forward_par
        rows(x.reshape(A, K), res.reshape(A, K), log, 1.0, 0.0)
    else:
        with serial_below(res.size):
            dsm._channel_forward(x.reshape(A, K, B), res.reshape(A, K, B), log, 1.0, 0.0)
    return _finish(out, res)


_SM_DOC = ("{what} of self along dim, computed stably (the max is subtracted first). "
           "Float self; out has self's dtype, or float32 when half_to_float=True (which "
           "needs a float16 self; torch allows it on CUDA only). NaN anywhere in a slice, "
           "or +inf, makes that slice NaN.")


def _register_softmax(op, log, what):
    def reference(self, dim, half_to_float=False, *, out):
        return _softmax_reference(self, dim, half_to_float, out, log)

    def numba_(self, dim, half_to_float=False, *, out):
        return _softmax_numba(self, dim, half_to_float, out, log)

    _regs(op, _SM_DOC.format(what=what), reference=reference, numba=numba_)


_register_softmax("aten::_softmax", False, "exp(x) / sum(exp(x))")
_register_softmax("aten::_log_softmax", True, "x - log(sum(exp(x)))")


def _prep_softmax_backward(grad_output, output, dim, input_dtype, out):
    if (type(output) is np.ndarray and type(grad_output) is np.ndarray
            and (input_dtype is getattr(grad_output.dtype, "type", None)
                 or input_dtype is grad_output.dtype)
            and output.shape == grad_output.shape and output.dtype == grad_output.dtype):
        d = _dim_if_plain(grad_output, dim, out, grad_output.dtype)
        if d is not None:
            return d
    check_tensor("grad_output", grad_output, floating=True)
    check_array("output", output, shape=grad_output.shape, dtype=grad_output.dtype)
    d = wrap_dim(dim, grad_output.ndim)
    try:
        input_dtype = np.dtype(input_dtype)
    except TypeError:
        raise TypeError(f"input_dtype must be a dtype, got {input_dtype!r}") from None
    ok = input_dtype == grad_output.dtype or (input_dtype == FLOAT16 and grad_output.dtype == FLOAT32)
    if not ok:
        raise TypeError(f"input_dtype must be grad_output's dtype {grad_output.dtype} (or float16 "
                        f"with float32 grads after half_to_float), got {input_dtype}")
    check_out(out, grad_output.shape, input_dtype)
    return d


def _softmax_backward_reference(grad_output, output, dim, input_dtype, out, log):
    d = _prep_softmax_backward(grad_output, output, dim, input_dtype, out)
    shape = grad_output.shape or (1,)
    g = grad_output.astype(FLOAT64).reshape(shape)
    y = output.astype(FLOAT64).reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        if log:
            r = g - np.exp(y) * g.sum(axis=d, keepdims=True)
        else:
            r = y * (g - (g * y).sum(axis=d, keepdims=True))
    np.copyto(out, r.reshape(out.shape), casting="unsafe")
    return out


def _softmax_backward_numba(grad_output, output, dim, input_dtype, out, log):
    d = _prep_softmax_backward(grad_output, output, dim, input_dtype, out)
    if out.size == 0:
        return out
    g, y = as_c_float(grad_output), as_c_float(output)
    if np.may_share_memory(g, out):
        g = g.copy()
    if np.may_share_memory(y, out):
        y = y.copy()
    A, K, B = _akb(grad_output.shape, d)
    res = _scratch_for(out, g.dtype)
    if B == 1:
        rows = dsm._rows_backward_serial if g.size < dsm._SERIAL_BELOW else dsm._rows_backward_par
        rows(y.reshape(A, K), g.reshape(A, K), res.reshape(A, K), log, 1.0, 0.0)
    else:
        with serial_below(res.size):
            dsm._channel_backward(y.reshape(A, K, B), g.reshape(A, K, B), res.reshape(A, K, B),
                                  log, 1.0, 0.0)
    return _finish(out, res)


def _register_softmax_backward(op, log, formula):
    def reference(grad_output, output, dim, input_dtype, *, out):
        return _softmax_backward_reference(grad_output, output, dim, input_dtype, out, log)

    def numba_(grad_output, output, dim, input_dtype, *, out):
        return _softmax_backward_numba(grad_output, output, dim, input_dtype, out, log)

    _regs(op, f"grad_input = {formula} along dim, where output is the forward's result. "
              "grad_output and output: same shape and float dtype; out has input_dtype "
              "(grad_output's dtype, or float16 after a half_to_float forward).",
          reference=reference, numba=numba_)


_register_softmax_backward("aten::_softmax_backward_data", False,
                           "output * (grad_output - sum(grad_output * output))")
_register_softmax_backward("aten::_log_softmax_backward_data", True,
                           "grad_output - exp(output) * sum(grad_output)")


# ---------------------------------------------------------------- nll loss --

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, 0: 0, 1: 1, 2: 2}


def _reduction(reduction) -> int:
    key = reduction if isinstance(reduction, str) else (
        int(reduction) if isinstance(reduction, numbers.Integral) and
        not isinstance(reduction, (bool, np.bool_)) else None)
    if key not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum' (or 0, 1, 2), got {reduction!r}")
    return _REDUCTIONS[key]


def _prep_nll(self, target, weight, reduction, ignore_index):
    """Validated (x2d, target1d, weight64, reduction code, ignore_index)."""
    if not (type(self) is np.ndarray and self.dtype in _JIT_FLOATS):   # else the full check
        check_tensor("self", self, floating=True)
    if self.ndim not in (1, 2):
        raise ValueError(f"self must be (C,) or (N, C), got shape {self.shape}")
    if type(target) is not np.ndarray:
        check_array("target", target)
    if target.dtype.kind not in "ui":
        raise TypeError(f"target must be an integer array (int64 as torch), got {target.dtype}")
    want = (self.shape[0],) if self.ndim == 2 else ()
    if target.shape != want:
        raise ValueError(f"target must have shape {want} for self of shape {self.shape}, "
                         f"got {target.shape}")
    C = self.shape[-1]
    if weight is not None:
        check_array("weight", weight, shape=(C,), dtype=self.dtype)
    red = _REDUCTIONS.get(reduction) if type(reduction) in (str, int) else None
    if red is None:
        red = _reduction(reduction)
    if type(ignore_index) is not int and (isinstance(ignore_index, (bool, np.bool_)) or
                                          not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    t = target if target.ndim == 1 else target.reshape(-1)
    if t.dtype != INT64:
        t = t.astype(INT64)
    bad = _first_bad_target(t, C, int(ignore_index)) if t.size else -1
    if bad >= 0:
        raise ValueError(f"target value {int(t[bad])} is out of bounds for {C} classes "
                         f"(valid: 0..{C - 1} or ignore_index={ignore_index})")
    w = _unit_weights(C) if weight is None else weight.astype(FLOAT64)
    return self if self.ndim == 2 else self.reshape(-1, C), t, w, red, int(ignore_index)


@njit(**JIT)
def _first_bad_target(t, c, ignore_index):
    """Position of the first target outside [0, c) that is not ignore_index, or -1."""
    for i in range(t.size):
        v = t[i]
        if (v < 0 or v >= c) and v != ignore_index:
            return i
    return -1


_UNIT_WEIGHTS: dict[int, np.ndarray] = {}


def _unit_weights(c: int) -> np.ndarray:
    """A read-only float64 array of c ones, cached (weight=None is the common case)."""
    w = _UNIT_WEIGHTS.get(c)
    if w is None:
        if len(_UNIT_WEIGHTS) > 64:
            _UNIT_WEIGHTS.clear()
        w = np.ones(c, FLOAT64)
        w.flags.writeable = False
        _UNIT_WEIGHTS[c] = w
    return w


def _plain_out(out, shape, dtype) -> bool:
    """Cheap test that out is a writable ndarray of this shape and dtype (check_out's
    common case; check_out itself runs otherwise, to name what is wrong)."""
    return (type(out) is np.ndarray and out.shape == shape and out.dtype == dtype
            and out.flags.writeable)


def _nll_shapes(self, red, output, total_weight):
    per_sample = red == 0 and self.ndim == 2
    want = (self.shape[0],) if per_sample else ()
    if not _plain_out(output, want, self.dtype):
        check_out(output, want, self.dtype, "output")
    if not _plain_out(total_weight, (), self.dtype):
        check_out(total_weight, (), self.dtype, "total_weight")
    return per_sample


def _mean(total: float, tw: float) -> float:
    """total / tw with IEEE results for tw == 0 (NaN or inf, as torch)."""
    if tw != 0:
        return total / tw
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / tw)


def nll_loss_forward_reference(self, target, weight=None, reduction="mean", ignore_index=-100, *,
                               output, total_weight):
    x, t, w, red, ignore = _prep_nll(self, target, weight, reduction, ignore_index)
    per_sample = _nll_shapes(self, red, output, total_weight)
    valid = t != ignore
    tt = np.where(valid, t, 0)
    wt = np.where(valid, w[tt], 0.0)
    picked = x.astype(FLOAT64)[np.arange(len(t)), tt]
    loss = np.where(valid, -wt * picked, 0.0)
    if per_sample:
        np.copyto(output, loss, casting="unsafe")
        total_weight[...] = 0
        return output, total_weight
    tw = wt.sum()
    total = loss.sum()
    if red == 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / tw
    output[...] = total
    total_weight[...] = tw
    return output, total_weight


def nll_loss_forward_numba(self, target, weight=None, reduction="mean", ignore_index=-100, *,
                           output, total_weight):
    x, t, w, red, ignore = _prep_nll(self, target, weight, reduction, ignore_index)
    per_sample = _nll_shapes(self, red, output, total_weight)
    samples = np.empty(len(t) if per_sample else 0, FLOAT64)
    total, tw = jit.nll_forward(as_c_float(x), t, w, ignore, samples)
    if per_sample:
        np.copyto(output, samples, casting="unsafe")
        total_weight[...] = 0
        return output, total_weight
    if red == 1:
        total = _mean(total, tw)
    output[...] = total
    total_weight[...] = tw
    return output, total_weight


_regs("aten::nll_loss_forward",
      "Negative log-likelihood: loss_n = -weight[t_n] * self[n, t_n], 0 where t_n == "
      "ignore_index. self (N, C) or (C,) float; target (N,) or () integer, each in [0, C) "
      "or ignore_index (else ValueError naming target); weight (C,) of self's dtype or None. "
      "reduction 'none'/'mean'/'sum' (or 0/1/2). Writes output ((N,) for 'none' with 2-d "
      "self, else 0-d) and total_weight (0-d: sum of the weights of non-ignored targets; 0 "
      "for 'none' with 2-d self). 'mean' divides by total_weight (NaN when it is 0). "
      "Returns (output, total_weight).",
      reference=nll_loss_forward_reference, numba=nll_loss_forward_numba)


def _prep_nll_backward(grad_output, self, target, weight, reduction, ignore_index,
                       total_weight, grad_input):
    x, t, w, red, ignore = _prep_nll(self, target, weight, reduction, ignore_index)
    per_sample = red == 0 and self.ndim == 2
    if not (type(grad_output) is np.ndarray and grad_output.dtype in _JIT_FLOATS):
        check_tensor("grad_output", grad_output, floating=True)
    want = (self.shape[0],) if per_sample else ()
    if grad_output.shape != want:
        raise ValueError(f"grad_output must have shape {want}, got {grad_output.shape}")
    if isinstance(total_weight, np.ndarray):
        if total_weight.shape != ():
            check_array("total_weight", total_weight, shape=())
        tw = float(total_weight)
    elif isinstance(total_weight, numbers.Real):
        tw = float(total_weight)
    else:
        raise TypeError(f"total_weight must be a 0-d array or a float, got {type(total_weight).__name__}")
    if not _plain_out(grad_input, self.shape, self.dtype):
        check_out(grad_input, self.shape, self.dtype, "grad_input")
    if grad_output.ndim == 0:                  # 'mean' / 'sum': one scalar gradient
        gv = float(grad_output)
        g = np.array((_mean(gv, tw) if red == 1 else gv,))
    else:
        g = grad_output.astype(FLOAT64).reshape(-1)
        if red == 1:
            if tw != 0:
                g /= tw
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    g = g / tw
    return t, w, ignore, g


def nll_loss_backward_reference(grad_output, self, target, weight, reduction, ignore_index,
                                total_weight, *, grad_input):
    t, w, ignore, g = _prep_nll_backward(grad_output, self, target, weight, reduction,
                                         ignore_index, total_weight, grad_input)
    gi = np.zeros((len(t), self.shape[-1]), FLOAT64)
    valid = np.flatnonzero(t != ignore)
    gv = g[valid] if g.size == len(t) else g[0]     # per-sample grads, or one scalar
    gi[valid, t[valid]] = -w[t[valid]] * gv
    np.copyto(grad_input, gi.reshape(self.shape), casting="unsafe")
    return grad_input


def nll_loss_backward_numba(grad_output, self, target, weight, reduction, ignore_index,
                            total_weight, *, grad_input):
    t, w, ignore, g = _prep_nll_backward(grad_output, self, target, weight, reduction,
                                         ignore_index, total_weight, grad_input)
    gi = _scratch_for(grad_input, FLOAT64 if grad_input.dtype == FLOAT64 else FLOAT32)
    _nll_backward_rows(g, t, w, ignore, gi.reshape(len(t), self.shape[-1]))
    return _finish(grad_input, gi)


@njit(**JIT)
def _nll_backward_rows(grad, target, weight, ignore_index, gi):
    """gi[n] = 0 except gi[n, t_n] = -w[t_n] * grad[n] (grad broadcast when it has one
    element; nothing for ignored targets): one pass writes the zeros and the values."""
    one = grad.size == 1
    z = gi.dtype.type(0)
    for n in range(gi.shape[0]):
        for k in range(gi.shape[1]):
            gi[n, k] = z
        t = target[n]
        if t != ignore_index:
            gi[n, t] = -weight[t] * (grad[0] if one else grad[n])


_regs("aten::nll_loss_backward",
      "Gradient of nll_loss_forward: grad_input[n, t_n] = -weight[t_n] * g_n and 0 "
      "elsewhere, with g_n = grad_output[n] ('none' with 2-d self), grad_output ('sum') or "
      "grad_output / total_weight ('mean'); ignored targets get 0. grad_output has the "
      "forward output's shape; total_weight is the forward's (0-d array or float); "
      "grad_input has self's shape and dtype.",
      reference=nll_loss_backward_reference, numba=nll_loss_backward_numba)


# ---------------------------------------------------------------- pooling --

def _planes(name, x):
    check_tensor(name, x, floating=True)
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{name} must have non-zero H and W, got shape {x.shape}")


def _adaptive_windows(n_in, n_out):
    """torch's adaptive windows: [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def _prep_adaptive(self, output_size, out):
    _planes("self", self)
    oh, ow = pair("output_size", output_size, minimum=0)
    check_out(out, self.shape[:-2] + (oh, ow), self.dtype)
    return oh, ow


def adaptive_avg_pool2d_reference(self, output_size, *, out):
    oh, ow = _prep_adaptive(self, output_size, out)
    x = self.astype(FLOAT64)
    r = np.empty(out.shape, FLOAT64)
    for i, (h0, h1) in enumerate(_adaptive_windows(self.shape[-2], oh)):
        for j, (w0, w1) in enumerate(_adaptive_windows(self.shape[-1], ow)):
            r[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-2, -1))
    np.copyto(out, r, casting="unsafe")
    return out


def adaptive_avg_pool2d_numba(self, output_size, *, out):
    oh, ow = _prep_adaptive(self, output_size, out)
    if out.size == 0:
        return out
    H, W = self.shape[-2:]
    x = as_c_float(self).reshape(-1, H, W)
    res = _scratch_for(out, x.dtype)
    with serial_below(x.size):
        if oh == ow == 1:                      # global average: one streaming sum per plane
            global_mean(x.reshape(x.shape[0], -1), res.reshape(-1), 1.0, 0.0)
        else:
            jit.adaptive_avg_pool2d(x, res.reshape(-1, oh, ow))
    return _finish(out, res)


_regs("aten::_adaptive_avg_pool2d",
      "Average of each window [floor(i*H/oh), ceil((i+1)*H/oh)) x [floor(j*W/ow), "
      "ceil((j+1)*W/ow)). self (N, C, H, W) or (C, H, W) float with H, W > 0; output_size "
      "an int or (oh, ow) >= 0; out self.shape[:-2] + (oh, ow), self's dtype.",
      reference=adaptive_avg_pool2d_reference, numba=adaptive_avg_pool2d_numba)


def _prep_adaptive_backward(grad_output, self, out):
    _planes("self", self)
    check_tensor("grad_output", grad_output, floating=True)
    if grad_output.dtype != self.dtype:
        raise TypeError(f"grad_output must have self's dtype {self.dtype}, got {grad_output.dtype}")
    if grad_output.ndim != self.ndim or grad_output.shape[:-2] != self.shape[:-2]:
        raise ValueError(f"grad_output must have shape {self.shape[:-2]} + (oh, ow), "
                         f"got {grad_output.shape}")
    check_out(out, self.shape, self.dtype)
    return grad_output.shape[-2:]


def adaptive_avg_pool2d_backward_reference(grad_output, self, *, out):
    oh, ow = _prep_adaptive_backward(grad_output, self, out)
    g = grad_output.astype(FLOAT64)
    r = np.zeros(self.shape, FLOAT64)
    for i, (h0, h1) in enumerate(_adaptive_windows(self.shape[-2], oh)):
        for j, (w0, w1) in enumerate(_adaptive_windows(self.shape[-1], ow)):
            r[..., h0:h1, w0:w1] += (g[..., i, j] / ((h1 - h0) * (w1 - w0)))[..., None, None]
    np.copyto(out, r, casting="unsafe")
    return out


def adaptive_avg_pool2d_backward_numba(grad_output, self, *, out):
    oh, ow = _prep_adaptive_backward(grad_output, self, out)
    if grad_output.size == 0:
        out[...] = 0
        return out
    H, W = self.shape[-2:]
    g = as_c_float(grad_output)
    res = _scratch_for(out, g.dtype)
    with serial_below(res.size):
        jit.adaptive_avg_pool2d_backward(g.reshape(-1, oh, ow), H, W, res.reshape(-1, H, W))
    return _finish(out, res)


_regs("aten::_adaptive_avg_pool2d_backward",
      "Gradient of _adaptive_avg_pool2d: each input cell receives the sum over the windows "
      "containing it of grad_output / window size. grad_output self.shape[:-2] + (oh, ow), "
      "self's dtype; out has self's shape and dtype (self only gives shape and dtype).",
      reference=adaptive_avg_pool2d_backward_reference,
      numba=adaptive_avg_pool2d_backward_numba)


def pool_output_size(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape: floor or ceil mode; in ceil mode the last window must
    start inside the input or its left padding."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _prep_max_pool(self, kernel_size, stride, padding, dilation, ceil_mode):
    _planes("self", self)
    k = pair("kernel_size", kernel_size, minimum=1)
    s = pair("stride", stride, allow_empty=True, minimum=1) or k
    p = pair("padding", padding, minimum=0)
    d = pair("dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding should be at most half of kernel_size, got padding={p} "
                         f"and kernel_size={k}")
    H, W = self.shape[-2:]
    oh = pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    ow = pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel_size {k} with dilation {d} and padding {p} gives output size "
                         f"({oh}, {ow}) for input size ({H}, {W}); it is too small")
    return k, s, p, d, self.shape[:-2] + (oh, ow)


def _max_window_reference(x, k, s, p, d, oh, ow):
    """Values and flat indices, in float64, by torch's scan: last NaN, else first maximum."""
    H, W = x.shape[-2:]
    planes = x.reshape(-1, H * W)
    vals = np.empty((planes.shape[0], oh, ow), FLOAT64)
    idx = np.empty((planes.shape[0], oh, ow), INT64)
    for i in range(oh):
        rows = [r for r in range(i * s[0] - p[0], i * s[0] - p[0] + d[0] * (k[0] - 1) + 1, d[0])
                if 0 <= r < H]
        for j in range(ow):
            cols = [c for c in range(j * s[1] - p[1], j * s[1] - p[1] + d[1] * (k[1] - 1) + 1, d[1])
                    if 0 <= c < W]
            flat = np.array([r * W + c for r in rows for c in cols], INT64)
            win = planes[:, flat]
            nan = np.isnan(win)
            last_nan = win.shape[1] - 1 - np.argmax(nan[:, ::-1], axis=1)
            first_max = np.argmax(np.where(nan, -np.inf, win), axis=1)
            pos = np.where(nan.any(axis=1), last_nan, first_max)
            idx[:, i, j] = flat[pos]
            vals[:, i, j] = win[np.arange(win.shape[0]), pos]
    return vals, idx


def max_pool2d_with_indices_reference(self, kernel_size, stride, padding, dilation, ceil_mode, *,
                                      out, indices):
    k, s, p, d, shape = _prep_max_pool(self, kernel_size, stride, padding, dilation, ceil_mode)
    check_out(out, shape, self.dtype)
    check_out(indices, shape, INT64, "indices")
    vals, idx = _max_window_reference(self.astype(FLOAT64), k, s, p, d, shape[-2], shape[-1])
    np.copyto(out, vals.reshape(shape), casting="unsafe")
    np.copyto(indices, idx.reshape(shape))
    return out, indices


def max_pool2d_with_indices_numba(self, kernel_size, stride, padding, dilation, ceil_mode, *,
                                  out, indices):
    k, s, p, d, shape = _prep_max_pool(self, kernel_size, stride, padding, dilation, ceil_mode)
    check_out(out, shape, self.dtype)
    check_out(indices, shape, INT64, "indices")
    if out.size == 0:
        return out, indices
    H, W = self.shape[-2:]
    x = as_c_float(self).reshape(-1, H, W)
    res = _scratch_for(out, x.dtype)
    ires = _scratch_for(indices, INT64)
    with serial_below(x.size):
        jit.max_pool2d(x, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
                       res.reshape(-1, shape[-2], shape[-1]), ires.reshape(-1, shape[-2], shape[-1]))
    _finish(indices, ires)
    return _finish(out, res), indices


_regs("aten::max_pool2d_with_indices",
      "Max over each kernel_size window (stride, padding, dilation, ceil_mode as torch; "
      "stride () / None means kernel_size; padding at most half the kernel). Writes out "
      "(self's dtype) and indices (int64, flat index into the H*W plane). NaN wins (the last "
      "NaN in scan order); ties keep the first. self (N, C, H, W) or (C, H, W) float. "
      "Returns (out, indices).",
      reference=max_pool2d_with_indices_reference, numba=max_pool2d_with_indices_numba)


def _prep_max_pool_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode,
                            indices, grad_input):
    _, _, _, _, shape = _prep_max_pool(self, kernel_size, stride, padding, dilation, ceil_mode)
    check_tensor("grad_output", grad_output, floating=True)
    check_array("grad_output", grad_output, shape=shape, dtype=self.dtype)
    check_array("indices", indices, shape=shape, dtype=INT64)
    check_out(grad_input, self.shape, self.dtype, "grad_input")
    plane = self.shape[-1] * self.shape[-2]
    flat = indices.reshape(-1) if indices.flags.c_contiguous else np.ravel(indices)
    if indices.size and not _all_in_range(flat, plane):
        raise ValueError(f"indices must lie in [0, {plane}) (the H*W plane), got values in "
                         f"[{indices.min()}, {indices.max()}]")
    return plane


def max_pool2d_with_indices_backward_reference(grad_output, self, kernel_size, stride, padding,
                                               dilation, ceil_mode, indices, *, grad_input):
    plane = _prep_max_pool_backward(grad_output, self, kernel_size, stride, padding, dilation,
                                    ceil_mode, indices, grad_input)
    g = grad_output.astype(FLOAT64).reshape(-1, grad_output.shape[-2] * grad_output.shape[-1])
    idx = indices.reshape(g.shape)
    gi = np.zeros((g.shape[0], plane), FLOAT64)
    np.add.at(gi, (np.arange(g.shape[0])[:, None], idx), g)
    np.copyto(grad_input, gi.reshape(self.shape), casting="unsafe")
    return grad_input


def max_pool2d_with_indices_backward_numba(grad_output, self, kernel_size, stride, padding,
                                           dilation, ceil_mode, indices, *, grad_input):
    plane = _prep_max_pool_backward(grad_output, self, kernel_size, stride, padding, dilation,
                                    ceil_mode, indices, grad_input)
    g = as_c_float(grad_output)
    g = g.reshape(-1, g.shape[-2] * g.shape[-1])
    gi = _scratch_for(grad_input, g.dtype)
    with serial_below(gi.size):
        _scatter_planes(g, np.ascontiguousarray(indices).reshape(g.shape),
                        gi.reshape(g.shape[0], plane))
    return _finish(grad_input, gi)


@njit(**JIT)
def _all_in_range(idx, plane):
    """Whether every index lies in [0, plane) (one branch-free pass that vectorises)."""
    bad = False
    for i in range(idx.size):
        v = idx[i]
        bad |= (v < 0) | (v >= plane)
    return not bad


@njit(**JIT_PAR)
def _scatter_planes(go, idx, gi):
    """gi[p] = 0, then gi[p, idx[p, o]] += go[p, o]: per plane, so that the zeroed plane is
    still in cache when the gradient lands in it (gi is written to memory once)."""
    z = gi.dtype.type(0)
    for p in prange(go.shape[0]):
        for k in range(gi.shape[1]):
            gi[p, k] = z
        for o in range(go.shape[1]):
            gi[p, idx[p, o]] += go[p, o]


_regs("aten::max_pool2d_with_indices_backward",
      "Gradient of max_pool2d_with_indices: grad_input (self's shape and dtype, zeroed) "
      "accumulates grad_output at each saved index. The pooling parameters must be the "
      "forward's (they fix grad_output's shape); indices int64 in [0, H*W), else ValueError "
      "naming indices, checked before anything is written.",
      reference=max_pool2d_with_indices_backward_reference,
      numba=max_pool2d_with_indices_backward_numba)
