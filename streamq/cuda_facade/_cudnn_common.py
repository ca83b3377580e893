"""Checks and the enqueue step shared by the cuDNN facade's operations (private).

Every operation validates descriptors against each other and against the
memory they point to, then enqueues one task on the handle's stream that calls
kernel-registry ops. Nothing is enqueued when a check fails.
"""

from __future__ import annotations

import functools

import numpy as np

from streamq.kernels import registry

from ._cudnn_types import LIB, live_handle, scalar_dtype

__all__ = ["alpha_beta", "same_dtype", "same_dims", "disjoint", "in_place_or_disjoint", "aliases",
           "enqueue", "workspace", "live_handle"]


def alpha_beta(dtype: np.dtype, **scalars) -> list[float]:
    """The host scaling factors, read now: float for half/float data, double for double."""
    sdt = scalar_dtype(dtype)
    return [LIB.host_scalar(value, sdt, name) for name, value in scalars.items()]


def same_dtype(**arrays) -> np.dtype:
    """The common dtype of the named views (BAD_PARAM naming the first that differs)."""
    (first, a0), *rest = arrays.items()
    for name, arr in rest:
        if arr.dtype != a0.dtype:
            raise LIB.bad(f"{name}Desc has data type {arr.dtype} but {first}Desc has {a0.dtype}")
    return a0.dtype


def same_dims(**arrays) -> None:
    """The named views must have identical dimensions (BAD_PARAM)."""
    (first, a0), *rest = arrays.items()
    for name, arr in rest:
        if arr.shape != a0.shape:
            raise LIB.bad(f"{name}Desc has dimensions {arr.shape} but {first}Desc has {a0.shape}")


def aliases(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two views are the same memory with the same layout (an in-place call)."""
    return a.size > 0 and _same_layout(a, b)


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def disjoint(out_name: str, out: np.ndarray, **inputs) -> None:
    """The output must not share memory with any input (BAD_PARAM)."""
    for name, arr in inputs.items():
        if arr.size and np.may_share_memory(out, arr):
            raise LIB.bad(f"{out_name} overlaps {name}: this operation cannot run in place")


def in_place_or_disjoint(out_name: str, out: np.ndarray, **inputs) -> None:
    """The output may be an input exactly (same pointer and strides: in place) or be
    disjoint from it; a partial overlap is BAD_PARAM."""
    for name, arr in inputs.items():
        if arr.size and not _same_layout(out, arr) and np.may_share_memory(out, arr):
            raise LIB.bad(f"{out_name} partially overlaps {name} (in place needs the same "
                          f"pointer and strides)")


def workspace(ptr, size_in_bytes, what: str = "workSpace") -> None:
    """Check a workspace argument: any size (the facade needs none); a non-NULL pointer
    with a positive size must be a valid range of facade memory."""
    size = LIB.integer(size_in_bytes, f"{what}SizeInBytes", 0)
    if size and ptr is not None and not (isinstance(ptr, int) and ptr == 0):
        LIB.flat(ptr, np.uint8, size, what=what)


def enqueue(handle, op: str, *args, reads=(), writes=(), **kwargs):
    """Enqueue the registry op ``op`` (resolved now, in the caller's provider order) on the
    handle's stream with these arguments; ``reads``/``writes`` go to the queue log."""
    kernel = registry.get(op)
    fn = functools.partial(kernel, *args, **kwargs)
    return LIB.launch(handle.stream(), fn, (), name=op, reads=reads, writes=writes)
