"""A small GEMM entry point with BLAS's full contract, for the convolution kernels.

numpy's ``matmul`` always overwrites its output and needs a temporary for
``C = alpha*A@B + beta*C``. The convolution paths want the full BLAS contract:
accumulate into a strided block of the output (``ldc`` larger than the row),
scale by alpha, blend with beta, without temporaries. :func:`gemm` calls
``cblas_sgemm``/``cblas_dgemm`` of the OpenBLAS that numpy itself is linked
against (same library, same thread pool, found through threadpoolctl), and
falls back to ``numpy.matmul`` plus an explicit blend when that library cannot
be found or fails its self-test. Both routes give the same results up to
floating-point rounding.

Only float32 and float64 are supported; callers convert float16 themselves.

The module also runs the convolution engine's work items in parallel
(:func:`parallel_for`): one item per thread at a time, each item doing its own
lowering and single-threaded GEMMs, so lowering and GEMM of different images
overlap and no BLAS thread pool spins between short calls. While such a loop
runs, the OpenBLAS thread count is held at 1 (:func:`serial_blas`) and restored
afterwards; the loop uses as many threads as OpenBLAS had (the count streamq's
runtime caps per CMG), so it never spreads wider than a BLAS call would.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

_lock = threading.Lock()
_funcs: dict | None = None  # dtype -> ctypes function, or {} when unavailable
_threads_api: tuple | None = None  # (get, set) of OpenBLAS's thread count, or ()

#: Threads for :func:`parallel_for`; None: as many as OpenBLAS uses. Tests set it
#: to exercise the parallel engine on any machine.
THREADS: int | None = None


def _find_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries numpy is linked with (numpy's own first)."""
    try:
        from threadpoolctl import threadpool_info
        infos = threadpool_info()
    except Exception:  # pragma: no cover - threadpoolctl broken or absent
        return []
    paths = [i["filepath"] for i in infos if i.get("internal_api") == "openblas"]
    return sorted(paths, key=lambda p: "numpy" not in p)


def _bind_threads(lib) -> tuple:
    """(get, set) of the library's process-wide thread count, or () if absent."""
    for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
        try:
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}")
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}")
        except AttributeError:
            continue
        get.restype, get.argtypes = ctypes.c_int, []
        put.restype, put.argtypes = None, [ctypes.c_int]
        return get, put
    return ()


def _bind(path: str) -> dict:
    """Bind cblas_?gemm from one library; ILP64 (``*64_``) symbols preferred."""
    lib = ctypes.CDLL(path)
    candidates = [("scipy_cblas_{}gemm64_", ctypes.c_int64),
                  ("cblas_{}gemm64_", ctypes.c_int64)]
    if "64" not in path.rsplit("/", 1)[-1]:
        candidates.append(("cblas_{}gemm", ctypes.c_int32))
    for pattern, blasint in candidates:
        try:
            fs = {np.dtype(np.float32): getattr(lib, pattern.format("s")),
                  np.dtype(np.float64): getattr(lib, pattern.format("d"))}
        except AttributeError:
            continue
        for dt, f in fs.items():
            scalar = ctypes.c_float if dt == np.float32 else ctypes.c_double
            f.restype = None
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          blasint, blasint, blasint, scalar, ctypes.c_void_p, blasint,
                          ctypes.c_void_p, blasint, scalar, ctypes.c_void_p, blasint]
        return fs
    return {}


def _self_test(fs: dict) -> bool:
    """Check a bound GEMM on a tiny strided problem against numpy."""
    rng = np.random.default_rng(0)
    for dt in fs:
        a = rng.standard_normal((3, 5)).astype(dt)
        b = rng.standard_normal((4, 7)).astype(dt)[:, 1:6].T  # strided, transposed
        c = np.full((3, 9), np.nan, dtype=dt)
        _call(fs[dt], a, b, c[:, 2:6], 2.0, 0.0, False, False)
        want = 2.0 * (a @ b)
        if not np.allclose(c[:, 2:6], want, rtol=1e-4, atol=1e-5) or not np.isnan(c[:, :2]).all():
            return False
    return True


def _functions() -> dict:
    global _funcs, _threads_api
    if _funcs is None:
        with _lock:
            if _funcs is None:
                found: dict = {}
                api: tuple = ()
                for path in _find_openblas():
                    try:
                        fs = _bind(path)
                        if fs and _self_test(fs):
                            found, api = fs, _bind_threads(ctypes.CDLL(path))
                            break
                    except (OSError, ValueError):  # pragma: no cover - exotic builds
                        continue
                _threads_api = api
                _funcs = found
    return _funcs


def have_cblas() -> bool:
    """Whether the direct cblas route is in use (else numpy.matmul fallback)."""
    return bool(_functions())


def _ld(m: np.ndarray) -> tuple[bool, int]:
    """(transposed?, leading dimension) of a 2-D array with one unit stride."""
    item = m.itemsize
    s0, s1 = m.strides
    if s1 == item and (s0 % item == 0) and s0 // item >= max(1, m.shape[1]):
        return False, s0 // item
    if s0 == item and (s1 % item == 0) and s1 // item >= max(1, m.shape[0]):
        return True, s1 // item
    return False, -1


def _call(f, a, b, c, alpha, beta, ta, tb):
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    # A row-major view whose transpose flag folds in the requested transposition.
    a_t, lda = _ld(a)
    b_t, ldb = _ld(b)
    _, ldc = _ld(c)
    f(_ROW_MAJOR, _TRANS if (ta != a_t) else _NO_TRANS, _TRANS if (tb != b_t) else _NO_TRANS,
      m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, ldc)


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float = 1.0,
         beta: float = 0.0, trans_a: bool = False, trans_b: bool = False) -> None:
    """``c = alpha * op(a) @ op(b) + beta * c`` in place; op transposes when asked.

    a, b, c are 2-D arrays of one dtype (float32 or float64); c must have unit
    stride along its rows (any row pitch), a and b unit stride along either
    axis. ``beta == 0`` never reads c, so NaN in c does not leak. Shapes must
    agree (ValueError otherwise). Releases the GIL while BLAS runs.
    """
    am, ak = (a.shape[1], a.shape[0]) if trans_a else a.shape
    bk, bn = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if ak != bk or c.shape != (am, bn):
        raise ValueError(f"gemm shapes do not agree: a {a.shape} (trans={trans_a}), "
                         f"b {b.shape} (trans={trans_b}), c {c.shape}")
    if not (a.dtype == b.dtype == c.dtype):
        raise TypeError(f"gemm needs one dtype, got {a.dtype}, {b.dtype}, {c.dtype}")
    if c.size == 0:
        return
    f = _functions().get(c.dtype)
    ok = (f is not None and ak > 0 and _ld(a)[1] > 0 and _ld(b)[1] > 0
          and not _ld(c)[0] and _ld(c)[1] > 0
          and a.ctypes.data % a.itemsize == 0 and b.ctypes.data % b.itemsize == 0)
    if ok:
        _call(f, a, b, c, float(alpha), float(beta), trans_a, trans_b)
        return
    prod = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    if beta == 0:
        np.multiply(prod, alpha, out=c) if alpha != 1 else np.copyto(c, prod)
    else:
        c *= beta
        c += prod * alpha if alpha != 1 else prod


# --------------------------------------------------------------------------- #
# Parallel work items over single-threaded BLAS
# --------------------------------------------------------------------------- #

_serial_lock = threading.Lock()
_serial_holders = 0
_serial_saved = 0
_pool: ThreadPoolExecutor | None = None


def _blas_threads_now() -> int:
    """OpenBLAS's thread count as callers see it outside :func:`serial_blas` (1 if unknown)."""
    _functions()
    if not _threads_api:
        return 1
    with _serial_lock:
        if _serial_holders:
            return _serial_saved
    return max(1, int(_threads_api[0]()))


def threads() -> int:
    """How many threads :func:`parallel_for` uses: :data:`THREADS`, else OpenBLAS's count."""
    if THREADS is not None:
        return max(1, int(THREADS))
    return _blas_threads_now()


def _restore_count(saved: int) -> int:
    """The count to restore: saved, but never above a cap streamq applied meanwhile."""
    try:
        from .._limits import blas_thread_limit
        cap = blas_thread_limit()
    except ImportError:  # pragma: no cover - used outside the package
        cap = None
    return saved if cap is None else max(1, min(saved, cap))


@contextmanager
def serial_blas():
    """Hold OpenBLAS to one thread per call while the block runs (process-wide, counted).

    Nested and concurrent holders share one hold; the last one out restores
    the count the first one found (lowered to streamq's cap if one was set
    meanwhile). A no-op when the thread count cannot be controlled.
    """
    global _serial_holders, _serial_saved
    _functions()
    if not _threads_api:
        yield
        return
    get, put = _threads_api
    with _serial_lock:
        if _serial_holders == 0:
            _serial_saved = max(1, int(get()))
            if _serial_saved > 1:
                put(1)
        _serial_holders += 1
    try:
        yield
    finally:
        with _serial_lock:
            _serial_holders -= 1
            if _serial_holders == 0 and _serial_saved > 1:
                put(_restore_count(_serial_saved))


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: a fresh pool, no hold, BLAS as before."""
    global _pool, _serial_lock, _serial_holders
    if _serial_holders and _threads_api and _serial_saved > 1:
        _threads_api[1](_restore_count(_serial_saved))  # forked inside a loop of the parent
    _pool, _serial_lock, _serial_holders = None, threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                           thread_name_prefix="streamq-conv")
    return _pool


def parallel_for(n_items: int, body) -> None:
    """Call ``body(i)`` for every i in range(n_items), on up to :func:`threads` threads.

    The calling thread takes part and items are handed out in order, one at a
    time, so the loop finishes even when the helper pool is busy elsewhere.
    Items must be independent (each writes its own part of the output). With
    more than one thread, OpenBLAS is held to one thread per call meanwhile
    (:func:`serial_blas`). The first exception raised by an item is re-raised
    after every started item has stopped; items not yet started are skipped.
    """
    degree = min(n_items, threads())
    if degree <= 1:
        for i in range(n_items):
            body(i)
        return
    counter = itertools.count()
    errors: list[BaseException] = []

    def drain() -> None:
        while not errors:
            i = next(counter)  # atomic under the GIL
            if i >= n_items:
                return
            try:
                body(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)

    with serial_blas():
        helpers = [_executor().submit(drain) for _ in range(degree - 1)]
        drain()
        for f in helpers:
            if not f.cancel():  # a helper that never started has nothing to wait for
                f.result()
    if errors:
        raise errors[0]
