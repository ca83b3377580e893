"""ATen's GEMM-shaped ops, embedding, cat and the multi-tensor optimizers.

Row-major numpy arrays (any strides) in, results written into a caller-given
``out=`` array, which is also returned; the in-place optimizer ops update their
list arguments and return None. The semantics are PyTorch's (``torch.addmm``,
``torch.nn.functional.embedding``, ``torch.cat``, ``torch.optim.SGD`` /
``torch.optim.Adam``); the few places where these kernels are stricter than
torch (one dtype per call, no type promotion) are listed in
``docs/kernels/aten_linear.md``, together with every op's full contract.

Rules shared by every op:

* float16/32/64 data (embedding/cat: any dtype); all arrays of one call share
  a dtype, else TypeError naming the offending argument;
* bad shapes or parameters raise ValueError naming the parameter, before
  anything is written;
* ``out`` may be non-contiguous; ops whose output may alias an input compute
  into a temporary first, so aliasing never corrupts the result.

Providers: ``reference`` (plain numpy, float64, rounded once into the output
dtype; the oracle), ``blas`` (numpy matmul for mm/bmm/addmm) and ``numba``
(parallel kernels for embedding, embedding_backward, cat and a one-pass
"horizontal" foreach kernel for each optimizer).
"""

from __future__ import annotations

import numbers
import operator

import numba
import numpy as np
from numba import prange
from numba.typed import List as TypedList

from ._common import check_array, check_float
from .registry import register

__all__ = [
    "addmm_blas", "addmm_reference", "mm_blas", "mm_reference", "bmm_blas", "bmm_reference",
    "embedding_numba", "embedding_reference",
    "embedding_backward_numba", "embedding_backward_reference",
    "cat_numba", "cat_reference",
    "foreach_sgd_numba", "foreach_sgd_reference",
    "fused_adam_numba", "fused_adam_reference",
]

# Kernels produce IEEE results (NaN/inf propagate) silently, as the GPU does:
# no numpy RuntimeWarnings for overflow or invalid operations in user data.
_quiet = np.errstate(all="ignore")

# error_model="numpy": float division by zero gives inf/NaN instead of raising,
# which also lets LLVM vectorize the element loops.
_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
_pjit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy", parallel=True)

# Below this many bytes the numba gather/copy kernels are not worth a parallel
# launch, and the numba provider uses numpy's own (single-threaded) copy.
_PARALLEL_MIN_BYTES = 1 << 18
# Elements per parallel work item of the foreach optimizer kernels.
_FOREACH_CHUNK = 1 << 14


# ----------------------------------------------------------------------------
# argument checking
# ----------------------------------------------------------------------------

def _real(name: str, value) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _float_array(name: str, arr, *, ndim: int | None = None, writable: bool = False) -> np.ndarray:
    check_array(name, arr, ndim=ndim, writable=writable)
    return check_float(name, arr)


def _check_out(out, shape: tuple, dtype: np.dtype) -> np.ndarray:
    check_array("out", out, writable=True)
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    return out


def _same_dtype(dtype: np.dtype, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, expected {dtype} like the other inputs")


def _work_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


# ----------------------------------------------------------------------------
# addmm / mm / bmm
# ----------------------------------------------------------------------------

def _mm_args(a, b, out, *, batched: bool, a_name: str = "self", b_name: str = "mat2"):
    nd = 3 if batched else 2
    _float_array(a_name, a, ndim=nd)
    _float_array(b_name, b, ndim=nd)
    _same_dtype(a.dtype, **{b_name: b})
    if batched and a.shape[0] != b.shape[0]:
        raise ValueError(f"{b_name} must have batch size {a.shape[0]} like {a_name}, got {b.shape[0]}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{b_name} must have {a.shape[-1]} rows ({a_name}.shape[-1]) to multiply "
                         f"{a_name} of shape {a.shape}, got shape {b.shape}")
    return _check_out(out, a.shape[:-1] + b.shape[-1:], a.dtype)


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b through BLAS (float16 computed in float32)."""
    if out.dtype == np.float16:
        np.copyto(out, np.matmul(a.astype(np.float32), b.astype(np.float32)), casting="unsafe")
    else:
        np.matmul(a, b, out=out)  # numpy buffers if out overlaps a or b


@register("aten::mm", "blas")
@_quiet
def mm_blas(self, mat2, *, out):
    """out = self @ mat2 for self (n, k), mat2 (k, m), out (n, m); returns out.

    One float dtype for all three. Provider blas: numpy matmul (float16 via float32).
    """
    _mm_args(self, mat2, out, batched=False)
    _matmul_into(self, mat2, out)
    return out


@register("aten::mm", "reference")
@_quiet
def mm_reference(self, mat2, *, out):
    """out = self @ mat2 (see mm_blas); float64, rounded once."""
    _mm_args(self, mat2, out, batched=False)
    np.copyto(out, self.astype(np.float64) @ mat2.astype(np.float64), casting="unsafe")
    return out


@register("aten::bmm", "blas")
@_quiet
def bmm_blas(self, mat2, *, out):
    """out[i] = self[i] @ mat2[i] for self (b, n, k), mat2 (b, k, m), out (b, n, m).

    No broadcasting of the batch dim (as torch.bmm). Returns out. Provider blas:
    numpy batched matmul.
    """
    _mm_args(self, mat2, out, batched=True)
    _matmul_into(self, mat2, out)
    return out


@register("aten::bmm", "reference")
@_quiet
def bmm_reference(self, mat2, *, out):
    """Batched matrix product (see bmm_blas); float64, rounded once."""
    _mm_args(self, mat2, out, batched=True)
    np.copyto(out, self.astype(np.float64) @ mat2.astype(np.float64), casting="unsafe")
    return out


def _addmm_args(self, mat1, mat2, beta, alpha, out):
    beta, alpha = _real("beta", beta), _real("alpha", alpha)
    out = _mm_args(mat1, mat2, out, batched=False, a_name="mat1")
    _float_array("self", self)
    _same_dtype(mat1.dtype, self=self)
    try:
        shape = np.broadcast_shapes(self.shape, out.shape)
    except ValueError:
        shape = None
    if shape != out.shape:
        raise ValueError(f"self of shape {self.shape} cannot be broadcast to the result "
                         f"shape {out.shape}")
    return beta, alpha


@register("aten::addmm", "blas")
@_quiet
def addmm_blas(self, mat1, mat2, *, beta=1, alpha=1, out):
    """out = beta * self + alpha * (mat1 @ mat2); returns out.

    mat1 (n, k), mat2 (k, m), out (n, m); self broadcasts to (n, m) (e.g. a
    bias of shape (m,)). beta == 0: self is not read (NaN/inf in it do not
    propagate), as torch. out may alias self. Provider blas: numpy matmul
    straight into out, then the blend in place.
    """
    beta, alpha = _addmm_args(self, mat1, mat2, beta, alpha, out)
    work = _work_dtype(out.dtype)
    direct = work == out.dtype and (beta == 0 or not np.may_share_memory(out, self))
    if direct:
        np.matmul(mat1, mat2, out=out)
        if alpha != 1:
            np.multiply(out, alpha, out=out)
        if beta != 0:
            np.add(out, self if beta == 1 else self * beta, out=out)
        return out
    prod = np.matmul(mat1.astype(work, copy=False), mat2.astype(work, copy=False))
    if alpha != 1:
        prod *= alpha
    if beta != 0:
        prod += np.multiply(self, beta, dtype=work)
    np.copyto(out, prod, casting="unsafe")
    return out


@register("aten::addmm", "reference")
@_quiet
def addmm_reference(self, mat1, mat2, *, beta=1, alpha=1, out):
    """out = beta * self + alpha * (mat1 @ mat2) (see addmm_blas); float64, rounded once."""
    beta, alpha = _addmm_args(self, mat1, mat2, beta, alpha, out)
    value = alpha * (mat1.astype(np.float64) @ mat2.astype(np.float64))
    if beta != 0:
        value = value + beta * self.astype(np.float64)
    np.copyto(out, value, casting="unsafe")
    return out


# ----------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------

def _check_indices(indices, num_weights: int) -> np.ndarray:
    check_array("indices", indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= num_weights:
            bad = lo if lo < 0 else hi
            raise ValueError(f"indices contains {bad}, out of range for num_weights={num_weights} "
                             f"(valid: 0 <= index < {num_weights})")
    return indices


def _check_padding_idx(padding_idx, num_weights: int) -> int:
    padding_idx = _int("padding_idx", padding_idx)
    if not -1 <= padding_idx < num_weights:
        raise ValueError(f"padding_idx must be -1 (none) or in [0, {num_weights}), got {padding_idx}")
    return padding_idx


def _embedding_args(weight, indices, padding_idx, out):
    check_array("weight", weight, ndim=2)
    num_weights, dim = weight.shape
    _check_padding_idx(padding_idx, num_weights)
    _check_indices(indices, num_weights)
    return _check_out(out, indices.shape + (dim,), weight.dtype)


@register("aten::embedding", "reference")
@_quiet
def embedding_reference(weight, indices, *, padding_idx=-1, out):
    """out[..., :] = weight[indices[...], :]; returns out.

    weight (num_weights, dim) of any dtype, indices an integer array of any
    shape with 0 <= index < num_weights (else ValueError), out of shape
    indices.shape + (dim,) and weight's dtype. padding_idx (-1 = none, else in
    [0, num_weights)) only matters for the backward pass; the forward copies
    that row like any other, as torch. Provider reference: numpy take.
    """
    _embedding_args(weight, indices, padding_idx, out)
    np.copyto(out, np.take(weight, indices, axis=0))
    return out


@_pjit
def _gather_rows(table, idx, out):
    """out[i, :] = table[idx[i], :] for byte tables (any element type)."""
    for i in prange(idx.shape[0]):
        out[i, :] = table[idx[i], :]


def _as_bytes_2d(a: np.ndarray, rows: int) -> np.ndarray:
    """A C-contiguous array seen as (rows, row_bytes) uint8, without a copy."""
    return a.reshape(rows, -1).view(np.uint8) if a.size else np.empty((rows, 0), np.uint8)


@register("aten::embedding", "numba")
@_quiet
def embedding_numba(weight, indices, *, padding_idx=-1, out):
    """Row gather (see embedding_reference); provider numba: parallel over rows.

    Copies rows as raw bytes, so every dtype shares one compiled kernel.
    Small gathers (< 256 KiB) use numpy's take.
    """
    _embedding_args(weight, indices, padding_idx, out)
    if out.nbytes < _PARALLEL_MIN_BYTES:
        np.copyto(out, np.take(weight, indices, axis=0))
        return out
    table = _as_bytes_2d(np.ascontiguousarray(weight), weight.shape[0])
    idx = np.ascontiguousarray(indices.reshape(-1), dtype=np.int64)
    direct = out.flags.c_contiguous and not np.may_share_memory(out, weight)
    dest = out if direct else np.empty(out.shape, out.dtype)
    _gather_rows(table, idx, _as_bytes_2d(dest, idx.size))
    if not direct:
        np.copyto(out, dest)
    return out


def _embedding_backward_args(grad_output, indices, num_weights, padding_idx, out):
    num_weights = _int("num_weights", num_weights)
    if num_weights < 0:
        raise ValueError(f"num_weights must be >= 0, got {num_weights}")
    _float_array("grad_output", grad_output)
    check_array("indices", indices)
    if grad_output.shape[:-1] != indices.shape or grad_output.ndim != indices.ndim + 1:
        raise ValueError(f"grad_output must have shape indices.shape + (dim,) = "
                         f"{indices.shape} + (dim,), got {grad_output.shape}")
    _check_indices(indices, num_weights)
    padding_idx = _check_padding_idx(padding_idx, num_weights)
    _check_out(out, (num_weights, grad_output.shape[-1]), grad_output.dtype)
    return num_weights, padding_idx


@register("aten::embedding_backward", "reference")
@_quiet
def embedding_backward_reference(grad_output, indices, num_weights, *, padding_idx=-1, out):
    """Dense gradient of embedding w.r.t. weight; returns out.

    out (num_weights, dim) is overwritten: out[w] = sum of grad_output[...]
    over every position where indices == w (duplicates accumulate), zero for
    unused rows and for row padding_idx (-1 = none). grad_output has shape
    indices.shape + (dim,); indices are range-checked (ValueError). Provider
    reference: float64 np.add.at, rounded once.
    """
    num_weights, padding_idx = _embedding_backward_args(
        grad_output, indices, num_weights, padding_idx, out)
    dim = grad_output.shape[-1]
    acc = np.zeros((num_weights, dim))
    np.add.at(acc, indices.reshape(-1), grad_output.reshape(-1, dim).astype(np.float64))
    if padding_idx >= 0:
        acc[padding_idx] = 0
    np.copyto(out, acc, casting="unsafe")
    return out


@_pjit
def _embedding_backward_kernel(grad, idx, padding_idx, out):
    """out[w] = sum of grad[i] over idx[i] == w, summed in float64 in index order.

    A counting sort groups the rows by weight, then weights are split among
    threads, so no two threads write one row and the result is deterministic.
    """
    num_weights, dim = out.shape
    n = idx.shape[0]
    start = np.zeros(num_weights + 1, np.int64)
    for i in range(n):
        start[idx[i] + 1] += 1
    for w in range(num_weights):
        start[w + 1] += start[w]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[idx[i]]] = i
        fill[idx[i]] += 1
    n_parts = min(num_weights, 256)
    for part in prange(n_parts):
        acc = np.empty(dim, np.float64)
        for w in range(part * num_weights // n_parts, (part + 1) * num_weights // n_parts):
            acc[:] = 0.0
            if w != padding_idx:
                for p in range(start[w], start[w + 1]):
                    row = order[p]
                    for j in range(dim):
                        acc[j] += grad[row, j]
            for j in range(dim):
                out[w, j] = acc[j]


@register("aten::embedding_backward", "numba")
@_quiet
def embedding_backward_numba(grad_output, indices, num_weights, *, padding_idx=-1, out):
    """Dense embedding gradient (see embedding_backward_reference).

    Provider numba: counting sort by index, then rows summed in parallel in
    float64 (deterministic; float16 works through float32 copies).
    """
    num_weights, padding_idx = _embedding_backward_args(
        grad_output, indices, num_weights, padding_idx, out)
    dim = grad_output.shape[-1]
    work = _work_dtype(out.dtype)
    grad = np.ascontiguousarray(grad_output.reshape(-1, dim), dtype=work)
    idx = np.ascontiguousarray(indices.reshape(-1), dtype=np.int64)
    direct = out.dtype == work and out.flags.c_contiguous
    dest = out if direct else np.empty(out.shape, work)
    _embedding_backward_kernel(grad, idx, padding_idx, dest)
    if not direct:
        np.copyto(out, dest, casting="unsafe")
    return out


# ----------------------------------------------------------------------------
# cat
# ----------------------------------------------------------------------------

def _cat_args(tensors, dim, out) -> tuple[list[tuple[int, np.ndarray]], int]:
    """Validate; return the (index, tensor) pairs that contribute, and dim >= 0."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError("tensors must be a non-empty list of arrays")
    for i, t in enumerate(tensors):
        check_array(f"tensors[{i}]", t)
    check_array("out", out, writable=True)
    # torch's legacy rule: 1-D empty tensors of shape (0,) are skipped.
    used = [(i, t) for i, t in enumerate(tensors) if t.shape != (0,)]
    if not used:
        _check_out(out, (0,), tensors[0].dtype)
        return [], 0
    first_i, first = used[0]
    if first.ndim == 0:
        raise ValueError(f"tensors[{first_i}] is zero-dimensional and cannot be concatenated")
    dim = _int("dim", dim)
    if not -first.ndim <= dim < first.ndim:
        raise ValueError(f"dim must be in [{-first.ndim}, {first.ndim - 1}] for "
                         f"{first.ndim}-d tensors, got {dim}")
    dim %= first.ndim
    for i, t in used:
        if t.dtype != out.dtype:
            raise TypeError(f"tensors[{i}] has dtype {t.dtype} but out has dtype {out.dtype}")
        if t.ndim != first.ndim:
            raise ValueError(f"tensors[{i}] has {t.ndim} dimensions but tensors[{first_i}] "
                             f"has {first.ndim}")
        if t.shape[:dim] != first.shape[:dim] or t.shape[dim + 1:] != first.shape[dim + 1:]:
            raise ValueError(f"tensors[{i}] has shape {t.shape}, which differs from "
                             f"tensors[{first_i}]'s {first.shape} outside dim {dim}")
        if np.may_share_memory(out, t):
            raise ValueError(f"out overlaps tensors[{i}]; cat cannot write into its input")
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for _, t in used)
    _check_out(out, tuple(shape), out.dtype)
    return used, dim


@register("aten::cat", "reference")
@_quiet
def cat_reference(tensors, dim=0, *, out):
    """Concatenate ``tensors`` along ``dim`` into out; returns out.

    All tensors share out's dtype (any dtype; TypeError otherwise) and ndim,
    and their shapes agree except along dim (ValueError naming tensors[i]).
    dim may be negative. Tensors of shape (0,) are skipped (torch's legacy
    rule). out must not overlap any input. Provider reference: np.concatenate.
    """
    used, dim = _cat_args(tensors, dim, out)
    if used:
        np.concatenate([t for _, t in used], axis=dim, out=out)
    return out


@_pjit
def _copy_columns(src, out, col0, block):
    """out[:, col0:col0 + src.shape[1]] = src, in (row, block-of-columns) work items."""
    rows, cols = src.shape
    per_row = (cols + block - 1) // block
    for item in prange(rows * per_row):
        r = item // per_row
        lo = (item % per_row) * block
        hi = min(lo + block, cols)
        out[r, col0 + lo:col0 + hi] = src[r, lo:hi]


@register("aten::cat", "numba")
@_quiet
def cat_numba(tensors, dim=0, *, out):
    """Concatenation (see cat_reference); provider numba: parallel byte copies.

    Each tensor is seen as (prod(shape[:dim]), row bytes) and copied into its
    column range of out in parallel blocks; small results use np.concatenate.
    """
    used, dim = _cat_args(tensors, dim, out)
    if not used:
        return out
    if out.nbytes < _PARALLEL_MIN_BYTES:
        np.concatenate([t for _, t in used], axis=dim, out=out)
        return out
    rows = int(np.prod(out.shape[:dim], dtype=np.int64))
    dest = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    dest_bytes = _as_bytes_2d(dest, rows)
    col = 0
    for _, t in used:
        src = _as_bytes_2d(np.ascontiguousarray(t), rows)
        _copy_columns(src, dest_bytes, col, 1 << 16)
        col += src.shape[1]
    if dest is not out:
        np.copyto(out, dest)
    return out


# ----------------------------------------------------------------------------
# multi-tensor optimizers
# ----------------------------------------------------------------------------

def _tensor_list(name: str, seq, params=None, *, writable: bool = False) -> list:
    """Check a list of float arrays; with ``params``, same length, shapes and dtypes."""
    if not isinstance(seq, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays, got {type(seq).__name__}")
    if params is not None and len(seq) != len(params):
        raise ValueError(f"{name} has {len(seq)} tensors but params has {len(params)}")
    for i, a in enumerate(seq):
        _float_array(f"{name}[{i}]", a, writable=writable)
        if params is not None:
            if a.shape != params[i].shape:
                raise ValueError(f"{name}[{i}] has shape {a.shape} but params[{i}] has "
                                 f"shape {params[i].shape}")
        elif a.dtype != seq[0].dtype:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype} but {name}[0] has {seq[0].dtype}; "
                            f"group tensors by dtype, one call per dtype")
        if params is not None and a.dtype != params[i].dtype:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype} but params[{i}] has "
                            f"dtype {params[i].dtype}")
    return list(seq)


def _nonneg_real(name: str, value) -> float:
    v = _real(name, value)
    if not v >= 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _sgd_args(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
              nesterov, maximize, first_step):
    params = _tensor_list("params", params, writable=True)
    grads = _tensor_list("grads", grads, params)
    lr = _nonneg_real("lr", lr)
    momentum = _nonneg_real("momentum", momentum)
    dampening = _real("dampening", dampening)
    weight_decay = _nonneg_real("weight_decay", weight_decay)
    nesterov, maximize, first_step = bool(nesterov), bool(maximize), bool(first_step)
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0 "
                         f"(got momentum={momentum}, dampening={dampening})")
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers must be a list of arrays when momentum != 0")
        momentum_buffers = _tensor_list("momentum_buffers", momentum_buffers, params, writable=True)
    else:
        momentum_buffers = None
    return (params, grads, momentum_buffers, lr, momentum, dampening, weight_decay,
            nesterov, maximize, first_step)


_SGD_DOC = """One torch.optim.SGD step over a list of tensors, in place; returns None.

    For each i (as torch.optim.SGD, all arithmetic per element):
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0: g = g + weight_decay * params[i]
        if momentum != 0:
            b = g if first_step else momentum * b + (1 - dampening) * g
            momentum_buffers[i] = b
            g = g + momentum * b if nesterov else b
        params[i] -= lr * g
    first_step: the buffers hold no state yet (torch's ``buf is None``); they are
    written, not read. momentum_buffers may be None when momentum == 0.
    params, grads, buffers: lists of equal length; grads[i] and buffers[i] have
    params[i]'s shape and dtype; all tensors of a call share one float dtype.
    grads are not modified. Errors: lr, momentum, weight_decay < 0, or nesterov
    without momentum > 0 and dampening == 0 -> ValueError (as torch.optim.SGD).
    """


@register("aten::_foreach_sgd_", "reference")
@_quiet
def foreach_sgd_reference(params, grads, momentum_buffers, *, lr, momentum=0, dampening=0,
                          weight_decay=0, nesterov=False, maximize=False, first_step):
    (params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, maximize,
     first_step) = _sgd_args(params, grads, momentum_buffers, lr, momentum, dampening,
                             weight_decay, nesterov, maximize, first_step)
    for i, p in enumerate(params):
        p64 = p.astype(np.float64)
        g = grads[i].astype(np.float64)
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p64
        if momentum != 0:
            b = g if first_step else momentum * bufs[i].astype(np.float64) + (1 - dampening) * g
            np.copyto(bufs[i], b, casting="unsafe")
            b = bufs[i].astype(np.float64)  # the update uses the stored buffer, as torch
            g = g + momentum * b if nesterov else b
        np.copyto(p, p64 - lr * g, casting="unsafe")


foreach_sgd_reference.__doc__ = _SGD_DOC + "\n    Provider reference: numpy, float64 per tensor.\n"


@_jit
def _chunk_starts(arrays, chunk):
    """starts[t] = index of tensor t's first chunk; starts[-1] = number of chunks."""
    starts = np.empty(len(arrays) + 1, np.int64)
    starts[0] = 0
    for t in range(len(arrays)):
        starts[t + 1] = starts[t] + (arrays[t].size + chunk - 1) // chunk
    return starts


@_jit
def _sgd_chunk(p, grad, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, sign,
               use_momentum, first_step):
    """The SGD update of one contiguous chunk, in the arrays' dtype (vectorizes)."""
    for i in range(p.size):
        g = sign * grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        if use_momentum:
            b = g if first_step else momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        p[i] = p[i] - lr * g


@_pjit
def _sgd_kernel(P, G, B, lr, momentum, one_minus_dampening, weight_decay, nesterov, sign,
                use_momentum, first_step, chunk):
    """One parallel pass over the chunks of every tensor of the lists."""
    starts = _chunk_starts(P, chunk)
    for c in prange(starts[-1]):
        t = np.searchsorted(starts, c, side="right") - 1
        lo = (c - starts[t]) * chunk
        hi = min(lo + chunk, P[t].size)
        buf = B[t][lo:hi] if use_momentum else B[t]
        _sgd_chunk(P[t][lo:hi], G[t][lo:hi], buf, lr, momentum, one_minus_dampening,
                   weight_decay, nesterov, sign, use_momentum, first_step)


class _Flat:
    """Contiguous 1-D work views of a tensor list, written back on ``finish``."""

    def __init__(self, arrays: list, work: np.dtype, writable: bool):
        self.pairs = []
        self.views = TypedList()
        for a in arrays:
            if a.dtype == work and a.flags.c_contiguous:
                self.views.append(a.reshape(-1))
            else:
                tmp = np.ascontiguousarray(a, dtype=work).reshape(-1)
                self.views.append(tmp)
                if writable:
                    self.pairs.append((a, tmp))

    @classmethod
    def empty(cls, n: int, work: np.dtype) -> "_Flat":
        """n empty arrays: the stand-in for a state list an op does not use."""
        return cls([np.empty(0, work)] * n, work, False)

    def finish(self) -> None:
        for a, tmp in self.pairs:
            np.copyto(a, tmp.reshape(a.shape), casting="unsafe")


@register("aten::_foreach_sgd_", "numba")
@_quiet
def foreach_sgd_numba(params, grads, momentum_buffers, *, lr, momentum=0, dampening=0,
                      weight_decay=0, nesterov=False, maximize=False, first_step):
    (params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, maximize,
     first_step) = _sgd_args(params, grads, momentum_buffers, lr, momentum, dampening,
                             weight_decay, nesterov, maximize, first_step)
    if not params:
        return
    work = _work_dtype(params[0].dtype)
    P = _Flat(params, work, True)
    G = _Flat(grads, work, False)
    B = _Flat(bufs, work, True) if bufs is not None else _Flat.empty(len(params), work)
    dt = work.type  # the update runs in the tensors' dtype, as torch's kernels
    _sgd_kernel(P.views, G.views, B.views, dt(lr), dt(momentum), dt(1 - dampening),
                dt(weight_decay), nesterov, dt(-1 if maximize else 1), momentum != 0,
                first_step, _FOREACH_CHUNK)
    P.finish()
    B.finish()


foreach_sgd_numba.__doc__ = _SGD_DOC + (
    "\n    Provider numba: one parallel, vectorized pass over every element of every"
    "\n    tensor, computed in the tensors' dtype like torch (float16 in float32).\n")


def _adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
               lr, beta1, beta2, weight_decay, eps, amsgrad, maximize):
    params = _tensor_list("params", params, writable=True)
    grads = _tensor_list("grads", grads, params)
    exp_avgs = _tensor_list("exp_avgs", exp_avgs, params, writable=True)
    exp_avg_sqs = _tensor_list("exp_avg_sqs", exp_avg_sqs, params, writable=True)
    amsgrad, maximize = bool(amsgrad), bool(maximize)
    if amsgrad:
        if max_exp_avg_sqs is None:
            raise ValueError("max_exp_avg_sqs must be a list of arrays when amsgrad is True")
        max_exp_avg_sqs = _tensor_list("max_exp_avg_sqs", max_exp_avg_sqs, params,
                                       writable=True)
    else:
        max_exp_avg_sqs = None
    if not isinstance(state_steps, (list, tuple)):
        raise TypeError(f"state_steps must be a list of arrays, got {type(state_steps).__name__}")
    if len(state_steps) != len(params):
        raise ValueError(f"state_steps has {len(state_steps)} tensors but params has {len(params)}")
    for i, s in enumerate(state_steps):
        _float_array(f"state_steps[{i}]", s, writable=True)
        if s.size != 1:
            raise ValueError(f"state_steps[{i}] must hold exactly 1 element, got shape {s.shape}")
    lr, eps = _nonneg_real("lr", lr), _nonneg_real("eps", eps)
    weight_decay = _nonneg_real("weight_decay", weight_decay)
    beta1, beta2 = _real("beta1", beta1), _real("beta2", beta2)
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= beta < 1:
            raise ValueError(f"{name} must be in [0, 1), got {beta}")
    return (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, list(state_steps), lr,
            beta1, beta2, weight_decay, eps, amsgrad, maximize)


def _advance_steps(state_steps, lr, beta1, beta2):
    """Increment every step in place; return per-tensor step sizes and sqrt(bias_correction2)."""
    step_size = np.empty(len(state_steps))
    bc2_sqrt = np.empty(len(state_steps))
    for i, s in enumerate(state_steps):
        s[...] += 1
        step = float(s.reshape(-1)[0])
        step_size[i] = lr / (1 - beta1 ** step)
        bc2_sqrt[i] = np.sqrt(1 - beta2 ** step)
    return step_size, bc2_sqrt


_ADAM_DOC = """One torch.optim.Adam step (L2 weight decay) over a list of tensors, in place.

    Every state_steps[i] (a 1-element float array) is incremented by 1 first,
    then with t = state_steps[i], per element (as torch's fused Adam):
        g = -grads[i] if maximize else grads[i]
        if weight_decay != 0: g = g + weight_decay * params[i]
        m = exp_avgs[i] = exp_avgs[i] + (1 - beta1) * (g - exp_avgs[i])
        v = exp_avg_sqs[i] = beta2 * exp_avg_sqs[i] + (1 - beta2) * g * g
        if amsgrad: v = max_exp_avg_sqs[i] = maximum(max_exp_avg_sqs[i], v)
        params[i] -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    max_exp_avg_sqs may be None unless amsgrad. All lists have params' length;
    tensors have params[i]'s shape and dtype; one float dtype per call. grads are
    not modified. Errors: lr, eps, weight_decay < 0 or betas outside [0, 1) ->
    ValueError (as torch.optim.Adam). Returns None.
    """


@register("aten::_fused_adam_", "reference")
@_quiet
def fused_adam_reference(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
                         lr, beta1, beta2, weight_decay, eps, amsgrad, maximize):
    (params, grads, exp_avgs, exp_avg_sqs, maxs, steps, lr, beta1, beta2, weight_decay, eps,
     amsgrad, maximize) = _adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                     state_steps, lr, beta1, beta2, weight_decay, eps, amsgrad,
                                     maximize)
    step_size, bc2_sqrt = _advance_steps(steps, lr, beta1, beta2)
    for i, p in enumerate(params):
        p64 = p.astype(np.float64)
        g = grads[i].astype(np.float64)
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g + weight_decay * p64
        m = exp_avgs[i].astype(np.float64)
        np.copyto(exp_avgs[i], m + (1 - beta1) * (g - m), casting="unsafe")
        v = beta2 * exp_avg_sqs[i].astype(np.float64) + (1 - beta2) * g * g
        np.copyto(exp_avg_sqs[i], v, casting="unsafe")
        if amsgrad:
            np.maximum(maxs[i], exp_avg_sqs[i], out=maxs[i])
            v = maxs[i]
        else:
            v = exp_avg_sqs[i]
        # like torch, the update reads the states as stored (rounded)
        denom = np.sqrt(v.astype(np.float64)) / bc2_sqrt[i] + eps
        np.copyto(p, p64 - step_size[i] * exp_avgs[i].astype(np.float64) / denom,
                  casting="unsafe")


fused_adam_reference.__doc__ = _ADAM_DOC + "\n    Provider reference: numpy, float64 per tensor.\n"


@_jit
def _adam_chunk(p, grad, m_, v_, vmax_, step_size, bc2_sqrt, one_minus_beta1, beta2,
                one_minus_beta2, weight_decay, eps, amsgrad, sign):
    """The Adam update of one contiguous chunk, in the arrays' dtype (vectorizes)."""
    for i in range(p.size):
        g = sign * grad[i]
        if weight_decay != 0:
            g = g + weight_decay * p[i]
        m = m_[i] + one_minus_beta1 * (g - m_[i])
        v = beta2 * v_[i] + one_minus_beta2 * g * g
        m_[i] = m
        v_[i] = v
        if amsgrad:
            vmax = vmax_[i]
            v = v if (v > vmax or v != v) else vmax  # maximum(), NaN from either side wins
            vmax_[i] = v
        p[i] = p[i] - step_size * m / (np.sqrt(v) / bc2_sqrt + eps)


@_pjit
def _adam_kernel(P, G, M, V, VMAX, step_size, bc2_sqrt, one_minus_beta1, beta2,
                 one_minus_beta2, weight_decay, eps, amsgrad, sign, chunk):
    """One parallel pass over the chunks of every tensor of the lists."""
    starts = _chunk_starts(P, chunk)
    for c in prange(starts[-1]):
        t = np.searchsorted(starts, c, side="right") - 1
        lo = (c - starts[t]) * chunk
        hi = min(lo + chunk, P[t].size)
        vmax = VMAX[t][lo:hi] if amsgrad else VMAX[t]
        _adam_chunk(P[t][lo:hi], G[t][lo:hi], M[t][lo:hi], V[t][lo:hi], vmax, step_size[t],
                    bc2_sqrt[t], one_minus_beta1, beta2, one_minus_beta2, weight_decay, eps,
                    amsgrad, sign)


@register("aten::_fused_adam_", "numba")
@_quiet
def fused_adam_numba(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
                     lr, beta1, beta2, weight_decay, eps, amsgrad, maximize):
    (params, grads, exp_avgs, exp_avg_sqs, maxs, steps, lr, beta1, beta2, weight_decay, eps,
     amsgrad, maximize) = _adam_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                     state_steps, lr, beta1, beta2, weight_decay, eps, amsgrad,
                                     maximize)
    if not params:
        return
    step_size, bc2_sqrt = _advance_steps(steps, lr, beta1, beta2)
    work = _work_dtype(params[0].dtype)
    P, M, V = (_Flat(a, work, True) for a in (params, exp_avgs, exp_avg_sqs))
    VMAX = _Flat(maxs, work, True) if amsgrad else _Flat.empty(len(params), work)
    G = _Flat(grads, work, False)
    dt = work.type  # the update runs in the tensors' dtype, as torch's fused kernel
    _adam_kernel(P.views, G.views, M.views, V.views, VMAX.views, step_size.astype(work),
                 bc2_sqrt.astype(work), dt(1 - beta1), dt(beta2), dt(1 - beta2),
                 dt(weight_decay), dt(eps), amsgrad, dt(-1 if maximize else 1), _FOREACH_CHUNK)
    for f in (P, M, V, VMAX):
        f.finish()


fused_adam_numba.__doc__ = _ADAM_DOC + (
    "\n    Provider numba: one parallel, vectorized pass over every element of every"
    "\n    tensor, computed in the tensors' dtype like torch (float16 in float32).\n")
