"""The happens-before relation of a queue log, kept as vector clocks in bounded memory.

Edges (docs/fusion-analyzer.md has the full rules):

* program order on a serial queue (its tasks run one at a time, in order);
* ``deps`` of a task (``after=`` dependencies and the event marker an
  ``event_wait`` gate waits for);
* an ``event_record`` marker or a barrier on a concurrent queue follows every
  task submitted to that queue before it; a barrier or ``event_wait`` gate on a
  concurrent queue precedes every task submitted to it later;
* a host synchronization (``host_sync``: a queue, an event, or the whole device)
  precedes every task submitted after it returned, and every later host access.

One host agent is assumed: the log does not say which thread submitted a task,
so host syncs and host reads/writes are ordered with every later submission.

Records must be fed in :func:`~streamq.analysis.reader.in_time_order`. A
clock is a dict: a serial queue's id -> the ordinal of the last of its tasks
known to have finished; ``("c", q)`` -> every task of concurrent queue ``q``
submitted before this time has finished; ``("t", q, submit, id)`` -> that one
concurrent task has finished. Clocks are shared and never mutated.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .opkinds import classify
from .views import host_view, parse_view

__all__ = ["Node", "QueueState", "HappensBefore"]

_EMPTY: dict = {}
_MAX_TASK_ENTRIES = 512       # per clock; older single-task entries are dropped beyond it
_RECENT_PER_QUEUE = 4096      # concurrent-queue tasks a marker or barrier can still see
_TASK_WINDOW = 32768          # task ids a later `deps` can still name


class Node:
    """One op (task record) or host access of the log, with its clock and views.

    ``line`` is the log line; ``queue`` its :class:`QueueState` (None for a host
    access); ``ordinal`` its position on a serial queue; ``vc`` what is known to
    have finished before it started.
    """

    __slots__ = ("line", "id", "queue", "name", "kind", "cls", "submit", "start", "end", "thread",
                 "cmg", "status", "reads", "writes", "ordinal", "vc", "host", "rbytes", "wbytes")

    def __init__(self, line, queue, name, kind, cls, submit, start, end):
        self.line = line
        self.queue = queue
        self.name = name
        self.kind = kind
        self.cls = cls
        self.submit = submit
        self.start = start
        self.end = end
        self.host = False
        self.id = None
        self.ordinal = 0
        self.vc = _EMPTY
        self.thread = None
        self.cmg = None
        self.status = "ok"
        self.reads = ()
        self.writes = ()
        self.rbytes = 0
        self.wbytes = 0

    @property
    def dur(self) -> float:
        """Run time in µs."""
        return self.end - self.start

    def where(self) -> str:
        """``name (queue label, line N)`` for reports."""
        q = "host" if self.queue is None else self.queue.label
        return f"{self.name} ({q}, line {self.line})"

    def __repr__(self) -> str:
        return f"<Node {self.where()}>"


class QueueState:
    """What the analysis knows of one queue: identity, and its running clock."""

    __slots__ = ("id", "label", "concurrent", "cmg", "ordinal", "base", "host_version",
                 "recent", "gates", "gates_vc", "last_item", "boundary", "last_boundary")

    def __init__(self, qid, label=None, concurrent=False, cmg=None):
        self.id = qid
        self.label = str(qid) if label is None else str(label)
        self.concurrent = bool(concurrent)
        self.cmg = cmg
        self.ordinal = 0           # serial: ordinal of the last task processed
        self.base = _EMPTY         # serial: clock every later task inherits
        self.host_version = 0
        self.recent: deque = deque(maxlen=_RECENT_PER_QUEUE)   # concurrent: recent nodes
        self.gates: list = []      # concurrent: (submit, clock) of barriers and gates
        self.gates_vc = _EMPTY     # join of all gates' clocks
        self.last_item = None      # last node processed on this queue (any kind)
        self.boundary = None       # a sync that flushed this queue since last_item, or None
        self.last_boundary = 0     # ordinal of the latest boundary (serial queues)

    def __repr__(self) -> str:
        return f"<QueueState {self.label!r} {'concurrent' if self.concurrent else 'serial'}>"


def _join(a: dict, b: dict) -> dict:
    """Least upper bound of two clocks (returns ``a`` itself when ``b`` adds nothing)."""
    if a is b or not b:
        return a
    if not a:
        return b
    new = None
    for k, v in b.items():
        old = a.get(k)
        if old is None or v > old:
            if new is None:
                new = dict(a)
            new[k] = v
    if new is None:
        return a
    if len(new) > 16:
        _prune(new)
    return new


def _prune(vc: dict) -> None:
    """Drop single-task entries a queue watermark already covers; cap their number."""
    tasks = [k for k in vc if type(k) is tuple and k[0] == "t"]
    if not tasks:
        return
    for k in tasks:
        mark = vc.get(("c", k[1]))
        if mark is not None and mark > k[2]:
            del vc[k]
    tasks = [k for k in vc if type(k) is tuple and k[0] == "t"]
    if len(tasks) > _MAX_TASK_ENTRIES:
        tasks.sort(key=lambda k: k[2])
        for k in tasks[:len(tasks) - _MAX_TASK_ENTRIES]:
            del vc[k]


def _own(node: Node) -> dict:
    """A node's clock including the node itself."""
    return _own_clock(node.queue, node.ordinal, node.submit, node.id, node.vc)


def _own_clock(q, ordinal, submit, tid, vc) -> dict:
    if q is None:
        return vc
    if q.concurrent:
        return _join(vc, {("t", q.id, submit, tid): 1})
    return _join(vc, {q.id: ordinal})


class HappensBefore:
    """Builds :class:`Node` objects from records and answers ``hb(a, b)``.

    Feed records in time order (:func:`~streamq.analysis.reader.in_time_order`)
    through :meth:`queue`, :meth:`task`, :meth:`host_sync` and
    :meth:`host_access`. Memory stays bounded: a window of recent task ids and
    markers is kept, never the whole log.
    """

    def __init__(self, diagnostics=None):
        self.diagnostics = diagnostics
        self.queues: dict = {}
        self.tasks: dict = {}                     # task id -> (queue, ordinal, submit, id, clock)
        self.markers: OrderedDict = OrderedDict() # event label -> own clock of latest record
        self.marker_queue: dict = {}              # event label -> queue of its latest record
        self.host_vc: dict = _EMPTY
        self.host_syncs: deque = deque(maxlen=256)  # (end_us, version, host clock)
        self.host_version = 0
        self._classes: dict = {}                  # (name, kind) -> op kind

    # -- queues ------------------------------------------------------------------------------
    def queue(self, rec: dict) -> QueueState:
        """Register a ``queue`` record (or return the queue it names)."""
        qid = rec["queue"]
        q = self.queues.get(qid)
        if q is None:
            q = self.queues[qid] = QueueState(qid, rec.get("label"), rec.get("concurrent", False),
                                              rec.get("cmg"))
        else:
            if rec.get("label") is not None:
                q.label = str(rec["label"])
            q.concurrent = bool(rec.get("concurrent", q.concurrent))
            q.cmg = rec.get("cmg", q.cmg)
        return q

    def _queue_of(self, rec: dict) -> QueueState:
        q = self.queues.get(rec["queue"])
        if q is None:  # a task before (or without) its queue record: assume a serial queue
            q = self.queues[rec["queue"]] = QueueState(rec["queue"], rec.get("label"))
        return q

    # -- tasks ---------------------------------------------------------------------------------
    def task(self, line: int, rec: dict) -> Node:
        """The :class:`Node` of one ``task`` record, with its clock; updates queue state."""
        q = self._queue_of(rec)
        kind = rec.get("kind") or "host"
        name = rec.get("name")
        if type(name) is not str:
            name = str(kind)
        cls = self._classes.get((name, kind))
        if cls is None:
            cls = classify(name, kind)
            if len(self._classes) < 65536:
                self._classes[(name, kind)] = cls
        node = Node(line, q, name, kind, cls, rec.get("submit_us"), rec["start_us"], rec["end_us"])
        node.id = rec.get("id")
        node.thread = rec.get("thread")
        node.cmg = rec.get("cmg")
        node.status = rec.get("status", "ok")
        if node.submit is None:
            node.submit = node.start
        if node.status != "cancelled" and node.status != "dependency_failed":
            node.reads = self._views(line, rec.get("reads"))
            node.writes = self._views(line, rec.get("writes"))
            node.rbytes = sum(v.nbytes for v in node.reads)
            node.wbytes = sum(v.nbytes for v in node.writes)
        if node.status == "cancelled":
            return node  # never ran: no place in any order
        vc = self._deps_clock(rec.get("deps"))
        vc = _join(vc, self._host_clock_for(node.submit))
        if q.concurrent:
            self._concurrent_task(q, node, vc)
        else:
            vc = _join(q.base, vc)
            q.ordinal += 1
            node.ordinal = q.ordinal
            node.vc = vc
            q.base = vc
        if node.kind == "event_record":
            markers = self.markers
            markers[name] = _own(node)
            markers.move_to_end(name)
            self.marker_queue[name] = q
            if len(markers) > _TASK_WINDOW:
                old, _ = markers.popitem(last=False)
                self.marker_queue.pop(old, None)
        tid = node.id
        if tid is not None:
            tasks = self.tasks
            tasks[tid] = (q, node.ordinal, node.submit, tid, node.vc)
            if len(tasks) > 2 * _TASK_WINDOW:  # keep the newest window (amortised O(1))
                self.tasks = dict(list(tasks.items())[-_TASK_WINDOW:])
        return node

    def _views(self, line, entries) -> tuple:
        if not entries:
            return ()
        out = []
        for entry in entries:
            try:
                out.append(parse_view(entry))
            except ValueError as exc:
                if self.diagnostics is not None:
                    self.diagnostics.note("unusable buffer views skipped", example=f"line {line}: {exc}")
        return tuple(out)

    def _deps_clock(self, deps) -> dict:
        vc = _EMPTY
        if not deps:
            return vc
        for dep in deps:
            if dep is None:
                continue
            known = self.tasks.get(dep)
            if known is None:
                if self.diagnostics is not None:
                    self.diagnostics.note("dependencies on tasks outside the analysis window ignored")
                continue
            vc = _join(vc, _own_clock(*known))
        return vc

    def _host_clock_for(self, submit) -> dict:
        """The host's knowledge at a submission: the latest host sync that returned before it."""
        for end, _version, hvc in reversed(self.host_syncs):
            if end <= submit:
                return hvc
        return _EMPTY

    def _concurrent_task(self, q: QueueState, node: Node, vc: dict) -> None:
        submit = node.submit
        if q.gates:
            if q.gates[-1][0] < submit:
                vc = _join(vc, q.gates_vc)
            else:
                for gsub, gvc in q.gates:
                    if gsub < submit:
                        vc = _join(vc, gvc)
        if node.kind == "event_record" or node.kind == "barrier":
            # follows every task of this queue submitted before it
            for osub, ovc in q.recent:
                if osub < submit:
                    vc = _join(vc, ovc)
            vc = _join(vc, {("c", q.id): submit})
        node.vc = vc
        if node.kind == "barrier" or (node.kind == "event_wait" and node.id is not None):
            self._add_gate(q, submit, _own(node))
        if node.kind != "event_record":
            q.recent.append((submit, vc))

    @staticmethod
    def _add_gate(q: QueueState, submit, vc) -> None:
        q.gates.append((submit, vc))
        q.gates.sort(key=lambda g: g[0])
        if len(q.gates) > 64:
            del q.gates[0]
        joined = _EMPTY
        for _s, gvc in q.gates:
            joined = _join(joined, gvc)
        q.gates_vc = joined

    # -- host ---------------------------------------------------------------------------------
    def _queue_done_clock(self, q: QueueState, before) -> dict:
        """What a host learns by synchronizing with queue ``q`` (started at ``before``)."""
        if not q.concurrent:
            return _join(q.base, {q.id: q.ordinal}) if q.ordinal else q.base
        vc = _EMPTY
        for osub, ovc in q.recent:
            if osub < before:
                vc = _join(vc, ovc)
        return _join(vc, {("c", q.id): before})

    def host_sync(self, rec: dict) -> str:
        """Account for a ``host_sync`` record; returns its scope (``queue``, ``event``, ``device``)."""
        qid, label = rec.get("queue"), rec.get("event")
        start = rec["start_us"]
        if qid is not None and qid in self.queues:
            learned, scope = self._queue_done_clock(self.queues[qid], start), "queue"
        elif label is not None:
            learned, scope = self.markers.get(label, _EMPTY), "event"
        else:
            learned, scope = _EMPTY, "device"
            for q in self.queues.values():
                learned = _join(learned, self._queue_done_clock(q, start))
        joined = _join(self.host_vc, learned)
        if joined is not self.host_vc:
            self.host_vc = joined
            self.host_version += 1
        self.host_syncs.append((rec["end_us"], self.host_version, self.host_vc))
        return scope

    def host_access(self, line: int, rec: dict) -> Node:
        """The :class:`Node` of a ``host_read``/``host_write`` record (a host agent access)."""
        t = rec["t_us"]
        kind = rec["type"]
        node = Node(line, None, kind, kind, "host", t, t, t)
        node.host = True
        node.thread = rec.get("thread")
        node.vc = self.host_vc
        try:
            view = host_view(rec["buffer"], rec.get("offset", 0), rec["bytes"])
        except ValueError as exc:
            if self.diagnostics is not None:
                self.diagnostics.note("unusable host access skipped", example=f"line {line}: {exc}")
            return node
        if kind == "host_read":
            node.reads, node.rbytes = (view,), view.nbytes
        else:
            node.writes, node.wbytes = (view,), view.nbytes
        return node

    # -- the relation --------------------------------------------------------------------------
    @staticmethod
    def hb(a: Node, b: Node) -> bool:
        """True if ``a`` is known to finish before ``b`` starts (``a`` processed first)."""
        if a is b:
            return False
        qa = a.queue
        if qa is None:  # host access: program order of the host agent
            return b.queue is None or b.submit >= a.end
        vc = b.vc
        if qa.concurrent:
            mark = vc.get(("c", qa.id))
            if mark is not None and mark > a.submit:
                return True
            return ("t", qa.id, a.submit, a.id) in vc
        if b.queue is qa:
            return a.ordinal < b.ordinal
        known = vc.get(qa.id)
        return known is not None and known >= a.ordinal
