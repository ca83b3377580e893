"""Hand-built queue logs for the analyzer tests: records with known times, lines and buffers."""

from __future__ import annotations

import json
from collections import defaultdict

from streamq.analysis.chrome import PID_QUEUES, PID_THREADS

F4 = "<f4"


def view(buffer: int, shape, dtype: str = F4, offset: int = 0, strides=None) -> dict:
    """A log buffer view; C-contiguous strides unless given."""
    itemsize = int(dtype[-1])
    if strides is None:
        strides, step = [], itemsize
        for s in reversed(shape):
            strides.append(step)
            step *= s
        strides.reverse()
    n = 1
    for s in shape:
        n *= s
    return {"buffer": buffer, "offset": offset, "dtype": dtype, "shape": list(shape),
            "strides": list(strides), "bytes": n * itemsize}


class LogBuilder:
    """Appends records in time order; every op gets ``dur`` µs after the previous record.

    ``op`` returns ``(task_id, line)``: the line number the record has in the file.
    """

    def __init__(self):
        self.records = [{"type": "meta", "version": 1, "pid": 1, "clock": "perf_counter",
                         "t0_unix_us": 0, "topology": [{"cmg": 0, "cpus": [0, 1], "numa_node": 0}]}]
        self.t = 0.0
        self.next_id = 1
        self.next_queue = 1

    @property
    def line(self) -> int:
        """Line number of the last record added."""
        return len(self.records)

    def queue(self, label: str, concurrent: bool = False, cmg=0) -> int:
        qid = self.next_queue
        self.next_queue += 1
        self.records.append({"type": "queue", "queue": qid, "label": label, "concurrent": concurrent,
                             "cmg": cmg, "priority": 0, "target": None})
        return qid

    def op(self, queue: int, name: str, reads=(), writes=(), kind: str = "kernel", deps=(),
           dur: float = 10.0, submit=None, start=None, status: str = "ok", thread: int = 100,
           label=None) -> tuple[int, int]:
        tid = self.next_id
        self.next_id += 1
        if start is None:
            start = self.t + 1.0
        end = start + dur
        self.t = max(self.t, end)
        self.records.append({"type": "task", "id": tid, "queue": queue, "label": label or f"q{queue}",
                             "cmg": 0, "thread": thread, "name": name, "kind": kind,
                             "submit_us": start - 0.5 if submit is None else submit,
                             "start_us": start, "end_us": end, "deps": list(deps),
                             "reads": list(reads), "writes": list(writes), "status": status})
        return tid, self.line

    def record_event(self, queue: int, label: str) -> tuple[int, int]:
        return self.op(queue, label, kind="event_record", dur=0.0)

    def wait_event(self, queue: int, label: str, marker: int) -> tuple[int, int]:
        return self.op(queue, label, kind="event_wait", deps=[marker], dur=0.0)

    def host_sync(self, what: str = "queue.synchronize", queue=None, event=None) -> int:
        start = self.t + 1.0
        self.t = start + 1.0
        self.records.append({"type": "host_sync", "what": what, "queue": queue, "event": event,
                             "start_us": start, "end_us": self.t, "thread": 1})
        return self.line

    def host_access(self, what: str, buffer: int, nbytes: int, offset: int = 0) -> int:
        self.t += 1.0
        self.records.append({"type": what, "buffer": buffer, "offset": offset, "bytes": nbytes,
                             "t_us": self.t, "thread": 1})
        return self.line

    def alloc(self, buffer: int, nbytes: int) -> int:
        self.t += 1.0
        self.records.append({"type": "alloc", "buffer": buffer, "bytes": nbytes, "device": 0,
                             "memory": "device", "t_us": self.t, "thread": 1})
        return self.line

    def free(self, buffer: int) -> int:
        self.t += 1.0
        self.records.append({"type": "free", "buffer": buffer, "t_us": self.t, "thread": 1})
        return self.line

    def write(self, path) -> str:
        with open(path, "w") as f:
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")
        return str(path)


def check_chrome(doc):
    """Structural checks a trace viewer relies on; returns the events."""
    events = doc["traceEvents"]
    named = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    processes = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == {PID_QUEUES, PID_THREADS}
    flows = defaultdict(list)
    slices = defaultdict(list)
    for e in events:
        assert {"ph", "pid"} <= set(e)
        if e["ph"] == "M":
            continue
        assert isinstance(e["ts"], (int, float))
        if e["ph"] == "C":
            continue
        assert (e["pid"], e["tid"]) in named, e          # every track is named
        if e["ph"] == "X":
            assert e["dur"] >= 0 and isinstance(e["name"], str)
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] in ("s", "f"):
            flows[(e["id"], e["cat"], e["name"])].append(e)
    for key, pair in flows.items():              # flow ids paired: one start, one end, in order
        assert sorted(p["ph"] for p in pair) == ["f", "s"], key
        start = next(p for p in pair if p["ph"] == "s")
        end = next(p for p in pair if p["ph"] == "f")
        assert end["bp"] == "e" and start["ts"] <= end["ts"]
        for p in pair:                           # each end lies inside a slice of its track
            assert any(a <= p["ts"] <= z for a, z in slices[(p["pid"], p["tid"])]), p
    for track, spans in slices.items():          # slices on one track nest, never cross
        stack = []
        for a, z in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= a:
                stack.pop()
            assert not stack or z <= stack[-1] + 1e-6, (track, a, z)
            stack.append(z)
    return events, flows
