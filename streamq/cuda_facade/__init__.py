"""streamq.cuda_facade: CUDA's runtime, cuBLAS and cuDNN APIs over streamq queues.

- :mod:`streamq.cuda_facade.runtime`: the CUDA runtime API as cuda-python exposes it
  (``from streamq.cuda_facade import runtime as cudart``);
- :mod:`streamq.cuda_facade.cublas`, :mod:`streamq.cuda_facade.cudnn`: the C APIs of
  cuBLAS and cuDNN under their C names;
- a Pythonic layer: :class:`Stream`, :class:`Event`, :func:`device_array`,
  :func:`to_device`, :func:`to_host`, :func:`synchronize`, raising :class:`CudaError`.

The three modules are imported on first use. See ``docs/cuda-facade.md``.
"""

from __future__ import annotations

import importlib

from ._errors import CudaError, cudaError_t
from ._pythonic import Event, Stream, device_array, synchronize, to_device, to_host
from ._rt_error import last_exception

__all__ = ["runtime", "cublas", "cudnn", "Stream", "Event", "device_array", "to_device", "to_host",
           "synchronize", "last_exception", "CudaError", "cudaError_t"]

_LAZY_MODULES = ("runtime", "cublas", "cudnn")


def __getattr__(name: str):
    """Import ``runtime``, ``cublas`` and ``cudnn`` when first used."""
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES))
