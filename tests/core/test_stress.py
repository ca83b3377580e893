"""Stress, deadlock and property tests of the ordering guarantees."""

import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamq
from streamq import DependencyError, Queue

pytestmark = pytest.mark.timeout(240)


class Boom(Exception):
    pass


def test_100k_tasks_over_many_queues_with_failures_and_cross_queue_events():
    rng = random.Random(1234)
    queues = [Queue(f"serial{i}", cmg=i % len(streamq.topology())) for i in range(12)]
    queues += [Queue(f"conc{i}", concurrent=True, priority=i % 3) for i in range(4)]
    serial = [q for q in queues if not q.concurrent]
    logs = {q.label: [] for q in serial}
    last_by_queue = {}
    records = []  # (task, expected, kind)
    events = []
    total = 100_000

    def work(label, seq, fail):
        if label in logs:
            logs[label].append(seq)
        if fail:
            raise Boom(seq)
        return seq

    for i in range(total):
        q = queues[rng.randrange(len(queues))]
        fail = rng.random() < 0.02
        after = ()
        if events and rng.random() < 0.01:
            q.wait_event(rng.choice(events))
        if rng.random() < 0.01 and last_by_queue:
            dep = rng.choice(list(last_by_queue.values()))
            after = (dep,)
        t = q.submit(work, q.label, i, fail, after=after)
        records.append((t, i, fail, after))
        last_by_queue[q.label] = t
        if rng.random() < 0.005:
            events.append(q.record_event())
    for q in queues:
        assert q.synchronize(timeout=120)
    for t, i, fail, after in records:
        dep_failed = bool(after) and (after[0].exception() is not None or after[0].cancelled())
        if dep_failed:
            with pytest.raises(DependencyError):
                t.result(timeout=0)
        elif fail:
            with pytest.raises(Boom):
                t.result(timeout=0)
        else:
            assert t.result(timeout=0) == i
    # Serial queues ran what they ran in submission order.
    for label, seqs in logs.items():
        assert seqs == sorted(seqs), label
    assert all(e.query() for e in events)


def test_many_threads_submitting_to_shared_queues_keep_per_thread_order():
    q = Queue()
    per_thread = {k: [] for k in range(8)}

    def producer(k):
        for i in range(2000):
            q.submit(per_thread[k].append, i)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert q.synchronize(timeout=60)
    for k, seen in per_thread.items():
        assert seen == list(range(2000))


def test_ping_pong_between_queues_via_events_does_not_deadlock():
    a, b = Queue("ping"), Queue("pong")
    trail = []
    for i in range(500):
        a.submit(trail.append, ("a", i))
        b.wait_event(a.record_event())
        b.submit(trail.append, ("b", i))
        a.wait_event(b.record_event())
    assert a.synchronize(timeout=60) and b.synchronize(timeout=60)
    assert trail == [(side, i) for i in range(500) for side in ("a", "b")]


def test_random_cancellations_never_lose_or_duplicate_work():
    rng = random.Random(7)
    q = Queue(concurrent=True)
    ran = []
    lock = threading.Lock()

    def rec(i):
        with lock:
            ran.append(i)

    tasks = [q.submit(rec, i) for i in range(20000)]
    cancelled = {i for i, t in enumerate(tasks) if rng.random() < 0.3 and t.cancel()}
    assert q.synchronize(timeout=60)
    assert len(ran) == len(set(ran))
    assert set(ran) == set(range(20000)) - cancelled
    assert all(tasks[i].cancelled() for i in cancelled)


def test_sync_from_many_threads_on_one_serial_queue_is_exclusive():
    q = Queue()
    inside = [0]
    peak = [0]

    def critical():
        inside[0] += 1
        peak[0] = max(peak[0], inside[0])
        time.sleep(0)
        inside[0] -= 1

    def hammer():
        for _ in range(2000):
            q.sync(critical)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert peak[0] == 1


ops = st.lists(st.sampled_from(["task", "barrier", "slow", "event", "sync"]), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_property_serial_queue_preserves_submission_order(seq):
    q = Queue()
    seen = []
    expected = []
    for i, op in enumerate(seq):
        if op == "event":
            q.record_event()
            continue
        expected.append(i)
        if op == "sync":
            q.sync(seen.append, i)
        elif op == "slow":
            q.submit(lambda i=i: (time.sleep(0.0005), seen.append(i)))
        else:
            q.submit(seen.append, i)
    assert q.synchronize(timeout=30)
    assert seen == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_property_barriers_run_alone_and_split_the_queue(seq):
    q = Queue(concurrent=True)
    lock = threading.Lock()
    state = {"running": 0}
    log = []  # (index, op, running-at-start, finished-before)
    finished = set()

    def body(i, op):
        with lock:
            state["running"] += 1
            log.append((i, op, state["running"], frozenset(finished)))
        if op == "slow":
            time.sleep(0.0005)
        with lock:
            state["running"] -= 1
            finished.add(i)

    submitted = []
    for i, op in enumerate(seq):
        if op == "barrier":
            q.barrier(body, i, op)
        elif op == "sync":
            q.sync(body, i, op)
        elif op == "event":
            q.record_event()
            continue
        else:
            q.submit(body, i, op)
        submitted.append((i, op))
    assert q.synchronize(timeout=30)
    assert len(log) == len(submitted)
    for i, op, running, before in log:
        if op == "barrier":
            assert running == 1
            assert {j for j, _ in submitted if j < i} <= before  # everything earlier finished
        else:
            for j, jop in submitted:
                if jop == "barrier" and j < i:
                    assert j in before  # nothing after a barrier started before it finished
