"""Facade memory: the allocation table, the caching pool per device, pointer checks.

Every pointer the facade hands out is the real address of a numpy-backed block
(256-byte aligned, like cudaMalloc's; big blocks start half a page into their
mapping, see :func:`_mem_os._raw_block`). The :class:`AllocationTable` knows every
live block, so each pointer an API call receives is checked — unknown address,
freed block, or a range running past the block's end — before a byte is touched.

Device blocks come from a :class:`Pool` per device, placed on the device's NUMA
node. A freed block goes back to the pool, not to the OS, and is handed out
again for a request of similar size, as PyTorch's caching allocator and CUDA's
stream-ordered pools do; :meth:`Pool.trim` returns cached blocks to the OS.
While a freed block sits in a pool the table remembers its range as *held*, so
a stale pointer into it is refused rather than taken for host memory.

Memory the facade does not own (host arrays, raw host addresses) is checked by
:func:`resolve`: objects with the buffer protocol or ``__array_interface__``
describe their own extent; a raw int address is accepted only if it lies in a
mapped region of the process with the needed permissions (``/proc/self/maps``,
cached and re-read on a miss, each hit re-confirmed with ``msync`` so that an
unmapped range is never touched).

The parts: ``_mem_table.py`` (Allocation, the allocation table), ``_mem_os.py``
(fresh NUMA-placed blocks, what the OS has), ``_mem_pool.py`` (caching pools,
freeing), ``_mem_span.py`` (Span, resolve, typed views), ``_mem_hostmaps.py``
(raw host addresses) and ``_mem_ref.py`` (BufferRef for the queue log). This
module re-exports their public names.
"""

from __future__ import annotations

from ._mem_hostmaps import HostMaps, host_maps
from ._mem_os import ALIGN, available_bytes, cgroup_room, meminfo
from ._mem_pool import UINT64_MAX  # noqa: F401 - importable from here as before, though not in __all__
from ._mem_pool import Pool, free, pool, pools, release, release_device, retire, size_class
from ._mem_ref import BufferRef
from ._mem_span import (Span, as_address, device_view, note_host_read, note_host_write, resolve, resolve_fast,
                        typed_view)
from ._mem_table import MEMORY_KINDS, PAGEABLE, Allocation, AllocationTable, table

__all__ = ["Allocation", "AllocationTable", "table", "Pool", "pool", "pools", "free", "retire", "release",
           "release_device", "BufferRef", "ALIGN", "Span", "resolve", "resolve_fast", "device_view", "typed_view",
           "note_host_read", "note_host_write", "host_maps", "HostMaps", "meminfo", "available_bytes",
           "cgroup_room", "as_address", "size_class",
           "MEMORY_KINDS", "PAGEABLE"]
