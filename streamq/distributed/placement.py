"""One CMG per rank: share a node's CPUs among the MPI ranks running on it.

Ranks started by ``mpiexec`` on one node all see every CPU; each would start
as many pinned workers and BLAS threads as the node has cores, and the ranks
would fight over them. :func:`bind_local_rank` gives each rank a disjoint
share of the CPUs as its own topology (``STREAMQ_TOPOLOGY``: one CMG), so its
device is its share, its workers are pinned there and the core holds BLAS to
that many threads — the MPI-with-one-rank-per-CMG layout of the research
(one rank per A64FX CMG on Fugaku).
"""

from __future__ import annotations

import os

from streamq.topology import reset_topology

__all__ = ["bind_local_rank", "local_rank"]


def local_rank(world=None) -> tuple[int, int]:
    """(rank among the processes of this node, number of them), from MPI's shared-memory split."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD if world is None else world
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def bind_local_rank(world=None) -> list[int]:
    """Make this rank's topology its share of the node's CPUs (contiguous blocks; ranks share
    CPUs round-robin when there are more ranks than CPUs). Returns the CPUs.

    Call it before the first streamq queue or facade call (the topology is read once):
    it raises RuntimeError if workers are already running."""
    from streamq import _scheduler
    if _scheduler._scheduler is not None:
        raise RuntimeError("bind_local_rank must run before the first streamq queue starts its workers")
    rank, size = local_rank(world)
    cpus = sorted(os.sched_getaffinity(0))
    if size >= len(cpus):
        mine = [cpus[rank % len(cpus)]]
    else:
        per, extra = divmod(len(cpus), size)
        start = rank * per + min(rank, extra)
        mine = cpus[start:start + per + (1 if rank < extra else 0)]
    os.environ["STREAMQ_TOPOLOGY"] = ",".join(str(c) for c in mine)
    reset_topology()
    return mine
