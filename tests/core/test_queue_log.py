"""The queue log: records, schema fields, buffers, ranges, and STREAMQ_LOG."""

import json

import numpy as np
import pytest

import streamq
from streamq import trace

pytestmark = pytest.mark.timeout(60)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_task_records_carry_the_documented_fields(tmp_path):
    path = tmp_path / "log.jsonl"
    a = np.zeros((4, 8), np.float32)
    b = np.ones((4, 8), np.float32)
    trace.enable(path)
    try:
        q = streamq.Queue("logged", cmg=0)
        t1 = q.submit(np.add, a, 1, out=a, reads=[a], writes=[a[1:]])
        e = q.record_event()
        q2 = streamq.Queue("other", concurrent=True)
        q2.wait_event(e)
        t2 = q2.submit(lambda: 1 / 0, after=[t1])
        t2.exception(timeout=10)
        with trace.range("phase"):
            q.synchronize()
    finally:
        trace.disable()
    records = read_log(path)
    assert records[0]["type"] == "meta" and records[0]["version"] == trace.SCHEMA_VERSION
    queues = {r["queue"]: r for r in records if r["type"] == "queue"}
    assert queues[q.id]["label"] == "logged" and queues[q.id]["cmg"] == 0
    assert queues[q2.id]["concurrent"] is True
    tasks = {r["id"]: r for r in records if r["type"] == "task" and r["id"] is not None}
    r1 = tasks[t1.id]
    assert r1["name"].endswith("add") and r1["kind"] == "host" and r1["status"] == "ok"
    assert r1["submit_us"] <= r1["start_us"] <= r1["end_us"]
    assert r1["reads"][0]["shape"] == [4, 8] and r1["reads"][0]["dtype"] == "<f4"
    assert r1["reads"][0]["bytes"] == 4 * 8 * 4
    w = r1["writes"][0]
    assert w["buffer"] == r1["reads"][0]["buffer"] and w["offset"] == 8 * 4 and w["shape"] == [3, 8]
    assert r1["cmg"] == 0 and isinstance(r1["thread"], int)
    r2 = tasks[t2.id]
    assert r2["status"] == "error" and "ZeroDivisionError" in r2["error"] and r2["deps"] == [t1.id]
    kinds = {r["kind"] for r in tasks.values()}
    assert {"event_record", "event_wait"} <= kinds
    assert any(r["type"] == "range" and r["name"] == "phase" and r["end_us"] >= r["start_us"]
               for r in records)
    assert any(r["type"] == "host_sync" and r["what"] == "queue.synchronize" for r in records)


def test_items_a_waiting_host_thread_runs_are_logged_on_the_queues_cmg(tmp_path):
    import threading
    path = tmp_path / "log.jsonl"
    trace.enable(path)
    try:
        q = streamq.Queue("helped", cmg=0)
        q.suspend()                                 # no worker can take the items ...
        tasks = [q.submit(lambda: threading.get_ident()) for _ in range(3)]
        q.resume()
        q.synchronize()                             # ... before this thread, most of the time
    finally:
        trace.disable()
    rows = {r["id"]: r for r in read_log(path) if r["type"] == "task"}
    for t in tasks:
        row = rows[t.id]
        assert row["cmg"] == 0, row                 # a worker's or the lent host thread's: CMG 0
        assert row["thread"] == t.result()


def test_waiting_on_an_already_complete_record_still_logs_the_edge(tmp_path):
    # The analyzer's happens-before graph needs the edge even when the wait cost nothing:
    # without it a copy on one stream and its reader on another look like a race.
    path = tmp_path / "log.jsonl"
    trace.enable(path)
    try:
        q1, q2 = streamq.Queue("producer"), streamq.Queue("consumer")
        q1.submit(lambda: None)
        event = q1.record_event()
        assert q1.synchronize(timeout=10)            # the record is complete before the wait
        q2.wait_event(event)
        never = streamq.Event("never-recorded")
        q2.wait_event(never)
    finally:
        trace.disable()
    rows = read_log(path)
    marker = next(r for r in rows if r["type"] == "task" and r["kind"] == "event_record")
    waits = [r for r in rows if r["type"] == "task" and r["kind"] == "event_wait"]
    assert [w["deps"] for w in waits] == [[marker["id"]], []]


def test_dependency_failures_and_cancellations_are_logged(tmp_path):
    path = tmp_path / "log.jsonl"
    trace.enable(path)
    try:
        q = streamq.Queue()
        q.suspend()
        bad = q.submit(lambda: 1 / 0)
        dependent = q.submit(print, after=bad)
        cancelled = q.submit(print)
        cancelled.cancel()
        q.resume()
        dependent.exception(timeout=10)
        bad.exception()
    finally:
        trace.disable()
    statuses = {r["id"]: r["status"] for r in read_log(path) if r["type"] == "task" and r["id"]}
    assert statuses[bad.id] == "error"
    assert statuses[dependent.id] == "dependency_failed"
    assert statuses[cancelled.id] == "cancelled"


def test_emit_converts_times_and_requires_type(tmp_path):
    path = tmp_path / "log.jsonl"
    trace.enable(path)
    try:
        import time
        now = time.perf_counter_ns()
        trace.emit({"type": "alloc", "bytes": 64, "at_ns": now})
        with pytest.raises(ValueError, match="type"):
            trace.emit({"bytes": 1})
    finally:
        trace.disable()
    rec = [r for r in read_log(path) if r["type"] == "alloc"][0]
    assert rec["bytes"] == 64 and isinstance(rec["at_us"], float)


def test_streamq_log_environment_variable(tmp_path, python_subprocess):
    path = tmp_path / "env.jsonl"
    out = python_subprocess("""
        import streamq
        q = streamq.Queue("envq")
        for i in range(100):
            q.submit(pow, i, 2)
        q.synchronize()
    """, env={"STREAMQ_LOG": str(path)})
    assert out.returncode == 0, out.stderr
    tasks = [r for r in read_log(path) if r["type"] == "task" and r["kind"] == "host"]
    assert len(tasks) == 100 and all(r["label"] == "envq" for r in tasks)


def test_logging_off_writes_nothing_and_enable_twice_replaces(tmp_path):
    assert not trace.enabled()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    trace.enable(first)
    trace.enable(second)
    assert trace.path() == str(second)
    streamq.Queue().submit(print, end="").result(timeout=10)
    trace.disable()
    assert trace.path() is None
    assert any(r["type"] == "task" for r in read_log(second))
