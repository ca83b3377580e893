"""Races (the offline stream sanitizer): found where no happens-before path exists, not found where one does."""

import pytest
from logbuilder import LogBuilder, view

from streamq.analysis import analyze
from streamq.analysis.graph import HappensBefore, QueueState

pytestmark = pytest.mark.timeout(60)

BUF, OTHER = 0x1000, 0x9000


def v(buf=BUF, shape=(256,), **kw):
    return view(buf, shape, **kw)


def races(tmp_path, b):
    return analyze(b.write(tmp_path / "log.jsonl")).races


def two_streams():
    b = LogBuilder()
    return b, b.queue("s0"), b.queue("s1")


def test_write_then_unordered_read_on_another_queue_is_a_race(tmp_path):
    b, s0, s1 = two_streams()
    _, lw = b.op(s0, "aten::fill_", writes=[v()])
    _, lr = b.op(s1, "aten::relu", reads=[v()], writes=[v(OTHER)])
    (r,) = races(tmp_path, b)
    assert r["first"] == {"op": "aten::fill_", "queue": "s0", "access": "write"}
    assert r["second"] == {"op": "aten::relu", "queue": "s1", "access": "read"}
    assert r["count"] == 1
    assert r["examples"] == [{"lines": [lw, lr], "buffer": BUF, "bytes": [0, 1024]}]


def test_event_record_and_wait_orders_the_queues(tmp_path):
    b, s0, s1 = two_streams()
    b.op(s0, "aten::fill_", writes=[v()])
    marker, _ = b.record_event(s0, "e")
    b.wait_event(s1, "e", marker)
    b.op(s1, "aten::relu", reads=[v()], writes=[v(OTHER)])
    assert races(tmp_path, b) == []


def test_wait_on_an_earlier_record_does_not_cover_later_work(tmp_path):
    b, s0, s1 = two_streams()
    marker, _ = b.record_event(s0, "e")
    b.op(s0, "aten::fill_", writes=[v()])          # after the record: not covered by it
    b.wait_event(s1, "e", marker)
    b.op(s1, "aten::relu", reads=[v()], writes=[v(OTHER)])
    assert len(races(tmp_path, b)) == 1


def test_task_dependency_orders_and_transitivity_holds(tmp_path):
    b, s0, s1 = two_streams()
    s2 = b.queue("s2")
    w, _ = b.op(s0, "aten::fill_", writes=[v()])
    mid, _ = b.op(s1, "aten::relu", reads=[v(OTHER)], writes=[v(OTHER + 0x1000)], deps=[w])
    b.op(s2, "aten::mul", reads=[v()], writes=[v()], deps=[mid])   # s0 -> s1 -> s2
    assert races(tmp_path, b) == []


def test_host_sync_orders_later_submissions(tmp_path):
    b, s0, s1 = two_streams()
    b.op(s0, "aten::fill_", writes=[v()])
    b.host_sync("cudaStreamSynchronize", queue=s0)
    b.op(s1, "aten::relu", reads=[v()], writes=[v(OTHER)])
    assert races(tmp_path, b) == []
    b2, s0, s1 = two_streams()
    b2.op(s0, "aten::fill_", writes=[v()])
    b2.host_sync("cudaStreamSynchronize", queue=s1)   # the wrong stream
    b2.op(s1, "aten::relu", reads=[v()], writes=[v(OTHER)])
    assert len(races(tmp_path, b2)) == 1


def test_host_read_needs_a_sync(tmp_path):
    b, s0, _ = two_streams()
    b.op(s0, "aten::fill_", writes=[v()])
    b.host_access("host_read", BUF, 16)
    (r,) = races(tmp_path, b)
    assert r["second"] == {"op": "host_read", "queue": "host", "access": "read"}
    b2, s0, _ = two_streams()
    b2.op(s0, "aten::fill_", writes=[v()])
    b2.host_sync("cudaDeviceSynchronize")
    b2.host_access("host_read", BUF, 16)
    assert races(tmp_path, b2) == []


def test_host_write_before_submission_is_ordered(tmp_path):
    b, s0, _ = two_streams()
    b.host_access("host_write", BUF, 1024)
    b.op(s0, "aten::relu", reads=[v()], writes=[v(OTHER)])
    assert races(tmp_path, b) == []


def test_disjoint_bytes_reads_only_and_one_serial_queue_are_not_races(tmp_path):
    b, s0, s1 = two_streams()
    b.op(s0, "aten::fill_", writes=[v(shape=(128,))])
    b.op(s1, "aten::fill_", writes=[v(shape=(128,), offset=512)])    # the other half
    b.op(s0, "aten::relu", reads=[v(OTHER)], writes=[v(OTHER + 0x1000)])
    b.op(s1, "aten::relu", reads=[v(OTHER)], writes=[v(OTHER + 0x2000)])  # both only read OTHER
    b.op(s0, "aten::mul", reads=[v(shape=(128,))], writes=[v(shape=(128,))])   # same queue: ordered
    assert races(tmp_path, b) == []


def test_partial_overlap_write_write_is_a_race(tmp_path):
    b, s0, s1 = two_streams()
    b.op(s0, "aten::fill_", writes=[v(shape=(128,))])
    b.op(s1, "aten::fill_", writes=[v(shape=(128,), offset=256)])   # bytes 256..511 overlap
    (r,) = races(tmp_path, b)
    assert r["first"]["access"] == r["second"]["access"] == "write"
    assert r["examples"][0]["bytes"] == [256, 512]


def test_free_then_reuse_of_an_address_is_a_new_lifetime(tmp_path):
    b, s0, s1 = two_streams()
    b.op(s0, "aten::fill_", writes=[v()])
    b.host_sync("cudaStreamSynchronize", queue=s0)
    b.free(BUF)
    b.alloc(BUF, 1024)
    b.op(s1, "aten::fill_", writes=[v()])
    b.op(s0, "aten::relu", reads=[v(OTHER)], writes=[v(OTHER + 0x100)])
    assert races(tmp_path, b) == []
    b2, s0, s1 = two_streams()      # without the free the same pattern races
    b2.op(s0, "aten::fill_", writes=[v()])
    b2.op(s1, "aten::fill_", writes=[v()])
    assert len(races(tmp_path, b2)) == 1


def test_concurrent_queue_barrier_orders_but_plain_tasks_race(tmp_path):
    b = LogBuilder()
    pool = b.queue("pool", concurrent=True)
    b.op(pool, "aten::fill_", writes=[v()], submit=0.0, start=1.0, dur=10.0, thread=1)
    b.op(pool, "aten::fill_", writes=[v()], submit=0.1, start=2.0, dur=10.0, thread=2)   # overlaps
    (r,) = races(tmp_path, b)
    assert r["first"]["queue"] == r["second"]["queue"] == "pool"
    b2 = LogBuilder()
    pool = b2.queue("pool", concurrent=True)
    b2.op(pool, "aten::fill_", writes=[v()], submit=0.0, start=1.0, dur=5.0)
    b2.op(pool, "barrier", kind="barrier", submit=0.1, start=6.0, dur=1.0)
    b2.op(pool, "aten::fill_", writes=[v()], submit=0.2, start=8.0, dur=5.0)
    assert races(tmp_path, b2) == []


def test_event_on_a_concurrent_queue_covers_tasks_submitted_before_it(tmp_path):
    b = LogBuilder()
    pool, s1 = b.queue("pool", concurrent=True), b.queue("s1")
    b.op(pool, "aten::fill_", writes=[v()], submit=0.0, start=1.0, dur=5.0)
    marker, _ = b.op(pool, "e", kind="event_record", submit=0.5, start=6.0, dur=0.0)
    b.op(pool, "aten::fill_", writes=[v(OTHER)], submit=0.7, start=1.5, dur=10.0, thread=2)
    b.wait_event(s1, "e", marker)
    b.op(s1, "aten::relu", reads=[v()], writes=[v(0x20000)])          # ordered by the event
    b.op(s1, "aten::relu", reads=[v(OTHER)], writes=[v(0x30000)])     # submitted after: a race
    (r,) = races(tmp_path, b)
    assert r["first"]["queue"] == "pool" and r["second"]["queue"] == "s1"
    assert r["examples"][0]["buffer"] == OTHER


def test_hb_relation_directly():
    hb = HappensBefore()
    q = QueueState(1, "q")
    hb.queues[1] = q
    rec = {"type": "task", "queue": 1, "name": "a", "kind": "kernel", "start_us": 0.0, "end_us": 1.0,
           "submit_us": 0.0, "id": 1, "deps": []}
    a = hb.task(1, rec)
    c = hb.task(2, dict(rec, id=2, start_us=2.0, end_us=3.0))
    assert HappensBefore.hb(a, c) and not HappensBefore.hb(a, a)
