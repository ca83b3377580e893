"""Stream capture and graphs, against CUDA's "Stream Management" (capture) and "Graph Management"."""

import json
import threading
import time

import numpy as np
import pytest
from facade_helpers import WAIT, fresh_stream, ok

import streamq
from streamq.cuda_facade import device_array, runtime as rt, to_device

E = rt.cudaError_t
Mode = rt.cudaStreamCaptureMode
Status = rt.cudaStreamCaptureStatus


@pytest.fixture(autouse=True)
def end_captures(clean_device):
    yield
    rt.cudaThreadExchangeStreamCaptureMode(Mode.cudaStreamCaptureModeGlobal)
    if streamq.cuda_facade._context.current_device().captures:
        rt.cudaDeviceReset()


@pytest.fixture
def stream():
    """A fresh stream, destroyed after the test without the synchronize of conftest's."""
    yield from fresh_stream(synchronize=False)


def appender(log, item):
    return lambda _: log.append(item)


def test_captured_ops_do_not_run_and_replay_in_order(stream):
    # cudaStreamBeginCapture: "all operations pushed into the stream will not be executed, but
    # will instead be captured into a graph".
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    assert ok(rt.cudaStreamIsCapturing(stream)) == Status.cudaStreamCaptureStatusActive
    for i in range(5):
        ok(rt.cudaLaunchHostFunc(stream, appender(log, i), None))
    graph = ok(rt.cudaStreamEndCapture(stream))
    assert isinstance(graph, rt.cudaGraph_t) and log == []
    assert ok(rt.cudaStreamIsCapturing(stream)) == Status.cudaStreamCaptureStatusNone
    assert ok(rt.cudaGraphGetNodes(graph)) == ([], 5)
    nodes, count = ok(rt.cudaGraphGetNodes(graph, 7))
    assert count == 5 and len(nodes) == 7 and nodes[5:] == [None, None]
    exe = ok(rt.cudaGraphInstantiate(graph, 0))
    ok(rt.cudaGraphLaunch(exe, stream))
    ok(rt.cudaGraphLaunch(exe, stream))
    ok(rt.cudaStreamSynchronize(stream))
    assert log == [0, 1, 2, 3, 4] * 2
    ok(rt.cudaGraphExecDestroy(exe))
    ok(rt.cudaGraphDestroy(graph))


def test_replayed_kernels_read_the_current_contents(stream):
    x_host = np.arange(6, dtype=np.float32)
    x = to_device(x_host)
    y = device_array(6, np.float32)
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeThreadLocal))
    ok(rt.cudaLaunchKernel("aten::mul", 1, 6, (x, 3.0, {"out": y}), 0, stream))
    ok(rt.cudaLaunchKernel("aten::add_", 1, 6, (y, 1.0), 0, stream))
    exe = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    for k in (1.0, -2.0):
        x[:] = x_host * k
        ok(rt.cudaGraphLaunch(exe, stream))
        ok(rt.cudaStreamSynchronize(stream))
        np.testing.assert_array_equal(y, x_host * k * 3.0 + 1.0)


def test_fork_join_capture_replays_branches_concurrently():
    # Cross-stream capture: a stream waiting for an event recorded in a capturing stream joins
    # the capture; it must rejoin the origin stream before cudaStreamEndCapture.
    origin = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    side = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    fork, join = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
    met = {"a": threading.Event(), "b": threading.Event()}
    log = []

    def branch(mine, other):
        def fn(_):
            met[mine].set()
            log.append((mine, met[other].wait(WAIT)))
        return fn
    ok(rt.cudaStreamBeginCapture(origin, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(origin, appender(log, "start"), None))
    ok(rt.cudaEventRecord(fork, origin))
    ok(rt.cudaStreamWaitEvent(side, fork, 0))
    assert ok(rt.cudaStreamIsCapturing(side)) == Status.cudaStreamCaptureStatusActive
    ok(rt.cudaLaunchHostFunc(origin, branch("a", "b"), None))
    ok(rt.cudaLaunchHostFunc(side, branch("b", "a"), None))
    ok(rt.cudaEventRecord(join, side))
    ok(rt.cudaStreamWaitEvent(origin, join, 0))
    status, cid, g, deps, ndeps = ok(rt.cudaStreamGetCaptureInfo(origin))
    assert status == Status.cudaStreamCaptureStatusActive and cid > 0 and ndeps == 2 == len(deps)
    ok(rt.cudaLaunchHostFunc(origin, appender(log, "end"), None))
    graph = ok(rt.cudaStreamEndCapture(origin))
    assert int(graph) == int(g)
    assert ok(rt.cudaStreamIsCapturing(side)) == Status.cudaStreamCaptureStatusNone
    exe = ok(rt.cudaGraphInstantiate(graph, 0))
    ok(rt.cudaGraphLaunch(exe, origin))
    ok(rt.cudaStreamSynchronize(origin))
    # Both branches saw each other (they ran at the same time), between start and end.
    assert log[0] == "start" and log[-1] == "end"
    assert sorted(log[1:3]) == [("a", True), ("b", True)]
    for s in (origin, side):
        ok(rt.cudaStreamDestroy(s))


def test_unjoined_fork_fails_end_capture():
    # cudaErrorStreamCaptureUnjoined: "The capture sequence contains a fork that was not joined
    # to the primary stream."
    origin, side = ok(rt.cudaStreamCreate()), ok(rt.cudaStreamCreate())
    fork = ok(rt.cudaEventCreate())
    ok(rt.cudaStreamBeginCapture(origin, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaEventRecord(fork, origin))
    ok(rt.cudaStreamWaitEvent(side, fork, 0))
    ok(rt.cudaLaunchHostFunc(side, print, None))
    assert rt.cudaStreamEndCapture(origin) == (E.cudaErrorStreamCaptureUnjoined, None)
    assert ok(rt.cudaStreamIsCapturing(side)) == Status.cudaStreamCaptureStatusNone
    for s in (origin, side):
        ok(rt.cudaStreamDestroy(s))


def test_begin_and_end_capture_misuse(stream):
    # "Capture may not be initiated if stream is cudaStreamLegacy ... it may only be initiated if
    # the stream is not already in capture mode"; "Capture must be ended on the same stream".
    assert rt.cudaStreamBeginCapture(0, Mode.cudaStreamCaptureModeGlobal) == (E.cudaErrorStreamCaptureUnsupported,)
    assert rt.cudaStreamBeginCapture(stream, 7) == (E.cudaErrorInvalidValue,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorIllegalState, None)
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    assert rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal) == (E.cudaErrorIllegalState,)
    side = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    ok(rt.cudaEventRecord(ev, stream))
    ok(rt.cudaStreamWaitEvent(side, ev, 0))
    assert rt.cudaStreamEndCapture(side) == (E.cudaErrorStreamCaptureUnmatched, None)
    # Ending on another stream invalidates the sequence: the origin then gets no graph.
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    ok(rt.cudaStreamDestroy(side))


def test_synchronizing_a_capturing_stream_invalidates_the_capture(stream):
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(stream, appender(log, 1), None))
    assert rt.cudaStreamSynchronize(stream) == (E.cudaErrorStreamCaptureUnsupported,)
    assert ok(rt.cudaStreamIsCapturing(stream)) == Status.cudaStreamCaptureStatusInvalidated
    # Further work on the invalidated sequence fails until it is ended.
    assert rt.cudaLaunchHostFunc(stream, appender(log, 2), None) == (E.cudaErrorStreamCaptureInvalidated,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    ok(rt.cudaStreamSynchronize(stream))
    assert log == []


def test_stream_query_and_device_synchronize_during_capture(stream):
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    assert rt.cudaStreamQuery(stream) == (E.cudaErrorStreamCaptureUnsupported,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeRelaxed))
    assert rt.cudaDeviceSynchronize() == (E.cudaErrorStreamCaptureUnsupported,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    ok(rt.cudaDeviceSynchronize())


def test_legacy_stream_use_while_a_blocking_stream_captures():
    # cudaStreamIsCapturing: "if this is called on cudaStreamLegacy while a blocking stream on the
    # same device is capturing, it will return cudaErrorStreamCaptureImplicit ... The blocking
    # stream capture is not invalidated"; other legacy-stream use invalidates it.
    blocking = ok(rt.cudaStreamCreate())
    ok(rt.cudaStreamBeginCapture(blocking, Mode.cudaStreamCaptureModeGlobal))
    assert rt.cudaStreamIsCapturing(0) == (E.cudaErrorStreamCaptureImplicit, None)
    assert ok(rt.cudaStreamIsCapturing(blocking)) == Status.cudaStreamCaptureStatusActive
    assert rt.cudaLaunchHostFunc(0, print, None) == (E.cudaErrorStreamCaptureImplicit,)
    assert ok(rt.cudaStreamIsCapturing(blocking)) == Status.cudaStreamCaptureStatusInvalidated
    assert rt.cudaStreamEndCapture(blocking) == (E.cudaErrorStreamCaptureInvalidated, None)
    # A non-blocking stream's capture does not involve the legacy stream.
    free = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ok(rt.cudaStreamBeginCapture(free, Mode.cudaStreamCaptureModeGlobal))
    ran = []
    ok(rt.cudaLaunchHostFunc(0, ran.append, "legacy"))
    ok(rt.cudaStreamSynchronize(0))
    assert ran == ["legacy"]
    ok(rt.cudaStreamEndCapture(free))
    for s in (blocking, free):
        ok(rt.cudaStreamDestroy(s))


def test_callbacks_cannot_be_captured_host_functions_can(stream):
    # cudaStreamAddCallback "is not supported with cudaStreamBeginCapture ..., unlike cudaLaunchHostFunc".
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(stream, print, None))
    assert rt.cudaStreamAddCallback(stream, lambda *a: None, None, 0) == (E.cudaErrorStreamCaptureUnsupported,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)


def test_captured_event_cannot_be_queried_and_uncaptured_waits_are_isolated(stream):
    # cudaErrorCapturedEvent: "not permitted on an event which was last recorded in a capturing
    # stream"; cudaErrorStreamCaptureIsolation: "dependency created on uncaptured work in another stream".
    other = ok(rt.cudaStreamCreate())
    outside, inside = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
    ok(rt.cudaEventRecord(outside, other))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaEventRecord(inside, stream))
    assert rt.cudaEventQuery(inside) == (E.cudaErrorCapturedEvent,)
    assert rt.cudaEventSynchronize(inside) == (E.cudaErrorCapturedEvent,)
    assert rt.cudaStreamWaitEvent(stream, outside, 0) == (E.cudaErrorStreamCaptureIsolation,)
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    assert rt.cudaEventQuery(inside) == (E.cudaSuccess,)     # the capture ended: an ordinary event again
    ok(rt.cudaStreamDestroy(other))


def test_external_event_nodes_wait_for_the_record_current_at_launch(stream):
    # cudaEventWaitExternal: "Event is captured in the graph as an external event node".
    producer = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ev = ok(rt.cudaEventCreate())
    ok(rt.cudaEventRecord(ev, producer))
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaStreamWaitEvent(stream, ev, rt.cudaEventWaitExternal))
    ok(rt.cudaLaunchHostFunc(stream, appender(log, "graph"), None))
    exe = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    gate = threading.Event()
    ok(rt.cudaLaunchHostFunc(producer, lambda _: (gate.wait(WAIT), log.append("producer")), None))
    ok(rt.cudaEventRecord(ev, producer))
    ok(rt.cudaGraphLaunch(exe, stream))
    time.sleep(0.05)
    assert log == []
    gate.set()
    ok(rt.cudaStreamSynchronize(stream))
    assert log == ["producer", "graph"]
    ok(rt.cudaStreamDestroy(producer))


def test_graph_launch_is_ordered_in_its_stream_and_after_its_previous_launch(stream):
    # cudaGraphLaunch: "Each launch is ordered behind both any previous work in stream and any
    # previous launches of graphExec."
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(stream, lambda _: (time.sleep(0.02), log.append("graph")), None))
    exe = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    other = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ok(rt.cudaLaunchHostFunc(stream, lambda _: (time.sleep(0.05), log.append("before")), None))
    ok(rt.cudaGraphLaunch(exe, stream))
    ok(rt.cudaGraphLaunch(exe, other))            # waits for the launch in `stream`
    ok(rt.cudaLaunchHostFunc(stream, appender(log, "after"), None))
    ok(rt.cudaStreamSynchronize(other))
    ok(rt.cudaStreamSynchronize(stream))
    assert log.index("before") < log.index("graph")
    assert log.count("graph") == 2 and log.index("after") > log.index("graph")
    ok(rt.cudaStreamDestroy(other))


def test_graph_launched_into_a_capture_becomes_a_node(stream):
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(stream, appender(log, "inner"), None))
    inner = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaGraphLaunch(inner, stream))
    ok(rt.cudaLaunchHostFunc(stream, appender(log, "outer"), None))
    outer = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    assert log == []
    ok(rt.cudaGraphLaunch(outer, stream))
    ok(rt.cudaStreamSynchronize(stream))
    assert log == ["inner", "outer"]


def test_failing_node_poisons_the_device_and_later_nodes_are_skipped(stream):
    log = []
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchHostFunc(stream, lambda _: 1 / 0, None))
    ok(rt.cudaLaunchHostFunc(stream, appender(log, "skipped"), None))
    exe = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    ok(rt.cudaGraphLaunch(exe, stream))
    assert rt.cudaStreamSynchronize(stream) == (E.cudaErrorLaunchFailure,)
    assert log == []


def test_instantiate_and_launch_bad_input(stream):
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    g_being_captured = ok(rt.cudaStreamGetCaptureInfo(stream))[2]
    assert rt.cudaGraphInstantiate(g_being_captured, 0) == (E.cudaErrorInvalidValue, None)
    assert rt.cudaGraphDestroy(g_being_captured) == (E.cudaErrorInvalidValue,)
    graph = ok(rt.cudaStreamEndCapture(stream))
    assert rt.cudaGraphInstantiate(graph, 0x100) == (E.cudaErrorInvalidValue, None)
    assert rt.cudaGraphInstantiate(graph, 4 | 1) == (E.cudaErrorInvalidValue, None)
    exe = ok(rt.cudaGraphInstantiateWithFlags(graph, rt.cudaGraphInstantiateFlags.cudaGraphInstantiateFlagUpload))
    ok(rt.cudaGraphUpload(exe, stream))
    ok(rt.cudaGraphDestroy(graph))
    ok(rt.cudaGraphLaunch(exe, stream))            # the executable graph outlives its graph
    for bad in (None, 0, graph, rt.cudaGraph_t(0xBAD), "graph"):
        assert rt.cudaGraphInstantiate(bad, 0) == (E.cudaErrorInvalidValue, None)
        assert rt.cudaGraphDestroy(bad) == (E.cudaErrorInvalidValue,)
        assert rt.cudaGraphGetNodes(bad)[0] == E.cudaErrorInvalidValue
    ok(rt.cudaGraphExecDestroy(exe))
    for bad in (exe, None, 0xBAD):
        assert rt.cudaGraphLaunch(bad, stream) == (E.cudaErrorInvalidValue,)
        assert rt.cudaGraphExecDestroy(bad) == (E.cudaErrorInvalidValue,)
    ok(rt.cudaStreamSynchronize(stream))


def test_capture_modes_guard_unsafe_calls(stream):
    # cudaThreadExchangeStreamCaptureMode: Global forbids potentially unsafe calls (cudaMalloc)
    # during this thread's capture and other threads' global captures; ThreadLocal only this
    # thread's; Relaxed none. device_array allocates like cudaMalloc.
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    results = []

    def other_thread(mode):
        old = ok(rt.cudaThreadExchangeStreamCaptureMode(mode))
        assert old == Mode.cudaStreamCaptureModeGlobal
        try:
            device_array(4)
            results.append("allocated")
        except streamq.cuda_facade.CudaError as err:
            results.append(err.code)
    for mode in (Mode.cudaStreamCaptureModeThreadLocal, Mode.cudaStreamCaptureModeRelaxed):
        t = threading.Thread(target=other_thread, args=(mode,))
        t.start()
        t.join(WAIT)
    assert results == ["allocated", "allocated"]
    assert ok(rt.cudaStreamIsCapturing(stream)) == Status.cudaStreamCaptureStatusActive
    t = threading.Thread(target=other_thread, args=(Mode.cudaStreamCaptureModeGlobal,))
    t.start()
    t.join(WAIT)
    assert results[-1] == E.cudaErrorStreamCaptureUnsupported
    assert rt.cudaStreamEndCapture(stream) == (E.cudaErrorStreamCaptureInvalidated, None)
    # This thread, relaxed: allowed during its own capture.
    ok(rt.cudaThreadExchangeStreamCaptureMode(Mode.cudaStreamCaptureModeRelaxed))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    device_array(4)
    ok(rt.cudaStreamEndCapture(stream))
    assert rt.cudaThreadExchangeStreamCaptureMode(9) == (E.cudaErrorInvalidValue, None)


def test_non_relaxed_capture_must_end_on_its_thread(stream):
    # "If mode is not cudaStreamCaptureModeRelaxed, cudaStreamEndCapture must be called on this
    # stream from the same thread."
    got = []

    def end_elsewhere():
        got.append(rt.cudaStreamEndCapture(stream))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeThreadLocal))
    t = threading.Thread(target=end_elsewhere)
    t.start()
    t.join(WAIT)
    assert got == [(E.cudaErrorStreamCaptureWrongThread, None)]
    ok(rt.cudaStreamEndCapture(stream))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeRelaxed))
    t = threading.Thread(target=end_elsewhere)
    t.start()
    t.join(WAIT)
    assert got[-1][0] == E.cudaSuccess


def test_destroying_the_capturing_stream_ends_the_capture():
    s = ok(rt.cudaStreamCreate())
    ok(rt.cudaStreamBeginCapture(s, Mode.cudaStreamCaptureModeGlobal))
    g = ok(rt.cudaStreamGetCaptureInfo(s))[2]
    ok(rt.cudaStreamDestroy(s))
    assert not streamq.cuda_facade._context.current_device().captures
    assert rt.cudaGraphInstantiate(g, 0) == (E.cudaErrorInvalidValue, None)
    ok(rt.cudaStreamSynchronize(0))     # the legacy stream is usable again


def test_replays_are_in_the_queue_log(tmp_path, stream):
    a = to_device(np.ones(8, np.float32))
    ok(rt.cudaStreamBeginCapture(stream, Mode.cudaStreamCaptureModeGlobal))
    ok(rt.cudaLaunchKernel("aten::mul_", 1, 8, (a, 2.0), 0, stream))
    exe = ok(rt.cudaGraphInstantiate(ok(rt.cudaStreamEndCapture(stream)), 0))
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ok(rt.cudaGraphLaunch(exe, stream))
        ok(rt.cudaStreamSynchronize(stream))
        streamq.trace.flush()
    finally:
        streamq.trace.disable()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kernels = [r for r in records if r["type"] == "task" and r["name"] == "aten::mul_"]
    assert len(kernels) == 1 and kernels[0]["kind"] == "kernel"
    assert kernels[0]["writes"][0]["buffer"] == a.__array_interface__["data"][0]
    np.testing.assert_array_equal(a, np.full(8, 2.0, np.float32))
