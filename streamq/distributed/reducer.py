"""Gradient bucketing as PyTorch's DistributedDataParallel does it, over facade streams and NCCL.

Parameters are assigned to buckets in *reverse* order (the last layer's
gradients are computed first in the backward pass): walking the parameters
from the last, a bucket takes parameters of one dtype until its size reaches
its cap — ``first_bucket_cap_mb`` (1 MiB, DDP's default) for the first bucket,
``bucket_cap_mb`` (25 MiB) for the others. Each bucket is one flat device
buffer and the gradients are views into it (DDP's ``gradient_as_bucket_view``),
so no copy is needed before or after the all-reduce.

During backward the model calls :meth:`Reducer.mark_ready` right after it
launched the kernel that writes a gradient on the compute stream. When every
gradient of a bucket is ready, the bucket's all-reduce is issued, in one of
two ways:

- default (Aluminum's non-blocking collectives): ``ncclIAllReduce`` on the
  compute stream itself. In stream order it hands the bucket to the progress
  thread and returns, so the compute stream goes straight on with the earlier
  layers while MPI reduces the bucket; :meth:`Reducer.finalize` puts an
  ``ncclWait`` for every bucket on the compute stream. No worker thread is
  held by communication, which matters on a CMG of one or two cores.
- ``comm_stream=`` given (PyTorch DDP's layout): ``ncclAllReduce`` on that
  stream, ordered after the gradient kernels by an event; finalize makes the
  compute stream wait for the communication stream.

Buckets are issued in bucket order — a bucket ready early waits for the ones
before it — so every rank issues the same all-reduces in the same order, as
NCCL requires. After :meth:`Reducer.finalize` the compute stream's later work
(the optimizer step) reads averaged gradients.
"""

from __future__ import annotations

import numpy as np

from streamq.cuda_facade import device_array, nccl

from ._cuda import check, new_event, record, wait_event

__all__ = ["Reducer", "assign_buckets"]

_NCCL_TYPES = {np.dtype(np.float16): nccl.ncclDataType_t.ncclFloat16,
               np.dtype(np.float32): nccl.ncclDataType_t.ncclFloat32,
               np.dtype(np.float64): nccl.ncclDataType_t.ncclFloat64}
_MB = 1 << 20


def assign_buckets(sizes: list[int], dtypes: list, cap_bytes: int, first_cap_bytes: int) -> list[list[int]]:
    """Parameter indices per bucket, DDP's rule: walk the parameters last to first; a bucket
    holds one dtype and is closed once its bytes reach its cap (the first bucket's cap is
    ``first_cap_bytes``)."""
    if cap_bytes <= 0 or first_cap_bytes <= 0:
        raise ValueError(f"bucket caps must be > 0, got {cap_bytes} and {first_cap_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in reversed(range(len(sizes))):
        if current and np.dtype(dtypes[i]) != np.dtype(dtypes[current[0]]):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += sizes[i]
        if size >= (first_cap_bytes if not buckets else cap_bytes):
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


class _Bucket:
    __slots__ = ("buffer", "dtype", "event", "index", "params", "pending", "ready")

    def __init__(self, index: int, params: list[int], buffer: np.ndarray):
        self.index = index
        self.params = params
        self.buffer = buffer
        self.dtype = _NCCL_TYPES[buffer.dtype]
        self.pending: set[int] = set()
        self.ready = False
        self.event = new_event()


class Reducer:
    """Averages (or sums) gradients across a process group while backward runs.

    ``params``: the model's parameters, facade device arrays in forward order.
    ``compute_stream``: where the model's forward/backward kernels run.
    ``comm_stream``: None (default) issues non-blocking all-reduces on the compute stream;
    a stream handle runs blocking all-reduces there, after events (DDP's layout).
    """

    def __init__(self, params, group, *, compute_stream, comm_stream=None, bucket_cap_mb: float = 25.0,
                 first_bucket_cap_mb: float = 1.0, average: bool = True):
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one parameter")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray) or p.dtype not in _NCCL_TYPES:
                raise TypeError(f"params[{i}] must be a float16/32/64 device array, got "
                                f"{type(p).__name__} {getattr(p, 'dtype', '')}")
            if not p.flags.c_contiguous:
                raise ValueError(f"params[{i}] must be C-contiguous")
        self.params = params
        self.group = group
        self.compute_stream = compute_stream
        self.comm_stream = comm_stream
        self.op = nccl.ncclRedOp_t.ncclAvg if average else nccl.ncclRedOp_t.ncclSum
        layout = assign_buckets([p.nbytes for p in params], [p.dtype for p in params],
                                int(bucket_cap_mb * _MB), int(first_bucket_cap_mb * _MB))
        self.buckets: list[_Bucket] = []
        self.grads: list[np.ndarray] = [None] * len(params)     # views into the bucket buffers
        self._bucket_of = [0] * len(params)
        for b, members in enumerate(layout):
            dtype = params[members[0]].dtype
            buffer = device_array(sum(params[i].size for i in members), dtype)
            offset = 0
            for i in members:
                self.grads[i] = buffer[offset:offset + params[i].size].reshape(params[i].shape)
                self._bucket_of[i] = b
                offset += params[i].size
            self.buckets.append(_Bucket(b, members, buffer))
        self._done = new_event()
        self._requests: list = []
        self._next = 0
        self.launch_order: list[int] = []       # bucket indices, in the order their all-reduces were issued
        self.last_launch_order: list[int] = []  # the launch order of the last finished iteration
        self.prepare()

    def broadcast_parameters(self, root: int = 0) -> None:
        """Make every rank's parameters equal to ``root``'s (DDP does this at construction),
        in one group on the compute stream."""
        check(nccl.ncclGroupStart(), "ncclGroupStart")
        for p in self.params:
            nccl.ncclBroadcast(p, p, p.size, _NCCL_TYPES[p.dtype], root, self.group.comm, self.compute_stream)
        check(nccl.ncclGroupEnd(), "ncclGroupEnd(broadcast of parameters)")

    def prepare(self) -> None:
        """Start an iteration: every gradient becomes pending."""
        for bucket in self.buckets:
            bucket.pending = set(bucket.params)
            bucket.ready = False
        self._next = 0
        self.launch_order = []

    def mark_ready(self, index: int) -> None:
        """The kernel writing ``grads[index]`` was launched on the compute stream."""
        if not 0 <= index < len(self.params):
            raise IndexError(f"index must be in 0..{len(self.params) - 1}, got {index}")
        bucket = self.buckets[self._bucket_of[index]]
        if index not in bucket.pending:
            raise RuntimeError(f"gradient {index} was marked ready twice in one iteration")
        bucket.pending.discard(index)
        if not bucket.pending:
            bucket.ready = True
            while self._next < len(self.buckets) and self.buckets[self._next].ready:
                self._launch(self.buckets[self._next])
                self._next += 1

    def _launch(self, bucket: _Bucket) -> None:
        args = (bucket.buffer, bucket.buffer, bucket.buffer.size, bucket.dtype, self.op, self.group.comm)
        if self.comm_stream is None:
            self._requests.append(check(nccl.ncclIAllReduce(*args, self.compute_stream),
                                        f"ncclIAllReduce(bucket {bucket.index})"))
        else:
            record(bucket.event, self.compute_stream)
            wait_event(self.comm_stream, bucket.event)
            check(nccl.ncclAllReduce(*args, self.comm_stream), f"ncclAllReduce(bucket {bucket.index})")
        self.launch_order.append(bucket.index)

    def finalize(self) -> None:
        """End the backward pass: later compute-stream work waits for every all-reduce.

        Raises RuntimeError naming the parameters that got no gradient (DDP's error for
        unused parameters), since their buckets could never be reduced."""
        if self._next < len(self.buckets):
            missing = sorted(i for b in self.buckets for i in b.pending)
            raise RuntimeError(f"parameters {missing} received no gradient in this iteration, so their "
                               "buckets cannot be reduced (every rank must produce every gradient)")
        if self.comm_stream is None:
            for request in self._requests:
                check(nccl.ncclWait(request, self.compute_stream), "ncclWait")
            self._requests = []
        else:
            record(self._done, self.comm_stream)
            wait_event(self.compute_stream, self._done)
        self.last_launch_order = self.launch_order
        self.prepare()

