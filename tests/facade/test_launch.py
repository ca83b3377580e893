"""cudaLaunchKernel over the kernel registry (CUDA: "Execution Control", cudaLaunchKernel)."""

import json
import threading

import numpy as np
import pytest
from facade_helpers import ok

import streamq
from streamq.cuda_facade import device_array, runtime as rt, to_device

E = rt.cudaError_t
pytestmark = pytest.mark.usefixtures("clean_device")


def test_registry_op_computes_into_device_memory(stream):
    rng = np.random.default_rng(0)
    a_host, b_host = rng.standard_normal((2, 64, 48)).astype(np.float32)
    a, b = to_device(a_host), to_device(b_host)
    out = device_array((64, 48), np.float32)
    ok(rt.cudaLaunchKernel("aten::add", rt.dim3(64), rt.dim3(48), (a, b, {"alpha": 2.0, "out": out}), 0, stream))
    ok(rt.cudaStreamSynchronize(stream))
    want = a_host.astype(np.float64) + 2.0 * b_host.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_matrix_multiply_and_in_place_op_in_stream_order(stream):
    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((32, 16)).astype(np.float64)
    w_host = rng.standard_normal((16, 8)).astype(np.float64)
    x, w = to_device(x_host), to_device(w_host)
    y = device_array((32, 8), np.float64)
    ok(rt.cudaLaunchKernel("aten::mm", (4, 1, 1), (256,), (x, w, {"out": y}), 0, stream))
    ok(rt.cudaLaunchKernel("aten::relu_", (4,), (256,), (y,), 0, stream))
    ok(rt.cudaStreamSynchronize(stream))
    np.testing.assert_allclose(y, np.maximum(x_host @ w_host, 0.0), rtol=1e-12, atol=1e-12)


def test_a_callable_kernel_runs_on_the_stream(stream):
    out = device_array(4, np.int64)

    def kernel(dst, value, *, offset):
        dst[:] = np.arange(4) * value + offset
    ok(rt.cudaLaunchKernel(kernel, 1, 4, (out, 3, {"offset": 1}), 0, stream))
    ok(rt.cudaStreamSynchronize(stream))
    assert out.tolist() == [1, 4, 7, 10]


@pytest.mark.parametrize("grid, block", [
    ((0, 1, 1), (1, 1, 1)),            # zero-sized grid
    ((1, 1, 1), (0, 1, 1)),            # zero-sized block
    (-1, 32),                          # negative
    (1, 1025),                         # more than 1024 threads in x
    (1, (32, 32, 2)),                  # 2048 threads per block
    (1, (1, 1, 65)),                   # blockDim.z limit is 64
    ((1, 65536, 1), 1),                # gridDim.y limit is 65535
    (2**31, 1),                        # gridDim.x limit is 2^31 - 1
    ((1, 1, 1, 1), 1),                 # four dimensions
])
def test_bad_launch_configurations(stream, grid, block):
    # cudaErrorInvalidConfiguration: "a kernel launch is requesting resources that can never be
    # satisfied by the current device" (block too large, grid dimension out of range).
    out = device_array(1, np.float32)
    assert rt.cudaLaunchKernel("aten::fill_", grid, block, (out, 1.0), 0, stream) == (
        E.cudaErrorInvalidConfiguration,)


def test_bad_functions_arguments_and_streams(stream):
    out = device_array(2, np.float32)
    assert rt.cudaLaunchKernel("aten::nope", 1, 1, (out,), 0, stream) == (E.cudaErrorInvalidDeviceFunction,)
    assert rt.cudaLaunchKernel(None, 1, 1, (out,), 0, stream) == (E.cudaErrorInvalidDeviceFunction,)
    assert rt.cudaLaunchKernel(12, 1, 1, (out,), 0, stream) == (E.cudaErrorInvalidDeviceFunction,)
    assert rt.cudaLaunchKernel("aten::fill_", 1, 1, out, 0, stream) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchKernel("aten::fill_", 1, 1, (out, 0.0), -1, stream) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchKernel("aten::fill_", 1, 1, (out, 0.0), 1 << 20, stream) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchKernel("aten::fill_", 1.5, 1, (out, 0.0), 0, stream) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchKernel("aten::fill_", 1, 1, (out, 0.0), 0, 0xBAD) == (E.cudaErrorInvalidResourceHandle,)
    ok(rt.cudaLaunchKernel(b"aten::fill_", 1, 1, [out, 5.0], None, stream))   # bytes name, list args
    ok(rt.cudaStreamSynchronize(stream))
    assert out.tolist() == [5.0, 5.0]


def test_kernel_failure_at_run_time_is_sticky(stream):
    a = device_array((2, 3), np.float32)
    b = device_array((4, 5), np.float32)
    out = device_array((2, 5), np.float32)
    ok(rt.cudaLaunchKernel("aten::mm", 1, 1, (a, b, {"out": out}), 0, stream))  # shapes checked when it runs
    assert rt.cudaStreamSynchronize(stream) == (E.cudaErrorLaunchFailure,)
    assert "mat2" in str(streamq.cuda_facade.last_exception())


def test_grid_caps_numba_threads_for_the_kernel(stream):
    numba = pytest.importorskip("numba")
    seen = []

    def kernel():
        seen.append(numba.get_num_threads())
    cores = streamq.topology()[0].ncores
    ok(rt.cudaLaunchKernel(kernel, 1, 128, (), 0, stream))
    ok(rt.cudaLaunchKernel(kernel, (cores, 4), 128, (), 0, stream))
    ok(rt.cudaStreamSynchronize(stream))
    assert seen[0] == 1                           # one block: one thread
    assert 1 <= seen[1] <= cores                  # a grid as wide as the CMG: the worker's own share


def test_read_and_write_sets_reach_the_queue_log(tmp_path, stream):
    a = to_device(np.ones((8, 4), np.float32))
    b = to_device(np.ones((8, 4), np.float32))
    out = device_array((8, 4), np.float32)
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ok(rt.cudaLaunchKernel("aten::add", 1, 32, (a[2:], b[:6], {"out": out[2:]}), 0, stream))
        ok(rt.cudaLaunchKernel("aten::relu_", 1, 32, (out,), 0, stream))
        ok(rt.cudaStreamSynchronize(stream))
        streamq.trace.flush()
    finally:
        streamq.trace.disable()
    tasks = [json.loads(line) for line in path.read_text().splitlines()]
    tasks = [r for r in tasks if r["type"] == "task" and r["kind"] == "kernel"]
    add, relu = tasks[-2], tasks[-1]
    base = lambda arr: arr.__array_interface__["data"][0]  # noqa: E731
    assert add["name"] == "aten::add" and relu["name"] == "aten::relu_"
    assert [(r["buffer"], r["offset"], r["shape"]) for r in add["reads"]] == [
        (base(a), 2 * 16, [6, 4]), (base(b), 0, [6, 4])]
    assert [(w["buffer"], w["offset"], w["shape"], w["dtype"]) for w in add["writes"]] == [
        (base(out), 32, [6, 4], "<f4")]
    assert [w["buffer"] for w in relu["writes"]] == [base(out)] == [r["buffer"] for r in relu["reads"]]


def test_launches_from_many_threads_on_many_streams():
    n = 6
    outs = [device_array(256, np.float64) for _ in range(n)]
    errors = []

    def host(i):
        try:
            s = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
            ok(rt.cudaLaunchKernel("aten::fill_", 1, 256, (outs[i], float(i)), 0, s))
            for _ in range(10):
                ok(rt.cudaLaunchKernel("aten::add_", 1, 256, (outs[i], 1.0), 0, s))
            ok(rt.cudaStreamSynchronize(s))
            ok(rt.cudaStreamDestroy(s))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=host, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i, out in enumerate(outs):
        assert np.all(out == i + 10.0)
