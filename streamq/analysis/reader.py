"""Streaming reader of queue logs: one record at a time, damaged lines reported and skipped.

:func:`read_records` yields ``(line_number, record)`` pairs in file order and
never holds more than one line; a line that is not a JSON object, lacks its
``type`` or lacks a field the analyzers rely on is reported to a
:class:`Diagnostics` (with its line number) and skipped. :func:`in_time_order`
re-sorts the stream through a bounded window so that every record comes after
the ones that happened before it (the log is written as tasks finish, which is
nearly but not exactly that order). Logs ending in ``.gz`` are read through gzip.
"""

from __future__ import annotations

import gzip
import heapq
import math
import os

try:
    import orjson

    _loads = orjson.loads
    _DecodeError = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - orjson is a dependency
    import json

    _loads = json.loads
    _DecodeError = ValueError

__all__ = ["Diagnostics", "read_records", "in_time_order", "open_log", "order_key"]


class Diagnostics:
    """Problems found while reading a log: counted, the first ``limit`` kept with line numbers."""

    def __init__(self, limit: int = 20):
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        self.limit = limit
        self.count = 0
        self.messages: list[tuple[int, str]] = []
        self.notes: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def report(self, line: int, message: str) -> None:
        """Record a damaged or unusable line."""
        self.count += 1
        if len(self.messages) < self.limit:
            self.messages.append((line, message))

    def note(self, what: str, n: int = 1, example: str | None = None) -> None:
        """Count a non-fatal limitation of the analysis (e.g. a window overflowed).

        ``what`` is the kind of problem (a fixed string); ``example`` the first
        instance's details, kept once per kind.
        """
        self.notes[what] = self.notes.get(what, 0) + n
        if example is not None and what not in self.examples:
            self.examples[what] = example

    def lines(self, path: str = "log") -> list[str]:
        """Human-readable ``path:line: message`` lines, plus a count of the rest."""
        out = [f"{path}:{line}: {msg}" for line, msg in self.messages]
        if self.count > len(self.messages):
            out.append(f"{path}: ... and {self.count - len(self.messages)} more damaged lines")
        for what, n in sorted(self.notes.items()):
            ex = self.examples.get(what)
            out.append(f"{path}: note: {what} ({n}x)" + (f"; first: {ex}" if ex else ""))
        return out

    def as_dict(self) -> dict:
        """JSON-ready form: damaged-line count, first messages, notes."""
        return {"damaged_lines": self.count,
                "messages": [{"line": line, "message": msg} for line, msg in self.messages],
                "notes": dict(self.notes), "note_examples": dict(self.examples)}


def open_log(path):
    """Open a log for binary line reading (gzip when the name ends in ``.gz``).

    Raises FileNotFoundError / IsADirectoryError naming the path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"log path is a directory: {path}")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _is_num(v) -> bool:
    # JSON has no NaN or infinity (orjson refuses them), so any int or float is finite
    t = type(v)
    return t is float or t is int


def _check(rec: dict) -> str | None:
    """Why a record cannot be used, or None."""
    kind = rec.get("type")
    if type(kind) is not str:
        return "record has no string 'type'"
    if kind == "task":
        if rec.get("queue") is None:
            return "task record without 'queue'"
        start, end = rec.get("start_us"), rec.get("end_us")
        if not _is_num(start):
            return f"task record with non-numeric 'start_us': {start!r}"
        if not _is_num(end):
            return f"task record with non-numeric 'end_us': {end!r}"
        if end < start:
            return "task record ends before it starts"
        sub = rec.get("submit_us")
        if sub is not None and not _is_num(sub):
            return f"task record with non-numeric 'submit_us': {sub!r}"
        for key in ("reads", "writes", "deps"):
            value = rec.get(key)
            if value is not None and type(value) is not list:
                return f"task record with non-list '{key}'"
    elif kind in ("host_sync", "range"):
        for key in ("start_us", "end_us"):
            if not _is_num(rec.get(key)):
                return f"{kind} record with non-numeric '{key}': {rec.get(key)!r}"
    elif kind in ("alloc", "free", "host_read", "host_write"):
        if rec.get("buffer") is None:
            return f"{kind} record without 'buffer'"
        if not _is_num(rec.get("t_us")):
            return f"{kind} record with non-numeric 't_us': {rec.get('t_us')!r}"
        if kind != "free":
            n = rec.get("bytes")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                return f"{kind} record with bad 'bytes': {n!r}"
    elif kind == "queue":
        if rec.get("queue") is None:
            return "queue record without 'queue'"
    return None


def read_records(path, diagnostics: Diagnostics):
    """Yield ``(line_number, record)`` for every usable line of the log at ``path``.

    Line numbers start at 1. Damaged lines (bad JSON, truncated last line, not
    an object, missing or mistyped fields) go to ``diagnostics`` and are skipped.
    """
    if not isinstance(diagnostics, Diagnostics):
        raise TypeError(f"diagnostics must be a Diagnostics, got {type(diagnostics).__name__}")
    line_no = 0
    with open_log(path) as f:
        try:
            for raw in f:
                line_no += 1
                try:
                    rec = _loads(raw)
                except _DecodeError as exc:
                    if not raw.strip():
                        continue
                    what = "truncated line" if not raw.endswith(b"\n") else "invalid JSON"
                    diagnostics.report(line_no, f"{what}: {exc}")
                    continue
                if type(rec) is not dict:
                    diagnostics.report(line_no, f"not a JSON object: {type(rec).__name__}")
                    continue
                problem = _check(rec)
                if problem is not None:
                    diagnostics.report(line_no, problem)
                    continue
                yield line_no, rec
        except (EOFError, OSError) as exc:  # a truncated or corrupt gzip stream
            diagnostics.report(line_no + 1, f"unreadable: {exc}")


# Among records with the same time, what must come first (a task before the marker
# that waits for it, the marker before the gate and host sync it releases, ...).
_RANK = {"task": 0, "event_record": 1, "event_wait": 2, "host_sync": 3, "host_read": 4,
         "host_write": 4, "free": 5, "range": 6}
_EARLY = ("meta", "queue", "alloc")


def order_key(rec: dict) -> tuple:
    """The time a record takes effect, as a sortable ``(time_us, rank)`` pair.

    Tasks count at their end (so a task comes after everything that happened
    before it), syncs and ranges at their end, memory records at ``t_us``;
    ``meta``/``queue`` records come first.
    """
    kind = rec["type"]
    if kind == "task":
        return (rec["end_us"], _RANK.get(rec.get("kind"), 0))
    if kind in ("host_sync", "range"):
        return (rec["end_us"], _RANK[kind])
    if kind in _EARLY:
        t = rec.get("t_us")
        return (t if _is_num(t) else -math.inf, -1)
    t = rec.get("t_us", rec.get("end_us"))
    return (t if _is_num(t) else -math.inf, _RANK.get(kind, 7))


def in_time_order(records, diagnostics: Diagnostics, window: int = 4096):
    """Re-yield ``(line, record)`` pairs sorted by :func:`order_key` within a window.

    At most ``window`` records are held. A record older than one already
    yielded (out of order by more than the window) is still yielded, and
    counted in ``diagnostics`` as a note.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    heap: list = []
    last = (-math.inf, -math.inf)
    push, pushpop, pop = heapq.heappush, heapq.heappushpop, heapq.heappop
    for line, rec in records:
        t, rank = order_key(rec)
        if len(heap) < window:
            push(heap, (t, rank, line, rec))
            continue
        t, rank, line_out, out = pushpop(heap, (t, rank, line, rec))
        if (t, rank) < last:
            diagnostics.note("records out of order beyond the reorder window")
        else:
            last = (t, rank)
        yield line_out, out
    while heap:
        t, rank, line_out, out = pop(heap)
        if (t, rank) < last:
            diagnostics.note("records out of order beyond the reorder window")
        yield line_out, out
