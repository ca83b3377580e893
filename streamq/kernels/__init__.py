"""Kernel providers: the numerical work behind cuBLAS, cuDNN and PyTorch's native ops.

Plain functions over numpy arrays; they know nothing of queues or of the CUDA
facade. Each op is registered under a name (``"cublas.gemm"``,
``"cudnn.convolution_forward"``, ``"aten::add"``, ...) by one or more providers
(``numba``, ``blas``, ``reference``); :func:`get` picks the best available one
in the order set by ``STREAMQ_PROVIDERS`` or :func:`set_order`.
See ``docs/kernels/`` for every op's signature and contract.
"""

from .registry import (
    DEFAULT_ORDER,
    KernelNotFoundError,
    call,
    get,
    ops,
    order,
    providers,
    register,
    set_order,
    unregister,
    use_providers,
    _declare_builtin,
)

# Modules whose import registers the built-in kernels. They are imported the
# first time the registry is consulted, so ``import streamq.kernels`` stays cheap.
for _module in (
    "streamq.kernels.blas_ops",
    "streamq.kernels.conv",
    "streamq.kernels.pooling",
    "streamq.kernels.dnn_ops",
    "streamq.kernels.aten_linear",
    "streamq.kernels.aten_ops",
):
    _declare_builtin(_module)
del _module

__all__ = [
    "DEFAULT_ORDER", "KernelNotFoundError", "call", "get", "ops", "order",
    "providers", "register", "set_order", "unregister", "use_providers",
]
