"""Events (CUDA rules), cross-queue dependencies, groups, semaphores and error delivery."""

import concurrent.futures as cf
import gc
import logging
import threading
import time

import pytest

import streamq
from streamq import DependencyError, Event, Group, InvalidEventError, NotReadyError, Queue, Semaphore

pytestmark = pytest.mark.timeout(60)


def test_unrecorded_event_counts_as_complete():
    e = Event()
    assert e.query() and e.synchronize(timeout=0) and not e.recorded
    q = Queue()
    q.wait_event(e)  # adds no wait
    assert q.submit(lambda: 1).result(timeout=10) == 1


def test_record_event_completes_after_earlier_work_only():
    q = Queue()
    gate = threading.Event()
    q.submit(gate.wait, 10)
    e = q.record_event()
    assert not e.query()
    assert e.synchronize(timeout=0.05) is False
    gate.set()
    assert e.synchronize(timeout=10) and e.query()


def test_record_event_on_concurrent_queue_waits_for_all_earlier_tasks():
    q = Queue(concurrent=True)
    # streamq semaphores: a worker blocked on one frees its core for the rest of the queue.
    gates = [Semaphore(0) for _ in range(3)]
    for g in gates:
        q.submit(g.wait, 10)
    e = q.record_event()
    later = q.submit(time.sleep, 0)
    later.result(timeout=10)  # later work does not wait for the event
    gates[0].signal()
    gates[1].signal()
    time.sleep(0.02)
    assert not e.query()
    gates[2].signal()
    assert e.synchronize(timeout=10)


def test_wait_event_orders_work_across_queues_without_blocking_caller():
    producer, consumer = Queue("producer"), Queue("consumer")
    data = []
    gate = threading.Event()
    producer.submit(lambda: (gate.wait(10), data.append("produced")))
    e = producer.record_event()
    t0 = time.monotonic()
    consumer.wait_event(e)
    assert time.monotonic() - t0 < 0.5  # the caller is not blocked
    result = consumer.submit(lambda: list(data))
    time.sleep(0.02)
    assert not result.done()
    gate.set()
    assert result.result(timeout=10) == ["produced"]


def test_wait_binds_to_the_record_current_at_wait_time():
    a, b = Queue("a"), Queue("b")
    e = Event()
    a.record_event(e)  # a is idle: complete at once
    b.wait_event(e)
    gate = threading.Event()
    a.submit(gate.wait, 10)
    a.record_event(e)  # re-record: pending now, but b's wait bound to the old record
    assert b.submit(lambda: "ran").result(timeout=10) == "ran"
    assert not e.query()
    gate.set()
    assert e.synchronize(timeout=10)


def test_wait_event_works_whatever_order_queues_were_created():
    later_created = Queue("second")
    first_created = Queue("first")
    gate = threading.Event()
    later_created.submit(gate.wait, 10)
    e = later_created.record_event()
    first_created.wait_event(e)
    t = first_created.submit(lambda: e.query())
    gate.set()
    assert t.result(timeout=10) is True


def test_elapsed_time_measures_the_work_between_events_and_never_blocks():
    q = Queue()
    start = q.record_event(Event())
    q.submit(time.sleep, 0.05)
    end = q.record_event(Event())
    with pytest.raises(NotReadyError):
        start.elapsed_time(end) if not end.query() else (_ for _ in ()).throw(NotReadyError())
    end.synchronize(timeout=10)
    ms = start.elapsed_time(end)
    assert 45 <= ms < 2000


def test_elapsed_time_errors_follow_cuda():
    q = Queue()
    recorded = q.record_event()
    with pytest.raises(InvalidEventError, match="never recorded"):
        recorded.elapsed_time(Event())
    untimed = q.record_event(Event(timing=False))
    with pytest.raises(InvalidEventError, match="timing"):
        recorded.elapsed_time(untimed)
    with pytest.raises(TypeError):
        recorded.elapsed_time("later")


def test_event_record_helper_and_after_with_event():
    q1, q2 = Queue(), Queue()
    gate = threading.Event()
    q1.submit(gate.wait, 10)
    e = Event().record(q1)
    t = q2.submit(lambda: "after event", after=e)
    time.sleep(0.02)
    assert not t.done()
    gate.set()
    assert t.result(timeout=10) == "after event"


def test_exception_reaches_result_and_exception():
    q = Queue()
    t = q.submit(lambda: {}["missing"])
    with pytest.raises(KeyError):
        t.result(timeout=10)
    assert isinstance(t.exception(), KeyError)


def test_dependency_failure_propagates_without_running_dependent():
    a, b = Queue(), Queue()
    ran = []
    failing = a.submit(lambda: 1 / 0)
    dependent = b.submit(ran.append, "x", after=[failing])
    with pytest.raises(DependencyError) as info:
        dependent.result(timeout=10)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.dependency is failing
    assert ran == []
    # Transitively too.
    third = a.submit(ran.append, "y", after=dependent)
    with pytest.raises(DependencyError):
        third.result(timeout=10)
    assert ran == []


def test_cancelled_dependency_fails_dependent():
    q, other = Queue(), Queue()
    gate = threading.Event()
    q.submit(gate.wait, 10)
    victim = q.submit(print)
    victim.cancel()
    dependent = other.submit(lambda: "never", after=victim)
    gate.set()
    with pytest.raises(DependencyError) as info:
        dependent.result(timeout=10)
    assert isinstance(info.value.__cause__, cf.CancelledError)


def test_after_accepts_foreign_futures():
    with cf.ThreadPoolExecutor(1) as pool:
        f = pool.submit(time.sleep, 0.02)
        q = Queue()
        assert q.submit(lambda: f.done(), after=f).result(timeout=10) is True


def test_unretrieved_exception_is_logged(caplog):
    q = Queue()
    t = q.submit(lambda: 1 / 0)
    t.exception  # not called: never retrieved
    cf.wait([t], timeout=10)
    with caplog.at_level(logging.ERROR, logger="streamq"):
        del t, q  # the queue remembers its latest task
        deadline = time.monotonic() + 5  # a worker may still hold it for a moment
        while time.monotonic() < deadline and not any("never retrieved" in r.getMessage()
                                                      for r in caplog.records):
            gc.collect()
            time.sleep(0.01)
    assert any("never retrieved" in r.getMessage() and r.exc_info for r in caplog.records)


def test_retrieved_exception_is_not_logged(caplog):
    q = Queue()
    t = q.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        t.result(timeout=10)
    with caplog.at_level(logging.ERROR, logger="streamq"):
        del t
        gc.collect()
    assert not any("never retrieved" in r.getMessage() for r in caplog.records)


def test_callbacks_run_once_even_when_added_during_completion():
    q = Queue(concurrent=True)
    for _ in range(200):
        calls = []
        t = q.submit(lambda: None)
        t.add_done_callback(calls.append)
        cf.wait([t], timeout=10)
        time.sleep(0)
        t.add_done_callback(calls.append)
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert calls == [t, t]


def test_group_wait_and_notify():
    q = Queue(concurrent=True)
    g = Group()
    done = []
    for i in range(10):
        q.submit(lambda i=i: (time.sleep(0.002), done.append(i)), group=g)
    notified = threading.Event()
    g.notify(Queue(), notified.set)
    assert g.wait(timeout=10)
    assert sorted(done) == list(range(10))
    assert notified.wait(10)


def test_group_counts_failures_and_manual_enter_leave():
    g = Group()
    q = Queue()
    q.submit(lambda: 1 / 0, group=g).exception(timeout=10)
    assert g.wait(timeout=10)
    g.enter()
    assert g.wait(timeout=0.02) is False
    g.leave()
    assert g.wait(timeout=0)
    with pytest.raises(ValueError, match="without a matching enter"):
        g.leave()


def test_group_notify_when_already_empty_submits_now():
    g = Group()
    assert g.notify(Queue(), lambda: None) is None


def test_semaphore_counts_and_times_out():
    s = Semaphore(2)
    assert s.wait(0) and s.wait(0)
    assert s.wait(0.02) is False
    assert s.signal() is False  # nobody waiting
    assert s.wait(0)
    with pytest.raises(ValueError, match="value"):
        Semaphore(-1)


def test_semaphore_signal_wakes_a_waiter():
    s = Semaphore(0)
    q = Queue()
    t = q.submit(s.wait, 10)
    deadline = time.monotonic() + 5
    woke = False
    while not woke and time.monotonic() < deadline:
        time.sleep(0.005)
        woke = s.signal()
        if not woke:
            s.wait(0)  # take the unused signal back and try again
    assert woke and t.result(timeout=10) is True


def test_waiting_on_a_later_task_of_ones_own_serial_queue_times_out_not_hangs_forever():
    q = Queue()
    inner = []

    def outer():
        later = q.submit(lambda: "later")
        inner.append(later)
        return later.done()

    assert q.submit(outer).result(timeout=10) is False
    assert inner[0].result(timeout=10) == "later"
