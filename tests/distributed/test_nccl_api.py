"""streamq.cuda_facade.nccl in one process (a communicator of one rank): the API's contract,
NCCL's enum values, and bad input of every kind returning NCCL's documented status."""

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from streamq.cuda_facade import nccl
from streamq.cuda_facade import runtime as rt
from streamq.cuda_facade._nccl_mpi import bf16_to_f32, f32_to_bf16

S = nccl.ncclResult_t
T = nccl.ncclDataType_t
R = nccl.ncclRedOp_t
INVALID = S.ncclInvalidArgument


def test_enum_values_are_ncclh():
    # Values from NCCL's documentation (Types): ncclResult_t, ncclDataType_t, ncclRedOp_t.
    assert [S.ncclSuccess, S.ncclUnhandledCudaError, S.ncclSystemError, S.ncclInternalError,
            S.ncclInvalidArgument, S.ncclInvalidUsage, S.ncclRemoteError, S.ncclInProgress] == list(range(8))
    assert (T.ncclInt8, T.ncclChar, T.ncclUint8, T.ncclInt32, T.ncclInt, T.ncclUint32, T.ncclInt64,
            T.ncclUint64) == (0, 0, 1, 2, 2, 3, 4, 5)
    assert (T.ncclFloat16, T.ncclHalf, T.ncclFloat32, T.ncclFloat, T.ncclFloat64, T.ncclDouble,
            T.ncclBfloat16) == (6, 6, 7, 7, 8, 8, 9)
    assert (R.ncclSum, R.ncclProd, R.ncclMax, R.ncclMin, R.ncclAvg) == (0, 1, 2, 3, 4)
    assert nccl.NCCL_UNIQUE_ID_BYTES == 128


def test_version_and_error_strings():
    status, version = nccl.ncclGetVersion()
    assert status == S.ncclSuccess and version >= 21000   # NCCL >= 2.10 (has ncclAvg)
    assert nccl.ncclGetErrorString(S.ncclSuccess) == (S.ncclSuccess, b"no error")
    assert b"remote process exited" in nccl.ncclGetErrorString(S.ncclRemoteError)[1]
    assert nccl.ncclGetErrorString(99)[1] == b"unknown result code"


def test_bfloat16_rounding_is_nearest_even():
    # Hand-computed: 1 + 2**-8 is halfway between bfloat16 1.0 and 1 + 2**-7 -> ties to even (1.0);
    # 1 + 3 * 2**-8 is halfway between 1 + 2**-7 and 1 + 2**-6 -> even (1 + 2**-6).
    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 3.4e38, np.inf, -0.0], np.float32)
    bits = f32_to_bf16(values, np.empty(values.size, np.uint16))
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F80, 0x7F80, 0x8000]
    assert bf16_to_f32(bits[:4]).tolist() == [1.0, 1.0, 1 + 2**-6, -2.5]
    nan = f32_to_bf16(np.array([np.nan], np.float32), np.empty(1, np.uint16))
    assert np.isnan(bf16_to_f32(nan))[0]


@pytest.fixture(scope="module")
def comm():
    status, uid = nccl.ncclGetUniqueId()
    assert status == S.ncclSuccess and isinstance(uid, nccl.ncclUniqueId) and len(uid.internal) == 128
    status, c = nccl.ncclCommInitRank(1, uid, 0)
    assert status == S.ncclSuccess, nccl.ncclGetLastError(None)
    yield c
    nccl.ncclCommDestroy(c)


@pytest.fixture
def stream():
    err, s = rt.cudaStreamCreate()
    assert err == 0
    yield s
    rt.cudaStreamSynchronize(s)
    rt.cudaStreamDestroy(s)


def device(values):
    values = np.ascontiguousarray(values)
    err, ptr = rt.cudaMalloc(max(values.nbytes, 1))
    assert err == 0
    rt.cudaMemcpy(ptr, values, values.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
    return ptr


def host(ptr, count, dtype):
    out = np.empty(count, dtype)
    rt.cudaMemcpy(out, ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
    return out


def test_comm_queries(comm):
    assert nccl.ncclCommCount(comm) == (S.ncclSuccess, 1)
    assert nccl.ncclCommUserRank(comm) == (S.ncclSuccess, 0)
    assert nccl.ncclCommCuDevice(comm) == (S.ncclSuccess, rt.cudaGetDevice()[1])
    assert nccl.ncclCommGetAsyncError(comm) == (S.ncclSuccess, S.ncclSuccess)


def test_single_rank_collectives_follow_their_definitions(comm, stream):
    # With one rank, NCCL's definitions reduce to: allreduce/reduce/reducescatter = the input
    # (ncclAvg divides by 1), broadcast/allgather = a copy, send/recv to oneself = a copy.
    x = np.arange(10, dtype=np.float32) - 3.5
    for op in R.ncclSum, R.ncclProd, R.ncclMax, R.ncclMin, R.ncclAvg:
        src, dst = device(x), device(np.zeros(10, np.float32))
        assert nccl.ncclAllReduce(src, dst, 10, T.ncclFloat32, op, comm, stream) == (S.ncclSuccess,)
        rt.cudaStreamSynchronize(stream)
        assert host(dst, 10, np.float32).tolist() == x.tolist()
    outs = [device(np.zeros(10, np.float32)) for _ in range(5)]
    src = device(x)
    assert nccl.ncclReduce(src, outs[0], 10, T.ncclFloat32, R.ncclSum, 0, comm, stream)[0] == S.ncclSuccess
    assert nccl.ncclBroadcast(src, outs[1], 10, T.ncclFloat32, 0, comm, stream)[0] == S.ncclSuccess
    assert nccl.ncclAllGather(src, outs[2], 10, T.ncclFloat32, comm, stream)[0] == S.ncclSuccess
    assert nccl.ncclReduceScatter(src, outs[3], 10, T.ncclFloat32, R.ncclSum, comm, stream)[0] == S.ncclSuccess
    assert nccl.ncclGroupStart() == (S.ncclSuccess,)
    nccl.ncclSend(src, 10, T.ncclFloat32, 0, comm, stream)
    nccl.ncclRecv(outs[4], 10, T.ncclFloat32, 0, comm, stream)
    assert nccl.ncclGroupEnd() == (S.ncclSuccess,)
    assert rt.cudaStreamSynchronize(stream)[0] == 0
    for out in outs:
        assert host(out, 10, np.float32).tolist() == x.tolist()


def test_nonblocking_request_and_wait(comm, stream):
    src, dst = device(np.full(4, 7, np.int64)), device(np.zeros(4, np.int64))
    status, req = nccl.ncclIAllReduce(src, dst, 4, T.ncclInt64, R.ncclSum, comm, stream)
    assert status == S.ncclSuccess and isinstance(req, nccl.ncclRequest)
    assert nccl.ncclWait(req) == (S.ncclSuccess,)
    assert nccl.ncclTest(req) == (S.ncclSuccess, True)
    assert host(dst, 4, np.int64).tolist() == [7] * 4
    assert nccl.ncclWait("not a request")[0] == INVALID
    assert nccl.ncclTest(None)[0] == INVALID


def _bad_calls(comm, stream, good, other):
    f32, s = T.ncclFloat32, stream
    err, freed = rt.cudaMalloc(64)
    rt.cudaFree(freed)
    host_array = np.zeros(16, np.float32)    # pageable host memory: not device-accessible for NCCL
    return {
        "comm is NULL": nccl.ncclAllReduce(good, other, 4, f32, R.ncclSum, None, s),
        "comm of the wrong type": nccl.ncclAllReduce(good, other, 4, f32, R.ncclSum, 42, s),
        "datatype out of range": nccl.ncclAllReduce(good, other, 4, 10, R.ncclSum, comm, s),
        "negative datatype": nccl.ncclAllReduce(good, other, 4, -1, R.ncclSum, comm, s),
        "float datatype": nccl.ncclAllReduce(good, other, 4, 7.0, R.ncclSum, comm, s),
        "op out of range": nccl.ncclAllReduce(good, other, 4, f32, 5, comm, s),
        "negative count": nccl.ncclAllReduce(good, other, -1, f32, R.ncclSum, comm, s),
        "bool count": nccl.ncclAllReduce(good, other, True, f32, R.ncclSum, comm, s),
        "NULL sendbuff": nccl.ncclAllReduce(None, other, 4, f32, R.ncclSum, comm, s),
        "zero recvbuff": nccl.ncclAllReduce(good, 0, 4, f32, R.ncclSum, comm, s),
        "unknown pointer": nccl.ncclAllReduce(12345, other, 4, f32, R.ncclSum, comm, s),
        "freed pointer": nccl.ncclAllReduce(freed, other, 4, f32, R.ncclSum, comm, s),
        "pageable host array": nccl.ncclAllReduce(host_array, other, 4, f32, R.ncclSum, comm, s),
        "count past the allocation": nccl.ncclAllReduce(good, other, 17, f32, R.ncclSum, comm, s),
        "misaligned float32": nccl.ncclAllReduce(good + 1, other, 4, f32, R.ncclSum, comm, s),
        "partial overlap": nccl.ncclAllReduce(good, good + 8, 4, f32, R.ncclSum, comm, s),
        "root out of range": nccl.ncclBroadcast(good, other, 4, f32, 1, comm, s),
        "negative root": nccl.ncclReduce(good, other, 4, f32, R.ncclSum, -1, comm, s),
        "peer out of range": nccl.ncclSend(good, 4, f32, 3, comm, s),
        "allgather recvbuff too small": nccl.ncclAllGather(good, other, 17, f32, comm, s),
        "string pointer": nccl.ncclRecv("0x1000", 4, f32, 0, comm, s),
    }


def test_bad_input_returns_invalid_argument_and_touches_nothing(comm, stream):
    good = device(np.arange(16, dtype=np.float32))
    other = device(np.full(16, -1, np.float32))
    results = _bad_calls(comm, stream, good, other)
    wrong = {what: r for what, r in results.items() if r != (INVALID,)}
    assert not wrong, wrong
    assert b"sendbuff" in nccl.ncclGetLastError(None)[1] or b"recvbuff" in nccl.ncclGetLastError(None)[1] \
        or nccl.ncclGetLastError(None)[1]
    rt.cudaStreamSynchronize(stream)
    # Nothing was issued: both buffers are as they were, and the communicator still works.
    assert host(good, 16, np.float32).tolist() == list(range(16))
    assert host(other, 16, np.float32).tolist() == [-1] * 16
    assert nccl.ncclAllReduce(good, other, 16, T.ncclFloat32, R.ncclSum, comm, stream) == (S.ncclSuccess,)
    rt.cudaStreamSynchronize(stream)
    assert host(other, 16, np.float32).tolist() == list(range(16))


def test_bad_stream_is_a_cuda_error(comm):
    # NCCL reports a failed CUDA call (an invalid stream) as ncclUnhandledCudaError.
    err, s = rt.cudaStreamCreate()
    rt.cudaStreamDestroy(s)
    buf = device(np.zeros(4, np.float32))
    assert nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, comm, s) == (S.ncclUnhandledCudaError,)
    assert nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, comm, 0x7777)[0] == \
        S.ncclUnhandledCudaError


def test_init_rank_arguments():
    status, uid = nccl.ncclGetUniqueId()
    assert nccl.ncclCommInitRank(0, uid, 0) == (INVALID, None)
    assert nccl.ncclCommInitRank(1, uid, 1) == (INVALID, None)
    assert nccl.ncclCommInitRank(1, uid, -1) == (INVALID, None)
    assert nccl.ncclCommInitRank(2, uid, 0) == (INVALID, None)    # more ranks than MPI processes
    assert nccl.ncclCommInitRank(1, nccl.ncclUniqueId(), 0) == (INVALID, None)   # not made by GetUniqueId
    assert nccl.ncclCommInitRank(1, b"x" * 128, 0) == (INVALID, None)
    with pytest.raises(ValueError):
        nccl.ncclUniqueId(b"short")


def test_unique_id_is_single_use():
    status, uid = nccl.ncclGetUniqueId()
    status, first = nccl.ncclCommInitRank(1, uid, 0)
    assert status == S.ncclSuccess
    # NCCL: one id makes one communicator; the root refuses a second use.
    status, again = nccl.ncclCommInitRank(1, uid, 0)
    assert (status, again) == (S.ncclInvalidUsage, None)
    assert b"already used" in nccl.ncclGetLastError(None)[1]
    assert nccl.ncclCommDestroy(first) == (S.ncclSuccess,)


def test_destroyed_and_aborted_communicators_are_invalid(stream):
    buf = device(np.zeros(4, np.float32))
    for close in nccl.ncclCommDestroy, nccl.ncclCommAbort:
        uid = nccl.ncclGetUniqueId()[1]
        c = nccl.ncclCommInitRank(1, uid, 0)[1]
        assert close(c) == (S.ncclSuccess,)
        assert nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, c, stream) == (INVALID,)
        assert nccl.ncclCommCount(c) == (INVALID, None)
        assert close(c) == (INVALID,)


def test_group_rules(comm, stream):
    buf = device(np.ones(4, np.float32))
    # ncclGroupEnd without ncclGroupStart is invalid usage.
    assert nccl.ncclGroupEnd() == (S.ncclInvalidUsage,)
    # A call that fails inside a group fails the group: nothing of it is issued.
    out = device(np.zeros(4, np.float32))
    nccl.ncclGroupStart()
    assert nccl.ncclAllReduce(buf, out, 4, T.ncclFloat32, R.ncclSum, comm, stream) == (S.ncclSuccess,)
    assert nccl.ncclAllReduce(buf, out, 4, 99, R.ncclSum, comm, stream) == (INVALID,)
    assert nccl.ncclGroupEnd() == (INVALID,)
    rt.cudaStreamSynchronize(stream)
    assert host(out, 4, np.float32).tolist() == [0, 0, 0, 0]
    # Nested groups issue at the outermost end; the non-blocking variants are refused inside.
    nccl.ncclGroupStart()
    nccl.ncclGroupStart()
    assert nccl.ncclIAllReduce(buf, out, 4, T.ncclFloat32, R.ncclSum, comm, stream)[0] == S.ncclInvalidUsage
    assert nccl.ncclGroupEnd() == (S.ncclSuccess,)
    assert nccl.ncclGroupEnd() == (S.ncclInvalidUsage,)     # the refused call failed the group
    nccl.ncclGroupStart()
    nccl.ncclGroupStart()
    nccl.ncclAllReduce(buf, out, 4, T.ncclFloat32, R.ncclSum, comm, stream)
    assert nccl.ncclGroupEnd() == (S.ncclSuccess,)
    rt.cudaStreamSynchronize(stream)
    assert host(out, 4, np.float32).tolist() == [0, 0, 0, 0]     # still deferred
    assert nccl.ncclGroupEnd() == (S.ncclSuccess,)
    rt.cudaStreamSynchronize(stream)
    assert host(out, 4, np.float32).tolist() == [1, 1, 1, 1]


def test_capture_is_refused(comm, stream):
    buf = device(np.ones(4, np.float32))
    assert rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)[0] == 0
    assert nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, comm, stream) == (S.ncclInvalidUsage,)
    rt.cudaStreamEndCapture(stream)


def test_failed_device_fails_the_operation_and_the_communicator(stream):
    # CUDA: after a kernel fault the device's error is sticky; NCCL then reports the failed
    # CUDA call (ncclUnhandledCudaError) and the communicator is unusable.
    uid = nccl.ncclGetUniqueId()[1]
    c = nccl.ncclCommInitRank(1, uid, 0)[1]
    buf = device(np.ones(4, np.float32))

    def fault(_):
        raise RuntimeError("kernel fault")

    rt.cudaLaunchHostFunc(stream, fault, None)
    nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, c, stream)   # queued behind the fault
    assert rt.cudaStreamSynchronize(stream)[0] == rt.cudaError_t.cudaErrorLaunchFailure
    assert nccl.ncclCommGetAsyncError(c) == (S.ncclSuccess, S.ncclUnhandledCudaError)
    assert nccl.ncclAllReduce(buf, buf, 4, T.ncclFloat32, R.ncclSum, c, stream)[0] == S.ncclUnhandledCudaError
    rt.cudaDeviceReset()
    # cudaDeviceReset invalidates the communicators of the device, as in NCCL.
    assert nccl.ncclCommCount(c) == (INVALID, None)


def test_missing_mpi4py_is_named(python_subprocess):
    proc = python_subprocess("""
        import sys
        sys.modules["mpi4py"] = None      # as if mpi4py were not installed
        try:
            import streamq.cuda_facade.nccl
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert "ImportError:" in proc.stdout and "mpi4py" in proc.stdout and "streamq[mpi]" in proc.stdout
