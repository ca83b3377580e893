"""CUDA runtime memory API: allocation, copies, sets, pools and pointer attributes.

cuda-python's names, argument order and return tuples (``(cudaError_t, *results)``);
``runtime.py`` re-exports everything in ``__all__``.

Pointers are ints (addresses of facade memory, or of host memory) or host
objects with the buffer protocol / ``__array_interface__`` (numpy arrays, which
are pageable host memory unless they lie in a cudaMallocHost block or were
passed to cudaHostRegister). A raw int that is not facade memory is taken as a
host address only if it lies in a mapped region of this process (``/proc/self/maps``)
that is readable (a source) or writable (a destination), outside device files
and freed facade memory — pass ``arr.ctypes.data`` only while ``arr`` is alive;
passing the array itself is safer. Every pointer and size is checked before a
byte moves; bad input returns an error code, never crashes. (A raw address into
live memory the process uses for something else, such as Python's own heap, is
memory like any other: the facade cannot tell.)

Synchronicity follows CUDA's "API synchronization behavior" page:

- ``cudaMemcpy`` runs on the default stream (so after the legacy stream's prior
  work) and returns when the copy is done, except device-to-device copies,
  which the page says perform no host-side synchronization (they return once
  queued); those touching managed memory wait too (Unified Memory transfers are
  fully synchronous).
- ``cudaMemcpyAsync``: from pageable host memory the source is staged (copied
  into a facade buffer) before the call returns, and the device write happens
  in stream order; into pageable memory the copy completes in stream order (the
  host must synchronize before reading); host-to-host copies are fully
  synchronous; everything else is fully asynchronous. (The queue log shows a
  staged copy reading the user's source, the data it carries.)
- ``cudaMemset`` is asynchronous unless the target is pinned host or managed
  memory; ``cudaMemsetAsync`` always is.
- ``cudaFree``/``cudaFreeHost``/``cudaHostUnregister`` synchronize (as CUDA's
  implicit synchronization does) before the memory can be reused;
  ``cudaFreeAsync`` returns the block to the pool when the stream reaches it.

Choices where CUDA leaves things open (documented deviations):

- A pointer that contradicts the copy kind (a device pointer where the kind
  says host, or vice versa; CUDA calls this undefined) returns
  ``cudaErrorInvalidMemcpyDirection``, as does a kind that is not a
  ``cudaMemcpyKind``. Pinned host memory is host memory for explicit kinds;
  managed memory is both; ``cudaMemcpyDefault`` infers the direction.
- Overlapping copies (CUDA: undefined) behave like ``memmove``.
- cudaMalloc and cudaMallocAsync share one caching pool per device, the one
  ``cudaDeviceGetDefaultMemPool`` returns, so its attributes count both. Its
  release threshold defaults to UINT64_MAX (keep freed blocks: the point of the
  cache) and is applied when a block is freed rather than at the next
  synchronization.
- cudaMallocAsync/cudaFreeAsync and copies that involve pageable memory are
  refused while the stream is capturing (``cudaErrorStreamCaptureUnsupported``).
- A synchronizing call made from work running on a facade stream (a host
  function) returns ``cudaErrorNotPermitted`` instead of deadlocking.

The implementation is split by job: ``_rt_memory_types.py`` (enums, types, flags,
argument checks, host synchronization), ``_rt_alloc.py`` (allocation, host memory,
registration, pointer information, pools) and ``_rt_copy.py`` (copies, sets and the
ops they run on streams; its ``COPY_SPLIT_*`` constants decide when big copies use
several cores). This module re-exports their public API.
"""

from __future__ import annotations

from ._rt_alloc import (
    cudaDeviceGetDefaultMemPool, cudaDeviceGetMemPool, cudaFree, cudaFreeAsync, cudaFreeHost, cudaHostAlloc,
    cudaHostGetDevicePointer, cudaHostGetFlags, cudaHostRegister, cudaHostUnregister, cudaMalloc, cudaMallocAsync,
    cudaMallocFromPoolAsync, cudaMallocHost, cudaMallocManaged, cudaMallocPitch, cudaMemGetInfo,
    cudaMemPoolGetAttribute, cudaMemPoolSetAttribute, cudaMemPoolTrimTo, cudaPointerGetAttributes,
)
from ._rt_copy import (
    cudaMemcpy, cudaMemcpy2D, cudaMemcpy2DAsync, cudaMemcpyAsync, cudaMemcpyPeer, cudaMemcpyPeerAsync, cudaMemset,
    cudaMemset2D, cudaMemset2DAsync, cudaMemsetAsync,
)
# Readable here as before (the memory benchmark prints them); to change one, patch the module that reads it.
from ._rt_copy import COPY_SPLIT_BYTES, COPY_SPLIT_MIN_CORES  # noqa: F401
from ._rt_memory_types import (
    cudaHostAllocDefault, cudaHostAllocMapped, cudaHostAllocPortable, cudaHostAllocWriteCombined,
    cudaHostRegisterDefault, cudaHostRegisterIoMemory, cudaHostRegisterMapped, cudaHostRegisterPortable,
    cudaHostRegisterReadOnly, cudaInvalidDeviceId, cudaMemAttachGlobal, cudaMemAttachHost, cudaMemAttachSingle,
    cudaMemcpyKind, cudaMemoryType, cudaMemPool_t, cudaMemPoolAttr, cudaPointerAttributes, cuuint64_t,
)
from ._rt_memory_types import MAX_PITCH, PITCH_ALIGN  # noqa: F401

__all__ = [
    # types, enums and constants
    "cudaMemcpyKind", "cudaMemoryType", "cudaMemPoolAttr", "cudaPointerAttributes", "cudaMemPool_t",
    "cuuint64_t", "cudaHostAllocDefault", "cudaHostAllocPortable", "cudaHostAllocMapped",
    "cudaHostAllocWriteCombined", "cudaHostRegisterDefault", "cudaHostRegisterPortable",
    "cudaHostRegisterMapped", "cudaHostRegisterIoMemory", "cudaHostRegisterReadOnly", "cudaMemAttachGlobal",
    "cudaMemAttachHost", "cudaMemAttachSingle", "cudaInvalidDeviceId",
    # allocation
    "cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cudaMallocFromPoolAsync", "cudaMallocHost",
    "cudaHostAlloc", "cudaFreeHost", "cudaMallocManaged", "cudaMallocPitch", "cudaHostRegister",
    "cudaHostUnregister", "cudaHostGetDevicePointer", "cudaHostGetFlags",
    # copies and sets
    "cudaMemcpy", "cudaMemcpyAsync", "cudaMemcpy2D", "cudaMemcpy2DAsync", "cudaMemcpyPeer",
    "cudaMemcpyPeerAsync", "cudaMemset", "cudaMemsetAsync", "cudaMemset2D", "cudaMemset2DAsync",
    # information and pools
    "cudaMemGetInfo", "cudaPointerGetAttributes", "cudaDeviceGetDefaultMemPool", "cudaDeviceGetMemPool",
    "cudaMemPoolTrimTo", "cudaMemPoolGetAttribute", "cudaMemPoolSetAttribute",
]
