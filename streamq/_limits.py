"""Keeping BLAS, OpenMP and numba thread counts inside each CMG.

The facts this design follows:
- OpenMP's thread limit (``omp_set_num_threads``) is per calling thread, so each
  worker sets its own to its CMG's core count.
- The OpenBLAS that numpy wheels ship is a pthreads build: one thread count and
  one thread pool for the whole process. No per-CMG limit is possible, so when
  the first queue starts, streamq lowers that process-wide count to the size of
  the smallest CMG (never raises it): no single BLAS call then spreads beyond a
  CMG's worth of cores. Its helper threads are not pinned (the wheels are built
  without CPU affinity), so on a multi-CMG machine they may run on any CMG.
- numba's ``set_num_threads`` is thread-local. Each worker holds numba to its
  share of its CMG: the CMG's cores divided by the workers active in it when the
  worker picks up work, so nested parallel kernels on a busy CMG don't multiply
  the thread count.
"""

from __future__ import annotations

import logging
import os

# numba's "omp" threading layer runs on libgomp, which on small VMs throttles its idle spin
# to ~1000 iterations: every parallel kernel launch then waits for futex wake-ups of its
# threads (0.7 ms per launch measured on a 2-core VM, against 2-3 us with a bounded spin).
# Setting GOMP_SPINCOUNT explicitly lifts the throttle; 30000 spins (tens of us) keeps
# back-to-back launches cheap without busy-waiting forever as OMP_WAIT_POLICY=active would.
# libgomp reads it when it is first loaded (numba's first parallel call), so it is set when
# streamq is imported; a value already in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

_logger = logging.getLogger("streamq")
_process_blas_threads: int | None = None


def configure_process(cmgs) -> None:
    """Cap process-wide BLAS pools at the smallest CMG's core count."""
    global _process_blas_threads
    smallest = min(c.ncores for c in cmgs)
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        current = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
        if current and max(current) > smallest:
            threadpool_limits(limits=smallest, user_api="blas")
    except Exception as exc:  # threadpoolctl failing must not stop the runtime
        _logger.warning("streamq: could not limit BLAS threads: %s", exc)
        return
    _process_blas_threads = smallest


def configure_worker_thread(cmg) -> None:
    """In a new worker: OpenMP's per-thread limit to the CMG's core count."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        if any(info["user_api"] == "openmp" for info in threadpool_info()):
            threadpool_limits(limits=cmg.ncores, user_api="openmp")
    except Exception as exc:
        _logger.warning("streamq: could not limit OpenMP threads: %s", exc)


def set_numba_threads(n: int) -> None:
    """numba.set_num_threads(n) for the calling thread, clamped to numba's pool size."""
    try:
        import numba
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except Exception as exc:
        _logger.warning("streamq: could not set numba threads: %s", exc)


def blas_thread_limit() -> int | None:
    """The process-wide BLAS thread cap streamq applied, or None if it applied none."""
    return _process_blas_threads
