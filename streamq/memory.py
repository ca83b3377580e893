"""Arrays whose pages live on a CMG's NUMA node.

Linux places a page on the NUMA node of the CPU that first writes it. An array
from :func:`empty` or :func:`zeros` is backed by fresh anonymous pages (an
``mmap``, so no page was touched before) and, where libnuma is present, bound
to the CMG's node with ``numa_tonode_memory`` through cffi; then a worker
pinned to the CMG writes every page once, which places it even without libnuma.
"""

from __future__ import annotations

import logging
import mmap
import threading

import numpy as np

from .topology import CMG, topology

__all__ = ["empty", "zeros", "numa_node_of"]

_logger = logging.getLogger("streamq")
PAGE = mmap.PAGESIZE
#: Below this many bytes arrays come from numpy's allocator: placement of a few pages is noise.
SMALL_BYTES = 64 * 1024

_libnuma = None
_libnuma_tried = False
_libnuma_lock = threading.Lock()


def _numa():
    """libnuma through cffi, or None if it is missing or NUMA is unavailable."""
    global _libnuma, _libnuma_tried
    if _libnuma_tried:
        return _libnuma
    with _libnuma_lock:
        if not _libnuma_tried:
            try:
                import cffi
                ffi = cffi.FFI()
                ffi.cdef("""
                    int numa_available(void);
                    void numa_tonode_memory(void *start, size_t size, int node);
                    long move_pages(int pid, unsigned long count, void **pages,
                                    const int *nodes, int *status, int flags);
                """)
                lib = ffi.dlopen("libnuma.so.1")
                if lib.numa_available() >= 0:
                    _libnuma = (ffi, lib)
            except Exception as exc:  # no libnuma: first touch alone places pages
                _logger.debug("streamq: libnuma unavailable (%s); using first touch", exc)
            _libnuma_tried = True
    return _libnuma


def _resolve_cmg(cmg) -> CMG | None:
    if cmg is None:
        from .topology import current_cmg
        return current_cmg()
    cmgs = topology()
    index = cmg.index if isinstance(cmg, CMG) else cmg
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cmgs):
        raise ValueError(f"cmg must be an index in range({len(cmgs)}) or None, got {cmg!r}")
    return cmgs[index]


def _touch(view: np.ndarray, cmg: CMG, fill) -> None:
    """Write every page of ``view`` from a worker pinned to ``cmg`` (inline if we are one)."""
    from .topology import current_cmg
    if current_cmg() == cmg:
        view[...] = fill
        return
    from .queue import global_queue
    global_queue(cmg).submit(view.__setitem__, Ellipsis, fill).result()


def empty(shape, dtype=np.float64, cmg: int | CMG | None = None, *, fill=None) -> np.ndarray:
    """An uninitialised array whose pages are placed on CMG ``cmg``'s NUMA node.

    ``cmg=None`` means the CMG of the calling worker (no placement outside
    workers). The array owns its memory and frees it when garbage collected.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative dimensions, got {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    target = _resolve_cmg(cmg)
    if nbytes < SMALL_BYTES or target is None:
        arr = np.empty(shape, dtype)
        if fill is not None:
            arr[...] = fill
        return arr
    buf = mmap.mmap(-1, (nbytes + PAGE - 1) // PAGE * PAGE,
                    flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    flat = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    numa = _numa()
    if numa is not None and target.numa_node is not None:
        ffi, lib = numa
        lib.numa_tonode_memory(ffi.cast("void *", flat.ctypes.data), len(buf), target.numa_node)
    arr = flat.view(dtype).reshape(shape)
    _touch(arr.reshape(-1) if arr.ndim != 1 else arr, target, 0 if fill is None else fill)
    return arr


def zeros(shape, dtype=np.float64, cmg: int | CMG | None = None) -> np.ndarray:
    """Like :func:`empty`, filled with zeros (the zeros are the first touch)."""
    return empty(shape, dtype, cmg, fill=0)


def numa_node_of(arr: np.ndarray) -> list[int]:
    """The NUMA node of each page of ``arr`` (via move_pages; -errno for unmapped pages).

    Raises RuntimeError where libnuma is not available.
    """
    numa = _numa()
    if numa is None:
        raise RuntimeError("libnuma is not available on this machine")
    ffi, lib = numa
    start = arr.ctypes.data - arr.ctypes.data % PAGE
    end = arr.ctypes.data + max(arr.nbytes, 1)
    count = (end - start + PAGE - 1) // PAGE
    pages = ffi.new("void *[]", [ffi.cast("void *", start + i * PAGE) for i in range(count)])
    status = ffi.new("int[]", count)
    if lib.move_pages(0, count, pages, ffi.NULL, status, 0) != 0:
        raise OSError("move_pages failed")
    return list(status)

