"""NCCL over MPI with 2 and 4 ranks (``mpiexec -n``): results against numpy, stream order,
many streams and communicators, and faults that must end in a clear error on every rank."""

import pytest

pytest.importorskip("mpi4py")

from mpi_common import mpiexec, run_mpi

pytestmark = pytest.mark.skipif(mpiexec() is None, reason="mpiexec not found (pip install mpich)")


@pytest.mark.parametrize("nranks", [2, 4])
def test_every_collective_dtype_and_op_equals_numpy(nranks):
    results, proc = run_mpi("mpi_collectives.py", nranks, timeout=150)
    assert sorted(results) == list(range(nranks)), proc.stdout + proc.stderr
    for rank, result in results.items():
        assert result["failures"] == [], (rank, result["failures"][:5])
        # 10 types x 5 ops x (allreduce, in-place allreduce, reducescatter) + per type 5 more,
        # one reduce per (type, op) on its root, and the 4 MiB allreduce
        assert result["checked"] >= 10 * 5 * 3 + 10 * 5 + 1


@pytest.mark.parametrize("nranks", [2, 4])
def test_stream_order_many_streams_and_communicators(nranks):
    results, proc = run_mpi("mpi_streams.py", nranks, timeout=150)
    assert sorted(results) == list(range(nranks)), proc.stdout + proc.stderr
    for rank, result in results.items():
        assert result["failures"] == [], (rank, result["failures"])


MISMATCH = {
    "count": "ranks disagree on the count (smallest 32, largest 64)",
    "dtype": "ranks disagree on the datatype (smallest ncclInt32, largest ncclFloat32)",
    "collective": "ranks disagree on the operation (smallest ncclAllReduce, largest ncclBroadcast)",
}


@pytest.mark.parametrize("scenario", sorted(MISMATCH))
def test_mismatch_between_ranks_fails_on_every_rank(scenario):
    results, proc = run_mpi("mpi_faults.py", 2, scenario, timeout=60)
    assert sorted(results) == [0, 1], proc.stdout + proc.stderr
    for result in results.values():
        assert result["sync"] == "cudaErrorLaunchFailure"      # surfaced at the next synchronize
        assert result["cause"].startswith("NcclError: ncclInvalidUsage")
        assert MISMATCH[scenario] in result["cause"]
        assert MISMATCH[scenario] in result["last"]            # ncclGetLastError(comm)


def test_a_call_right_behind_a_failed_one_fails_without_running():
    # The second call follows the first directly on the stream: it must fail as a stream op
    # after a failed op does, on every rank, with the first failure as the device's error -
    # not run, and not hang.
    results, proc = run_mpi("mpi_faults.py", 2, "chain", timeout=60, env={"STREAMQ_NCCL_TIMEOUT": "60"})
    assert sorted(results) == [0, 1], proc.stdout + proc.stderr
    for result in results.values():
        assert result["status"] == "ncclSuccess"                 # issued fine; fails in the stream
        assert result["sync"] == "cudaErrorLaunchFailure"
        assert MISMATCH["count"] in result["cause"]              # the first failure is the sticky one
        assert result["async"] == "ncclUnhandledCudaError"
        assert "this rank's device failed before the operation could run" in result["last"]
        assert result["seconds"] < 30


def test_send_recv_mismatch_names_both_sides():
    results, proc = run_mpi("mpi_faults.py", 2, "sendrecv", timeout=60)
    assert "this rank has 10 x ncclFloat32, the peer's matching ncclRecv has 20 x ncclFloat32" in \
        results[0]["cause"]
    assert "this rank has 20 x ncclFloat32, the peer's matching ncclSend has 10 x ncclFloat32" in \
        results[1]["cause"]


@pytest.mark.parametrize("nranks", [2, 4])
def test_a_rank_that_raises(nranks):
    # The last rank dies of a Python exception: its own traceback is the error there; every
    # other rank's pending collective fails with ncclRemoteError naming it and the exception,
    # told by the dying rank (not found by a timeout: STREAMQ_NCCL_TIMEOUT is 60 s here).
    results, proc = run_mpi("mpi_faults.py", nranks, "raise", timeout=50, env={"STREAMQ_NCCL_TIMEOUT": "60"})
    assert f"ValueError: boom on rank {nranks - 1}" in proc.stderr
    assert proc.returncode != 0
    assert sorted(results) == list(range(nranks - 1)), proc.stdout + proc.stderr
    for result in results.values():
        assert result["sync"] == "cudaErrorLaunchFailure" and result["async"] == "ncclRemoteError"
        assert f"rank {nranks - 1} (world rank {nranks - 1}) exited with an unhandled exception: " \
               f"ValueError: boom on rank {nranks - 1}" in result["cause"]


def test_a_rank_whose_kernel_raises():
    results, proc = run_mpi("mpi_faults.py", 2, "kernel", timeout=50, env={"STREAMQ_NCCL_TIMEOUT": "60"})
    assert results[1]["cause"] == "ZeroDivisionError: kernel fault on the last rank"
    assert results[1]["async"] == "ncclUnhandledCudaError"
    assert results[0]["async"] == "ncclRemoteError"
    assert "rank 1 (world rank 1) failed" in results[0]["cause"]
    assert "this rank's device failed before the operation could run" in results[0]["cause"]
    assert "ZeroDivisionError: kernel fault on the last rank" in results[0]["cause"]


def test_a_rank_that_exits_early():
    results, proc = run_mpi("mpi_faults.py", 2, "exit", timeout=50, env={"STREAMQ_NCCL_TIMEOUT": "60"})
    assert sorted(results) == [0]
    assert "rank 1 (world rank 1) exited without destroying the communicator (it had finished 1 " \
           "collective operation(s)" in results[0]["cause"]


def test_a_rank_that_never_comes_times_out_and_tells_it():
    # Rank 0 gives up after STREAMQ_NCCL_TIMEOUT (2 s) and tells rank 1, which learns it as soon
    # as it calls (after sleeping 4 s) instead of waiting in turn.
    results, proc = run_mpi("mpi_faults.py", 2, "hang", "4", timeout=50, env={"STREAMQ_NCCL_TIMEOUT": "2"})
    assert "no completion after 2.0 s (STREAMQ_NCCL_TIMEOUT)" in results[0]["cause"]
    assert "rank 0 (world rank 0) failed" in results[1]["cause"]
    assert "no completion after 2.0 s" in results[1]["cause"]
