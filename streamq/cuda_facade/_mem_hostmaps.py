"""Raw host addresses: the process's memory mappings (``/proc/self/maps``), checked with ``msync``."""

from __future__ import annotations

import bisect
import ctypes
import threading

from ._mem_os import _PAGE

_MS_ASYNC = 1
_SPECIAL = (b"[vvar]", b"[vvar_vclock]", b"[vsyscall]", b"[vdso]")
_DEV_MEMORY = (b"/dev/zero", b"/dev/shm/")   # shared anonymous and POSIX shared memory: plain RAM


class HostMaps:
    """The process's memory mappings (``/proc/self/maps``), read on demand.

    :meth:`covers` answers from a cached copy and re-reads the file on a miss (a
    read costs about a millisecond); a hit is re-confirmed with ``msync``, which
    fails on any unmapped page, so a range unmapped since the last read is never
    touched. Device files (other than /dev/zero and /dev/shm, which are plain memory)
    and the kernel's special mappings never count.
    """

    def __init__(self, path: str = "/proc/self/maps"):
        self._path = path
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._regions: list[tuple[int, int, bool, bool]] = []   # (start, end, readable, writable)
        self._libc = None

    def reload(self) -> None:
        """Re-read the mappings."""
        regions = []
        with open(self._path, "rb") as f:
            for line in f.read().splitlines():
                parts = line.split(None, 5)
                if len(parts) < 5:
                    continue
                path = parts[5].strip() if len(parts) > 5 else b""
                if path in _SPECIAL or (path.startswith(b"/dev/") and not path.startswith(_DEV_MEMORY)):
                    continue
                lo, hi = parts[0].split(b"-")
                perms = parts[1]
                regions.append((int(lo, 16), int(hi, 16), perms[:1] == b"r", perms[1:2] == b"w"))
        regions.sort()
        with self._lock:
            self._regions = regions
            self._starts = [r[0] for r in regions]

    def _lookup(self, address: int, nbytes: int, writable: bool) -> bool:
        with self._lock:
            regions, starts = self._regions, self._starts
        i = bisect.bisect_right(starts, address) - 1
        end = address + max(nbytes, 1)
        pos = address
        while 0 <= i < len(regions):
            lo, hi, readable, can_write = regions[i]
            if not (lo <= pos < hi) or not readable or (writable and not can_write):
                return False
            if hi >= end:
                return True
            pos = hi
            i += 1
        return False

    def _mapped_now(self, address: int, nbytes: int) -> bool:
        libc = self._libc
        if libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.msync.restype = ctypes.c_int
            self._libc = libc
        page = _PAGE
        start = address - address % page
        return libc.msync(start, address + max(nbytes, 1) - start, _MS_ASYNC) == 0

    def covers(self, address: int, nbytes: int, writable: bool) -> bool:
        """True if [address, address + nbytes) is mapped, readable (and writable if asked) now.

        False wherever the mappings cannot be read (no ``/proc``)."""
        try:
            if not self._lookup(address, nbytes, writable):
                self.reload()
                if not self._lookup(address, nbytes, writable):
                    return False
            if self._mapped_now(address, nbytes):
                return True
            self.reload()     # unmapped since the last read: the cache was stale
            return self._lookup(address, nbytes, writable) and self._mapped_now(address, nbytes)
        except OSError:
            return False


host_maps = HostMaps()
