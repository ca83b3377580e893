"""ncclCommSplit over ``MPI_Comm_split``, in the parent communicator's operation order."""

from __future__ import annotations

from ._nccl_comm import ncclComm
from ._nccl_engine import Job, engine
from ._nccl_mpi import MPI
from ._nccl_types import NcclError, ncclResult_t

__all__ = ["split"]


class SplitJob(Job):
    """Split the parent's MPI communicator on the progress thread (collective over the parent)."""

    def __init__(self, color: int, key: int):
        super().__init__("ncclCommSplit")
        self.color = color
        self.key = key

    def describe(self) -> str:
        c = self.comm
        return f"ncclCommSplit(color {self.color}) on communicator {c.id} (rank {c.rank} of {c.nranks})"

    def body(self):
        parent = self.comm
        yield []
        mpi = parent.mpi.Split(self.color if self.color >= 0 else MPI.UNDEFINED, self.key)
        if mpi == MPI.COMM_NULL:
            return None
        child = ncclComm(mpi.Get_size(), mpi.Get_rank(), parent.device)
        mine, theirs = mpi.Get_group(), parent.mpi.Get_group()
        try:
            members = MPI.Group.Translate_ranks(mine, list(range(mpi.Get_size())), theirs)
        finally:
            mine.Free()
            theirs.Free()
        child.attach(mpi, [parent.world_ranks[r] for r in members])
        return child


def split(parent: ncclComm, color: int, key: int) -> ncclComm | None:
    """The child communicator of the ranks passing ``color`` (None for NCCL_SPLIT_NOCOLOR)."""
    if color < -1:
        raise NcclError(ncclResult_t.ncclInvalidArgument, f"color must be >= 0 or NCCL_SPLIT_NOCOLOR, got {color}")
    job = SplitJob(color, key)
    parent.issue(job, [], True)
    eng = engine()
    eng.submit(job)
    eng.wait(job)
    return job.result
