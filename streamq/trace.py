"""The queue log: one JSON object per line for every task, queue, sync and range.

Turn it on with ``STREAMQ_LOG=path.jsonl`` in the environment, or
:func:`enable` / :func:`disable`. The schema is documented in
``docs/queue-log.md``. On the hot path a worker only appends a tuple to a
deque; a background thread turns batches of them into JSON lines and writes
each batch at once, so logging never serialises the workers. Task rows are
formatted from cached pieces instead of a dict per record (schema version 1,
field for field). With logging off, the runtime pays one global check per task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED

import numpy as np

from .topology import current_cmg as _current_cmg
from .topology import topology as _topology

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
_TASK, _INLINE, _QUEUE, _RAW, _EMIT = (object() for _ in range(5))   # hot-path entry tags
_BATCH = 4096
_range = range  # the module defines range() (the user ranges)
_FunctionType = type(lambda: None)
_CANCELLED_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED)
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


_NULL = b"null"
_EMPTY_LIST = b"[]"
_NAME_CACHE = 4096


class _Sink:
    """An open log file and the thread that writes it.

    Hot path: :meth:`task` and friends append one tuple to a deque and return.
    The writer thread turns a whole batch of tuples into JSON lines and writes
    them with one ``write``: task rows are formatted from cached pieces (the
    queue's fields and op name, numpy views' dtypes, shapes and addresses)
    instead of building and serialising a dict per record.
    """

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
        self.records = 0           # rows written (statistics for benchmarks)
        self.writer_cpu_ns = 0     # CPU time the writer thread spent formatting and writing
        self._heads: dict = {}       # (queue id, name or code, kind) -> row head bytes
        self._dtypes: dict = {}      # dtype -> JSON-encoded dtype string
        self._shapes: dict = {}      # shape or strides tuple -> JSON-encoded list
        self._addresses: dict = {}   # id(array) -> data address, within one batch
        self._write({"type": "meta", "version": SCHEMA_VERSION, "pid": os.getpid(),
                     "clock": "perf_counter", "t0_unix_us": self.t0_unix_us,
                     "topology": [{"cmg": c.index, "cpus": list(c.cpus), "numa_node": c.numa_node}
                                  for c in _topology()]})
        self.file.flush()
        self.thread.start()

    # -- hot path: append and return ---------------------------------------------------
    def task(self, task, start_ns: int, end_ns: int, worker) -> None:
        # A host thread running a queue's items itself (synchronize) is lent to the queue's CMG.
        cmg = worker.pool.cmg.index if worker is not None else getattr(_current_cmg(), "index", None)
        self.pending.append((_TASK, task, start_ns, end_ns, threading.get_ident(), cmg))

    def inline(self, queue, fn, start_ns, end_ns, kind, exc) -> None:
        cmg = _current_cmg()
        self.pending.append((_INLINE, queue, fn, start_ns, end_ns, kind, exc, threading.get_ident(),
                             None if cmg is None else cmg.index))

    def cancelled(self, task) -> None:
        now = time.perf_counter_ns()
        self.pending.append((_TASK, task, now, now, threading.get_ident(), None))

    def note_queue(self, queue) -> None:
        self.pending.append((_QUEUE, queue))

    def record(self, obj: dict) -> None:
        self.pending.append((_RAW, obj))

    # -- background ------------------------------------------------------------------------
    def _us(self, ns: int) -> float:
        return round((ns - self.t0) / 1000.0, 3)

    def _write(self, obj: dict) -> None:
        self.file.write(_dumps(obj) + b"\n")

    def _queue_rows(self, queue, out: list) -> None:
        if queue is None or queue.id in self.seen_queues:
            return
        self.seen_queues.add(queue.id)
        self._queue_rows(queue.target, out)
        out.append(_dumps({"type": "queue", "queue": queue.id, "label": queue.label,
                           "concurrent": queue.concurrent, "cmg": queue._cmg_index,
                           "priority": queue.priority,
                           "target": None if queue.target is None else queue.target.id}) + b"\n")

    def _head(self, task, out: list) -> bytes:
        """``{"type":"task","queue":..,"label":..,"name":..,"kind":..,`` for ``task``, cached."""
        queue, name, fn, kind = task.queue, task.name, task.fn, task.kind
        if name is not None:
            key = (queue.id, name, kind)
        elif type(fn) is _FunctionType:
            key = (queue.id, fn.__code__, kind)
        else:
            name = _qualname(fn) or kind
            key = (queue.id, name, kind)
        head = self._heads.get(key)
        if head is None:
            self._queue_rows(queue, out)
            if name is None:
                name = _qualname(fn) or kind
            heads = self._heads
            if len(heads) >= _NAME_CACHE:
                heads.clear()
            head = heads[key] = b'{"type":"task","queue":%d,"label":%b,"name":%b,"kind":%b,' % (
                queue.id, _dumps(queue.label), _dumps(name), _dumps(kind))
        return head

    def _task_row(self, task, start_ns, end_ns, thread, cmg, out: list) -> bytes:
        head = self._head(task, out)
        exc = task._exception
        if exc is None:
            status = b"cancelled" if task._state in _CANCELLED_STATES else b"ok"
            error = b""
        else:
            from .errors import DependencyError
            status = b"dependency_failed" if isinstance(exc, DependencyError) else b"error"
            error = b',"error":' + _dumps(f"{type(exc).__name__}: {exc}")
        t0 = self.t0
        sub = task._tsub
        deps = task._deps
        reads = task.reads
        writes = task.writes
        return b'%b"id":%d,"cmg":%b,"thread":%d,"submit_us":%b,"start_us":%.3f,"end_us":%.3f,' \
               b'"deps":%b,"reads":%b,"writes":%b,"status":"%b"%b}\n' % (
                   head, task.id, _NULL if cmg is None else b"%d" % cmg, thread,
                   b"%.3f" % ((sub - t0) / 1000.0) if sub else _NULL,
                   (start_ns - t0) / 1000.0, (end_ns - t0) / 1000.0,
                   _dumps([getattr(d, "id", None) for d in deps]) if deps else _EMPTY_LIST,
                   self._views(reads) if reads else _EMPTY_LIST,
                   self._views(writes) if writes else _EMPTY_LIST,
                   status, error)

    def _buffer(self, obj):
        try:
            return describe_buffer(obj)
        except Exception as exc:
            return {"error": f"cannot describe {type(obj).__name__}: {exc}"}

    def _views(self, objs) -> bytes:
        """The JSON list describing ``objs`` (same fields as :func:`describe_buffer`)."""
        parts = []
        for obj in objs:
            try:
                if type(obj) is np.ndarray:
                    parts.append(self._ndarray_view(obj))
                else:
                    parts.append(_dumps(describe_buffer(obj)))
            except Exception as exc:
                parts.append(_dumps({"error": f"cannot describe {type(obj).__name__}: {exc}"}))
        return b"[%b]" % b",".join(parts)

    def _ndarray_view(self, arr) -> bytes:
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        base_addr = self._address(root)
        addr = base_addr if arr is root else self._address(arr)
        dtype = arr.dtype
        enc = self._dtypes.get(dtype)
        if enc is None:
            enc = self._dtypes[dtype] = _dumps(dtype.str if dtype.names is None else str(dtype))
        shape, strides = arr.shape, arr.strides
        shapes = self._shapes
        shape_b = shapes.get(shape)
        if shape_b is None:
            if len(shapes) >= _NAME_CACHE:
                shapes.clear()
            shape_b = shapes[shape] = _dumps(shape)
        strides_b = shapes.get(strides)
        if strides_b is None:
            strides_b = shapes[strides] = _dumps(strides)
        return b'{"buffer":%d,"offset":%d,"dtype":%b,"shape":%b,"strides":%b,"bytes":%d}' % (
            base_addr, addr - base_addr, enc, shape_b, strides_b, arr.nbytes)

    def _address(self, arr) -> int:
        """An array's data address, cached by ``id`` for one batch only.

        The batch's tasks hold their arrays, so an id cannot be reused within it;
        no weak reference is taken (numpy refuses to ``resize`` a weakly
        referenced array).
        """
        cache = self._addresses
        addr = cache.get(id(arr))
        if addr is None:
            addr = cache[id(arr)] = arr.__array_interface__["data"][0]
        return addr

    def _emitted_row(self, record: dict, thread: int, now_ns: int) -> bytes:
        out = {}
        timed = False
        for key, value in record.items():
            if key.endswith("_ns") and isinstance(value, int):
                out[key[:-3] + "_us"] = self._us(value)
                timed = True
            else:
                out[key] = value
                timed = timed or key.endswith("_us")
        if not timed:
            out["t_us"] = self._us(now_ns)
        out.setdefault("thread", thread)
        return _dumps(out) + b"\n"

    def _inline_record(self, queue, fn, start_ns, end_ns, kind, exc, thread, cmg) -> dict:
        rec = {"type": "task", "id": None, "queue": queue.id, "label": queue.label, "cmg": cmg,
               "thread": thread, "name": _qualname(fn) or kind, "kind": kind, "inline": True,
               "submit_us": self._us(start_ns), "start_us": self._us(start_ns), "end_us": self._us(end_ns),
               "deps": [], "reads": [], "writes": [], "status": "ok" if exc is None else "error"}
        if exc is not None:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        return rec

    def _rows(self, entries) -> list:
        """JSON lines (bytes) for a batch of hot-path entries; a bad entry is logged and skipped."""
        out: list = []
        append = out.append
        task_row = self._task_row
        self._addresses.clear()
        for entry in entries:
            try:
                what = entry[0]
                if what is _TASK:
                    append(task_row(entry[1], entry[2], entry[3], entry[4], entry[5], out))
                elif what is _INLINE:
                    queue = entry[1]
                    self._queue_rows(queue, out)
                    append(_dumps(self._inline_record(*entry[1:])) + b"\n")
                elif what is _EMIT:
                    append(self._emitted_row(entry[1], entry[2], entry[3]))
                elif what is _QUEUE:
                    self._queue_rows(entry[1], out)
                else:
                    append(_dumps(entry[1]) + b"\n")
            except Exception:  # one bad record must not stop the log
                self.dropped_errors += 1
                _logger.exception("streamq: could not write a queue-log record")
        return out

    def _process(self) -> None:
        pending = self.pending
        popleft = pending.popleft
        cpu0 = time.thread_time_ns()
        while pending:
            n = min(len(pending), _BATCH)
            rows = self._rows([popleft() for _ in _range(n)])
            if rows:
                self.file.write(b"".join(rows))
                self.records += len(rows)
        self.file.flush()
        self.writer_cpu_ns += time.thread_time_ns() - cpu0

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
    A record with no time field (no key ending in ``_ns`` or ``_us``) gets
    ``t_us``, the time of the call; one without ``thread`` gets the calling
    thread. The caller pays a copy and an append: the conversion is done by
    the writer thread.
    """
    sink = _sink
    if sink is None:
        return
    if "type" not in record:
        raise ValueError("a log record needs a 'type'")
    sink.pending.append((_EMIT, dict(record), threading.get_ident(), time.perf_counter_ns()))


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
