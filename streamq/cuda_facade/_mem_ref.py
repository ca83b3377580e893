"""BufferRef: how the queue log describes a view of facade memory."""

from __future__ import annotations

import numpy as np

from ._mem_table import Allocation, table


class BufferRef:
    """A view of facade memory as the queue log describes it (``__streamq_buffer__``)."""

    __slots__ = ("base", "offset", "dtype", "shape", "strides", "nbytes")

    def __init__(self, base: int, offset: int, dtype: str, shape, strides, nbytes: int):
        self.base = base
        self.offset = offset
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
        self.nbytes = nbytes

    @classmethod
    def of(cls, array: np.ndarray, alloc: Allocation | None = None) -> "BufferRef | np.ndarray":
        """The reference for ``array``; plain arrays (host memory) describe themselves."""
        if alloc is None:
            found = table.find(array.__array_interface__["data"][0])
            if found is None:
                return array
            alloc = found[0]
        addr = array.__array_interface__["data"][0]
        return cls(alloc.base, addr - alloc.base, array.dtype.str, list(array.shape), list(array.strides),
                   int(array.nbytes))

    def __streamq_buffer__(self) -> dict:
        return {"buffer": self.base, "offset": self.offset, "dtype": self.dtype, "shape": self.shape,
                "strides": self.strides, "bytes": self.nbytes}

    def __repr__(self) -> str:
        return f"<BufferRef {self.base:#x}+{self.offset} {self.dtype}{self.shape}>"
