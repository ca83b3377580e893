"""Events of the runtime facade, tested against CUDA's "Event Management" documentation."""

import json
import threading
import time

import pytest
from facade_helpers import WAIT, Gate, ok

import streamq
from streamq.cuda_facade import runtime as rt

E = rt.cudaError_t
pytestmark = pytest.mark.usefixtures("clean_device")


def test_unrecorded_event_is_complete():
    # cudaEventRecord: "Before the first call to cudaEventRecord(), an event represents an empty
    # set of work, so for example cudaEventQuery() would return cudaSuccess."
    ev = ok(rt.cudaEventCreate())
    assert rt.cudaEventQuery(ev) == (E.cudaSuccess,)
    assert rt.cudaEventSynchronize(ev) == (E.cudaSuccess,)
    # cudaEventElapsedTime: "If cudaEventRecord() has not been called on either event, then
    # cudaErrorInvalidResourceHandle is returned."
    assert rt.cudaEventElapsedTime(ev, ev) == (E.cudaErrorInvalidResourceHandle, None)
    s = ok(rt.cudaStreamCreate())
    ok(rt.cudaStreamWaitEvent(s, ev, 0))   # waiting for no work adds no wait
    assert rt.cudaStreamQuery(s) == (E.cudaSuccess,)
    ok(rt.cudaStreamDestroy(s))
    ok(rt.cudaEventDestroy(ev))


def test_query_and_elapsed_time_never_block(stream):
    start, end = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
    ok(rt.cudaEventRecord(start, stream))
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(stream, gate, None))
        ok(rt.cudaEventRecord(end, stream))
        assert gate.started.wait(WAIT)
        t0 = time.perf_counter()
        assert rt.cudaEventQuery(end) == (E.cudaErrorNotReady,)
        # cudaEventElapsedTime: cudaErrorNotReady if either event is recorded but not complete.
        assert rt.cudaEventElapsedTime(start, end) == (E.cudaErrorNotReady, None)
        assert time.perf_counter() - t0 < 0.5
        time.sleep(0.05)
    ok(rt.cudaEventSynchronize(end))
    ms = ok(rt.cudaEventElapsedTime(start, end))
    assert 50 <= ms < 5000            # covers the 50 ms the gate was held at least
    assert rt.cudaEventQuery(end) == (E.cudaSuccess,)
    for ev in (start, end):
        ok(rt.cudaEventDestroy(ev))


def test_elapsed_time_measures_the_work_between_events(stream):
    start, end = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
    ok(rt.cudaEventRecord(start, stream))
    ok(rt.cudaLaunchHostFunc(stream, lambda _: time.sleep(0.1), None))
    ok(rt.cudaEventRecord(end, stream))
    ok(rt.cudaEventSynchronize(end))
    ms = ok(rt.cudaEventElapsedTime(start, end))
    assert 99 <= ms < 2000
    assert ok(rt.cudaEventElapsedTime(end, start)) == pytest.approx(-ms)


def test_disable_timing_events_have_no_elapsed_time(stream):
    # cudaEventElapsedTime: "If either event was created with the cudaEventDisableTiming flag,
    # then this function will return cudaErrorInvalidResourceHandle."
    timed = ok(rt.cudaEventCreate())
    untimed = ok(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming))
    ok(rt.cudaEventRecord(timed, stream))
    ok(rt.cudaEventRecord(untimed, stream))
    ok(rt.cudaStreamSynchronize(stream))
    assert rt.cudaEventQuery(untimed) == (E.cudaSuccess,)
    assert rt.cudaEventElapsedTime(timed, untimed) == (E.cudaErrorInvalidResourceHandle, None)
    assert rt.cudaEventElapsedTime(untimed, timed) == (E.cudaErrorInvalidResourceHandle, None)


def test_create_flags_are_checked():
    # Valid flags: Default, BlockingSync, DisableTiming, Interprocess; "cudaEventInterprocess
    # must be specified along with cudaEventDisableTiming".
    for flags in (0, rt.cudaEventBlockingSync, rt.cudaEventDisableTiming,
                  rt.cudaEventBlockingSync | rt.cudaEventDisableTiming,
                  rt.cudaEventInterprocess | rt.cudaEventDisableTiming):
        ok(rt.cudaEventDestroy(ok(rt.cudaEventCreateWithFlags(flags))))
    for flags in (8, 0x100, -1, rt.cudaEventInterprocess):
        assert rt.cudaEventCreateWithFlags(flags) == (E.cudaErrorInvalidValue, None)
    assert rt.cudaEventCreateWithFlags(None)[0] == E.cudaErrorInvalidValue


def test_bad_event_handles(stream):
    ev = ok(rt.cudaEventCreate())
    ok(rt.cudaEventDestroy(ev))
    for bad in (ev, None, 0, rt.cudaEvent_t(), 0xBAD, "event"):
        assert rt.cudaEventQuery(bad) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaEventRecord(bad, stream) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaEventSynchronize(bad) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaStreamWaitEvent(stream, bad, 0) == (E.cudaErrorInvalidResourceHandle,)
        assert rt.cudaEventDestroy(bad) == (E.cudaErrorInvalidResourceHandle,)
    good = ok(rt.cudaEventCreate())
    assert rt.cudaEventRecord(good, 0xBAD) == (E.cudaErrorInvalidResourceHandle,)
    assert rt.cudaStreamWaitEvent(stream, good, 7) == (E.cudaErrorInvalidValue,)
    assert rt.cudaEventRecordWithFlags(good, stream, 9) == (E.cudaErrorInvalidValue,)
    ok(rt.cudaEventRecordWithFlags(good, stream, rt.cudaEventRecordDefault))
    ok(rt.cudaEventDestroy(good))


def test_wait_binds_to_the_record_current_at_wait_time():
    # cudaEventRecord: "Other APIs such as cudaStreamWaitEvent() use the most recently captured
    # state at the time of the API call, and are not affected by later calls to cudaEventRecord()."
    producer, consumer, other = (ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) for _ in range(3))
    ev = ok(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming))
    log = []
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(producer, gate, None))
        ok(rt.cudaEventRecord(ev, producer))
        ok(rt.cudaStreamWaitEvent(consumer, ev, 0))
        ok(rt.cudaLaunchHostFunc(consumer, lambda _: log.append("consumer"), None))
        ok(rt.cudaEventRecord(ev, other))             # re-record on an idle stream: complete
        assert rt.cudaEventQuery(ev) == (E.cudaSuccess,)
        assert gate.started.wait(WAIT)
        time.sleep(0.1)
        assert log == []                               # still bound to the first record
        # A wait made now binds to the new (complete) record: nothing to wait for.
        ok(rt.cudaStreamWaitEvent(other, ev, 0))
        ok(rt.cudaLaunchHostFunc(other, lambda _: log.append("other"), None))
        ok(rt.cudaStreamSynchronize(other))
        assert log == ["other"]
    ok(rt.cudaStreamSynchronize(consumer))
    assert log == ["other", "consumer"]
    for s in (producer, consumer, other):
        ok(rt.cudaStreamDestroy(s))


def test_wait_works_whatever_the_stream_creation_order():
    # HIP-CPU deadlocks when the waiting stream was created before the recording one.
    waiter = ok(rt.cudaStreamCreate())
    recorder_stream = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    log = []
    ok(rt.cudaLaunchHostFunc(recorder_stream, lambda _: (time.sleep(0.05), log.append(1)), None))
    ok(rt.cudaEventRecord(ev, recorder_stream))
    ok(rt.cudaStreamWaitEvent(waiter, ev, 0))
    ok(rt.cudaLaunchHostFunc(waiter, lambda _: log.append(2), None))
    ok(rt.cudaStreamSynchronize(waiter))
    assert log == [1, 2]
    for s in (waiter, recorder_stream):
        ok(rt.cudaStreamDestroy(s))


def test_event_synchronize_waits_for_the_recorded_work(stream):
    ev = ok(rt.cudaEventCreateWithFlags(rt.cudaEventBlockingSync))
    done = []
    ok(rt.cudaLaunchHostFunc(stream, lambda _: (time.sleep(0.05), done.append(True)), None))
    ok(rt.cudaEventRecord(ev, stream))
    ok(rt.cudaLaunchHostFunc(stream, lambda _: time.sleep(0.5), None))  # after the record
    t0 = time.perf_counter()
    ok(rt.cudaEventSynchronize(ev))
    assert done == [True] and time.perf_counter() - t0 < 0.45


def test_record_on_legacy_stream_covers_blocking_streams_work():
    # The legacy stream "first waits on all blocking streams": an event recorded on it
    # completes only after the blocking streams' earlier work.
    s = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(s, gate, None))
        assert gate.started.wait(WAIT)
        ok(rt.cudaEventRecord(ev, 0))
        time.sleep(0.05)
        assert rt.cudaEventQuery(ev) == (E.cudaErrorNotReady,)
    ok(rt.cudaEventSynchronize(ev))
    ok(rt.cudaStreamDestroy(s))


def test_wait_on_legacy_stream_holds_later_blocking_work():
    # "When an action is taken in the legacy stream such as ... cudaStreamWaitEvent(), ... all
    # blocking streams wait on the legacy stream."
    free = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    blocking = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    log = []
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(free, gate, None))
        ok(rt.cudaEventRecord(ev, free))
        ok(rt.cudaStreamWaitEvent(0, ev, 0))
        ok(rt.cudaLaunchHostFunc(blocking, lambda _: log.append("blocking"), None))
        assert gate.started.wait(WAIT)
        time.sleep(0.05)
        assert log == []
    ok(rt.cudaStreamSynchronize(blocking))
    assert log == ["blocking"]
    for st in (free, blocking):
        ok(rt.cudaStreamDestroy(st))


def test_destroying_a_pending_event_keeps_waiters_waiting():
    # cudaEventDestroy: "the call does not block on completion of the event".
    a = ok(rt.cudaStreamCreate())
    b = ok(rt.cudaStreamCreate())
    ev = ok(rt.cudaEventCreate())
    log = []
    with Gate() as gate:
        ok(rt.cudaLaunchHostFunc(a, gate, None))
        ok(rt.cudaEventRecord(ev, a))
        ok(rt.cudaStreamWaitEvent(b, ev, 0))
        ok(rt.cudaLaunchHostFunc(b, lambda _: log.append("b"), None))
        ok(rt.cudaEventDestroy(ev))
        time.sleep(0.05)
        assert log == []
    ok(rt.cudaStreamSynchronize(b))
    assert log == ["b"]
    for s in (a, b):
        ok(rt.cudaStreamDestroy(s))


def test_many_streams_chained_by_events_from_many_threads():
    # A chain of 32 streams, each waiting for the previous one's event, fed from 4 host threads.
    n = 32
    streams = [ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) for _ in range(n)]
    events = [ok(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)) for _ in range(n)]
    order = []
    lock = threading.Lock()

    def link(i):
        if i:
            ok(rt.cudaStreamWaitEvent(streams[i], events[i - 1], 0))
        ok(rt.cudaLaunchHostFunc(streams[i], lambda _: order.append(i), None))
        ok(rt.cudaEventRecord(events[i], streams[i]))
    # Links must be made in order (a wait binds to the record made before it), from any thread.
    turn = [0]
    cond = threading.Condition(lock)

    def worker(k):
        for i in range(k, n, 4):
            with cond:
                assert cond.wait_for(lambda: turn[0] == i, WAIT)
                link(i)
                turn[0] += 1
                cond.notify_all()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok(rt.cudaEventSynchronize(events[-1]))
    assert order == list(range(n))
    for s, e in zip(streams, events):
        ok(rt.cudaStreamDestroy(s))
        ok(rt.cudaEventDestroy(e))


def test_events_appear_in_the_queue_log(tmp_path, stream):
    path = tmp_path / "log.jsonl"
    streamq.trace.enable(str(path))
    try:
        ev = ok(rt.cudaEventCreate())
        ok(rt.cudaLaunchHostFunc(stream, lambda _: time.sleep(0.2), None))
        ok(rt.cudaEventRecord(ev, stream))
        ok(rt.cudaEventSynchronize(ev))
        ok(rt.cudaStreamSynchronize(stream))
        streamq.trace.flush()
    finally:
        streamq.trace.disable()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    label = f"cudaEvent-{int(ev):#x}"
    assert any(r["type"] == "task" and r["kind"] == "event_record" and r["name"] == label for r in records)
    assert any(r["type"] == "host_sync" and r["what"] == "cudaEventSynchronize" for r in records)
