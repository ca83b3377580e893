"""How a fused kernel walks its arrays: rows of one inner dimension.

The iteration space (the chain's output shape) is reduced to ``rows x inner``:
dimensions of size 1 are dropped and neighbouring dimensions that every array
steps through contiguously are merged. Each array is then passed to the kernel
as a flat 1-D view of the memory it spans, the element offset of each row, and
its element stride along the inner dimension. Its *kind* says how the inner
loop indexes it, and is part of the generated kernel's identity:

* ``f`` - unit stride (``a[base + l]``), the fast path;
* ``c`` - stride 0, one value per row (a broadcast operand), loaded once per row;
* ``s`` - any other stride (``a[base + l * stride]``).

For the common case (every array C-contiguous of the full shape, or a scalar
broadcast) the whole space is one row and every kind is ``f`` or ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["Layout", "plan_layout"]


@dataclass(frozen=True)
class Layout:
    """The ``rows x inner`` walk of one fused call and the kernel's array arguments.

    ``args`` holds, per array, ``(flat, row_offsets, inner_stride)``: a 1-D
    view starting at the array's first element, int64 element offsets of every
    row, and the element stride along the inner dimension.
    """

    rows: int
    inner: int
    kinds: str
    args: tuple


def _element_strides(arr: np.ndarray, shape: tuple) -> list:
    """``arr``'s strides in elements once broadcast to ``shape`` (0 on broadcast dims)."""
    pad = len(shape) - arr.ndim
    strides = [0] * pad
    for n, s, target in zip(arr.shape, arr.strides, shape[pad:]):
        strides.append(0 if n == 1 and target != 1 else s // arr.itemsize)
    return strides


def _flat(arr: np.ndarray, span: int) -> np.ndarray:
    """A 1-D view of the ``span`` elements from ``arr``'s first one on."""
    if arr.flags.c_contiguous:
        return arr.reshape(-1)
    return as_strided(arr, shape=(span,), strides=(arr.itemsize,))


def plan_layout(shape: tuple, arrays) -> Layout:
    """The layout for arrays broadcast to ``shape`` (non-negative, item-multiple strides)."""
    shape = tuple(shape)
    dims = [d for d, n in enumerate(shape) if n != 1]
    sizes = [shape[d] for d in dims]
    st = [[s[d] for d in dims] for s in (_element_strides(a, shape) for a in arrays)]
    # Merge dimension k into k-1 wherever every array steps through both as one.
    k = len(sizes) - 1
    while k > 0:
        if all(s[k - 1] == s[k] * sizes[k] for s in st):
            sizes[k - 1] *= sizes[k]
            del sizes[k]
            for s in st:
                s[k - 1] = s[k]
                del s[k]
        k -= 1
    if not sizes:
        sizes, st = [1], [[0] for _ in arrays]
    inner = sizes[-1]
    lead = sizes[:-1]
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    kinds = []
    args = []
    for arr, s in zip(arrays, st):
        step = s[-1] if inner > 1 else 0
        kinds.append("f" if step == 1 else "c" if step == 0 else "s")
        offsets = np.zeros(lead or [1], dtype=np.int64)
        for d, (n, stride) in enumerate(zip(lead, s[:-1])):
            if stride and n > 1:
                idx = [1] * len(lead)
                idx[d] = n
                offsets = offsets + (np.arange(n, dtype=np.int64) * stride).reshape(idx)
        span = 1 + sum((n - 1) * stride for n, stride in zip(sizes, s))
        args.append((_flat(arr, span), offsets.reshape(-1), np.int64(step)))
    return Layout(rows, inner, "".join(kinds), tuple(args))
