"""CUDA runtime status codes, the facade's error exception and the call convention.

Every public facade function returns a tuple whose first item is a
``cudaError_t`` member, as cuda-python does. Internally, code raises
:class:`CudaError` and :func:`api` turns it into that tuple, records it as the
calling thread's last error (``cudaGetLastError``) and, for errors CUDA calls
sticky, poisons the device so that every later call returns the same code.
"""

from __future__ import annotations

import enum
import functools
import threading

__all__ = ["cudaError_t", "CudaError", "api", "last_error", "peek_last_error", "last_error_detail",
           "error_string", "record_error", "STICKY"]


class cudaError_t(enum.IntEnum):
    """CUDA runtime status codes (the values of CUDA 12's ``cudaError_t``)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorCudartUnloading = 4
    cudaErrorInvalidConfiguration = 9
    cudaErrorInvalidPitchValue = 12
    cudaErrorInvalidSymbol = 13
    cudaErrorInvalidHostPointer = 16
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInsufficientDriver = 35
    cudaErrorDevicesUnavailable = 46
    cudaErrorMissingConfiguration = 52
    cudaErrorInvalidDeviceFunction = 98
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorLossyQuery = 402
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchOutOfResources = 701
    cudaErrorLaunchTimeout = 702
    cudaErrorContextIsDestroyed = 709
    cudaErrorAssert = 710
    cudaErrorHostMemoryAlreadyRegistered = 712
    cudaErrorHostMemoryNotRegistered = 713
    cudaErrorIllegalInstruction = 715
    cudaErrorMisalignedAddress = 716
    cudaErrorLaunchFailure = 719
    cudaErrorNotPermitted = 800
    cudaErrorNotSupported = 801
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureMerge = 902
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureUnjoined = 904
    cudaErrorStreamCaptureIsolation = 905
    cudaErrorStreamCaptureImplicit = 906
    cudaErrorCapturedEvent = 907
    cudaErrorStreamCaptureWrongThread = 908
    cudaErrorTimeout = 909
    cudaErrorGraphExecUpdateFailure = 910
    cudaErrorUnknown = 999


_STRINGS = {
    cudaError_t.cudaSuccess: "no error",
    cudaError_t.cudaErrorInvalidValue: "invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: "out of memory",
    cudaError_t.cudaErrorInitializationError: "initialization error",
    cudaError_t.cudaErrorCudartUnloading: "driver shutting down",
    cudaError_t.cudaErrorInvalidConfiguration: "invalid configuration argument",
    cudaError_t.cudaErrorInvalidPitchValue: "invalid pitch argument",
    cudaError_t.cudaErrorInvalidSymbol: "invalid device symbol",
    cudaError_t.cudaErrorInvalidHostPointer: "invalid host pointer",
    cudaError_t.cudaErrorInvalidDevicePointer: "invalid device pointer",
    cudaError_t.cudaErrorInvalidMemcpyDirection: "invalid copy direction for memcpy",
    cudaError_t.cudaErrorInsufficientDriver: "CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorDevicesUnavailable: "CUDA-capable device(s) is/are busy or unavailable",
    cudaError_t.cudaErrorMissingConfiguration: "__global__ function call is not configured",
    cudaError_t.cudaErrorInvalidDeviceFunction: "invalid device function",
    cudaError_t.cudaErrorNoDevice: "no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidDevice: "invalid device ordinal",
    cudaError_t.cudaErrorInvalidResourceHandle: "invalid resource handle",
    cudaError_t.cudaErrorIllegalState: "the operation cannot be performed in the present state",
    cudaError_t.cudaErrorLossyQuery: "loss of data in the query",
    cudaError_t.cudaErrorNotReady: "device not ready",
    cudaError_t.cudaErrorIllegalAddress: "an illegal memory access was encountered",
    cudaError_t.cudaErrorLaunchOutOfResources: "too many resources requested for launch",
    cudaError_t.cudaErrorLaunchTimeout: "the launch timed out and was terminated",
    cudaError_t.cudaErrorContextIsDestroyed: "context is destroyed",
    cudaError_t.cudaErrorAssert: "device-side assert triggered",
    cudaError_t.cudaErrorHostMemoryAlreadyRegistered: "part or all of the requested memory range is "
                                                      "already mapped",
    cudaError_t.cudaErrorHostMemoryNotRegistered: "pointer does not correspond to a registered memory region",
    cudaError_t.cudaErrorIllegalInstruction: "an illegal instruction was encountered",
    cudaError_t.cudaErrorMisalignedAddress: "misaligned address",
    cudaError_t.cudaErrorLaunchFailure: "unspecified launch failure",
    cudaError_t.cudaErrorNotPermitted: "operation not permitted",
    cudaError_t.cudaErrorNotSupported: "operation not supported",
    cudaError_t.cudaErrorStreamCaptureUnsupported: "operation not permitted when stream is capturing",
    cudaError_t.cudaErrorStreamCaptureInvalidated: "operation failed due to a previous error during capture",
    cudaError_t.cudaErrorStreamCaptureMerge: "operation would result in a merge of separate capture sequences",
    cudaError_t.cudaErrorStreamCaptureUnmatched: "capture was not ended in the same stream as it began",
    cudaError_t.cudaErrorStreamCaptureUnjoined: "capturing stream has unjoined work",
    cudaError_t.cudaErrorStreamCaptureIsolation: "dependency created on uncaptured work in another stream",
    cudaError_t.cudaErrorStreamCaptureImplicit: "operation would make the legacy stream depend on a "
                                                "capturing blocking stream",
    cudaError_t.cudaErrorCapturedEvent: "operation not permitted on an event last recorded in a capturing stream",
    cudaError_t.cudaErrorStreamCaptureWrongThread: "attempt to terminate a thread-local capture sequence "
                                                   "from another thread",
    cudaError_t.cudaErrorTimeout: "wait operation timed out",
    cudaError_t.cudaErrorGraphExecUpdateFailure: "the graph update was not performed because it included "
                                                 "changes which violated constraints specific to "
                                                 "instantiated graph update",
    cudaError_t.cudaErrorUnknown: "unknown error",
}

# Errors that corrupt the context in CUDA: every later call returns them until cudaDeviceReset.
STICKY = frozenset({cudaError_t.cudaErrorIllegalAddress, cudaError_t.cudaErrorLaunchFailure,
                    cudaError_t.cudaErrorLaunchTimeout, cudaError_t.cudaErrorAssert,
                    cudaError_t.cudaErrorIllegalInstruction, cudaError_t.cudaErrorMisalignedAddress})

# Status codes that report a state, not a failure: they never become the thread's last error.
_NOT_ERRORS = frozenset({cudaError_t.cudaSuccess, cudaError_t.cudaErrorNotReady})


def error_string(code: cudaError_t) -> str:
    """CUDA's description of ``code`` (``cudaGetErrorString``)."""
    return _STRINGS.get(code, "unrecognized error code")


class CudaError(Exception):
    """A facade call failed with ``code``; ``detail`` says why in words.

    Raised inside the facade and turned into a status tuple by :func:`api`;
    the Pythonic layer (:mod:`streamq.cuda_facade`) lets it propagate.
    ``__cause__`` holds the Python exception behind a failed kernel or host
    function, traceback included.
    """

    def __init__(self, code: cudaError_t, detail: str = ""):
        self.code = cudaError_t(code)
        self.detail = detail
        text = f"{self.code.name}: {error_string(self.code)}"
        super().__init__(f"{text} ({detail})" if detail else text)


_thread = threading.local()


def record_error(code: cudaError_t, detail: str = "") -> None:
    """Make ``code`` the calling thread's last error (NotReady and success are not errors)."""
    if code not in _NOT_ERRORS:
        _thread.last = code
        _thread.detail = detail


def last_error_detail() -> str:
    """Why the calling thread's most recent failed call failed, in words ("" if unknown).

    Not a CUDA API: the facade's help for debugging, since CUDA's codes are terse.
    """
    return getattr(_thread, "detail", "")


def last_error() -> cudaError_t:
    """The calling thread's last error, reset to success (``cudaGetLastError``)."""
    code = getattr(_thread, "last", cudaError_t.cudaSuccess)
    _thread.last = cudaError_t.cudaSuccess
    return code


def peek_last_error() -> cudaError_t:
    """The calling thread's last error, not reset (``cudaPeekAtLastError``)."""
    return getattr(_thread, "last", cudaError_t.cudaSuccess)


def api(nresults: int = 0):
    """Decorate a facade function that returns its results (a value, or a tuple
    if ``nresults > 1``) or raises :class:`CudaError`; the wrapper returns
    ``(cudaError_t, *results)`` with ``None`` for each result on failure.

    Python errors from argument conversion (TypeError, ValueError, OverflowError)
    become ``cudaErrorInvalidValue``, as CUDA reports an invalid argument.
    """
    failed = (None,) * nresults

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                value = fn(*args, **kwargs)
            except CudaError as err:
                record_error(err.code, err.detail)
                return (err.code, *failed)
            except (TypeError, ValueError, OverflowError) as err:
                record_error(cudaError_t.cudaErrorInvalidValue, f"{type(err).__name__}: {err}")
                return (cudaError_t.cudaErrorInvalidValue, *failed)
            if nresults == 0:
                return (cudaError_t.cudaSuccess,)
            if nresults == 1:
                return (cudaError_t.cudaSuccess, value)
            return (cudaError_t.cudaSuccess, *value)
        call.__wrapped_impl__ = fn
        return call
    return wrap
