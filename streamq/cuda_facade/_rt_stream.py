"""Stream management: create/destroy, synchronize, query, host functions and callbacks.

Host functions (cudaLaunchHostFunc) and stream callbacks (cudaStreamAddCallback)
may be plain Python callables — called as ``fn(userData)`` and
``callback(stream, status, userData)`` — or C function pointers as cuda-python
passes them (``cudaHostFn_t`` / ``cudaStreamCallback_t`` wrapping a ctypes
``CFUNCTYPE`` callback, or a ctypes function object), called through ctypes
with ``userData`` as a ``void*`` (None, an int, or an object with the buffer
protocol, as cuda-python accepts).
"""

from __future__ import annotations

import ctypes
import operator
import time
import types

import numpy as np

from streamq import trace

from . import _context, _graphs
from ._errors import CudaError, api, cudaError_t
from ._rt_types import _FunctionPointer, cudaStream_t

__all__ = ["cudaStreamCreate", "cudaStreamCreateWithFlags", "cudaStreamCreateWithPriority", "cudaStreamDestroy",
           "cudaStreamSynchronize", "cudaStreamQuery", "cudaStreamAddCallback", "cudaLaunchHostFunc",
           "cudaStreamGetFlags", "cudaStreamGetPriority", "cudaStreamGetDevice", "cudaStreamGetId"]

_HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_STREAM_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_SUCCESS = cudaError_t.cudaSuccess
_PLAIN_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType)


def _create(flags, priority) -> cudaStream_t:
    flags = operator.index(flags)
    if flags not in (0, _context.FLAG_NON_BLOCKING):
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags: unknown stream flags {flags:#x}")
    priority = operator.index(priority)
    priority = min(max(priority, _context.PRIORITY_GREATEST), _context.PRIORITY_LEAST)
    device = _context.current_device()
    device.check()
    stream = _context.Stream(device, flags=flags, priority=priority)
    return cudaStream_t(stream.handle)


@api(1)
def cudaStreamCreate():
    """A new blocking stream on the current device (it synchronizes with the legacy stream)."""
    return _create(0, 0)


@api(1)
def cudaStreamCreateWithFlags(flags):
    """A new stream; ``flags``: cudaStreamDefault (blocking) or cudaStreamNonBlocking."""
    return _create(flags, 0)


@api(1)
def cudaStreamCreateWithPriority(flags, priority):
    """A new stream with ``priority`` clamped to cudaDeviceGetStreamPriorityRange (lower is higher)."""
    return _create(flags, priority)


def _handle_value(stream) -> int:
    if stream is None:
        return 0
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, f"not a stream handle: {stream!r}") from None


@api()
def cudaStreamDestroy(stream):
    """Destroy ``stream``: it takes no more work; work already submitted still completes.
    The default streams (0, cudaStreamLegacy, cudaStreamPerThread) cannot be destroyed."""
    if not isinstance(stream, _context.Stream) and _handle_value(stream) in (
            0, _context.STREAM_LEGACY, _context.STREAM_PER_THREAD):
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, "the default streams cannot be destroyed")
    s = _context.resolve_stream(stream)
    if s.legacy:
        raise CudaError(cudaError_t.cudaErrorInvalidResourceHandle, "the legacy stream cannot be destroyed")
    if s.capture is not None:
        s.capture.leave(s)
    _context.forget_stream(s)


@api()
def cudaStreamSynchronize(stream):
    """Block until every op submitted to ``stream`` has finished; returns the device's
    sticky error if an op failed. cudaErrorNotPermitted from inside stream work;
    cudaErrorStreamCaptureUnsupported on a capturing stream (the capture is invalidated)."""
    s = _context.resolve_stream(stream)
    _context.check_host_sync("cudaStreamSynchronize")
    if s.capture is not None or (s.legacy and s.device.captures):
        _graphs.refuse_capturing_stream(s, "cudaStreamSynchronize")
    if trace._sink is None:
        s.synchronize()
    elif not s.query():                # (a host_sync record only when it waits)
        start = time.perf_counter_ns()
        s.synchronize()
        trace.emit({"type": "host_sync", "what": "cudaStreamSynchronize", "stream": s.handle,
                    "device": s.device.index, "start_ns": start, "end_ns": time.perf_counter_ns()})
    if s.device.sticky is not None:    # s.device.check(), inlined
        raise s.device.sticky


@api()
def cudaStreamQuery(stream):
    """cudaSuccess if every op of ``stream`` has finished, cudaErrorNotReady otherwise (never blocks)."""
    s = _context.resolve_stream(stream)
    if s.capture is not None or (s.legacy and s.device.captures):
        _graphs.refuse_capturing_stream(s, "cudaStreamQuery")
    s.device.check()
    if not s.query():
        raise CudaError(cudaError_t.cudaErrorNotReady)


@api(1)
def cudaStreamGetFlags(hStream):  # noqa: N803 - cuda-python's parameter name
    """The flags the stream was created with (0 for the default streams)."""
    return _context.resolve_stream(hStream).flags


@api(1)
def cudaStreamGetPriority(hStream):  # noqa: N803
    """The stream's priority, as clamped at creation."""
    return _context.resolve_stream(hStream).priority


@api(1)
def cudaStreamGetDevice(hStream):  # noqa: N803
    """The device (CMG index) the stream belongs to."""
    return _context.resolve_stream(hStream).device.index


@api(1)
def cudaStreamGetId(hStream):  # noqa: N803
    """An id unique to the stream for the life of the process."""
    return _context.resolve_stream(hStream).queue.id


# -- host functions and callbacks ----------------------------------------------------------
def _void_ptr(user_data):
    """``(c_void_p value, keep-alive)`` for userData passed to a C function, as cuda-python
    converts it: None -> NULL, an int -> that address, a buffer -> its address."""
    if user_data is None:
        return None, None
    try:
        return operator.index(user_data), None
    except TypeError:
        pass
    try:
        view = np.frombuffer(memoryview(user_data).cast("B"), np.uint8)
    except (TypeError, ValueError):
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        f"userData must be None, an int or a buffer for a C function, got "
                        f"{type(user_data).__name__}") from None
    return (view.ctypes.data if view.size else None), user_data


def _c_address(fn) -> int | None:
    """The C address behind a function-pointer wrapper or ctypes function, else None."""
    if isinstance(fn, ctypes._CFuncPtr):  # noqa: SLF001 - ctypes' public-in-practice base class
        return ctypes.cast(fn, ctypes.c_void_p).value or 0
    if isinstance(fn, _FunctionPointer):
        return None if fn.pyfunc is not None else int(fn)
    if hasattr(fn, "getPtr") and hasattr(fn, "__int__") and not callable(fn):
        return int(fn)  # cuda-python's own cudaHostFn_t / cudaStreamCallback_t
    return None


def _python_callable(fn):
    if isinstance(fn, _FunctionPointer):
        return fn.pyfunc
    return fn if callable(fn) else None


def _qualname(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__


class _CHostCall:
    """Calls a C host function ``void fn(void*)`` with userData (kept alive until it runs)."""

    __slots__ = ("cfn", "arg", "keep")

    def __init__(self, address: int, user_data):
        self.cfn = _HOST_FN(address)
        self.arg, self.keep = _void_ptr(user_data)

    def __call__(self):
        self.cfn(self.arg)


@api()
def cudaLaunchHostFunc(stream, fn, userData):  # noqa: N803 - CUDA's parameter name
    """Run ``fn(userData)`` on a worker once the stream's earlier work is done; later work
    waits for it. Skipped once the device has failed (unlike stream callbacks). Allowed
    during capture. An exception in ``fn`` is a device fault (sticky cudaErrorLaunchFailure)."""
    s = _context.resolve_stream(stream)
    if type(fn) in _PLAIN_CALLABLES:
        s.launch(fn, (userData,), name=fn.__qualname__, kind="host")
        return
    address = _c_address(fn)
    if address is not None:
        if not address:
            raise CudaError(cudaError_t.cudaErrorInvalidValue, "fn: NULL function pointer")
        s.launch(_CHostCall(address, userData), name=f"cudaHostFn_t@{address:#x}", kind="host")
        return
    call = _python_callable(fn)
    if call is None:
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        f"fn must be a callable or a cudaHostFn_t, got {type(fn).__name__}")
    s.launch(call, (userData,), name=_qualname(call), kind="host")


class _Callback:
    """A stream callback: ``callback(stream, status, userData)``, also run after a device fault."""

    __slots__ = ("device", "call", "cfn", "handle", "arg", "keep", "name")

    def __init__(self, device, callback, handle: int, user_data):
        self.device = device
        self.handle = handle
        address = _c_address(callback)
        if address is not None:
            if not address:
                raise CudaError(cudaError_t.cudaErrorInvalidValue, "callback: NULL function pointer")
            self.cfn = _STREAM_CALLBACK(address)
            self.call = None
            self.arg, self.keep = _void_ptr(user_data)
            self.name = f"cudaStreamCallback_t@{address:#x}"
        else:
            self.call = _python_callable(callback)
            if self.call is None:
                raise CudaError(cudaError_t.cudaErrorInvalidValue,
                                f"callback must be a callable or a cudaStreamCallback_t, got "
                                f"{type(callback).__name__}")
            self.cfn = None
            self.arg, self.keep = user_data, None
            self.name = _qualname(self.call)

    def _run(self, status: cudaError_t) -> None:
        if self.call is not None:
            self.call(cudaStream_t(self.handle), status, self.arg)
        else:
            self.cfn(self.handle or None, int(status), self.arg)

    def __call__(self):
        self._run(_SUCCESS)

    def on_error(self, err: CudaError) -> None:
        """Run with the device's error status (CUDA: callbacks still run after a device error)."""
        try:
            self._run(err.code)
        except BaseException as exc:  # noqa: BLE001 - already failed: record, do not propagate
            self.device.poison(exc, self.name)


@api()
def cudaStreamAddCallback(stream, callback, userData, flags=0):  # noqa: N803
    """Run ``callback(stream, status, userData)`` once the stream's earlier work is done,
    exactly once, with cudaSuccess or the device's error status. ``flags`` must be 0.
    Not supported during stream capture (cudaErrorStreamCaptureUnsupported)."""
    if operator.index(flags) != 0:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags must be 0, got {flags!r}")
    s = _context.resolve_stream(stream)
    if callback is None:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, "callback: NULL")
    cb = _Callback(s.device, callback, s.handle, userData)
    s.launch(cb, name=cb.name, kind="host", on_error=cb.on_error)
