"""Streams of the runtime facade, tested against CUDA's documented semantics.

Sources quoted in comments: CUDA Runtime API, "Stream Management" and "Stream
synchronization behavior" (docs.nvidia.com/cuda/cuda-runtime-api/).
"""

import ctypes
import threading
import time

import pytest
from facade_helpers import WAIT, Gate, ok

import streamq
from streamq.cuda_facade import runtime as rt

E = rt.cudaError_t
pytestmark = pytest.mark.usefixtures("clean_device")


def recorder(log, name):
    def fn(_data=None):
        log.append(name)
    fn.__qualname__ = f"record_{name}"
    return fn


def test_create_sync_destroy_and_bad_flags():
    s = ok(rt.cudaStreamCreate())
    assert isinstance(s, rt.cudaStream_t) and int(s) not in (0, 1, 2)
    assert ok(rt.cudaStreamGetFlags(s)) == rt.cudaStreamDefault
    nb = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    assert ok(rt.cudaStreamGetFlags(nb)) == rt.cudaStreamNonBlocking
    # cudaStreamCreateWithFlags: valid flags are cudaStreamDefault and cudaStreamNonBlocking.
    assert rt.cudaStreamCreateWithFlags(4) == (E.cudaErrorInvalidValue, None)
    assert rt.cudaStreamCreateWithFlags(-1)[0] == E.cudaErrorInvalidValue
    assert rt.cudaStreamCreateWithFlags("x")[0] == E.cudaErrorInvalidValue
    ok(rt.cudaStreamSynchronize(s))
    ok(rt.cudaStreamDestroy(s))
    ok(rt.cudaStreamDestroy(nb))


def test_bad_handles_return_invalid_resource_handle():
    s = ok(rt.cudaStreamCreate())
    ok(rt.cudaStreamDestroy(s))
    for bad in (s, 0xDEAD, rt.cudaStream_t(0x7777), "stream", 3.5):
        assert rt.cudaStreamSynchronize(bad) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaStreamQuery(bad) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaLaunchHostFunc(bad, print, None) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaStreamGetPriority(bad) == (E.cudaErrorInvalidResourceHandle, None)
    assert rt.cudaStreamDestroy(s) == (E.cudaErrorInvalidResourceHandle,)       # double destroy
    # The default streams are not objects a program created: they cannot be destroyed.
    for special in (0, None, rt.cudaStreamLegacy, rt.cudaStreamPerThread):
        assert rt.cudaStreamDestroy(special) == (E.cudaErrorInvalidResourceHandle,)


def test_priority_is_clamped_to_the_range():
    # cudaStreamCreateWithPriority: "If the specified priority is outside the numerical range
    # returned by cudaDeviceGetStreamPriorityRange, it will automatically be clamped".
    least, greatest = ok(rt.cudaDeviceGetStreamPriorityRange())
    assert (least, greatest) == (0, -5)
    for asked, got in ((-100, greatest), (100, least), (-3, -3), (0, 0)):
        s = ok(rt.cudaStreamCreateWithPriority(rt.cudaStreamDefault, asked))
        assert ok(rt.cudaStreamGetPriority(s)) == got
        ok(rt.cudaStreamDestroy(s))


def test_higher_priority_stream_starts_first_when_workers_are_busy():
    # Priorities "provide a hint to preferentially run work with higher priority when possible".
    cores = ok(rt.cudaGetDeviceProperties(0)).multiProcessorCount
    blockers = [ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) for _ in range(cores)]
    low = ok(rt.cudaStreamCreateWithPriority(rt.cudaStreamNonBlocking, 0))
    high = ok(rt.cudaStreamCreateWithPriority(rt.cudaStreamNonBlocking, -5))
    order = []
    gates = [Gate() for _ in blockers]
    try:
        for s, g in zip(blockers, gates):
            ok(rt.cudaLaunchHostFunc(s, g, None))
        for g in gates:
            assert g.started.wait(WAIT)          # every worker of the CMG is now busy
        ok(rt.cudaLaunchHostFunc(low, recorder(order, "low"), None))
        ok(rt.cudaLaunchHostFunc(high, recorder(order, "high"), None))
    finally:
        for g in gates:
            g.release.set()
    ok(rt.cudaStreamSynchronize(low))
    ok(rt.cudaStreamSynchronize(high))
    assert order == ["high", "low"]
    for s in blockers + [low, high]:
        ok(rt.cudaStreamDestroy(s))


def test_query_not_ready_while_busy_then_success():
    # cudaStreamQuery: cudaSuccess if all operations have completed, cudaErrorNotReady if not.
    s = ok(rt.cudaStreamCreate())
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(s, gate, None))
        assert gate.started.wait(WAIT)
        assert rt.cudaStreamQuery(s) == (E.cudaErrorNotReady,)
        # NotReady reports a state, not an error: it does not become the last error.
        assert rt.cudaPeekAtLastError() == (E.cudaSuccess,)
    ok(rt.cudaStreamSynchronize(s))
    assert rt.cudaStreamQuery(s) == (E.cudaSuccess,)
    ok(rt.cudaStreamDestroy(s))


def test_stream_runs_in_order_and_host_func_blocks_later_work():
    # cudaLaunchHostFunc: "called after currently enqueued work and will block work added after it".
    s = ok(rt.cudaStreamCreate())
    log = []

    def slow(_):
        time.sleep(0.05)
        log.append("slow")
    for i in range(20):
        ok(rt.cudaLaunchHostFunc(s, slow if i == 3 else recorder(log, i), None))
    ok(rt.cudaStreamSynchronize(s))
    assert log == [0, 1, 2, "slow"] + list(range(4, 20))
    ok(rt.cudaStreamDestroy(s))


def test_destroy_returns_at_once_and_pending_work_completes():
    # cudaStreamDestroy: "the function will return immediately and the resources associated
    # with stream will be released automatically once the device has completed all work".
    s = ok(rt.cudaStreamCreate())
    log = []
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(s, gate, None))
        ok(rt.cudaLaunchHostFunc(s, recorder(log, "after"), None))
        t0 = time.perf_counter()
        ok(rt.cudaStreamDestroy(s))
        assert time.perf_counter() - t0 < 1.0
        assert log == []
        assert rt.cudaLaunchHostFunc(s, print, None) == (E.cudaErrorInvalidResourceHandle,)
    ok(rt.cudaDeviceSynchronize())   # waits for the destroyed stream's work too
    assert log == ["after"]


def test_legacy_stream_orders_blocking_streams_cudas_example():
    # "launching k_1 in stream s, then k_2 in the legacy stream, then k_3 in s means
    # k_2 will block on k_1 and k_3 will block on k_2" (Stream synchronization behavior).
    s = ok(rt.cudaStreamCreate())
    log = []
    k2_done = threading.Event()

    def k2(_):
        log.append("k2")
        time.sleep(0.05)  # k_3 must still wait for it
        k2_done.set()
    with Gate() as k1:
        ok(rt.cudaLaunchHostFunc(s, k1, None))
        ok(rt.cudaLaunchHostFunc(0, k2, None))
        ok(rt.cudaLaunchHostFunc(s, recorder(log, "k3"), None))
        assert k1.started.wait(WAIT)
        time.sleep(0.1)
        assert log == []                 # k_2 waits for k_1
        assert rt.cudaStreamQuery(0) == (E.cudaErrorNotReady,)
    ok(rt.cudaStreamSynchronize(s))
    assert log == ["k2", "k3"] and k2_done.is_set()
    ok(rt.cudaStreamDestroy(s))


def test_every_later_legacy_op_still_waits_for_blocking_work_fenced_by_an_earlier_one():
    # Only streams launched onto since the last legacy op are fenced again: older work must
    # still hold back later legacy ops through the earlier legacy op they follow.
    streams = [ok(rt.cudaStreamCreate()) for _ in range(3)]
    log = []
    with Gate() as k1:
        ok(rt.cudaLaunchHostFunc(streams[0], k1, None))
        assert k1.started.wait(WAIT)
        ok(rt.cudaLaunchHostFunc(0, recorder(log, "legacy-1"), None))
        ok(rt.cudaLaunchHostFunc(streams[1], recorder(log, "other"), None))
        ok(rt.cudaLaunchHostFunc(0, recorder(log, "legacy-2"), None))
        time.sleep(0.1)
        assert log == []                 # both legacy ops and the other stream's op wait for k1
    ok(rt.cudaStreamSynchronize(0))
    assert log == ["legacy-1", "other", "legacy-2"]
    for st in streams:
        ok(rt.cudaStreamDestroy(st))


def test_blocking_stream_waits_for_earlier_legacy_work_non_blocking_does_not():
    # cudaStreamNonBlocking: "may run concurrently with work in stream 0 ... should perform
    # no implicit synchronization with stream 0".
    blocking = ok(rt.cudaStreamCreate())
    free = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    log = []
    ran_free = threading.Event()
    with Gate() as legacy_work:
        ok(rt.cudaLaunchHostFunc(rt.cudaStreamLegacy, legacy_work, None))
        assert legacy_work.started.wait(WAIT)
        ok(rt.cudaLaunchHostFunc(blocking, recorder(log, "blocking"), None))
        ok(rt.cudaLaunchHostFunc(free, lambda _: ran_free.set(), None))
        assert ran_free.wait(WAIT)       # not held by the legacy stream
        time.sleep(0.05)
        assert log == []                 # held by the legacy stream
        assert rt.cudaStreamQuery(blocking) == (E.cudaErrorNotReady,)
    ok(rt.cudaStreamSynchronize(blocking))
    assert log == ["blocking"]
    for st in (blocking, free):
        ok(rt.cudaStreamDestroy(st))


def test_legacy_stream_does_not_wait_for_non_blocking_streams():
    free = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ran = threading.Event()
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(free, gate, None))
        assert gate.started.wait(WAIT)
        ok(rt.cudaLaunchHostFunc(0, lambda _: ran.set(), None))
        assert ran.wait(WAIT)
    ok(rt.cudaStreamSynchronize(free))
    ok(rt.cudaStreamDestroy(free))


def test_synchronizing_the_legacy_stream_covers_blocking_streams_only():
    # An action on the legacy stream "first waits on all blocking streams": synchronizing it
    # waits for their earlier work, not for non-blocking streams'.
    blocking = ok(rt.cudaStreamCreate())
    free = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    done = []
    ok(rt.cudaLaunchHostFunc(blocking, lambda _: (time.sleep(0.1), done.append("blocking")), None))
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(free, gate, None))
        assert rt.cudaStreamQuery(0) == (E.cudaErrorNotReady,)
        ok(rt.cudaStreamSynchronize(0))       # returns while `free` is still held by the gate
        assert done == ["blocking"]
        assert rt.cudaStreamQuery(free) == (E.cudaErrorNotReady,)
    ok(rt.cudaStreamSynchronize(free))
    for st in (blocking, free):
        ok(rt.cudaStreamDestroy(st))


def test_per_thread_stream_is_per_host_thread_and_syncs_with_legacy():
    # cudaStreamPerThread: "an implicit stream local to both the thread and the calling Context
    # ... will synchronise with the legacy default stream if both are used in the same program".
    mine = ok(rt.cudaStreamGetId(rt.cudaStreamPerThread))
    assert ok(rt.cudaStreamGetId(rt.cudaStreamPerThread)) == mine
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(ok(rt.cudaStreamGetId(rt.cudaStreamPerThread))))
    t.start()
    t.join(WAIT)
    assert theirs and theirs[0] != mine
    assert ok(rt.cudaStreamGetId(0)) == ok(rt.cudaStreamGetId(rt.cudaStreamLegacy)) != mine
    log = []
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(rt.cudaStreamPerThread, gate, None))
        assert gate.started.wait(WAIT)
        ok(rt.cudaLaunchHostFunc(rt.cudaStreamLegacy, recorder(log, "legacy"), None))
        time.sleep(0.05)
        assert log == []
    ok(rt.cudaStreamSynchronize(rt.cudaStreamLegacy))
    assert log == ["legacy"]


def test_per_thread_default_stream_mode(python_subprocess):
    # With --default-stream per-thread (here STREAMQ_DEFAULT_STREAM=per-thread) the handle 0 means
    # cudaStreamPerThread, while cudaStreamLegacy still names the legacy stream.
    result = python_subprocess("""
        from streamq.cuda_facade import runtime as rt
        ids = [rt.cudaStreamGetId(h)[1] for h in (0, rt.cudaStreamPerThread, rt.cudaStreamLegacy)]
        assert ids[0] == ids[1] != ids[2], ids
        print("OK")
    """, env={"STREAMQ_DEFAULT_STREAM": "per-thread"})
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr


def test_independent_streams_run_concurrently():
    # Two host functions that each wait for the other can only both finish if the streams run
    # at the same time (HIP-CPU serializes them).
    a, b = (ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) for _ in range(2))
    ea, eb = threading.Event(), threading.Event()
    results = []

    def meet(mine, other):
        def fn(_):
            mine.set()
            results.append(other.wait(WAIT))
        return fn
    ok(rt.cudaLaunchHostFunc(a, meet(ea, eb), None))
    ok(rt.cudaLaunchHostFunc(b, meet(eb, ea), None))
    ok(rt.cudaStreamSynchronize(a))
    ok(rt.cudaStreamSynchronize(b))
    assert results == [True, True]
    for s in (a, b):
        ok(rt.cudaStreamDestroy(s))


def test_creating_a_stream_never_waits_for_running_work():
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(0, gate, None))
        assert gate.started.wait(WAIT)
        t0 = time.perf_counter()
        s = ok(rt.cudaStreamCreate())
        assert time.perf_counter() - t0 < 0.5
    ok(rt.cudaStreamSynchronize(0))
    ok(rt.cudaStreamDestroy(s))


def test_stream_callback_gets_stream_status_and_user_data_once():
    # cudaStreamAddCallback: "For each cudaStreamAddCallback call, a callback will be executed
    # exactly once"; flags "must be 0".
    s = ok(rt.cudaStreamCreate())
    calls = []
    ok(rt.cudaStreamAddCallback(s, lambda st, status, data: calls.append((int(st), status, data)), "u", 0))
    ok(rt.cudaStreamSynchronize(s))
    assert calls == [(int(s), E.cudaSuccess, "u")]
    assert rt.cudaStreamAddCallback(s, print, None, 1) == (E.cudaErrorInvalidValue,)
    assert rt.cudaStreamAddCallback(s, None, None, 0) == (E.cudaErrorInvalidValue,)
    assert rt.cudaStreamAddCallback(s, 42, None, 0) == (E.cudaErrorInvalidValue,)
    ok(rt.cudaStreamDestroy(s))


def test_callbacks_run_with_the_error_after_a_device_fault_host_funcs_do_not():
    # cudaStreamAddCallback: "In the event of a device error, all subsequently executed callbacks
    # will receive an appropriate cudaError_t"; cudaLaunchHostFunc: "the function will not be
    # called in the event of an error in the CUDA context".
    s = ok(rt.cudaStreamCreate())
    statuses, host_calls = [], []

    def boom(_):
        raise RuntimeError("host function failed")
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(s, gate, None))
        ok(rt.cudaLaunchHostFunc(s, boom, None))
        ok(rt.cudaLaunchHostFunc(s, host_calls.append, "skipped"))
        ok(rt.cudaStreamAddCallback(s, lambda st, status, d: statuses.append(status), None, 0))
    assert rt.cudaStreamSynchronize(s) == (E.cudaErrorLaunchFailure,)
    assert statuses == [E.cudaErrorLaunchFailure] and host_calls == []


def test_host_function_calling_a_sync_api_gets_not_permitted_not_a_deadlock():
    # cudaLaunchHostFunc: "The host function must not make any CUDA API calls. Attempting to use
    # a CUDA API may result in cudaErrorNotPermitted".
    s = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    seen = []

    def calls_back(_):
        seen.append(rt.cudaStreamSynchronize(s))
        seen.append(rt.cudaDeviceSynchronize())
        seen.append(rt.cudaEventSynchronize(ev))
        seen.append(rt.cudaStreamQuery(s))          # a query does not wait: allowed
    ok(rt.cudaEventRecord(ev, s))
    ok(rt.cudaLaunchHostFunc(s, calls_back, None))
    ok(rt.cudaEventRecord(ev, s))
    ok(rt.cudaStreamSynchronize(s))
    assert seen[:3] == [(E.cudaErrorNotPermitted,)] * 3
    assert seen[3] == (E.cudaErrorNotReady,)
    ok(rt.cudaStreamDestroy(s))
    ok(rt.cudaEventDestroy(ev))


def test_c_function_pointers_as_cuda_python_passes_them():
    # cuda-python wraps a ctypes callback: cudaHostFn_t(address) or cudaHostFn_t(_ptr=addressof(cb)).
    s = ok(rt.cudaStreamCreate())
    got = []
    host_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    cb_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    host_cb = host_type(lambda p: got.append(("host", ctypes.c_int.from_address(p).value)))
    stream_cb = cb_type(lambda st, status, p: got.append(("callback", st, status, p)))
    value = ctypes.c_int(7)
    by_address = rt.cudaHostFn_t(ctypes.cast(host_cb, ctypes.c_void_p).value)
    by_slot = rt.cudaHostFn_t(_ptr=ctypes.addressof(host_cb))
    ok(rt.cudaLaunchHostFunc(s, by_address, ctypes.addressof(value)))
    ok(rt.cudaLaunchHostFunc(s, by_slot, value))                  # a buffer: its address is passed
    ok(rt.cudaLaunchHostFunc(s, host_cb, ctypes.addressof(value)))  # the ctypes function itself
    ok(rt.cudaStreamAddCallback(s, rt.cudaStreamCallback_t(_ptr=ctypes.addressof(stream_cb)), 1234, 0))
    ok(rt.cudaStreamSynchronize(s))
    assert got == [("host", 7)] * 3 + [("callback", int(s), 0, 1234)]
    assert rt.cudaLaunchHostFunc(s, rt.cudaHostFn_t(0), None) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchHostFunc(s, None, None) == (E.cudaErrorInvalidValue,)
    assert rt.cudaLaunchHostFunc(s, by_address, object()) == (E.cudaErrorInvalidValue,)
    ok(rt.cudaStreamDestroy(s))


def test_python_wrapper_object_and_methods_as_host_functions():
    s = ok(rt.cudaStreamCreate())
    got = []
    ok(rt.cudaLaunchHostFunc(s, rt.cudaHostFn_t(got.append), "wrapped"))
    ok(rt.cudaLaunchHostFunc(s, got.append, "bound method"))
    ok(rt.cudaStreamSynchronize(s))
    assert got == ["wrapped", "bound method"]
    ok(rt.cudaStreamDestroy(s))


def test_many_streams_and_host_threads():
    # Every thread has its own streams and its own last error; work of all finishes.
    n_threads, n_streams, n_ops = 8, 8, 25
    totals = [0] * n_threads
    errors = []

    def host(k):
        try:
            streams = [ok(rt.cudaStreamCreateWithFlags(k % 2)) for _ in range(n_streams)]
            counts = [0] * n_streams
            for i in range(n_ops):
                for j, st in enumerate(streams):
                    ok(rt.cudaLaunchHostFunc(st, lambda _, j=j: counts.__setitem__(j, counts[j] + 1), None))
                if i % 10 == 0:
                    ok(rt.cudaLaunchHostFunc(rt.cudaStreamLegacy, lambda _: None, None))
            for st in streams:
                ok(rt.cudaStreamSynchronize(st))
                ok(rt.cudaStreamDestroy(st))
            totals[k] = sum(counts)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=host, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert totals == [n_streams * n_ops] * n_threads


def test_stream_get_device_and_cuda_stream_protocol():
    s = ok(rt.cudaStreamCreate())

    class Foreign:
        def __cuda_stream__(self):
            return (0, int(s))
    assert ok(rt.cudaStreamGetDevice(Foreign())) == 0
    assert ok(rt.cudaStreamGetDevice(s)) == 0
    ok(rt.cudaStreamDestroy(s))
