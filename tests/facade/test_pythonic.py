"""The Pythonic layer: Stream, Event, device_array, to_device, to_host; errors as CudaError."""

import gc
import importlib.util
import threading
import time

import numpy as np
import pytest

from streamq import cuda_facade as cf
from streamq.cuda_facade import _memory

E = cf.cudaError_t
WAIT = 10.0


@pytest.fixture(autouse=True)
def clean_device():
    yield
    if cf._context.current_device().sticky is not None:
        cf.runtime.cudaDeviceReset()


def test_device_array_is_facade_memory_and_returns_to_the_pool():
    a = cf.device_array((3, 5), np.float64)
    assert a.shape == (3, 5) and a.dtype == np.float64 and a.flags.c_contiguous
    address = a.__array_interface__["data"][0]
    assert address % 256 == 0
    found = _memory.table.find(address)
    assert found is not None and found[0].memory == "device" and found[0].size == 3 * 5 * 8
    del found
    view = a[1:]            # a view keeps the allocation alive
    del a
    gc.collect()
    assert _memory.table.find(address) is not None
    del view
    gc.collect()
    assert _memory.table.find(address) is None
    # The block went back to the device's caching pool: the next request of its size reuses it.
    again = cf.device_array(15, np.float64)
    assert again.__array_interface__["data"][0] == address


def test_device_array_bad_input():
    for shape in ((-1,), (2, -3)):
        with pytest.raises(cf.CudaError) as info:
            cf.device_array(shape)
        assert info.value.code == E.cudaErrorInvalidValue and "shape" in str(info.value)
    with pytest.raises(cf.CudaError, match="dtype"):
        cf.device_array(3, "not a dtype")
    with pytest.raises(cf.CudaError, match="shape"):
        cf.device_array((2.5,))
    with pytest.raises(cf.CudaError) as info:
        cf.device_array(3, device=99)
    assert info.value.code == E.cudaErrorInvalidDevice
    assert cf.device_array(0).size == 0


def test_to_device_and_to_host_copy():
    host = np.arange(12, dtype=np.int32).reshape(3, 4)
    dev = cf.to_device(host)
    host[:] = -1                         # copied at call time
    assert dev.tolist() == np.arange(12).reshape(3, 4).tolist()
    back = cf.to_host(dev)
    assert _memory.table.find(back.__array_interface__["data"][0]) is None   # plain host memory
    assert back.tolist() == dev.tolist()


def test_stream_context_manager_runs_kernels_and_synchronizes():
    x = cf.to_device(np.arange(6, dtype=np.float32))
    y = cf.device_array(6, np.float32)
    log = []
    with cf.Stream() as s:
        s.launch_kernel("aten::mul", x, 2.0, out=y)
        s.launch_host_func(lambda tag, *, n: (time.sleep(0.02), log.append((tag, n))), "done", n=1)
    assert log == [("done", 1)]
    assert y.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    with pytest.raises(cf.CudaError) as info:
        s.synchronize()                  # destroyed on exit
    assert info.value.code == E.cudaErrorInvalidResourceHandle


def test_stream_query_events_and_elapsed_time():
    s = cf.Stream(non_blocking=True, priority=-10)
    assert s.priority == -5 and s.device == 0
    gate = threading.Event()
    start = s.record_event()
    s.launch_host_func(gate.wait, WAIT)
    end = s.record_event()
    assert not s.query() and not end.query()
    with pytest.raises(cf.CudaError) as info:
        start.elapsed_time(end)
    assert info.value.code == E.cudaErrorNotReady
    time.sleep(0.03)
    gate.set()
    end.synchronize()
    assert s.query() and end.query()
    assert 30 <= start.elapsed_time(end) < 5000
    untimed = cf.Event(timing=False).record(s)
    untimed.synchronize()
    with pytest.raises(cf.CudaError) as info:
        start.elapsed_time(untimed)
    assert info.value.code == E.cudaErrorInvalidResourceHandle
    s.destroy()


def test_wait_event_orders_two_streams():
    a, b = cf.Stream(non_blocking=True), cf.Stream(non_blocking=True)
    log = []
    a.launch_host_func(lambda: (time.sleep(0.05), log.append("a")))
    b.wait_event(a.record_event())
    b.launch_host_func(lambda: log.append("b"))
    b.synchronize()
    assert log == ["a", "b"]


def test_streams_are_usable_with_the_runtime_api():
    s = cf.Stream()
    rt = cf.runtime
    got = []
    assert rt.cudaLaunchHostFunc(s, got.append, 1) == (E.cudaSuccess,)      # __cuda_stream__
    assert rt.cudaLaunchHostFunc(s.handle, got.append, 2) == (E.cudaSuccess,)
    assert rt.cudaStreamSynchronize(s) == (E.cudaSuccess,)
    assert got == [1, 2]


def test_garbage_collected_stream_still_finishes_its_work():
    done = threading.Event()
    s = cf.Stream()
    handle = s.handle
    s.launch_host_func(lambda: (time.sleep(0.05), done.set()))
    del s
    gc.collect()
    assert cf.runtime.cudaStreamQuery(handle) == (E.cudaErrorInvalidResourceHandle,)
    cf.synchronize()
    assert done.is_set()


def test_errors_raise_cuda_error():
    with pytest.raises(cf.CudaError) as info:
        cf.Stream(device=5)
    assert info.value.code == E.cudaErrorInvalidDevice
    s = cf.Stream()
    with pytest.raises(cf.CudaError) as info:
        s.launch_kernel("aten::does_not_exist")
    assert info.value.code == E.cudaErrorInvalidDeviceFunction
    with pytest.raises(cf.CudaError) as info:
        s.launch_kernel("aten::fill_", cf.device_array(2), 0.0, block=2048)
    assert info.value.code == E.cudaErrorInvalidConfiguration
    with pytest.raises(cf.CudaError) as info:
        s.wait_event("not an event")
    assert info.value.code == E.cudaErrorInvalidResourceHandle
    s.launch_host_func(lambda: [][1])
    with pytest.raises(cf.CudaError) as info:
        cf.synchronize()
    assert info.value.code == E.cudaErrorLaunchFailure
    assert isinstance(info.value.__cause__, IndexError) and cf.last_exception() is info.value.__cause__


def test_event_context_manager_destroys_it():
    with cf.Event() as ev:
        ev.record()
        ev.synchronize()
    with pytest.raises(cf.CudaError) as info:
        ev.query()
    assert info.value.code == E.cudaErrorInvalidResourceHandle


def test_lazy_modules():
    assert cf.runtime.__name__ == "streamq.cuda_facade.runtime"
    assert "runtime" in dir(cf) and "cublas" in dir(cf)
    for name in ("cublas", "cudnn"):
        if importlib.util.find_spec(f"streamq.cuda_facade.{name}") is not None:
            assert getattr(cf, name).__name__ == f"streamq.cuda_facade.{name}"
    with pytest.raises(AttributeError):
        cf.no_such_module  # noqa: B018
