"""Horovod-style tensor fusion: many small all-reduces packed into one buffer.

Each all-reduce has a fixed cost (an MPI collective's latency, the check round,
the hop to the progress thread), so reducing a hundred small tensors one by one
costs a hundred times that. :class:`TensorFusion` queues tensors
(:meth:`~TensorFusion.allreduce_async`) and, when the queued bytes reach
``threshold_mb`` (Horovod's ``HOROVOD_FUSION_THRESHOLD``, 64 MiB) or on
:meth:`~TensorFusion.flush`, packs consecutive tensors of one dtype into a
fusion buffer (``aten::cat`` from the kernel registry, on the stream), reduces
the buffer with one ``ncclAllReduce`` and copies the results back
(``aten::copy_``). A tensor as large as the threshold is reduced in place, alone.

Horovod decides the fusion groups through a coordinator rank every cycle; here
they follow from the submission order and sizes alone, which must be the same on
every rank (as NCCL requires of any sequence of collectives) — the NCCL module's
check round turns a divergence into an error on every rank instead of a hang.
"""

from __future__ import annotations

import numpy as np

from streamq.cuda_facade import device_array, nccl
from streamq.cuda_facade import runtime as rt

from ._cuda import check, launch, new_event, record

__all__ = ["FusionHandle", "TensorFusion"]

_TYPES = {np.dtype(np.int32): nccl.ncclDataType_t.ncclInt32, np.dtype(np.int64): nccl.ncclDataType_t.ncclInt64,
          np.dtype(np.float16): nccl.ncclDataType_t.ncclFloat16,
          np.dtype(np.float32): nccl.ncclDataType_t.ncclFloat32,
          np.dtype(np.float64): nccl.ncclDataType_t.ncclFloat64}


class _Chunk:
    """The tensors reduced by one collective, and the event recorded after their results."""

    __slots__ = ("event", "waiting")

    def __init__(self, event, waiting: int):
        self.event = event
        self.waiting = waiting     # handles not yet synchronized; the event is destroyed at 0


class FusionHandle:
    """One queued all-reduce; :meth:`TensorFusion.synchronize` waits for it."""

    __slots__ = ("chunk", "name", "synchronized", "tensor")

    def __init__(self, name: str, tensor: np.ndarray):
        self.name = name
        self.tensor = tensor
        self.chunk: _Chunk | None = None    # set when issued
        self.synchronized = False

    def __repr__(self) -> str:
        return f"<FusionHandle {self.name} {'issued' if self.chunk is not None else 'queued'}>"


class TensorFusion:
    """Queue all-reduces of device arrays and issue them fused, on ``stream``.

    ``op``: the NCCL reduction (ncclAvg by default, as Horovod averages).
    ``stats``: counts of tensors queued and of all-reduces issued.
    """

    def __init__(self, group, stream, *, threshold_mb: float = 64.0, op=nccl.ncclRedOp_t.ncclAvg):
        if threshold_mb <= 0:
            raise ValueError(f"threshold_mb must be > 0, got {threshold_mb}")
        self.group = group
        self.stream = stream
        self.threshold = int(threshold_mb * (1 << 20))
        self.op = op
        self._pending: list[FusionHandle] = []
        self._pending_bytes = 0
        self._buffers: dict = {}
        self.stats = {"tensors": 0, "allreduces": 0, "fused_bytes": 0}

    def allreduce_async(self, tensor: np.ndarray, name: str | None = None) -> FusionHandle:
        """Queue an in-place all-reduce of ``tensor`` (a C-contiguous device array)."""
        if not isinstance(tensor, np.ndarray) or tensor.dtype not in _TYPES:
            raise TypeError(f"tensor must be a device array of {sorted(str(t) for t in _TYPES)}, got "
                            f"{type(tensor).__name__} {getattr(tensor, 'dtype', '')}")
        if not tensor.flags.c_contiguous:
            raise ValueError("tensor must be C-contiguous")
        name = f"tensor.{self.stats['tensors']}" if name is None else str(name)
        if any(h.name == name for h in self._pending):
            raise ValueError(f"a tensor named {name!r} is already queued (names must be unique)")
        handle = FusionHandle(name, tensor)
        self._pending.append(handle)
        self._pending_bytes += tensor.nbytes
        self.stats["tensors"] += 1
        if self._pending_bytes >= self.threshold:
            self.flush()
        return handle

    def flush(self) -> None:
        """Issue every queued all-reduce now, fused into as few collectives as the threshold allows."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        chunk: list[FusionHandle] = []
        size = 0
        for handle in pending:
            t = handle.tensor
            if chunk and (t.dtype != chunk[0].tensor.dtype or size + t.nbytes > self.threshold):
                self._issue(chunk)
                chunk, size = [], 0
            chunk.append(handle)
            size += t.nbytes
        if chunk:
            self._issue(chunk)

    def synchronize(self, handle: FusionHandle) -> np.ndarray:
        """Block the host until ``handle``'s all-reduce is done (flushing it if queued); its tensor."""
        if handle.chunk is None:
            self.flush()
        chunk = handle.chunk
        if not handle.synchronized:
            check(rt.cudaEventSynchronize(chunk.event), "cudaEventSynchronize")
            handle.synchronized = True
            chunk.waiting -= 1
            if chunk.waiting == 0:
                check(rt.cudaEventDestroy(chunk.event), "cudaEventDestroy")
        return handle.tensor

    def _buffer(self, dtype: np.dtype) -> np.ndarray:
        buf = self._buffers.get(dtype)
        if buf is None:
            buf = self._buffers[dtype] = device_array(self.threshold // dtype.itemsize, dtype)
        return buf

    def _issue(self, chunk: list[FusionHandle]) -> None:
        dtype = chunk[0].tensor.dtype
        kind = _TYPES[dtype]
        comm, stream = self.group.comm, self.stream
        if len(chunk) == 1:
            t = chunk[0].tensor
            check(nccl.ncclAllReduce(t, t, t.size, kind, self.op, comm, stream), f"ncclAllReduce({chunk[0].name})")
        else:
            n = sum(h.tensor.size for h in chunk)
            fused = self._buffer(dtype)[:n]
            launch("aten::cat", ([h.tensor.reshape(-1) for h in chunk], 0), {"out": fused}, stream)
            check(nccl.ncclAllReduce(fused, fused, n, kind, self.op, comm, stream),
                  f"ncclAllReduce(fusion of {len(chunk)} tensors)")
            offset = 0
            for h in chunk:
                part = fused[offset:offset + h.tensor.size].reshape(h.tensor.shape)
                launch("aten::copy_", (h.tensor, part), {}, stream)
                offset += h.tensor.size
            self.stats["fused_bytes"] += fused.nbytes
        issued = _Chunk(new_event(), len(chunk))
        record(issued.event, stream)
        for h in chunk:
            h.chunk = issued
        self.stats["allreduces"] += 1
