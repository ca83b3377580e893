"""Error handling of the runtime facade, against CUDA's "Error Handling" documentation."""

import threading
import traceback

import pytest
from facade_helpers import WAIT, ok

import streamq
from streamq import cuda_facade
from streamq.cuda_facade import runtime as rt

E = rt.cudaError_t


@pytest.fixture(autouse=True)
def no_last_error(clean_device):
    rt.cudaGetLastError()
    yield


def test_get_last_error_returns_and_resets_peek_does_not():
    # cudaGetLastError: "Returns the last error that has been produced by any of the runtime calls
    # in the same host thread and resets it to cudaSuccess"; cudaPeekAtLastError: "does not reset".
    assert rt.cudaGetLastError() == (E.cudaSuccess,)
    assert rt.cudaStreamCreateWithFlags(99)[0] == E.cudaErrorInvalidValue
    ok(rt.cudaStreamDestroy(ok(rt.cudaStreamCreate())))   # a success does not clear it
    assert rt.cudaPeekAtLastError() == (E.cudaErrorInvalidValue,)
    assert rt.cudaPeekAtLastError() == (E.cudaErrorInvalidValue,)
    assert rt.cudaGetLastError() == (E.cudaErrorInvalidValue,)
    assert rt.cudaGetLastError() == (E.cudaSuccess,)
    assert rt.cudaPeekAtLastError() == (E.cudaSuccess,)


def test_last_error_is_the_most_recent_and_per_host_thread():
    assert rt.cudaSetDevice(10_000) == (E.cudaErrorInvalidDevice,)
    assert rt.cudaStreamQuery(0xBAD) == (E.cudaErrorInvalidResourceHandle,)
    seen = []
    t = threading.Thread(target=lambda: seen.append(rt.cudaGetLastError()))
    t.start()
    t.join(WAIT)
    assert seen == [(E.cudaSuccess,)]                # another thread has its own last error
    assert rt.cudaGetLastError() == (E.cudaErrorInvalidResourceHandle,)


def test_error_names_and_strings_are_bytes():
    # cuda-python returns (cudaSuccess, bytes) for both; unknown codes: "unrecognized error code".
    assert rt.cudaGetErrorName(E.cudaErrorInvalidValue) == (E.cudaSuccess, b"cudaErrorInvalidValue")
    assert rt.cudaGetErrorString(E.cudaErrorInvalidValue) == (E.cudaSuccess, b"invalid argument")
    assert rt.cudaGetErrorString(E.cudaSuccess) == (E.cudaSuccess, b"no error")
    assert rt.cudaGetErrorString(E.cudaErrorNotReady) == (E.cudaSuccess, b"device not ready")
    assert rt.cudaGetErrorString(E.cudaErrorLaunchFailure) == (E.cudaSuccess, b"unspecified launch failure")
    assert rt.cudaGetErrorName(719) == (E.cudaSuccess, b"cudaErrorLaunchFailure")
    assert rt.cudaGetErrorName(123456) == (E.cudaSuccess, b"unrecognized error code")
    assert rt.cudaGetErrorString("junk") == (E.cudaSuccess, b"unrecognized error code")
    for code in E:
        name, text = rt.cudaGetErrorName(code)[1], rt.cudaGetErrorString(code)[1]
        assert name == code.name.encode() and text and text != b"unrecognized error code"


def test_cuda_error_values_are_cudas():
    # Spot checks against CUDA 12's driver_types.h.
    assert (E.cudaErrorInvalidValue, E.cudaErrorInvalidConfiguration, E.cudaErrorInvalidDeviceFunction,
            E.cudaErrorInvalidDevice, E.cudaErrorInvalidResourceHandle, E.cudaErrorNotReady,
            E.cudaErrorLaunchFailure, E.cudaErrorNotPermitted, E.cudaErrorStreamCaptureUnsupported,
            E.cudaErrorStreamCaptureImplicit, E.cudaErrorCapturedEvent) == (
        1, 9, 98, 101, 400, 600, 719, 800, 900, 906, 907)


def failing_host_function(_):
    raise ZeroDivisionError("the kernel divided by zero")


def test_exception_in_stream_work_is_sticky_until_reset():
    # "Asynchronous errors are sticky, meaning that they will continue to be returned by
    # subsequent calls"; cudaErrorLaunchFailure: "any further CUDA work will return the same error".
    s = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    ok(rt.cudaLaunchHostFunc(s, failing_host_function, None))
    assert rt.cudaStreamSynchronize(s) == (E.cudaErrorLaunchFailure,)
    assert rt.cudaStreamSynchronize(s) == (E.cudaErrorLaunchFailure,)
    assert rt.cudaLaunchHostFunc(s, print, None) == (E.cudaErrorLaunchFailure,)
    assert rt.cudaStreamCreate() == (E.cudaErrorLaunchFailure, None)
    assert rt.cudaEventRecord(ev, s) == (E.cudaErrorLaunchFailure,)
    assert rt.cudaDeviceSynchronize() == (E.cudaErrorLaunchFailure,)
    assert rt.cudaStreamQuery(s) == (E.cudaErrorLaunchFailure,)
    # Get cannot clear a sticky error.
    assert rt.cudaGetLastError() == (E.cudaErrorLaunchFailure,)
    assert rt.cudaGetLastError() == (E.cudaErrorLaunchFailure,)
    assert rt.cudaPeekAtLastError() == (E.cudaErrorLaunchFailure,)
    # The Python exception, with its traceback, is reachable for debugging.
    exc = cuda_facade.last_exception()
    assert isinstance(exc, ZeroDivisionError) and "divided by zero" in str(exc)
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    assert "failing_host_function" in frames
    # cudaDeviceReset clears it; old handles are gone with the reset.
    ok(rt.cudaDeviceReset())
    assert cuda_facade.last_exception() is None
    assert rt.cudaGetLastError() == (E.cudaSuccess,)
    assert rt.cudaStreamSynchronize(s) == (E.cudaErrorInvalidResourceHandle,)
    assert rt.cudaEventQuery(ev) == (E.cudaErrorInvalidResourceHandle,)
    s2 = ok(rt.cudaStreamCreate())
    ran = []
    ok(rt.cudaLaunchHostFunc(s2, ran.append, "runs again"))
    ok(rt.cudaStreamSynchronize(s2))
    assert ran == ["runs again"]
    ok(rt.cudaStreamDestroy(s2))


def test_sticky_error_is_raised_with_the_cause_by_the_pythonic_layer():
    s = cuda_facade.Stream()
    s.launch_host_func(failing_host_function, None)
    with pytest.raises(cuda_facade.CudaError) as info:
        s.synchronize()
    assert info.value.code == E.cudaErrorLaunchFailure
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "failing_host_function" in "".join(traceback.format_exception(info.value))


def test_non_sticky_errors_do_not_poison_the_device():
    assert rt.cudaLaunchKernel("aten::no_such_op", 1, 1, (), 0, 0) == (E.cudaErrorInvalidDeviceFunction,)
    assert rt.cudaLaunchKernel(print, 0, 1, (), 0, 0) == (E.cudaErrorInvalidConfiguration,)
    ok(rt.cudaDeviceSynchronize())
    assert rt.cudaGetLastError() == (E.cudaErrorInvalidConfiguration,)


def test_wrong_argument_types_return_invalid_value_not_exceptions():
    assert rt.cudaStreamCreateWithPriority(0, "high")[0] == E.cudaErrorInvalidValue
    assert rt.cudaEventCreateWithFlags(1.5)[0] == E.cudaErrorInvalidValue
    assert rt.cudaDeviceGetAttribute("x", 0)[0] == E.cudaErrorInvalidValue
    assert rt.cudaGetLastError() == (E.cudaErrorInvalidValue,)
