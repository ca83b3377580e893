"""The queue-log writer's batched rows: same fields and values as the documented schema v1."""

import json

import numpy as np
import pytest

import streamq
from streamq import trace

pytestmark = pytest.mark.timeout(60)

V1_TASK_FIELDS = {"type", "id", "queue", "label", "cmg", "thread", "name", "kind", "submit_us",
                  "start_us", "end_us", "deps", "reads", "writes", "status"}


class Described:
    """A non-numpy buffer that describes itself, as the CUDA facade's BufferRef does."""

    def __streamq_buffer__(self):
        return {"buffer": 4096, "offset": 64, "dtype": "<f2", "shape": [2, 3], "strides": [6, 2],
                "bytes": 12}


class Broken:
    def __streamq_buffer__(self):
        raise RuntimeError("gone")


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def logged(path, fn):
    trace.enable(path)
    try:
        fn()
    finally:
        trace.disable()
    return read_log(path)


def test_task_rows_carry_v1_fields_and_describe_buffers_exactly(tmp_path):
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    arrays = [base, base[1:4, ::2], base[::-1], base.T, np.zeros((), np.int64),
              np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")]), base[2:2]]
    expected = [trace.describe_buffer(a) for a in arrays]

    def work():
        q = streamq.Queue("writer")
        q.enqueue(print, (), {"end": ""}, name="aten::add", kind="kernel", reads=arrays,
                  writes=[Described(), Broken()]).result(timeout=10)

    recs = logged(tmp_path / "log.jsonl", work)
    assert recs[0]["type"] == "meta"
    (task,) = [r for r in recs if r["type"] == "task"]
    assert set(task) == V1_TASK_FIELDS
    assert task["reads"] == expected
    assert task["writes"][0] == Described().__streamq_buffer__()
    assert task["writes"][1] == {"error": "cannot describe Broken: gone"}
    assert task["name"] == "aten::add" and task["kind"] == "kernel" and task["status"] == "ok"
    assert task["submit_us"] <= task["start_us"] <= task["end_us"]
    for key in ("submit_us", "start_us", "end_us"):
        assert isinstance(task[key], float) and round(task[key], 3) == task[key]
    queue_line = next(i for i, r in enumerate(recs) if r["type"] == "queue" and r["label"] == "writer")
    assert queue_line < recs.index(task)


def test_names_deps_errors_and_targets(tmp_path):
    def named():
        pass

    class Callable:
        def __call__(self):
            raise ValueError("boom \"quoted\"")

    def work():
        root = streamq.Queue("root")
        child = streamq.Queue("child", target=root)
        t1 = child.submit(named)
        t2 = child.submit(Callable(), after=[t1])
        t2.exception(timeout=10)
        child.submit(lambda: None).result(timeout=10)

    recs = logged(tmp_path / "log.jsonl", work)
    tasks = [r for r in recs if r["type"] == "task" and r["kind"] == "host"]
    assert tasks[0]["name"].endswith("test_names_deps_errors_and_targets.<locals>.named")
    assert tasks[1]["name"].endswith("Callable") and tasks[1]["deps"] == [tasks[0]["id"]]
    assert tasks[1]["status"] == "error" and tasks[1]["error"] == 'ValueError: boom "quoted"'
    assert tasks[2]["name"].endswith("<lambda>")
    labels = [r["label"] for r in recs if r["type"] == "queue"]
    assert labels.index("root") < labels.index("child")      # a target is described first
    child = next(r for r in recs if r["type"] == "queue" and r["label"] == "child")
    root = next(r for r in recs if r["type"] == "queue" and r["label"] == "root")
    assert child["target"] == root["queue"]


def test_buffer_addresses_are_right_for_fresh_and_resized_arrays(tmp_path):
    expected = []

    def work():
        q = streamq.Queue("ids")
        for i in range(40):
            a = np.full(16 + i % 3, i, np.float32)
            expected.append(a.__array_interface__["data"][0])
            q.submit(int, reads=[a]).result(timeout=10)
            del a            # freed once written: the next array may get its id and address
        b = np.zeros(4, np.float64)
        q.submit(int, reads=[b]).result(timeout=10)
        trace.flush()                             # described (and its address cached) now
        expected.append(b.__array_interface__["data"][0])
        b.resize(1 << 16, refcheck=False)         # moves the data of the same object
        expected.append(b.__array_interface__["data"][0])
        q.submit(int, reads=[b]).result(timeout=10)

    recs = logged(tmp_path / "log.jsonl", work)
    got = [r["reads"][0]["buffer"] for r in recs if r["type"] == "task" and r["reads"]]
    assert got == expected and got[-1] != got[-2]


def test_writer_counts_its_records_and_cpu_time(tmp_path):
    trace.enable(tmp_path / "log.jsonl")
    try:
        sink = trace._sink
        q = streamq.Queue("count")
        for _ in range(100):
            q.submit(int)
        q.synchronize()
        trace.flush()
        assert sink.records >= 100 and sink.writer_cpu_ns > 0
    finally:
        trace.disable()
    assert sum(1 for r in read_log(tmp_path / "log.jsonl") if r["type"] == "task") >= 100


def test_emit_stamps_untimed_records_and_converts_ns(tmp_path):
    import threading
    import time

    def work():
        trace.emit({"type": "host_read", "buffer": 1, "offset": 0, "bytes": 4})
        trace.emit({"type": "alloc", "buffer": 1, "bytes": 4, "t_ns": time.perf_counter_ns(), "thread": 7})
        trace.emit({"type": "note", "when_us": 1.5})

    recs = logged(tmp_path / "log.jsonl", work)
    read, alloc, note = [r for r in recs if r["type"] in ("host_read", "alloc", "note")]
    assert isinstance(read["t_us"], float) and read["t_us"] >= 0
    assert read["thread"] == threading.get_ident()
    assert isinstance(alloc["t_us"], float) and "t_ns" not in alloc and alloc["thread"] == 7
    assert note == {"type": "note", "when_us": 1.5, "thread": threading.get_ident()}   # already timed
