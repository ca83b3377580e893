"""The few facade calls the distributed layer makes, raising instead of returning statuses."""

from __future__ import annotations

from streamq.cuda_facade import nccl
from streamq.cuda_facade import runtime as rt
from streamq.cuda_facade._errors import last_error_detail

__all__ = ["GRID", "FacadeError", "check", "launch", "new_event", "record", "wait_event"]

#: Grid for kernel launches: at least as many blocks as any CMG has cores (no cap on threads).
GRID = 4096


class FacadeError(RuntimeError):
    """A facade call (CUDA runtime or NCCL) returned an error status."""


def check(result, what: str):
    """The results of a facade call's tuple; FacadeError naming ``what`` if its status failed."""
    status = result[0]
    if int(status) != 0:
        if isinstance(status, nccl.ncclResult_t):
            detail = nccl.ncclGetLastError(None)[1].decode()
        else:
            cause = rt.last_exception()
            detail = last_error_detail() or (f"{type(cause).__name__}: {cause}" if cause is not None else "")
        raise FacadeError(f"{what} failed: {status.name}: {detail}")
    rest = result[1:]
    return rest[0] if len(rest) == 1 else (rest or None)


def launch(op: str, args: tuple, kwargs: dict, stream) -> None:
    """Run kernel-registry ``op`` on ``stream`` (cudaLaunchKernel)."""
    check(rt.cudaLaunchKernel(op, GRID, 1, (*args, kwargs), 0, stream), f"cudaLaunchKernel({op})")


def new_event():
    """A timing-free event (PyTorch's default flags)."""
    return check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")


def record(event, stream) -> None:
    """cudaEventRecord."""
    check(rt.cudaEventRecord(event, stream), "cudaEventRecord")


def wait_event(stream, event) -> None:
    """Later work on ``stream`` waits for ``event`` (cudaStreamWaitEvent)."""
    check(rt.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")
