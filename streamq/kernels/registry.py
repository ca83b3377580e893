"""The kernel registry: op name -> implementations, one per provider.

An *op* is a name such as ``"cublas.gemm"``, ``"cudnn.convolution_forward"`` or
``"aten::add"``. A *provider* is a family of implementations (``"numba"``,
``"blas"``, ``"reference"``, or a third party's own name). Every provider of an
op implements the same signature and the same contract; they differ only in
speed. ``reference`` is plain numpy, float64-accurate, and is the oracle the
tests compare the others against.

Choosing: :func:`get` returns the implementation of the first provider, in the
current *order*, that implements the op and is available. The order starts as
``STREAMQ_PROVIDERS`` (comma separated) or :data:`DEFAULT_ORDER`, can be changed
with :func:`set_order`, or for a block with :func:`use_providers`. Providers
not named in the order are never chosen automatically, but can always be asked
for by name: ``get(op, provider="reference")``.

Third-party packages register their kernels either by calling :func:`register`
at import, or through the ``streamq.kernels`` entry-point group: each entry
point names a module (or callable) that is imported (or called) the first time
the registry is consulted.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

DEFAULT_ORDER: tuple[str, ...] = ("numba", "blas", "reference")
ENTRY_POINT_GROUP = "streamq.kernels"

_lock = threading.RLock()
_impls: dict[str, dict[str, Callable]] = {}
_order: tuple[str, ...] = ()
_order_local = threading.local()
_entry_points_loaded = False


class KernelNotFoundError(LookupError):
    """No registered implementation of an op matches the request."""


def _order_from_env() -> tuple[str, ...]:
    raw = os.environ.get("STREAMQ_PROVIDERS", "")
    names = tuple(p.strip() for p in raw.split(",") if p.strip())
    return names or DEFAULT_ORDER


_order = _order_from_env()


def register(op: str, provider: str, fn: Callable | None = None):
    """Register ``fn`` as ``provider``'s implementation of ``op``.

    Usable directly (``register(op, provider, fn)``) or as a decorator
    (``@register(op, provider)``). Registering the same (op, provider) twice
    replaces the earlier implementation, so a provider can be reloaded.
    """
    if not op or not isinstance(op, str):
        raise ValueError(f"op must be a non-empty string, got {op!r}")
    if not provider or not isinstance(provider, str):
        raise ValueError(f"provider must be a non-empty string, got {provider!r}")

    def _add(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"implementation of {op!r} by {provider!r} is not callable: {f!r}")
        with _lock:
            _impls.setdefault(op, {})[provider] = f
        return f

    return _add(fn) if fn is not None else _add


def unregister(op: str, provider: str) -> None:
    """Remove ``provider``'s implementation of ``op`` (KeyError if absent)."""
    with _lock:
        del _impls[op][provider]
        if not _impls[op]:
            del _impls[op]


def order() -> tuple[str, ...]:
    """The provider order in force for the calling thread."""
    local = getattr(_order_local, "order", None)
    return local if local is not None else _order


def set_order(providers) -> None:
    """Set the process-wide provider order (first is preferred)."""
    global _order
    _order = _checked_order(providers)


@contextlib.contextmanager
def use_providers(providers) -> Iterator[None]:
    """Within the block, the calling thread chooses providers in this order."""
    previous = getattr(_order_local, "order", None)
    _order_local.order = _checked_order(providers)
    try:
        yield
    finally:
        _order_local.order = previous


def _checked_order(providers) -> tuple[str, ...]:
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    names = tuple(providers)
    if not names or not all(isinstance(p, str) and p for p in names):
        raise ValueError(f"provider order must be a non-empty list of names, got {providers!r}")
    return names


def get(op: str, provider: str | None = None) -> Callable:
    """The implementation of ``op``: by ``provider`` if given, else the best in order."""
    _load_builtin_and_entry_points()
    with _lock:
        by_provider = _impls.get(op)
        if by_provider is None:
            raise KernelNotFoundError(f"no kernel registered for op {op!r}")
        if provider is not None:
            try:
                return by_provider[provider]
            except KeyError:
                raise KernelNotFoundError(
                    f"op {op!r} has no {provider!r} implementation "
                    f"(available: {sorted(by_provider)})") from None
        for name in order():
            fn = by_provider.get(name)
            if fn is not None:
                return fn
        raise KernelNotFoundError(
            f"op {op!r} has no implementation among providers {list(order())} "
            f"(available: {sorted(by_provider)})")


def call(op: str, *args, **kwargs):
    """Run the best implementation of ``op`` on the given arguments."""
    return get(op)(*args, **kwargs)


def providers(op: str) -> list[str]:
    """The providers that implement ``op``, in the current order, then the rest."""
    _load_builtin_and_entry_points()
    with _lock:
        have = set(_impls.get(op, ()))
    ranked = [p for p in order() if p in have]
    return ranked + sorted(have - set(ranked))


def ops() -> list[str]:
    """Every registered op name, sorted."""
    _load_builtin_and_entry_points()
    with _lock:
        return sorted(_impls)


_builtin_modules: list[str] = []


def _declare_builtin(module: str) -> None:
    """Name a module of this package whose import registers kernels."""
    if module not in _builtin_modules:
        _builtin_modules.append(module)


def _load_builtin_and_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    with _lock:
        if _entry_points_loaded:
            return
        import importlib
        for module in _builtin_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise  # a real missing dependency of the module: report it
                # A built-in module not present in this build: its ops are simply absent.
        _entry_points_loaded = True
        try:
            from importlib.metadata import entry_points
            found = entry_points(group=ENTRY_POINT_GROUP)
        except Exception:  # pragma: no cover - broken metadata must not break kernels
            found = ()
        for ep in found:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type(importlib)):
                loaded()
