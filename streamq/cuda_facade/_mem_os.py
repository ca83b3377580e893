"""Memory from the OS: fresh blocks placed on a NUMA node (:func:`_raw_block`), and how
many bytes the OS can still give (``meminfo``, the cgroup's limit)."""

from __future__ import annotations

import mmap
import os

import numpy as np

from streamq.memory import _numa, _touch

ALIGN = 256
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SMALL = 64 * 1024           # below this, blocks come from numpy's allocator (no NUMA placement)
_BLOCK_OFFSET = 2048         # where a big block starts in its first page (see _raw_block)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)   # Linux >= 5.14


def _raw_block(nbytes: int, cmg) -> np.ndarray:
    """A fresh, 256-byte aligned uint8 array of ``nbytes`` (pages on ``cmg``'s node if big).

    Big blocks are fresh anonymous mappings advised to use transparent huge pages
    (as numpy's own allocator does: 512x fewer page faults on first touch) and
    made resident at once, as device and pinned memory are: bound to the CMG's
    NUMA node with libnuma, then populated by the kernel (MADV_POPULATE_WRITE);
    without libnuma a worker pinned to the CMG touches every page (streamq's
    first-touch placement). They start half a page into their mapping: host
    arrays from malloc start a few bytes past a page boundary, and copies whose
    destination sits just past the source modulo 4 KiB run up to 3x slower on
    some CPUs (4K aliasing), so a half-page offset keeps copies in both
    directions away from it."""
    if nbytes < _SMALL:
        raw = np.empty(nbytes + ALIGN, np.uint8)
        shift = (-raw.ctypes.data) % ALIGN
        return raw[shift:shift + nbytes]
    buf = mmap.mmap(-1, -(-(nbytes + _BLOCK_OFFSET) // _PAGE) * _PAGE,
                    flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    array = np.frombuffer(buf, np.uint8, count=nbytes, offset=_BLOCK_OFFSET)
    numa = _numa() if cmg is not None and cmg.numa_node is not None else None
    if numa is not None:
        ffi, lib = numa
        lib.numa_tonode_memory(ffi.cast("void *", array.ctypes.data - _BLOCK_OFFSET), len(buf), cmg.numa_node)
    if cmg is not None and numa is None:
        _touch(array, cmg, 0)
        return array
    try:
        buf.madvise(_MADV_POPULATE_WRITE)
    except OSError:                     # kernels before 5.14
        array.fill(0)
    return array


def meminfo(path: str) -> dict[str, int]:
    """A ``meminfo`` file (``/proc/meminfo`` or a NUMA node's) as {field: bytes}."""
    out = {}
    with open(path) as f:
        for line in f:
            head, _, rest = line.partition(":")
            fields = rest.split()
            if not fields:
                continue
            key = head.split()[-1]            # node files prefix the field with "Node N"
            value = int(fields[0])
            out[key] = value * 1024 if len(fields) > 1 and fields[1] == "kB" else value
    return out


def cgroup_room() -> int | None:
    """Bytes this process's cgroup (v2) may still allocate, or None if unlimited/unknown."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(0, int(limit) - int(f.read()))
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Bytes the OS can still give this process (MemAvailable, capped by the cgroup limit;
    unbounded where ``/proc/meminfo`` cannot be read)."""
    try:
        room = meminfo("/proc/meminfo").get("MemAvailable", 1 << 63)
    except OSError:
        room = 1 << 63
    cap = cgroup_room()
    return room if cap is None else min(room, cap)
