"""A process group: an NCCL communicator over MPI processes, made the way NCCL programs make one."""

from __future__ import annotations

from streamq.cuda_facade import nccl

from ._cuda import check

__all__ = ["ProcessGroup"]


class ProcessGroup:
    """This process's rank in an NCCL communicator (``comm``) of ``size`` ranks."""

    def __init__(self, comm, rank: int, size: int):
        self.comm = comm
        self.rank = rank
        self.size = size

    @classmethod
    def world(cls) -> ProcessGroup:
        """Every MPI process, ranked as in MPI's world: rank 0 makes the unique id and
        broadcasts it over MPI (as NCCL's examples do), then every rank joins."""
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        uid = check(nccl.ncclGetUniqueId(), "ncclGetUniqueId") if world.Get_rank() == 0 else None
        uid = world.bcast(uid, root=0)
        comm = check(nccl.ncclCommInitRank(world.Get_size(), uid, world.Get_rank()), "ncclCommInitRank")
        return cls(comm, world.Get_rank(), world.Get_size())

    def destroy(self) -> None:
        """Finish the group's operations and free its communicator."""
        check(nccl.ncclCommDestroy(self.comm), "ncclCommDestroy")

    def __repr__(self) -> str:
        return f"<ProcessGroup rank {self.rank} of {self.size}>"
