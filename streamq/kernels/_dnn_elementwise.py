"""Plumbing for flat elementwise numba kernels (private).

``run_flat`` hands a kernel 1-D contiguous views in the compute dtype
(float16 is processed as float32) and copies back only when the output is
not directly usable (non-contiguous or float16). Inputs that are already
contiguous in the compute dtype are passed without a copy, so ``y is x``
(in place) works.
"""

from __future__ import annotations

import numpy as np

from ._dnn_common import compute_dtype


def flat_input(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` as a 1-D C-ordered array of ``dtype`` (a view when possible)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


def run_flat(kernel, head: tuple, inputs: tuple, out: np.ndarray, scalars: tuple,
             beta: float) -> None:
    """Call ``kernel(*head, *flat_inputs, flat_out, *scalars_in_dtype)``.

    ``out`` is written in place (logical C order matches the inputs'). If
    ``beta != 0`` the kernel reads the previous ``out`` values, so a staging
    copy is initialised from ``out``; with ``beta == 0`` it is left empty.
    """
    cdt = compute_dtype(out.dtype)
    direct = out.dtype == cdt and out.flags.c_contiguous
    flat_in = tuple(flat_input(a, cdt) for a in inputs)
    if direct:
        o = out.reshape(-1)
    elif beta == 0:
        o = np.empty(out.size, dtype=cdt)
    else:
        o = flat_input(out, cdt)  # never a view here: out is not direct
    typed = tuple(cdt.type(s) for s in scalars)
    kernel(*head, *flat_in, o, *typed)
    if not direct:
        np.copyto(out, o.reshape(out.shape), casting="unsafe")
