"""Helpers for the worker programs the distributed tests run under ``mpiexec``.

A worker prints one line ``RESULT <json>`` per rank; :func:`run_mpi` (used by
the pytest side) starts ``mpiexec -n N`` with a timeout and returns each rank's
result and the whole output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def mpiexec() -> str | None:
    """The mpiexec to use: next to the Python running the tests, else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def run_mpi(worker: str, nranks: int, *args: str, timeout: float = 60, env: dict | None = None):
    """Run ``tests/distributed/<worker>`` on ``nranks`` ranks; returns (results by rank, completed process).

    Raises AssertionError with the output if mpiexec outlives ``timeout`` (a hang)."""
    full_env = dict(os.environ)
    full_env.pop("STREAMQ_LOG", None)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + HERE + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("STREAMQ_NCCL_TIMEOUT", "90")   # first runs compile numba kernels: ranks may lag
    full_env.update(env or {})
    cmd = [mpiexec(), "-n", str(nranks), sys.executable, os.path.join(HERE, worker), *args]
    with tempfile.TemporaryDirectory() as folder:
        full_env["STREAMQ_TEST_RESULTS"] = folder
        try:
            proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{worker} on {nranks} ranks did not finish in {timeout} s (a hang)\n"
                                 f"--- stdout\n{_text(exc.stdout)}\n--- stderr\n{_text(exc.stderr)}") from None
        results = {}
        for name in os.listdir(folder):
            with open(os.path.join(folder, name)) as f:
                data = json.load(f)
            results[data["rank"]] = data
    return results, proc


def _text(data) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def report(rank: int, **fields) -> None:
    """Record this rank's result (worker side): a file in $STREAMQ_TEST_RESULTS, and a printed line."""
    line = json.dumps({"rank": rank, **fields})
    folder = os.environ.get("STREAMQ_TEST_RESULTS")
    if folder:
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            f.write(line)
    print("RESULT " + line, flush=True)


def init_world_comm():
    """(world, comm): an NCCL communicator over every MPI process, id broadcast by rank 0 (worker side)."""
    from mpi4py import MPI

    from streamq.cuda_facade import nccl
    world = MPI.COMM_WORLD
    uid = None
    if world.Get_rank() == 0:
        status, uid = nccl.ncclGetUniqueId()
        assert status == nccl.ncclResult_t.ncclSuccess, status
    uid = world.bcast(uid, root=0)
    status, comm = nccl.ncclCommInitRank(world.Get_size(), uid, world.Get_rank())
    assert status == nccl.ncclResult_t.ncclSuccess, (status, nccl.ncclGetLastError(None))
    return world, comm


def upload(rt, array):
    """A cudaMalloc'd copy of host ``array`` (worker side); returns the device pointer."""
    import numpy as np
    array = np.ascontiguousarray(array)
    err, ptr = rt.cudaMalloc(max(array.nbytes, 1))
    assert err == 0, err
    if array.nbytes:
        err, = rt.cudaMemcpy(ptr, array, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
        assert err == 0, err
    return ptr


def download(rt, ptr, count, dtype):
    """``count`` elements of ``dtype`` at device pointer ``ptr``, copied to the host (worker side)."""
    import numpy as np
    out = np.empty(count, dtype)
    if out.nbytes:
        err, = rt.cudaMemcpy(out, ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        assert err == 0, err
    return out
