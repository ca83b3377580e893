"""Fixtures shared by the facade tests (helpers: facade_helpers.py)."""

import pytest
from facade_helpers import fresh_stream, reset_failed_device

from streamq.cuda_facade import runtime as rt


@pytest.fixture
def clean_device():
    """After a runtime test: reset a device a failed op left failed; clear the last error."""
    yield
    reset_failed_device()
    rt.cudaGetLastError()


@pytest.fixture
def clean_library_device():
    """After a cuBLAS/cuDNN test: reset a failed device; let the device's work finish."""
    yield
    reset_failed_device()
    rt.cudaDeviceSynchronize()


@pytest.fixture
def stream():
    """A fresh stream, synchronized and destroyed after the test."""
    yield from fresh_stream()
