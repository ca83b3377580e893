"""Machinery shared by the cuBLAS and cuDNN facades (private).

Both libraries follow one pattern, parameterised by a :class:`Library` that
knows the library's status codes:

- every public function returns ``(status, *results)``; internally it raises
  :class:`LibraryError` and :meth:`Library.api` turns that into the tuple and
  remembers the reason in words for the calling thread
  (:meth:`Library.last_status_detail`);
- a :class:`LibraryHandle` is bound to the device current when it is created
  and to a stream (the default stream until ``...SetStream``);
- pointers are checked against the facade's allocation table and turned into
  numpy views *before* anything is enqueued (:meth:`Library.view`); an unknown,
  freed, misaligned or too short range is the library's "bad argument" status;
- every operation enters the handle's stream through :meth:`Library.launch`
  (``Stream.launch``), whose failure to launch (destroyed stream, device
  already failed) is the library's "execution failed" status.
"""

from __future__ import annotations

import functools
import operator
import threading
import time

import numpy as np

import streamq
from streamq import trace

from . import _context, _memory
from ._errors import CudaError, cudaError_t

__all__ = ["LibraryError", "Library", "LibraryHandle", "value_of"]


class LibraryError(Exception):
    """A cuBLAS/cuDNN facade call failed with ``status``; ``detail`` says why."""

    def __init__(self, status, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(f"{status.name}: {detail}")


def value_of(scalar) -> float:
    """The value of a scalar argument prepared by :meth:`Library.scalar`: a float,
    or a one-element view of facade memory read now (device pointer mode)."""
    return scalar if isinstance(scalar, float) else float(scalar[0])


class Library:
    """The status conventions of one library and the helpers that raise them.

    ``bad_value``: wrong argument (CUBLAS_STATUS_INVALID_VALUE /
    CUDNN_STATUS_BAD_PARAM); ``exec_failed``: the work could not be launched;
    ``not_supported``: valid but not implemented; ``bad_handle``: a NULL or
    destroyed handle; ``mapping_error``: a stream of another device (None: ``bad_value``).
    """

    def __init__(self, name: str, *, success, bad_value, exec_failed, not_supported, bad_handle,
                 mapping_error=None):
        self.name = name
        self.success = success
        self.bad_value = bad_value
        self.exec_failed = exec_failed
        self.not_supported = not_supported
        self.bad_handle = bad_handle
        self.mapping_error = mapping_error
        self._local = threading.local()

    # -- status tuples ---------------------------------------------------------------------
    def api(self, nresults: int = 0):
        """Decorate a function returning its results (a tuple if ``nresults > 1``)
        or raising LibraryError; the wrapper returns ``(status, *results)``."""
        failed = (None,) * nresults

        def wrap(fn):
            @functools.wraps(fn)
            def call(*args, **kwargs):
                try:
                    value = fn(*args, **kwargs)
                except LibraryError as err:
                    return self._failed(fn, err.status, err.detail, failed)
                except CudaError as err:   # a runtime check not converted by a helper
                    status = self.bad_value if err.code == cudaError_t.cudaErrorInvalidValue \
                        else self.exec_failed
                    return self._failed(fn, status, str(err), failed)
                except (TypeError, ValueError, OverflowError) as err:
                    return self._failed(fn, self.bad_value, f"{type(err).__name__}: {err}", failed)
                if nresults == 0:
                    return (self.success,)
                if nresults == 1:
                    return (self.success, value)
                return (self.success, *value)
            return call
        return wrap

    def _failed(self, fn, status, detail: str, failed: tuple) -> tuple:
        self._local.detail = f"{fn.__name__}: {detail}"
        return (status, *failed)

    def last_status_detail(self) -> str:
        """Why the calling thread's most recent failed call of this library failed ("" if none)."""
        return getattr(self._local, "detail", "")

    # -- raising -----------------------------------------------------------------------------
    def bad(self, detail: str) -> LibraryError:
        """The error for a wrong argument."""
        return LibraryError(self.bad_value, detail)

    def unsupported(self, detail: str) -> LibraryError:
        """The error for a valid request the facade does not implement."""
        return LibraryError(self.not_supported, detail)

    # -- arguments ---------------------------------------------------------------------------
    def integer(self, value, what: str, minimum: int | None = None) -> int:
        """``value`` as a Python int (bools and floats refused), at least ``minimum``."""
        if type(value) is not int:
            if isinstance(value, (bool, np.bool_)):
                raise self.bad(f"{what} must be an integer, got {value!r}")
            try:
                value = operator.index(value)
            except TypeError:
                raise self.bad(f"{what} must be an integer, got {type(value).__name__}") from None
        if minimum is not None and value < minimum:
            raise self.bad(f"{what} must be >= {minimum}, got {value}")
        return value

    def real(self, value, what: str) -> float:
        """A real number passed by value (a C double), as a Python float."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)):
            raise self.bad(f"{what} must be a real number, got {value!r}")
        return float(value)

    def enum(self, enum_type, value, what: str, allowed=None):
        """``value`` as a member of ``enum_type`` (an IntEnum), optionally among ``allowed``."""
        if isinstance(value, (bool, np.bool_)):
            raise self.bad(f"{what} must be a {enum_type.__name__} value, got {value!r}")
        try:
            member = enum_type(operator.index(value))
        except (TypeError, ValueError):
            raise self.bad(f"{what} must be a {enum_type.__name__} value, got {value!r}") from None
        if allowed is not None and member not in allowed:
            raise self.bad(f"{what} must be one of {[m.name for m in allowed]}, got {member.name}")
        return member

    def address(self, ptr, what: str) -> int:
        """The address a pointer argument holds: an int, a numpy array's data pointer,
        or anything ``int()`` accepts (cuda-python pointer objects). NULL raises."""
        if type(ptr) is int:
            value = ptr
        elif ptr is None:
            raise self.bad(f"{what} is NULL")
        elif isinstance(ptr, np.ndarray):
            value = ptr.__array_interface__["data"][0]
        elif isinstance(ptr, (bool, np.bool_, float)):
            raise self.bad(f"{what} must be a pointer, got {ptr!r}")
        else:
            try:
                value = int(ptr)
            except (TypeError, ValueError):
                raise self.bad(f"{what} must be a pointer, got {type(ptr).__name__}") from None
        if value == 0:
            raise self.bad(f"{what} is NULL")
        return value

    def view(self, ptr, dtype, shape, strides=None, *, what: str) -> np.ndarray:
        """A numpy view of facade memory at ``ptr`` (``strides`` in elements), every
        element it reaches checked to lie in one live allocation."""
        address = self.address(ptr, what)
        dtype = np.dtype(dtype)
        if strides is not None:
            strides = [s * dtype.itemsize for s in strides]
        try:
            return _memory.typed_view(address, dtype, shape, strides, what=what)
        except CudaError as err:
            raise self.bad(err.detail) from None

    def flat(self, ptr, dtype, count: int, *, what: str) -> np.ndarray:
        """A 1-D view of ``count`` elements at ``ptr`` (an empty array when ``count`` is 0)."""
        if count <= 0:
            return np.empty(0, dtype)
        return self.view(ptr, dtype, (count,), what=what)

    def host_scalar(self, value, dtype, what: str) -> float:
        """A scalar argument passed by host reference, read now and rounded to ``dtype``.

        Accepts a real number, a numpy array of ``dtype`` (its first element), or
        the address of facade pinned-host or managed memory holding one ``dtype``.
        """
        dtype = np.dtype(dtype)
        kind = type(value)
        if kind is float:
            return float(dtype.type(value))
        if isinstance(value, (bool, np.bool_)) or value is None:
            raise self.bad(f"{what} must be a number or a host pointer, got {value!r}")
        if isinstance(value, np.ndarray):
            return self._from_array(value, dtype, what)
        if isinstance(value, (int, np.integer)):
            found = _memory.table.find(int(value))
            if found is None:
                return float(dtype.type(value))     # a number, not an address
            alloc, _ = found
            if alloc.memory == "device":
                raise self.bad(f"{what} points to device memory; a host pointer is needed "
                               f"here (pointer mode host)")
            view = self.view(int(value), dtype, (1,), what=what)
            trace.emit({"type": "host_read", "buffer": alloc.base, "offset": int(value) - alloc.base,
                        "bytes": dtype.itemsize})
            return float(view[0])
        if isinstance(value, np.floating):
            return float(dtype.type(value))
        raise self.bad(f"{what} must be a number or a host pointer, got {type(value).__name__}")

    def _from_array(self, array: np.ndarray, dtype: np.dtype, what: str) -> float:
        if array.dtype != dtype:
            raise self.bad(f"{what} is a {array.dtype} array but this call reads a {dtype} "
                           f"through it")
        if array.size < 1:
            raise self.bad(f"{what} is an empty array")
        return float(array.reshape(-1)[0])

    def device_scalar(self, ptr, dtype, what: str) -> np.ndarray:
        """A one-element view of the facade memory ``ptr`` points to (read when the op runs)."""
        if isinstance(ptr, np.ndarray) and _memory.table.find(ptr.__array_interface__["data"][0]) is None:
            raise self.bad(f"{what} must point to facade memory in device pointer mode, "
                           f"got a host numpy array")
        if isinstance(ptr, float):
            raise self.bad(f"{what} must be a device pointer in device pointer mode, got {ptr!r}")
        return self.view(ptr, dtype, (1,), what=what)

    # -- running -----------------------------------------------------------------------------
    def launch(self, stream, fn, args, *, name: str, reads=(), writes=()):
        """Enqueue ``fn(*args)`` on ``stream``; the core Task (None while capturing).

        ``reads``/``writes`` (views) become the op's BufferRefs when something records
        them: the queue log, or a capture (graph nodes keep them)."""
        if trace.enabled() or stream.capture is not None:
            reads = [_memory.BufferRef.of(a) for a in reads if a.size]
            writes = [_memory.BufferRef.of(a) for a in writes if a.size]
        else:
            reads = writes = ()
        try:
            return stream.launch(fn, args, name=name, kind="kernel", reads=reads, writes=writes)
        except CudaError as err:
            raise LibraryError(self.exec_failed, f"cannot launch {name} on {stream.label}: {err}") \
                from None

    def check_may_block(self, what: str) -> None:
        """Refuse a blocking call made from work running on a facade stream (a host
        function): it would wait for its own stream. CUDA forbids such calls."""
        queue = streamq.current_queue()
        if queue is None:
            return
        for dev in list(_context._devices):
            if any(s.queue is queue for s in list(dev.streams)):
                raise self.unsupported(f"{what} blocks the host; it cannot be called from work "
                                       f"running on a stream")

    def wait(self, stream, task, *, what: str) -> None:
        """Block until ``task`` has run (a blocking call); raise if the op failed."""
        start = time.perf_counter_ns()
        task.result()
        trace.emit({"type": "host_sync", "what": what, "queue": stream.queue.id, "event": None,
                    "start_ns": start, "end_ns": time.perf_counter_ns()})
        sticky = stream.device.sticky
        if sticky is not None:
            raise LibraryError(self.exec_failed, f"{what} failed: {sticky}")


class LibraryHandle:
    """A library context: the device current at creation and the stream its work goes to."""

    def __init__(self, library: Library, kind: str):
        self.library = library
        self.kind = kind
        self.device = _context.current_device()
        self.stream_spec = 0          # what SetStream was given
        self.stream_value = 0         # its handle value (GetStream returns it)
        self._stream = None           # the Stream object for an explicit stream
        self.destroyed = False

    def __repr__(self) -> str:
        state = " destroyed" if self.destroyed else ""
        return f"<{self.kind} device={self.device.index} stream={self.stream_spec!r}{state}>"

    def set_stream(self, spec) -> None:
        """Bind the handle to a stream handle (0/None: the default stream)."""
        try:
            stream = _context.resolve_stream(spec)
        except CudaError as err:
            raise self.library.bad(f"streamId: {err.detail}") from None
        if stream.device is not self.device:
            raise LibraryError(self.library.bad_value if self.library.mapping_error is None
                               else self.library.mapping_error,
                               f"stream {stream.label} belongs to device {stream.device.index}, "
                               f"the handle to device {self.device.index}")
        special = spec is None or (not isinstance(spec, _context.Stream) and _is_special(spec))
        self._stream = None if special else stream
        self.stream_spec = 0 if spec is None else spec
        self.stream_value = int(self.stream_spec) if special else stream.handle

    def stream(self) -> "_context.Stream":
        """The Stream the next operation goes to (resolved per call for 0 and per-thread)."""
        stream = self._stream
        if stream is not None:
            if stream.destroyed:
                raise LibraryError(self.library.exec_failed,
                                   f"the handle's stream {stream.label} was destroyed")
            return stream
        spec = self.stream_spec
        stream = _context.resolve_stream(spec)
        if stream.device is not self.device:   # called from a thread whose current device differs
            return self.device.per_thread() if _is_per_thread(spec) else self.device.legacy
        return stream


def _is_special(spec) -> bool:
    try:
        return int(spec) in (0, _context.STREAM_LEGACY, _context.STREAM_PER_THREAD)
    except (TypeError, ValueError):
        return False


def _is_per_thread(spec) -> bool:
    try:
        return int(spec) == _context.STREAM_PER_THREAD
    except (TypeError, ValueError):
        return False
