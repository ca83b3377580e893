"""Queue log -> Chrome trace event format (Perfetto, chrome://tracing), streamed.

Layout: process 1 "streamq queues" has one track per serial queue (a
concurrent queue gets one track per worker thread that ran its tasks, so no
two slices on a track overlap) and one "submits" track per queue; process 2
"threads" has one track per OS thread (the worker that ran each op, the host
thread of each sync and range). Ops are complete (``X``) events with their
buffers in ``args``; each submission is a flow arrow (``s``/``f``, cat
``submit``) from the submits track to the op, and each ``event_record`` ->
``event_wait`` pair is a flow arrow (cat ``event``). Host reads/writes are
instant events, allocations a counter. The output is written as it is made:
memory stays bounded whatever the log's size.
"""

from __future__ import annotations

import gzip
import os
from collections import OrderedDict

from .opkinds import classify
from .reader import Diagnostics, in_time_order, read_records

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

__all__ = ["write_chrome", "PID_QUEUES", "PID_THREADS"]

PID_QUEUES = 1    #: process id of the queue tracks
PID_THREADS = 2   #: process id of the thread tracks
_MAX_LIST = 30    # list entries kept in args (views, deps)
_MARKERS = 65536  # event markers remembered for record -> wait arrows


class _Writer:
    def __init__(self, f):
        self.f = f
        self.first = True
        self.count = 0

    def event(self, ev: dict) -> None:
        if not self.first:
            self.f.write(b",\n")
        self.first = False
        self.f.write(_dumps(ev))
        self.count += 1


class _Tracks:
    """Track ids, created on first use with their name metadata."""

    def __init__(self, out: _Writer):
        self.out = out
        self.ids: dict = {}
        self.next = {PID_QUEUES: 1, PID_THREADS: 1}

    def tid(self, pid: int, key, name: str) -> int:
        tid = self.ids.get((pid, key))
        if tid is None:
            tid = self.ids[(pid, key)] = self.next[pid]
            self.next[pid] += 1
            self.out.event({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                            "args": {"name": name}})
            self.out.event({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                            "args": {"sort_index": tid}})
        return tid


def _open_out(path):
    path = os.fspath(path)
    return gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")


def write_chrome(log, out_path, *, diagnostics: Diagnostics | None = None,
                 window: int = 4096) -> dict:
    """Convert the queue log at ``log`` to a Chrome trace JSON file at ``out_path``.

    ``out_path`` ending in ``.gz`` is gzip-compressed. Returns counts
    (``events``, ``ops``, ``flows``). Damaged log lines go to ``diagnostics``.
    Raises FileNotFoundError if the log does not exist.
    """
    log = os.fspath(log)
    if not os.path.exists(log):
        raise FileNotFoundError(f"no such log: {log}")
    diag = diagnostics if diagnostics is not None else Diagnostics()
    stats = {"events": 0, "ops": 0, "flows": 0}
    with _open_out(out_path) as f:
        f.write(b'{"displayTimeUnit":"ms","otherData":' +
                _dumps({"source": "streamq queue log", "log": log}) + b',"traceEvents":[\n')
        out = _Writer(f)
        _convert(log, out, diag, window, stats)
        f.write(b"\n]}\n")
    stats["events"] = out.count
    return stats


def _convert(log, out: _Writer, diag, window, stats) -> None:
    for pid, name in ((PID_QUEUES, "streamq queues"), (PID_THREADS, "threads")):
        out.event({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
        out.event({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
    tracks = _Tracks(out)
    queues: dict = {}        # id -> (label, concurrent)
    threads: dict = {}       # OS thread -> cmg seen
    markers: OrderedDict = OrderedDict()  # marker task id -> (tid, ts)
    live: dict = {}          # buffer -> bytes allocated
    live_total = 0
    flow_id = 0

    def thread_tid(thread, cmg=None):
        if thread is None:
            return None
        if thread not in threads:
            threads[thread] = cmg
        where = "host" if cmg is None else f"CMG {cmg}"
        return tracks.tid(PID_THREADS, thread, f"thread {thread} ({where})")

    for line, rec in in_time_order(read_records(log, diag), diag, window):
        kind = rec["type"]
        if kind == "queue":
            queues[rec["queue"]] = (str(rec.get("label", rec["queue"])), bool(rec.get("concurrent")))
        elif kind == "task":
            if rec.get("status") == "cancelled":
                continue
            stats["ops"] += 1
            qid = rec["queue"]
            label, concurrent = queues.get(qid, (str(rec.get("label", qid)), False))
            thread = rec.get("thread")
            if concurrent:
                qtid = tracks.tid(PID_QUEUES, ("q", qid, thread), f"{label} (concurrent) · thread {thread}")
            else:
                qtid = tracks.tid(PID_QUEUES, ("q", qid), f"{label}")
            name = rec.get("name") if isinstance(rec.get("name"), str) else str(rec.get("kind"))
            tkind = rec.get("kind") or "host"
            cls = classify(name, tkind)
            start, end = rec["start_us"], rec["end_us"]
            args = _op_args(line, rec, label, cls)
            ev = {"ph": "X", "name": name, "cat": cls, "pid": PID_QUEUES, "tid": qtid,
                  "ts": start, "dur": round(end - start, 3), "args": args}
            out.event(ev)
            # event markers and gates occupy their queue, not a thread: keep thread tracks nested
            ttid = None if cls == "sync" and tkind != "barrier" else thread_tid(thread, rec.get("cmg"))
            if ttid is not None:
                out.event(dict(ev, pid=PID_THREADS, tid=ttid))
            submit = rec.get("submit_us")
            if isinstance(submit, (int, float)) and submit < start:
                stid = tracks.tid(PID_QUEUES, ("s", qid), f"{label} · submits")
                flow_id += 1
                out.event({"ph": "X", "name": f"submit {name}", "cat": "submit", "pid": PID_QUEUES,
                           "tid": stid, "ts": submit, "dur": 0, "args": {"line": line}})
                out.event({"ph": "s", "id": flow_id, "name": "submit", "cat": "submit",
                           "pid": PID_QUEUES, "tid": stid, "ts": submit})
                out.event({"ph": "f", "bp": "e", "id": flow_id, "name": "submit", "cat": "submit",
                           "pid": PID_QUEUES, "tid": qtid, "ts": start})
                stats["flows"] += 1
            if tkind == "event_record" and rec.get("id") is not None:
                markers[rec["id"]] = (qtid, start)
                if len(markers) > _MARKERS:
                    markers.popitem(last=False)
            elif tkind == "event_wait":
                for dep in rec.get("deps") or ():
                    src = markers.get(dep)
                    if src is None:
                        continue
                    flow_id += 1
                    out.event({"ph": "s", "id": flow_id, "name": "event", "cat": "event",
                               "pid": PID_QUEUES, "tid": src[0], "ts": src[1]})
                    out.event({"ph": "f", "bp": "e", "id": flow_id, "name": "event", "cat": "event",
                               "pid": PID_QUEUES, "tid": qtid, "ts": start})
                    stats["flows"] += 1
        elif kind in ("host_sync", "range"):
            ttid = thread_tid(rec.get("thread"))
            if ttid is None:
                continue
            name = rec.get("what") if kind == "host_sync" else rec.get("name")
            args = {"line": line}
            if kind == "host_sync":
                args.update(queue=rec.get("queue"), event=rec.get("event"))
            out.event({"ph": "X", "name": str(name), "cat": "sync" if kind == "host_sync" else "user",
                       "pid": PID_THREADS, "tid": ttid, "ts": rec["start_us"],
                       "dur": round(rec["end_us"] - rec["start_us"], 3), "args": args})
        elif kind in ("host_read", "host_write"):
            ttid = thread_tid(rec.get("thread"))
            if ttid is not None:
                out.event({"ph": "i", "s": "t", "name": kind, "cat": "host", "pid": PID_THREADS,
                           "tid": ttid, "ts": rec["t_us"],
                           "args": {"line": line, "buffer": rec["buffer"], "offset": rec.get("offset", 0),
                                    "bytes": rec["bytes"]}})
        elif kind in ("alloc", "free"):
            buf = rec["buffer"]
            if kind == "alloc":
                live_total += rec["bytes"] - live.get(buf, 0)
                live[buf] = rec["bytes"]
            else:
                live_total -= live.pop(buf, 0)
            out.event({"ph": "C", "name": "allocated", "pid": PID_QUEUES, "ts": rec["t_us"],
                       "args": {"bytes": live_total}})


def _op_args(line, rec, label, cls) -> dict:
    reads = rec.get("reads") or []
    writes = rec.get("writes") or []
    rbytes = sum(v.get("bytes", 0) for v in reads if isinstance(v, dict) and
                 isinstance(v.get("bytes", 0), int))
    wbytes = sum(v.get("bytes", 0) for v in writes if isinstance(v, dict) and
                 isinstance(v.get("bytes", 0), int))
    args = {"line": line, "id": rec.get("id"), "queue": label, "kind": rec.get("kind"), "class": cls,
            "status": rec.get("status"), "bytes_read": rbytes, "bytes_written": wbytes,
            "reads": reads[:_MAX_LIST], "writes": writes[:_MAX_LIST],
            "deps": (rec.get("deps") or [])[:_MAX_LIST]}
    dur = rec["end_us"] - rec["start_us"]
    if dur > 0 and rbytes + wbytes:
        args["GB/s"] = round((rbytes + wbytes) / dur / 1e3, 3)
    if rec.get("error"):
        args["error"] = rec["error"]
    for extra in ("args", "stream", "device"):
        if extra in rec:
            args[extra] = rec[extra]
    return args
