"""PyTorch native (ATen) elementwise, reduction, softmax, loss and pooling kernels.

Ops are registered under their ATen names (``"aten::add"``, ``"aten::_softmax"``,
``"aten::max_pool2d_with_indices"`` ...) by three providers:

* ``reference`` - plain numpy in float64 (int64 for integer results), rounded
  once into the output; the test oracle. Every op has one.
* ``numba`` - parallel ``nogil`` kernels (``streamq.kernels._aten_jit``) for
  float32/float64 C-contiguous data, float16 widened to float32; other
  layouts and dtypes take numpy paths with the same results.
* ``numpy`` - numpy ufuncs with ``out=`` for the simple elementwise ops.

Arrays are row-major numpy arrays with torch's semantics: broadcasting, type
promotion (``_aten_common.result_type``), negative dims. Results go into a
preallocated ``out=`` (or the op's named outputs) whose shape and dtype are
checked (ValueError/TypeError naming the parameter) and which is returned;
``*_`` variants write into ``self``. No kernel reads or writes out of bounds:
every size and index is validated before any numba kernel runs. The full
contract of each op is in ``docs/kernels/aten_ops.md``.
"""

from __future__ import annotations

from . import _aten_elementwise, _aten_nn, _aten_reduce  # noqa: F401  (import registers)
from ._aten_common import result_type
from ._aten_nn import pool_output_size

#: Every op this module registers.
OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::relu", "aten::relu_", "aten::threshold",
    "aten::threshold_", "aten::threshold_backward", "aten::sigmoid", "aten::sigmoid_",
    "aten::sigmoid_backward", "aten::tanh", "aten::tanh_", "aten::tanh_backward",
    "aten::fill_", "aten::copy_", "aten::sum", "aten::mean", "aten::amax", "aten::argmax",
    "aten::_softmax", "aten::_log_softmax", "aten::_softmax_backward_data",
    "aten::_log_softmax_backward_data", "aten::nll_loss_forward", "aten::nll_loss_backward",
    "aten::_adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d_backward",
    "aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
)

__all__ = ["OPS", "pool_output_size", "result_type"]
