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
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

_lock = threading.Lock()
_funcs: dict | None = None  # dtype -> ctypes function, or {} when unavailable


def _find_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries numpy is linked with (numpy's own first)."""
    try:
        from threadpoolctl import threadpool_info
        infos = threadpool_info()
    except Exception:  # pragma: no cover - threadpoolctl broken or absent
        return []
    paths = [i["filepath"] for i in infos if i.get("internal_api") == "openblas"]
    return sorted(paths, key=lambda p: "numpy" not in p)


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
    global _funcs
    if _funcs is None:
        with _lock:
            if _funcs is None:
                found: dict = {}
                for path in _find_openblas():
                    try:
                        fs = _bind(path)
                        if fs and _self_test(fs):
                            found = fs
                            break
                    except (OSError, ValueError):  # pragma: no cover - exotic builds
                        continue
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
