"""cuDNN-style dropout with a counter-based mask: ``cudnn.dropout_forward``/``_backward``.

The keep/drop decision for element ``i`` (its index in C order of the
logical shape, whatever the strides) is a pure function of
``(seed, offset + i)``: a 64-bit splitmix64 finaliser of ``seed`` gives a
key, and two rounds of a 32-bit avalanche hash of the counter's low and high
halves xor the key give ``h`` in [0, 2**32). The element is kept iff
``h >= round(dropout * 2**32)``, so P(keep) = 1 - dropout up to 2**-32. Any
chunk of the tensor can thus be generated independently, in any order, on
any number of threads, and bit-identically by every provider.

Forward: ``y = x / (1 - dropout)`` where kept, ``0`` where dropped (a NaN in
a dropped element does not propagate); ``reserve`` (uint8, ``x.size``
elements, C-contiguous) receives 1 for kept, 0 for dropped. ``dropout == 1``
drops everything (y = 0). Backward: ``dx = dy / (1 - dropout)`` where
``reserve`` is 1, else 0. No alpha/beta (cuDNN has none here).
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

from ._dnn_common import quiet, JIT, JIT_PAR, check_array, check_float, check_like, check_scalar, \
    compute_dtype
from .registry import register

_M64 = (1 << 64) - 1


def _key(seed: int) -> tuple[int, int]:
    """splitmix64(seed) split into two 32-bit keys."""
    z = (seed + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return z & 0xFFFFFFFF, z >> 32


def _threshold(p: float) -> int:
    return min(int(round(p * 2.0 ** 32)), 1 << 32)


def _check_int(name, value, bits=64):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= int(value) < (1 << bits):
        raise ValueError(f"{name} must be in [0, 2**{bits}), got {value}")
    return int(value)


def _check_reserve(reserve, size, writable):
    check_array("reserve", reserve, dtype=np.uint8, writable=writable)
    if reserve.size != size or not reserve.flags.c_contiguous:
        raise ValueError(f"reserve must be a C-contiguous uint8 array of {size} elements, "
                         f"got shape {reserve.shape}")
    return reserve.reshape(-1)


def _check_forward(x, y, reserve, dropout, seed, offset):
    check_array("x", x)
    check_float("x", x)
    check_like("y", y, x, "x", writable=True)
    p = check_scalar("dropout", dropout, minimum=0.0, maximum=1.0)
    seed = _check_int("seed", seed)
    offset = _check_int("offset", offset)
    if offset + x.size > (1 << 64):
        raise ValueError(f"offset + x.size must fit in 64 bits, got offset={offset}")
    return _check_reserve(reserve, x.size, True), p, seed, offset


def _check_backward(dy, dx, reserve, dropout):
    check_array("dy", dy)
    check_float("dy", dy)
    check_like("dx", dx, dy, "dy", writable=True)
    p = check_scalar("dropout", dropout, minimum=0.0, maximum=1.0)
    return _check_reserve(reserve, dy.size, False), p


def _scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


# --------------------------------------------------------------------------
# reference (numpy, uint32 wrap-around arithmetic)
# --------------------------------------------------------------------------

def _mix32_np(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def keep_mask_reference(size: int, seed: int, offset: int, dropout: float) -> np.ndarray:
    """The boolean keep mask of ``size`` elements (the definition, in numpy)."""
    k0, k1 = _key(seed)
    ctr = np.arange(size, dtype=np.uint64) + np.uint64(offset)
    lo = (ctr & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (ctr >> np.uint64(32)).astype(np.uint32)
    h = _mix32_np(_mix32_np(lo ^ np.uint32(k0)) ^ hi ^ np.uint32(k1))
    return h.astype(np.uint64) >= np.uint64(_threshold(dropout))


@register("cudnn.dropout_forward", "reference")
@quiet
def dropout_forward_reference(x, y, reserve, *, dropout, seed, offset=0):
    """``y = keep ? x/(1-p) : 0``, ``reserve = keep`` (see module doc for the mask)."""
    flat_reserve, p, seed, offset = _check_forward(x, y, reserve, dropout, seed, offset)
    keep = keep_mask_reference(x.size, seed, offset, p).reshape(x.shape)
    np.copyto(y, np.where(keep, x.astype(np.float64) * _scale(p), 0.0), casting="unsafe")
    flat_reserve[...] = keep.reshape(-1)


@register("cudnn.dropout_backward", "reference")
@quiet
def dropout_backward_reference(dy, dx, reserve, *, dropout):
    """``dx = reserve ? dy/(1-p) : 0``."""
    flat_reserve, p = _check_backward(dy, dx, reserve, dropout)
    keep = flat_reserve.reshape(dy.shape) != 0
    np.copyto(dx, np.where(keep, dy.astype(np.float64) * _scale(p), 0.0), casting="unsafe")


# --------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _mix32(h):
    h = h ^ (h >> np.uint32(16))
    h = np.uint32(h * np.uint32(0x7FEB352D))
    h = h ^ (h >> np.uint32(15))
    h = np.uint32(h * np.uint32(0x846CA68B))
    return h ^ (h >> np.uint32(16))


@njit(**JIT_PAR)
def _forward_kernel(x, y, reserve, k0, k1, offset, threshold, scale):
    zero = y.dtype.type(0)
    for i in prange(x.size):
        ctr = offset + np.uint64(i)
        lo = np.uint32(ctr & np.uint64(0xFFFFFFFF))
        hi = np.uint32(ctr >> np.uint64(32))
        h = _mix32(_mix32(lo ^ k0) ^ hi ^ k1)
        keep = np.uint64(h) >= threshold
        reserve[i] = 1 if keep else 0
        y[i] = x[i] * scale if keep else zero


@njit(**JIT_PAR)
def _backward_kernel(dy, dx, reserve, scale):
    zero = dx.dtype.type(0)
    for i in prange(dy.size):
        dx[i] = dy[i] * scale if reserve[i] != 0 else zero


def _flat_out(a, cdt, *, read):
    if a.dtype == cdt and a.flags.c_contiguous:
        return a.reshape(-1)
    return np.ascontiguousarray(a, dtype=cdt).reshape(-1) if read else np.empty(a.size, cdt)


@register("cudnn.dropout_forward", "numba")
@quiet
def dropout_forward_numba(x, y, reserve, *, dropout, seed, offset=0):
    """Same contract and bit-identical mask as the reference; parallel."""
    flat_reserve, p, seed, offset = _check_forward(x, y, reserve, dropout, seed, offset)
    cdt = compute_dtype(x.dtype)
    yf = _flat_out(y, cdt, read=False)
    k0, k1 = _key(seed)
    _forward_kernel(_flat_out(x, cdt, read=True), yf, flat_reserve, np.uint32(k0),
                    np.uint32(k1), np.uint64(offset), np.uint64(_threshold(p)),
                    cdt.type(_scale(p)))
    if not np.shares_memory(yf, y):
        np.copyto(y, yf.reshape(y.shape), casting="unsafe")


@register("cudnn.dropout_backward", "numba")
@quiet
def dropout_backward_numba(dy, dx, reserve, *, dropout):
    """Same contract as the reference; parallel."""
    flat_reserve, p = _check_backward(dy, dx, reserve, dropout)
    cdt = compute_dtype(dy.dtype)
    dxf = _flat_out(dx, cdt, read=False)
    _backward_kernel(_flat_out(dy, cdt, read=True), dxf, flat_reserve, cdt.type(_scale(p)))
    if not np.shares_memory(dxf, dx):
        np.copyto(dx, dxf.reshape(dx.shape), casting="unsafe")
