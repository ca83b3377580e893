"""cudaLaunchKernel: run a kernel-registry op (or a Python callable) in stream order.

``func`` is an op name of :mod:`streamq.kernels.registry` (``"aten::add"``,
``"aten::mm"``, ...) or a callable; ``args`` a tuple of positional arguments
whose last item may be a dict of keyword arguments (``out=``, ``alpha=``).
What the op touches goes to the queue log (when it is on, or the op is
captured into a graph): arrays among the positional
arguments (and inside list/tuple arguments, e.g. ``aten::cat``'s tensors) are
read; arrays passed by keyword (``out=``, ``indices=``, ``grad_input=``) are
written, as is ``self`` (the first argument) of an in-place op (name ending in
``_``; the fused optimizer ops write every state list).

Grid and block are checked as CUDA checks them (every dimension >= 1, at most
1024 threads per block, CUDA's per-dimension limits) and are a partitioning
hint: a grid of fewer blocks than the CMG has cores caps numba's threads for
the kernel at the number of blocks.
"""

from __future__ import annotations

import operator
import sys

import numpy as np

from streamq import trace
from streamq.fusion import _state as _fusion_state
from streamq.kernels import registry

from . import _context
from ._errors import CudaError, api, cudaError_t
from ._memory import BufferRef
from ._rt_device import MAX_BLOCK_DIM, MAX_GRID_DIM, MAX_THREADS_PER_BLOCK, SHARED_MEM_PER_BLOCK

__all__ = ["cudaLaunchKernel", "kernel_buffers"]

# In-place ops that write more than their first argument: indices of the written arguments.
_INPLACE_WRITES = {
    "aten::_foreach_sgd_": (0, 2),
    "aten::_fused_adam_": (0, 2, 3, 4, 5),
}
_resolved: dict[tuple, object] = {}


def _dims(value, what: str, limits) -> tuple[int, int, int]:
    """(x, y, z) of a dim3, a sequence of 1-3 ints or an int, checked against ``limits``."""
    if type(value) is int and 1 <= value <= limits[0]:  # the common case, kept short
        return value, 1, 1
    if hasattr(value, "x") and hasattr(value, "y") and hasattr(value, "z"):
        dims = (value.x, value.y, value.z)
    elif isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise CudaError(cudaError_t.cudaErrorInvalidConfiguration, f"{what} must have 1 to 3 dimensions")
        dims = tuple(value) + (1,) * (3 - len(value))
    else:
        dims = (value, 1, 1)
    try:
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"{what} must hold integers, got {value!r}") from None
    for d, limit, axis in zip(dims, limits, "xyz"):
        if not 1 <= d <= limit:
            raise CudaError(cudaError_t.cudaErrorInvalidConfiguration,
                            f"{what}.{axis} = {d} is outside [1, {limit}]")
    return dims


def _kernel(func):
    """(callable, op name) for ``func``; cudaErrorInvalidDeviceFunction if it names nothing."""
    if isinstance(func, bytes):
        func = func.decode(errors="replace")
    if isinstance(func, str):
        key = (func, registry.order())
        fn = _resolved.get(key)
        if fn is None:
            try:
                fn = registry.get(func)
            except registry.KernelNotFoundError as exc:
                raise CudaError(cudaError_t.cudaErrorInvalidDeviceFunction, str(exc)) from None
            _resolved[key] = fn
        return fn, func
    if callable(func):
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
        return func, name
    raise CudaError(cudaError_t.cudaErrorInvalidDeviceFunction,
                    f"func must be a kernel-registry op name or a callable, got {func!r}")


def _arrays(value, out: list) -> None:
    if isinstance(value, np.ndarray):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, np.ndarray):
                out.append(item)


def kernel_buffers(name: str, args: tuple, kwargs: dict) -> tuple[list, list]:
    """(reads, writes) of a kernel call, as :class:`BufferRef`/arrays for the queue log."""
    reads: list = []
    for arg in args:
        _arrays(arg, reads)
    writes: list = []
    for value in kwargs.values():
        _arrays(value, writes)
    if name.endswith("_"):
        for i in _INPLACE_WRITES.get(name, (0,)):
            if i < len(args):
                _arrays(args[i], writes)
    return [BufferRef.of(a) for a in reads], [BufferRef.of(a) for a in writes]


def _fusion_on() -> bool:
    """True while run-time fusion is on (``STREAMQ_FUSE`` / ``streamq.fusion.enable``)."""
    return _fusion_state.current() is not None


class _KernelCall:
    """``fn(*args, **kwargs)`` with numba's threads capped at ``threads`` (0: no cap)."""

    __slots__ = ("fn", "args", "kwargs", "threads")

    def __init__(self, fn, args, kwargs, threads):
        self.fn, self.args, self.kwargs, self.threads = fn, args, kwargs, threads

    def __call__(self):
        numba = sys.modules.get("numba") if self.threads else None
        if numba is None:
            self.fn(*self.args, **self.kwargs)
            return
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(before, self.threads)))
        try:
            self.fn(*self.args, **self.kwargs)
        finally:
            numba.set_num_threads(before)


@api()
def cudaLaunchKernel(func, gridDim, blockDim, args, sharedMem, stream):  # noqa: N803 - CUDA's names
    """Launch ``func`` with ``args`` on ``stream``.

    Errors: cudaErrorInvalidDeviceFunction (unknown op, not callable),
    cudaErrorInvalidConfiguration (a grid/block dimension < 1 or over CUDA's limit,
    more than 1024 threads per block), cudaErrorInvalidValue (args not a tuple,
    negative or too large sharedMem). An exception raised by the kernel when it runs
    is a device fault: the sticky cudaErrorLaunchFailure of the next call.
    """
    fn, name = _kernel(func)
    grid = _dims(gridDim, "gridDim", MAX_GRID_DIM)
    block = _dims(blockDim, "blockDim", MAX_BLOCK_DIM)
    if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
        raise CudaError(cudaError_t.cudaErrorInvalidConfiguration,
                        f"blockDim {block} has more than {MAX_THREADS_PER_BLOCK} threads")
    shared = operator.index(sharedMem or 0)
    if not 0 <= shared <= SHARED_MEM_PER_BLOCK:
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        f"sharedMem must be in [0, {SHARED_MEM_PER_BLOCK}], got {shared}")
    if args is None:
        args = ()
    if not isinstance(args, (tuple, list)):
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"args must be a tuple, got {type(args).__name__}")
    args = tuple(args)
    kwargs = {}
    if args and isinstance(args[-1], dict):
        kwargs = args[-1]
        args = args[:-1]
    s = _context.resolve_stream(stream)
    if s.capture is None and _fusion_on() and s.fusion_window().offer(name, args, kwargs):
        if s.blocking and not s.legacy:
            s.device.touched.add(s)     # the next legacy-stream op must flush and fence it
        return   # held by the stream's fusion window: enqueued (fused) at its next flush
    blocks = grid[0] * grid[1] * grid[2]
    cores = s.device.cmg.ncores
    # Read/write sets feed the queue log: described when it is on or the op is captured (a graph
    # may be replayed with the log on), skipped when neither (describing costs ~10 µs per array).
    if trace._sink is not None or s.capture is not None:
        reads, writes = kernel_buffers(name, args, kwargs)
    else:
        reads = writes = ()
    s.launch(_KernelCall(fn, args, kwargs, blocks if blocks < cores else 0), name=name, kind="kernel",
             reads=reads, writes=writes)
