"""Data-parallel training over MPI, on the CUDA facade's streams and NCCL module.

- :class:`ProcessGroup`: an NCCL communicator over MPI processes.
- :class:`Reducer`: PyTorch DDP's gradient bucketing — reverse-order buckets,
  each all-reduced on a communication stream as soon as its gradients are
  ready, overlapping the rest of the backward pass.
- :class:`TensorFusion`: Horovod's fusion of small all-reduces into one buffer.
- :class:`MLP`, :class:`CrossEntropy`, :func:`sgd_step`: a small model and training
  step built from kernel-registry ops, for examples and tests.
- :func:`bind_local_rank`: one CMG per rank (a share of the node's CPUs).
- :mod:`streamq.distributed.timeline`: the overlap achieved, read from the queue log.

Needs mpi4py (the ``mpi`` extra). See ``docs/distributed.md``.
"""

from ._cuda import FacadeError
from .fusion import FusionHandle, TensorFusion
from .group import ProcessGroup
from .mlp import MLP, CrossEntropy, sgd_step
from .placement import bind_local_rank, local_rank
from .reducer import Reducer, assign_buckets

__all__ = [
           "MLP",
           "CrossEntropy",
           "FacadeError",
           "FusionHandle",
           "ProcessGroup",
           "Reducer",
           "TensorFusion",
           "assign_buckets",
           "bind_local_rank",
           "local_rank",
           "sgd_step",
]
