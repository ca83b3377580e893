"""NCCL's enums, the facade's NCCL error, and the ``(ncclResult_t, *results)`` call convention.

Values are NCCL's (``nccl.h``, NCCL 2.19): a program that compares statuses or
passes enum members as ints sees the numbers it would see with NCCL.
"""

from __future__ import annotations

import enum
import functools
import operator
import threading

import numpy as np

from ._errors import CudaError

__all__ = [
    "DTYPES",
    "NCCL_UNIQUE_ID_BYTES",
    "NCCL_VERSION_CODE",
    "NcclError",
    "as_datatype",
    "as_int",
    "as_redop",
    "last_error_string",
    "ncclDataType_t",
    "ncclRedOp_t",
    "ncclResult_t",
    "nccl_api",
]

NCCL_UNIQUE_ID_BYTES = 128
#: The NCCL version whose API this module mirrors: 2.19.3 (NCCL's code: major*10000 + minor*100 + patch).
NCCL_VERSION_CODE = 21903


class ncclResult_t(enum.IntEnum):
    """NCCL's status codes."""

    ncclSuccess = 0
    ncclUnhandledCudaError = 1
    ncclSystemError = 2
    ncclInternalError = 3
    ncclInvalidArgument = 4
    ncclInvalidUsage = 5
    ncclRemoteError = 6
    ncclInProgress = 7
    ncclNumResults = 8


class ncclDataType_t(enum.IntEnum):
    """NCCL's element types (aliases share a value, as in ``nccl.h``)."""

    ncclInt8 = 0
    ncclChar = 0
    ncclUint8 = 1
    ncclInt32 = 2
    ncclInt = 2
    ncclUint32 = 3
    ncclInt64 = 4
    ncclUint64 = 5
    ncclFloat16 = 6
    ncclHalf = 6
    ncclFloat32 = 7
    ncclFloat = 7
    ncclFloat64 = 8
    ncclDouble = 8
    ncclBfloat16 = 9
    ncclNumTypes = 10


class ncclRedOp_t(enum.IntEnum):
    """NCCL's built-in reduction operations (``ncclAvg`` since NCCL 2.10)."""

    ncclSum = 0
    ncclProd = 1
    ncclMax = 2
    ncclMin = 3
    ncclAvg = 4
    ncclNumOps = 5


#: numpy dtype holding each NCCL type's elements; bfloat16 (no numpy type) is held as its uint16 bits.
DTYPES = {
    ncclDataType_t.ncclInt8: np.dtype(np.int8),
    ncclDataType_t.ncclUint8: np.dtype(np.uint8),
    ncclDataType_t.ncclInt32: np.dtype(np.int32),
    ncclDataType_t.ncclUint32: np.dtype(np.uint32),
    ncclDataType_t.ncclInt64: np.dtype(np.int64),
    ncclDataType_t.ncclUint64: np.dtype(np.uint64),
    ncclDataType_t.ncclFloat16: np.dtype(np.float16),
    ncclDataType_t.ncclFloat32: np.dtype(np.float32),
    ncclDataType_t.ncclFloat64: np.dtype(np.float64),
    ncclDataType_t.ncclBfloat16: np.dtype(np.uint16),
}

_DESCRIPTIONS = {
    ncclResult_t.ncclSuccess: "no error",
    ncclResult_t.ncclUnhandledCudaError: "unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
    ncclResult_t.ncclSystemError: "unhandled system error (run with NCCL_DEBUG=INFO for details)",
    ncclResult_t.ncclInternalError: "internal error - please report this issue to the NCCL developers",
    ncclResult_t.ncclInvalidArgument: "invalid argument (run with NCCL_DEBUG=WARN for details)",
    ncclResult_t.ncclInvalidUsage: "invalid usage (run with NCCL_DEBUG=WARN for details)",
    ncclResult_t.ncclRemoteError: "remote process exited or there was a network error",
    ncclResult_t.ncclInProgress: "NCCL operation in progress",
}


def description(code) -> str:
    """NCCL's text for a status code (``ncclGetErrorString``)."""
    try:
        return _DESCRIPTIONS.get(ncclResult_t(code), "unknown result code")
    except ValueError:
        return "unknown result code"


class NcclError(Exception):
    """An NCCL call or operation failed with ``code``; ``detail`` says why in words.

    Raised inside the module and turned into a status tuple by :func:`nccl_api`.
    Inside a stream op it is the Python exception behind the device's sticky
    error, so ``cudaStreamSynchronize`` reports it (as ``__cause__``).
    """

    def __init__(self, code: ncclResult_t, detail: str = ""):
        self.code = ncclResult_t(code)
        self.detail = detail
        super().__init__(f"{self.code.name}: {detail}" if detail else self.code.name)


_thread = threading.local()


def last_error_string() -> str:
    """The detail of the calling thread's most recent failed NCCL call ("" if none)."""
    return getattr(_thread, "detail", "")


def nccl_api(nresults: int = 0):
    """Decorate a function returning its results (a value, or a tuple if
    ``nresults > 1``) or raising :class:`NcclError`; the wrapper returns
    ``(ncclResult_t, *results)``, with None for each result on failure.

    A CudaError (stream handle, sticky device error) becomes
    ``ncclUnhandledCudaError``, as NCCL reports a failed CUDA call; Python
    argument errors (TypeError, ValueError, OverflowError) become
    ``ncclInvalidArgument``. The failure's detail is kept for ``ncclGetLastError``.
    """
    failed = (None,) * nresults

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                value = fn(*args, **kwargs)
            except NcclError as err:
                code, detail = err.code, err.detail
            except CudaError as err:
                code, detail = ncclResult_t.ncclUnhandledCudaError, str(err)
            except (TypeError, ValueError, OverflowError) as err:
                code, detail = ncclResult_t.ncclInvalidArgument, f"{type(err).__name__}: {err}"
            else:
                if nresults == 0:
                    return (ncclResult_t.ncclSuccess,)
                if nresults == 1:
                    return (ncclResult_t.ncclSuccess, value)
                return (ncclResult_t.ncclSuccess, *value)
            _thread.detail = f"{fn.__name__}: {detail}"
            return (code, *failed)
        call.__wrapped_impl__ = fn
        return call
    return wrap


def as_int(value, name: str) -> int:
    """``value`` as an int (bools and floats refused), or ncclInvalidArgument naming ``name``."""
    if isinstance(value, (bool, float)):
        raise NcclError(ncclResult_t.ncclInvalidArgument, f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise NcclError(ncclResult_t.ncclInvalidArgument,
                        f"{name} must be an int, got {type(value).__name__}") from None


def as_datatype(value) -> ncclDataType_t:
    """The ncclDataType_t member for ``value``, or ncclInvalidArgument."""
    code = as_int(value, "datatype")
    if not 0 <= code < ncclDataType_t.ncclNumTypes:
        raise NcclError(ncclResult_t.ncclInvalidArgument,
                        f"datatype {code} is not an ncclDataType_t (0..{ncclDataType_t.ncclNumTypes - 1})")
    return ncclDataType_t(code)


def as_redop(value) -> ncclRedOp_t:
    """The ncclRedOp_t member for ``value``, or ncclInvalidArgument."""
    code = as_int(value, "op")
    if not 0 <= code < ncclRedOp_t.ncclNumOps:
        raise NcclError(ncclResult_t.ncclInvalidArgument,
                        f"op {code} is not an ncclRedOp_t (0..{ncclRedOp_t.ncclNumOps - 1})")
    return ncclRedOp_t(code)
