"""Shared fixtures for the run-time fusion tests.

Fused kernels compile in ~1-2 s each the first time; they are cached on disk
under ``STREAMQ_CACHE_DIR`` (the user's cache by default), so the suite
reuses kernels across runs. Tests that need a fresh cache use their own
``tmp_path``.
"""

import pytest

import streamq
from streamq import fusion


@pytest.fixture
def auto_fusion():
    """Fusion on in automatic mode for the test, off afterwards."""
    fusion.enable()
    yield
    fusion.disable()


@pytest.fixture
def queue():
    """A fresh serial queue, shut down after the test."""
    q = streamq.Queue("fusion-test")
    yield q
    q.shutdown(wait=True)
