"""Buffer views as the queue log describes them, and the byte ranges they touch.

A log view is ``{"buffer", "offset", "dtype", "shape", "strides", "bytes"}``
(docs/queue-log.md). Two views overlap when they name the same buffer and their
byte spans intersect; a span runs from the lowest to one past the highest byte
any element of the view touches (negative strides and broadcast strides of 0
included).
"""

from __future__ import annotations

import numpy as np

__all__ = ["View", "parse_view", "host_view"]

_itemsizes: dict = {}


def _itemsize(dtype) -> int | None:
    size = _itemsizes.get(dtype)
    if size is None and dtype not in _itemsizes:
        try:
            size = np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            size = None
        if len(_itemsizes) < 4096:
            _itemsizes[dtype] = size
    return size


class View:
    """One region of one buffer: identity (``sig``) and byte span ``[lo, hi)``.

    ``sig`` is equal for two views exactly when they are the same view of the
    same buffer (offset, dtype, shape and strides all equal), which is what an
    elementwise consumer must read of its producer's output to fuse with it.
    """

    __slots__ = ("buffer", "offset", "dtype", "shape", "strides", "nbytes", "lo", "hi", "sig")

    def __init__(self, buffer, offset: int, dtype, shape: tuple, strides: tuple, nbytes: int,
                 lo: int, hi: int):
        self.buffer = buffer
        self.offset = offset
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
        self.nbytes = nbytes
        self.lo = lo
        self.hi = hi
        self.sig = (buffer, offset, dtype, shape, strides)

    def overlaps(self, other: "View") -> bool:
        """True if both views name the same buffer and their byte spans intersect."""
        return (self.buffer == other.buffer and self.lo < other.hi and other.lo < self.hi)

    def covers(self, other: "View") -> bool:
        """True if this view's span contains all of ``other``'s (same buffer)."""
        return self.buffer == other.buffer and self.lo <= other.lo and other.hi <= self.hi

    def __repr__(self) -> str:
        return (f"View(buffer={self.buffer!r}, offset={self.offset}, dtype={self.dtype!r}, "
                f"shape={self.shape}, bytes=[{self.lo}, {self.hi}))")


_cache: dict = {}
_CACHE_SIZE = 65536


def parse_view(entry) -> View:
    """A :class:`View` from one ``reads``/``writes`` entry of a task record.

    Views are immutable and cached: the same entry parsed twice gives the same
    object. Raises ValueError naming the bad field when the entry is not a
    view (missing buffer, non-integer offset or shape, mismatched strides).
    """
    try:
        key = (entry["buffer"], entry["offset"], entry["dtype"], tuple(entry["shape"]),
               tuple(entry["strides"]), entry["bytes"])
        view = _cache.get(key)
    except (KeyError, TypeError):
        return _parse(entry)
    if view is None:
        view = _parse(entry)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = view
    return view


def _parse(entry) -> View:
    if not isinstance(entry, dict):
        raise ValueError(f"a buffer view must be an object, got {type(entry).__name__}")
    if "error" in entry and "buffer" not in entry:
        raise ValueError(f"buffer could not be described: {entry['error']}")
    buffer = entry.get("buffer")
    if buffer is None or isinstance(buffer, (bool, float, list, dict)):
        raise ValueError(f"view 'buffer' must be an int or string, got {buffer!r}")
    offset = entry.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError(f"view 'offset' must be an integer, got {offset!r}")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    nbytes = entry.get("bytes")
    if shape is None:  # a plain byte range (host_read/host_write style)
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"view without 'shape' needs integer 'bytes', got {nbytes!r}")
        return View(buffer, offset, dtype, (nbytes,), (1,), nbytes, offset, offset + nbytes)
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"view 'shape' must be a list of non-negative integers, got {shape!r}")
    itemsize = _itemsize(dtype) if dtype is not None else None
    numel = 1
    for s in shape:
        numel *= s
    if itemsize is None:
        if isinstance(nbytes, int) and numel:
            itemsize = nbytes // numel
        else:
            itemsize = 1
    strides = entry.get("strides")
    if strides is None:  # C-contiguous
        strides, step = [], itemsize
        for s in reversed(shape):
            strides.append(step)
            step *= s
        strides.reverse()
    elif not isinstance(strides, list) or len(strides) != len(shape) or \
            not all(isinstance(s, int) for s in strides):
        raise ValueError(f"view 'strides' must be a list of integers as long as shape, got {strides!r}")
    if not isinstance(nbytes, int) or nbytes < 0:
        nbytes = numel * itemsize
    if numel == 0:
        lo = hi = offset
    else:
        lo = hi = offset
        for s, st in zip(shape, strides):
            if st >= 0:
                hi += (s - 1) * st
            else:
                lo += (s - 1) * st
        hi += itemsize
    return View(buffer, offset, dtype, tuple(shape), tuple(strides), nbytes, lo, hi)


def host_view(buffer, offset, nbytes) -> View:
    """A plain byte range, as ``host_read``/``host_write``/``alloc`` records give it.

    Raises ValueError if ``offset`` or ``nbytes`` is not a non-negative integer.
    """
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"'offset' must be a non-negative integer, got {offset!r}")
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"'bytes' must be a non-negative integer, got {nbytes!r}")
    return View(buffer, offset, None, (nbytes,), (1,), nbytes, offset, offset + nbytes)
