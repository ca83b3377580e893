"""What kind of computation each logged op is, by name (TVM's pattern categories).

The fusion analyzer only fuses what this table says it may: ``elementwise``
and ``broadcast`` ops (one output element from the same-index input elements,
small operands broadcast) and ``injective`` ones (each output element copies one
input element) form vertical chains; a ``complex`` op (convolution, GEMM,
pooling) may head a chain as the producer whose epilogue is fused; a
``reduction`` or an ``opaque`` op ends every chain. A stream-ordered free
(task kind ``free``) touches no live data: chains run across it. Names the table does not
know are opaque, so an unknown op is never fused by mistake.
"""

from __future__ import annotations

__all__ = ["OP_KINDS", "KINDS", "FUSABLE", "classify"]

#: Every kind a logged op can have.
KINDS = ("elementwise", "broadcast", "injective", "reduction", "complex", "opaque",
         "copy", "fill", "sync", "host", "free")

#: Kinds that can be a member of a vertical chain (and of sibling/horizontal groups).
FUSABLE = frozenset({"elementwise", "broadcast", "injective"})

_ELEMENTWISE = """
aten::add aten::add_ aten::sub aten::sub_ aten::mul aten::mul_ aten::div aten::div_
aten::relu aten::relu_ aten::sigmoid aten::sigmoid_ aten::tanh aten::tanh_
aten::threshold aten::threshold_ aten::sigmoid_backward aten::tanh_backward aten::threshold_backward
aten::fill_ cublas.axpy cublas.scal cudnn.activation_forward cudnn.activation_backward
cudnn.scale_tensor cudnn.set_tensor
"""
_BROADCAST = "cudnn.add_tensor cudnn.op_tensor cudnn.batch_norm_forward_inference"
_INJECTIVE = "aten::copy_ aten::cat cudnn.transform_tensor"
_REDUCTION = """
aten::sum aten::mean aten::amax aten::argmax cublas.dot cublas.nrm2 cublas.asum cublas.amax
cudnn.convolution_backward_bias cudnn.batch_norm_forward_training cudnn.batch_norm_backward
cudnn.batch_norm_forward_training_ex cudnn.batch_norm_backward_ex
aten::nll_loss_forward
"""
_COMPLEX = """
cudnn.convolution_forward cudnn.convolution_backward_data cudnn.convolution_backward_filter
cublas.gemm cublas.gemv cublas.gemm_strided_batched aten::addmm aten::mm aten::bmm
cudnn.pooling_forward aten::max_pool2d_with_indices aten::_adaptive_avg_pool2d
"""
# Opaque: random numbers, gathers/scatters, softmax-like "reduction in the middle",
# already-fused multi-tensor optimizers, and helpers that are not kernels.
_OPAQUE = """
cudnn.dropout_forward cudnn.dropout_backward aten::embedding aten::embedding_backward
cudnn.pooling_backward aten::max_pool2d_with_indices_backward aten::_adaptive_avg_pool2d_backward
aten::_softmax aten::_softmax_backward_data aten::_log_softmax aten::_log_softmax_backward_data
cudnn.softmax_forward cudnn.softmax_backward aten::nll_loss_backward aten::_foreach_sgd_
aten::_fused_adam_ cudnn.convolution_output_shape
"""


def _table() -> dict:
    table = {}
    for kind, names in (("elementwise", _ELEMENTWISE), ("broadcast", _BROADCAST),
                        ("injective", _INJECTIVE), ("reduction", _REDUCTION),
                        ("complex", _COMPLEX), ("opaque", _OPAQUE)):
        for name in names.split():
            if name in table:
                raise AssertionError(f"{name} is listed twice in the op-kind table")
            table[name] = kind
    return table


#: Kernel-registry op name -> kind (``streamq.kernels.registry.ops()`` are all listed).
OP_KINDS: dict = _table()

_TASK_KINDS = {"memcpy": "copy", "memset": "fill", "barrier": "sync", "event_record": "sync",
               "event_wait": "sync", "free": "free"}


def classify(name, task_kind: str = "kernel") -> str:
    """The kind of a logged op from its record's ``name`` and ``kind`` fields.

    Core record kinds decide first (``memcpy`` -> copy, ``memset`` -> fill,
    barriers and events -> sync, ``free`` -> free); otherwise the name is looked up in
    :data:`OP_KINDS`; a ``host`` task with an unknown name is ``host``, any
    other unknown name is ``opaque``.
    """
    special = _TASK_KINDS.get(task_kind)
    if special is not None:
        return special
    kind = OP_KINDS.get(name)
    if kind is not None:
        return kind
    return "host" if task_kind == "host" else "opaque"
