"""Helpers shared by the facade tests: result unwrapping, gates that hold a stream,
host <-> device copies and the cuBLAS/cuDNN handle fixture.

(A module with a unique name, like tests/fusion/fusion_helpers.py: the test folders
have no __init__.py, so pytest imports it from this folder by that name.)
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamq.cuda_facade import _context
from streamq.cuda_facade import runtime as rt

WAIT = 10.0  # seconds any gate or completion may take before a test fails
H2D = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
D2H = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost


def ok(result):
    """Assert a runtime call succeeded; return its results (one value, a tuple, or None)."""
    assert result[0] == rt.cudaError_t.cudaSuccess, result
    return result[1] if len(result) == 2 else (result[1:] or None)


def library_ok(last_status_detail):
    """An ``ok`` for a cuBLAS/cuDNN module: asserts status 0 (SUCCESS), showing
    ``last_status_detail()`` on failure; returns one value or a tuple."""
    def ok(result):
        """Assert a call succeeded; return its results (one value or a tuple)."""
        assert result[0] == 0, (result, last_status_detail())
        return result[1] if len(result) == 2 else result[1:]
    return ok


def reset_failed_device() -> None:
    """Reset the current device if a failed op left it with a sticky error."""
    if _context.current_device().sticky is not None:
        rt.cudaDeviceReset()


class Gate:
    """A host function that blocks its stream until released (always released at the end)."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, _data=None):
        self.started.set()
        assert self.release.wait(WAIT), "gate never released"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release.set()


class StreamGate:
    """A host function, launched on ``stream`` at once, that holds it until ``release`` is set."""

    def __init__(self, stream):
        self.release = threading.Event()
        ok(rt.cudaLaunchHostFunc(stream, lambda _: self.release.wait(WAIT), None))

    def open_after(self, seconds: float) -> threading.Thread:
        """Release the stream from another thread ``seconds`` from now."""
        t = threading.Thread(target=lambda: (time.sleep(seconds), self.release.set()))
        t.start()
        return t


def upload(array: np.ndarray, order: str = "C") -> int:
    """Device memory holding ``array``'s bytes in ``order`` ("C", or "F": column-major)."""
    data = np.asarray(array, order=order)
    ptr = ok(rt.cudaMalloc(max(data.nbytes, 1)))
    ok(rt.cudaMemcpy(ptr, data.reshape(-1, order=order), data.nbytes, H2D))
    return ptr


def download(ptr: int, shape, dtype, order: str = "C") -> np.ndarray:
    """The ``shape`` array of ``dtype`` stored at ``ptr`` in ``order`` (synchronizes the
    device first)."""
    ok(rt.cudaDeviceSynchronize())
    out = np.empty(int(np.prod(shape)), dtype)
    ok(rt.cudaMemcpy(out, ptr, out.nbytes, D2H))
    return out.reshape(shape, order=order)


def fresh_stream(synchronize: bool = True):
    """The body of a ``stream`` fixture: yields a new stream, then (synchronizes and)
    destroys it."""
    s = ok(rt.cudaStreamCreate())
    yield s
    if synchronize:
        rt.cudaStreamSynchronize(s)
    rt.cudaStreamDestroy(s)


def handle_fixture(create, destroy, lib_ok):
    """A ``handle`` fixture: a library handle from ``create()``, destroyed after the test
    unless the test destroyed it."""
    @pytest.fixture
    def handle():
        h = lib_ok(create())
        yield h
        if not h.destroyed:
            lib_ok(destroy(h))
    return handle
