"""Error handling: the calling thread's last error, error names and descriptions.

Every facade call that fails records its code as the thread's last error
(``_errors.api``). A failed op makes the device's error *sticky*: it is
returned by later calls, by cudaGetLastError / cudaPeekAtLastError (which
cannot clear it), until cudaDeviceReset; :func:`last_exception` gives the
Python exception behind it, traceback included.
"""

from __future__ import annotations

from . import _context
from ._errors import error_string, last_error, peek_last_error, record_error, cudaError_t

__all__ = ["cudaGetLastError", "cudaPeekAtLastError", "cudaGetErrorName", "cudaGetErrorString",
           "last_exception"]


def _sticky() -> cudaError_t | None:
    sticky = _context.current_device().sticky
    return None if sticky is None else sticky.code


def cudaGetLastError():
    """``(code,)``: the last error of a runtime call in this host thread, reset to cudaSuccess;
    a sticky device error is returned and stays."""
    code = last_error()
    sticky = _sticky()
    if sticky is not None:
        record_error(sticky)
        return (sticky,)
    return (code,)


def cudaPeekAtLastError():
    """``(code,)``: as :func:`cudaGetLastError`, without resetting it."""
    sticky = _sticky()
    return (sticky if sticky is not None else peek_last_error(),)


def _code(error):
    try:
        return cudaError_t(int(error))
    except (TypeError, ValueError):
        return None


def cudaGetErrorName(error):
    """``(cudaSuccess, name)``: the enum name of ``error`` as bytes (b"unrecognized error code"
    for unknown values)."""
    code = _code(error)
    return (cudaError_t.cudaSuccess, b"unrecognized error code" if code is None else code.name.encode())


def cudaGetErrorString(error):
    """``(cudaSuccess, description)``: CUDA's description of ``error`` as bytes."""
    code = _code(error)
    return (cudaError_t.cudaSuccess, b"unrecognized error code" if code is None else error_string(code).encode())


def last_exception(device: int | None = None) -> BaseException | None:
    """The Python exception (with its traceback) behind ``device``'s sticky error — the
    current device's if None — or None if no op of it failed. Not a CUDA API."""
    dev = _context.current_device() if device is None else _context.device(device)
    sticky = dev.sticky
    return None if sticky is None else sticky.__cause__
