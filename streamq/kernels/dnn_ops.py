"""cuDNN element-, channel- and tensor-wise kernels (everything but conv and pooling).

Importing this module registers, under providers ``reference`` (float64
numpy, the test oracle) and ``numba`` (parallel ``@njit`` kernels):

* ``cudnn.activation_forward`` / ``cudnn.activation_backward``
* ``cudnn.batch_norm_forward_training`` / ``cudnn.batch_norm_forward_inference``
  / ``cudnn.batch_norm_backward``; the fused (batch norm + add + ReLU) forms
  ``cudnn.batch_norm_forward_training_ex`` / ``cudnn.batch_norm_backward_ex``
* ``cudnn.softmax_forward`` / ``cudnn.softmax_backward``
* ``cudnn.add_tensor``, ``cudnn.op_tensor``, ``cudnn.transform_tensor``,
  ``cudnn.scale_tensor``, ``cudnn.set_tensor``
* ``cudnn.dropout_forward`` / ``cudnn.dropout_backward``

The implementations live in the private ``_dnn_*`` modules; every contract
is in ``docs/kernels/dnn.md``. Common rules: arrays are numpy, outputs are
written in place, float16/32/64 data (numba computes float16 in float32),
``out = alpha*op(...) + beta*out`` with ``beta == 0`` never reading ``out``,
bad arguments raise ValueError/TypeError naming the parameter.
"""

from __future__ import annotations

from ._dnn_activation import (  # noqa: F401
    MODES as ACTIVATION_MODES,
    activation_backward_numba,
    activation_backward_reference,
    activation_forward_numba,
    activation_forward_reference,
)
from ._dnn_batchnorm import (  # noqa: F401
    MODES as BATCH_NORM_MODES,
    OPS as BATCH_NORM_OPS,
    batch_norm_backward_ex_numba,
    batch_norm_backward_ex_reference,
    batch_norm_backward_numba,
    batch_norm_backward_reference,
    batch_norm_forward_inference_numba,
    batch_norm_forward_inference_reference,
    batch_norm_forward_training_ex_numba,
    batch_norm_forward_training_ex_reference,
    batch_norm_forward_training_numba,
    batch_norm_forward_training_reference,
)
from ._dnn_dropout import (  # noqa: F401
    dropout_backward_numba,
    dropout_backward_reference,
    dropout_forward_numba,
    dropout_forward_reference,
    keep_mask_reference,
)
from ._dnn_softmax import (  # noqa: F401
    ALGORITHMS as SOFTMAX_ALGORITHMS,
    MODES as SOFTMAX_MODES,
    softmax_backward_numba,
    softmax_backward_reference,
    softmax_forward_numba,
    softmax_forward_reference,
)
from ._dnn_tensor import (  # noqa: F401
    OPS as OP_TENSOR_OPS,
    add_tensor_numba,
    add_tensor_reference,
    op_tensor_numba,
    op_tensor_reference,
    scale_tensor_numba,
    scale_tensor_reference,
    set_tensor_numba,
    set_tensor_reference,
    transform_tensor_numba,
    transform_tensor_reference,
)
