"""The queue log: one JSON object per line for every task, queue, sync and range.

Turn it on with ``STREAMQ_LOG=path.jsonl`` in the environment, or
:func:`enable` / :func:`disable`. The schema is documented in
``docs/queue-log.md``. On the hot path a worker only appends a tuple to a
deque; a background thread turns records into JSON (orjson) and writes them, so
logging never serialises the workers. With logging off, the runtime pays one
global check per task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque

import numpy as np

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is a dependency; keep a slow path anyway
    import json

    def _dumps(obj) -> bytes:
        return json.dumps(obj, default=str).encode()

__all__ = ["enable", "disable", "enabled", "path", "flush", "range", "emit", "describe_buffer",
           "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_logger = logging.getLogger("streamq")
_sink: "_Sink | None" = None  # read on the hot path: None means logging is off
_switch_lock = threading.Lock()


def describe_buffer(obj) -> dict:
    """The log's description of a buffer: id, byte offset, dtype, shape, strides, bytes.

    ``buffer`` identifies the underlying allocation (the address of the outermost
    numpy array's memory a view derives from); ``offset`` is the view's byte
    offset into it. Objects may describe themselves with ``__streamq_buffer__()``.
    """
    custom = getattr(obj, "__streamq_buffer__", None)
    if custom is not None:
        return custom()
    arr = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    base_addr = root.__array_interface__["data"][0]
    addr = arr.__array_interface__["data"][0]
    return {
        "buffer": base_addr,
        "offset": addr - base_addr,
        "dtype": arr.dtype.str if arr.dtype.names is None else str(arr.dtype),
        "shape": list(arr.shape),
        "strides": list(arr.strides),
        "bytes": int(arr.nbytes),
    }


class _Sink:
    """An open log file and the thread that writes it."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.file = open(self.path, "wb")
        self.t0 = time.perf_counter_ns()
        self.t0_unix_us = time.time_ns() // 1000
        self.pending: deque = deque()
        self.seen_queues: set[int] = set()
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="streamq-log-writer", daemon=True)
        self.dropped_errors = 0
        from .topology import topology
        self._write({"type": "meta", "version": SCHEMA_VERSION, "pid": os.getpid(),
                     "clock": "perf_counter", "t0_unix_us": self.t0_unix_us,
                     "topology": [{"cmg": c.index, "cpus": list(c.cpus), "numa_node": c.numa_node}
                                  for c in topology()]})
        self.thread.start()

    # -- hot path: append and return ---------------------------------------------------
    def task(self, task, start_ns: int, end_ns: int, worker) -> None:
        cmg = worker.pool.cmg.index if worker is not None else None
        self.pending.append(("task", task, start_ns, end_ns, threading.get_ident(), cmg))

    def inline(self, queue, fn, start_ns, end_ns, kind, exc) -> None:
        from .topology import current_cmg
        cmg = current_cmg()
        self.pending.append(("inline", queue, fn, start_ns, end_ns, kind, exc, threading.get_ident(),
                             None if cmg is None else cmg.index))

    def cancelled(self, task) -> None:
        now = time.perf_counter_ns()
        self.pending.append(("task", task, now, now, threading.get_ident(), None))

    def note_queue(self, queue) -> None:
        self.pending.append(("queue", queue))

    def record(self, obj: dict) -> None:
        self.pending.append(("raw", obj))

    # -- background ------------------------------------------------------------------------
    def _us(self, ns: int) -> float:
        return round((ns - self.t0) / 1000.0, 3)

    def _write(self, obj: dict) -> None:
        self.file.write(_dumps(obj))
        self.file.write(b"\n")

    def _queue_record(self, queue) -> None:
        if queue is None or queue.id in self.seen_queues:
            return
        self.seen_queues.add(queue.id)
        self._queue_record(queue.target)
        self._write({"type": "queue", "queue": queue.id, "label": queue.label,
                     "concurrent": queue.concurrent, "cmg": queue._cmg_index,
                     "priority": queue.priority,
                     "target": None if queue.target is None else queue.target.id})

    def _task_record(self, task, start_ns, end_ns, thread, cmg) -> dict:
        queue = task.queue
        self._queue_record(queue)
        exc = task._exception
        if task.cancelled():
            status = "cancelled"
        elif exc is None:
            status = "ok"
        else:
            from .errors import DependencyError
            status = "dependency_failed" if isinstance(exc, DependencyError) else "error"
        rec = {"type": "task", "id": task.id, "queue": queue.id, "label": queue.label, "cmg": cmg,
               "thread": thread, "name": task.name or _qualname(task.fn) or task.kind, "kind": task.kind,
               "submit_us": self._us(task._tsub) if task._tsub else None,
               "start_us": self._us(start_ns), "end_us": self._us(end_ns),
               "deps": [getattr(d, "id", None) for d in task._deps],
               "reads": [self._buffer(b) for b in task.reads],
               "writes": [self._buffer(b) for b in task.writes],
               "status": status}
        if exc is not None:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec

    def _buffer(self, obj):
        try:
            return describe_buffer(obj)
        except Exception as exc:
            return {"error": f"cannot describe {type(obj).__name__}: {exc}"}

    def _inline_record(self, queue, fn, start_ns, end_ns, kind, exc, thread, cmg) -> dict:
        self._queue_record(queue)
        rec = {"type": "task", "id": None, "queue": queue.id, "label": queue.label, "cmg": cmg,
               "thread": thread, "name": _qualname(fn) or kind, "kind": kind, "inline": True,
               "submit_us": self._us(start_ns), "start_us": self._us(start_ns), "end_us": self._us(end_ns),
               "deps": [], "reads": [], "writes": [], "status": "ok" if exc is None else "error"}
        if exc is not None:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec

    def _process(self) -> None:
        pending = self.pending
        wrote = False
        while pending:
            entry = pending.popleft()
            try:
                what = entry[0]
                if what == "task":
                    self._write(self._task_record(*entry[1:]))
                elif what == "inline":
                    self._write(self._inline_record(*entry[1:]))
                elif what == "queue":
                    self._queue_record(entry[1])
                else:
                    self._write(entry[1])
                wrote = True
            except Exception:  # one bad record must not stop the log
                self.dropped_errors += 1
                _logger.exception("streamq: could not write a queue-log record")
        if wrote:
            self.file.flush()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(0.02)
            self.wake.clear()
            self._process()
        self._process()

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join()
        self.file.close()


def _qualname(fn) -> str | None:
    if fn is None:
        return None
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else name


def enable(path) -> None:
    """Start writing the queue log to ``path`` (replacing any log already open)."""
    global _sink
    with _switch_lock:
        old, _sink = _sink, None
        if old is not None:
            old.close()
        _sink = _Sink(path)
        from .queue import _live_queues
        for queue in list(_live_queues):
            _sink.note_queue(queue)


def disable() -> None:
    """Stop logging; every record made so far is written and the file closed."""
    global _sink
    with _switch_lock:
        old, _sink = _sink, None
    if old is not None:
        old.close()


def enabled() -> bool:
    """True while the queue log is being written."""
    return _sink is not None


def path() -> str | None:
    """The file the queue log goes to, or None."""
    sink = _sink
    return None if sink is None else sink.path


def flush() -> None:
    """Write every record made so far (blocks until the writer caught up)."""
    sink = _sink
    if sink is not None:
        while sink.pending:
            sink.wake.set()
            time.sleep(0.001)
        with _switch_lock:
            if _sink is sink:
                sink._process()


def emit(record: dict) -> None:
    """Add a record of another layer (allocation, memcpy, ...) to the log, if it is on.

    ``record`` must hold a ``type``; time fields given as perf_counter_ns under
    keys ending in ``_ns`` are converted to ``_us`` relative to the log's start.
    """
    sink = _sink
    if sink is None:
        return
    if "type" not in record:
        raise ValueError("a log record needs a 'type'")
    out = {}
    for key, value in record.items():
        if key.endswith("_ns") and isinstance(value, int):
            out[key[:-3] + "_us"] = sink._us(value)
        else:
            out[key] = value
    out.setdefault("thread", threading.get_ident())
    sink.record(out)


@contextlib.contextmanager
def range(name: str):  # noqa: A001 - the name users expect (NVTX's ranges)
    """Mark a named span of host time in the log: ``with streamq.trace.range("layer3"):``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    start = time.perf_counter_ns()
    try:
        yield
    finally:
        if _sink is not None:
            emit({"type": "range", "name": name, "start_ns": start, "end_ns": time.perf_counter_ns()})


def _emit_host_sync(what: str, start_ns: int, queue=None, event=None) -> None:
    emit({"type": "host_sync", "what": what, "queue": None if queue is None else queue.id,
          "event": None if event is None else event.label,
          "start_ns": start_ns, "end_ns": time.perf_counter_ns()})


def _emit_event_wait(queue, event, marker) -> None:
    now = time.perf_counter_ns()
    emit({"type": "task", "id": None, "queue": queue.id, "label": queue.label, "name": event.label,
          "kind": "event_wait", "submit_ns": now, "start_ns": now, "end_ns": now,
          "deps": [] if marker is None else [marker.id], "reads": [], "writes": [], "status": "ok"})
