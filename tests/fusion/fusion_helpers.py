"""Helpers shared by the fusion tests (imported by name; pytest puts this folder on sys.path)."""

import numpy as np

from streamq import fusion, kernels


def run_unfused(calls):
    """Run (op, args, kwargs) calls one by one with the registry's kernels (the oracle)."""
    with np.errstate(all="ignore"):      # inf * 0 and friends are part of the tests
        for op, args, kwargs in calls:
            kernels.get(op)(*args, **kwargs)


def run_window(queue, calls, window=None):
    """Offer every call to a window, flush, wait; returns (offer results, flushed tasks)."""
    window = window or fusion.FusionWindow(queue)
    taken = [window.offer(op, args, kwargs) for op, args, kwargs in calls]
    tasks = window.flush()
    assert queue.synchronize(timeout=120)
    for t in tasks:
        t.result(timeout=0)          # re-raise any failure of a fused or unfused task
    return taken, tasks


def assert_same_bits(actual, expected):
    """Equal arrays, bit for bit (any NaN matches any NaN; -0.0 differs from 0.0)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = np.asarray(actual), np.asarray(expected)
    nan = np.isnan(a) & np.isnan(e)
    ia = a.view(np.uint32 if a.dtype == np.float32 else np.uint64)
    ie = e.view(np.uint32 if e.dtype == np.float32 else np.uint64)
    bad = ~nan & (ia != ie)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        detail = ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} != {e[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{int(bad.sum())} elements differ: {detail}")
