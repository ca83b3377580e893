"""Fusion candidates and near-misses, mined from the dataflow of a log as it streams by.

For each op ``B`` on a serial queue and each op ``A`` whose output ``B`` reads
(``A`` the latest writer of those bytes), the pair ``A -> B`` is a *link* when:
``A`` is the item right before ``B`` on the same serial queue with no
synchronization between them; ``A`` is fusable (elementwise, broadcast,
injective) or heads the chain as a complex op (an epilogue after a
convolution/GEMM) and ``B`` is fusable; ``B`` reads exactly the view ``A`` wrote
and iterates over its shape; no write partially overlaps a view the two read;
and nothing else reads the intermediate -- neither before ``B`` nor later, until
it is overwritten, freed or the log ends. Consecutive links form a chain
(``vertical``, or ``epilogue`` when a complex op heads it). A pair that fails
gives a *near-miss* with every reason it failed (:data:`REASONS`).

Runs of consecutive independent fusable ops on one serial queue give
``sibling`` groups (ops reading the same input view, which a fused kernel reads
once) and ``horizontal`` groups (at least :data:`HORIZONTAL_MIN_OPS` small ops,
e.g. per-parameter optimizer updates, launched as one).
"""

from __future__ import annotations

from collections import deque

from .opkinds import FUSABLE

__all__ = ["REASONS", "FusionMiner", "Finding", "HORIZONTAL_MIN_OPS", "HORIZONTAL_MAX_BYTES",
           "MAX_GROUP_OPS"]

#: Why a producer -> consumer pair was not fused, by reason code.
REASONS = {
    "another_reader": "the intermediate is also read by another op",
    "host_read": "the host reads the intermediate",
    "sync_between": "a synchronization or event record/wait lies between producer and consumer",
    "cross_stream": "producer and consumer run on different queues",
    "concurrent_queue": "producer and consumer are unordered tasks of a concurrent queue",
    "interleaved": "other ops run between producer and consumer on the queue",
    "opaque_op": "one of the two cannot be fused (opaque, reduction, or a complex consumer)",
    "shape_mismatch": "the consumer reads another view of the intermediate or iterates over another shape",
    "aliasing": "a write partially overlaps a view the two ops read",
}

HORIZONTAL_MIN_OPS = 4               #: shortest run reported as a horizontal fusion
HORIZONTAL_MAX_BYTES = 1 << 20       #: an op moving more than this is not "small"
MAX_GROUP_OPS = 256                  #: longest chain or run (TVM's kMaxFusedOps); a longer one is split
_EXAMPLES = 3
_MAX_PATTERNS = 10_000
_MAX_INSTANCES = 500_000   # finding occurrences kept when the caller asks for them (plots)
_HEADS = FUSABLE | {"complex"}
_PRODUCERS = _HEADS | {"reduction", "opaque"}     # pairs worth a near-miss report
_CONSUMERS = FUSABLE | {"reduction", "opaque", "complex"}


class Finding:
    """One fusion pattern summed over its occurrences in the log.

    ``kind`` is vertical, epilogue, sibling or horizontal; ``ops`` the op names
    in queue order; ``saved_bytes``/``launches`` the intermediate traffic and
    launches fusing would remove (totals); ``measured_us`` the summed run time
    of the member ops; ``examples`` up to three occurrences as log line lists;
    ``estimated_us`` the time the cost model says fusing saves (total).
    """

    __slots__ = ("kind", "queue", "ops", "shapes", "occurrences", "saved_bytes", "launches",
                 "measured_us", "examples", "estimated_us")

    def __init__(self, kind, queue, ops, shapes):
        self.kind = kind
        self.queue = queue
        self.ops = ops
        self.shapes = shapes
        self.occurrences = 0
        self.saved_bytes = 0
        self.launches = 0
        self.measured_us = 0.0
        self.examples: list = []
        self.estimated_us = 0.0   # set by the analyzer once the cost model is fitted

    def __repr__(self) -> str:
        return f"<Finding {self.kind} {' -> '.join(self.ops)} x{self.occurrences}>"


class _Link:
    __slots__ = ("a", "b", "open", "state", "detail", "segment")

    def __init__(self, a, b, nviews, segment):
        self.a = a
        self.b = b
        self.open = nviews       # intermediate views not yet known dead
        self.state = None        # None: pending; "ok"; or a reason code
        self.detail = ""
        self.segment = segment


class _Segment:
    __slots__ = ("ops", "links", "pending", "closed")

    def __init__(self, ops):
        self.ops = ops
        self.links: list = []
        self.pending = 0
        self.closed = False


class _Run:
    __slots__ = ("ops", "reads", "writes")

    def __init__(self):
        self.ops: list = []
        self.reads: dict = {}
        self.writes: dict = {}


def _overlaps_any(index: dict, view) -> bool:
    for other in index.get(view.buffer, ()):
        if other.lo < view.hi and view.lo < other.hi:
            return True
    return False


def _format(detail) -> str:
    fmt, *args = detail
    return fmt.format(*(a.where() if hasattr(a, "where") else a for a in args))


def _main_output(node):
    """The view an op's loop iterates over: its largest write."""
    best = None
    for v in node.writes:
        if best is None or v.nbytes > best.nbytes:
            best = v
    return best


class FusionMiner:
    """Consumes nodes (with the shadow memory's producers) and collects findings."""

    def __init__(self, shadow, diagnostics=None, max_pending: int = 65536):
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.shadow = shadow
        self.diagnostics = diagnostics
        self.max_pending = max_pending
        self.findings: dict = {}
        self.near: dict = {}
        self.watch: dict = {}                 # buffer -> [(link, view)]
        self.pending: deque = deque()         # links in creation order (for the cap)
        self.npending = 0
        self.segments: dict = {}              # queue -> open segment
        self.runs: dict = {}                  # queue -> open independent run
        self.instances: list | None = None    # when a list: finding occurrences' member lines

    # -- per record -----------------------------------------------------------------------
    def op(self, node, producers) -> None:
        """Process one task node (before the shadow memory records it).

        ``producers``: as :meth:`~streamq.analysis.dataflow.Shadow.check` returned them.
        """
        self._watch(node)
        q = node.queue
        linked = False
        if node.status == "ok" and node.cls != "sync":
            by_producer: dict = {}
            for view, write in producers:
                if write is None or write.node.host or write.node.status != "ok":
                    continue
                entry = by_producer.setdefault(id(write.node), (write.node, []))
                entry[1].append((view, write))
            for a, pairs in by_producer.values():
                if self._pair(a, node, pairs):
                    linked = True
        if not q.concurrent:
            if not linked:
                self._close_segment(q)
            self._extend_run(q, node, linked)

    def host_access(self, node) -> None:
        """Process a host read/write node (refuses links whose intermediate it reads)."""
        self._watch(node)

    def end_lifetime(self, buffer) -> None:
        """A buffer was freed (or its address allocated afresh): its intermediates are dead."""
        for link, _view in self.watch.pop(buffer, ()):
            if link.state is None:
                self._view_dead(link)

    def finish(self) -> None:
        """End of log: every pending intermediate is dead; emit what is open."""
        for buffer in list(self.watch):
            self.end_lifetime(buffer)
        for q in list(self.segments):
            self._close_segment(q)
        for q in list(self.runs):
            self._close_run(q)

    # -- links --------------------------------------------------------------------------------
    def _pair(self, a, b, pairs) -> bool:
        """Judge the pair a -> b; True if it became a (pending) link."""
        acls, bcls = a.cls, b.cls
        if not (acls in _PRODUCERS and bcls in _CONSUMERS and (acls in FUSABLE or bcls in FUSABLE)):
            return False  # nothing a fuser could do with this pair
        reasons, details = [], []   # details: (format, args), formatted only when reported
        qa, qb = a.queue, b.queue
        if qa is not qb:
            reasons.append("cross_stream")
        elif qb.concurrent:
            reasons.append("concurrent_queue")
        elif qb.last_boundary > a.ordinal:
            reasons.append("sync_between")
        elif qb.last_item is not a:
            reasons.append("interleaved")
            if qb.last_item is not None:
                details.append(("{} runs between them", qb.last_item))
        views = []
        readers_after = self.shadow.readers_after
        for view, write in pairs:
            inter = write.view
            if inter not in views:
                views.append(inter)
            for other in readers_after(write, b):
                who = other.node
                reason = "host_read" if who.host else "another_reader"
                if reason not in reasons:
                    reasons.append(reason)
                    details.append(("also read by {}", who))
            if view.sig != inter.sig and "shape_mismatch" not in reasons:
                reasons.append("shape_mismatch")
                details.append(("reads {} strides {} of a {} strides {} output",
                                list(view.shape), list(view.strides), list(inter.shape),
                                list(inter.strides)))
        if bcls not in FUSABLE or acls not in _HEADS:
            reasons.append("opaque_op")
            odd = b if bcls not in FUSABLE else a
            details.append(("{} is {}", odd.name, odd.cls))
        elif "shape_mismatch" not in reasons and len(reasons) < 2:
            out = _main_output(b)
            if out is not None and any(out.shape != v.shape for v in views):
                reasons.append("shape_mismatch")
                details.append(("consumer iterates over {}, intermediate is {}", list(out.shape),
                                list(views[0].shape)))
        if len(reasons) < 2:
            alias = self._aliasing(a, b)
            if alias:
                reasons.append("aliasing")
                details.append(alias)
        if reasons:
            if len(reasons) == 1:  # a near-miss: legal but for this one blocker
                self._near(a, b, reasons, details)
            return False
        seg = self.segments.get(qb)
        if seg is not None and len(seg.ops) >= MAX_GROUP_OPS:
            self._close_segment(qb)   # long enough: the next chain starts after it
            return False
        if seg is None or seg.ops[-1] is not a:
            if seg is not None:
                self._close_segment(qb)
            seg = self.segments[qb] = _Segment([a])
        seg.ops.append(b)
        link = _Link(a, b, len(views), seg)
        seg.links.append(link)
        seg.pending += 1
        for inter in views:
            if any(w.lo <= inter.lo and inter.hi <= w.hi and w.buffer == inter.buffer
                   for w in b.writes):
                link.open -= 1  # overwritten in place by the consumer itself: dead now
            else:
                self.watch.setdefault(inter.buffer, []).append((link, inter))
                self.npending += 1
        if link.open == 0:
            self._resolve(link, "ok")
        else:
            self.pending.append(link)
            self._enforce_cap()
        return True

    @staticmethod
    def _aliasing(a, b):
        """A write of the pair partially overlapping a read of it (the intermediate aside)."""
        for writes, reads in ((b.writes, a.reads + b.reads), (a.writes, a.reads)):
            for w in writes:
                for r in reads:
                    if r.buffer == w.buffer and r.lo < w.hi and w.lo < r.hi and r.sig != w.sig:
                        return ("a write of bytes [{}, {}) partially overlaps a read of [{}, {})",
                                w.lo, w.hi, r.lo, r.hi)
        return None

    def _watch(self, node) -> None:
        watch = self.watch
        if not watch:
            return
        for view in node.reads:
            lst = watch.get(view.buffer)
            if not lst:
                continue
            refused = False
            for link, inter in lst:
                if link.state is None and link.b is not node and inter.lo < view.hi and view.lo < inter.hi:
                    self._resolve(link, "host_read" if node.host else "another_reader",
                                  f"also read by {node.where()}")
                    refused = True
            if refused:
                lst[:] = [(link, inter) for link, inter in lst if link.state is None]
                if not lst:
                    del watch[view.buffer]
        for view in node.writes:
            lst = watch.get(view.buffer)
            if not lst:
                continue
            keep = []
            for link, inter in lst:
                if link.state is not None:
                    continue
                if link.b is not node and view.lo <= inter.lo and inter.hi <= view.hi:
                    self._view_dead(link)
                else:
                    keep.append((link, inter))
            if keep:
                watch[view.buffer] = keep
            else:
                del watch[view.buffer]

    def _view_dead(self, link) -> None:
        link.open -= 1
        self.npending -= 1
        if link.open == 0 and link.state is None:
            self._resolve(link, "ok")

    def _enforce_cap(self) -> None:
        pending = self.pending
        if len(pending) > 2 * self.npending + 1024:  # drop resolved links (amortised O(1))
            self.pending = pending = deque(link for link in pending if link.state is None)
        while self.npending > self.max_pending and pending:
            link = pending.popleft()
            if link.state is None:
                if self.diagnostics is not None:
                    self.diagnostics.note("intermediates assumed dead when the pending window filled")
                self.npending -= link.open
                link.open = 0
                self._resolve(link, "ok")

    def _resolve(self, link, state: str, detail: str = "") -> None:
        if link.state is not None:
            return
        link.state = state
        link.detail = detail
        if state != "ok":
            self.npending -= max(link.open, 0)
            link.open = 0
        seg = link.segment
        seg.pending -= 1
        if seg.closed and seg.pending == 0:
            self._emit_segment(seg)

    def _close_segment(self, q) -> None:
        seg = self.segments.pop(q, None)
        if seg is not None:
            seg.closed = True
            if seg.pending == 0:
                self._emit_segment(seg)

    def _emit_segment(self, seg) -> None:
        chain = [seg.ops[0]]
        saved = 0
        for link, op in zip(seg.links, seg.ops[1:]):
            if link.state == "ok":
                chain.append(op)
                saved += 2 * sum(w.nbytes for w in link.a.writes if self._read_by(op, w))
                continue
            self._near(link.a, link.b, [link.state], [("{}", link.detail)] if link.detail else [])
            self._chain_finding(chain, saved)
            chain, saved = [op], 0
        self._chain_finding(chain, saved)

    @staticmethod
    def _read_by(node, write_view) -> bool:
        return any(r.sig == write_view.sig for r in node.reads)

    def _chain_finding(self, chain, saved) -> None:
        if len(chain) < 2:
            return
        kind = "epilogue" if chain[0].cls == "complex" else "vertical"
        self._add(kind, chain, saved, len(chain) - 1)

    # -- sibling and horizontal runs -----------------------------------------------------------
    def _extend_run(self, q, node, linked: bool) -> None:
        run = self.runs.get(q)
        eligible = node.cls in FUSABLE and node.status == "ok" and not linked
        if run is not None:
            last = run.ops[-1]
            joins = (eligible and q.last_item is last and q.last_boundary < last.ordinal
                     and not any(_overlaps_any(run.writes, v) for v in node.reads)
                     and not any(_overlaps_any(run.writes, v) or _overlaps_any(run.reads, v)
                                 for v in node.writes))
            if joins and len(run.ops) < MAX_GROUP_OPS:
                self._run_add(run, node)
                return
            self._close_run(q)
        if eligible:
            run = self.runs[q] = _Run()
            self._run_add(run, node)

    @staticmethod
    def _run_add(run, node) -> None:
        run.ops.append(node)
        for v in node.reads:
            run.reads.setdefault(v.buffer, []).append(v)
        for v in node.writes:
            run.writes.setdefault(v.buffer, []).append(v)

    def _close_run(self, q) -> None:
        run = self.runs.pop(q, None)
        if run is None or len(run.ops) < 2:
            return
        ops = run.ops
        if len(ops) >= HORIZONTAL_MIN_OPS and all(
                o.rbytes + o.wbytes <= HORIZONTAL_MAX_BYTES for o in ops):
            seen: dict = {}
            for o in ops:
                for sig, nbytes in {v.sig: v.nbytes for v in o.reads}.items():
                    seen[sig] = (seen.get(sig, (0, nbytes))[0] + 1, nbytes)
            saved = sum((count - 1) * nbytes for count, nbytes in seen.values())
            self._add("horizontal", ops, saved, len(ops) - 1)
            return
        # siblings: ops of the run reading one identical view, with one output shape
        groups: dict = {}
        for o in ops:
            out = _main_output(o)
            shape = None if out is None else out.shape
            for v in {v.sig: v for v in o.reads}.values():
                groups.setdefault((v.sig, shape), (v.nbytes, []))[1].append(o)
        ranked = sorted(((nbytes * (len(members) - 1), key, members)
                         for key, (nbytes, members) in groups.items() if len(members) >= 2),
                        key=lambda g: -g[0])
        used: set = set()
        for _saved, key, members in ranked:
            free = [o for o in members if id(o) not in used]
            if len(free) < 2:
                continue
            used.update(id(o) for o in free)
            nbytes = groups[key][0]
            self._add("sibling", free, nbytes * (len(free) - 1), len(free) - 1)

    # -- aggregation ------------------------------------------------------------------------------
    def _add(self, kind, ops, saved_bytes, launches) -> None:
        names = tuple(o.name for o in ops)
        shapes = tuple(self._shape(o) for o in ops)
        label = ops[0].queue.label
        key = (kind, label, names, shapes)
        f = self.findings.get(key)
        if f is None:
            if len(self.findings) >= _MAX_PATTERNS:
                key = (kind, label, names, None)
                f = self.findings.get(key)
            if f is None:
                f = self.findings[key] = Finding(kind, label, names, key[3])
        f.occurrences += 1
        f.saved_bytes += saved_bytes
        f.launches += launches
        f.measured_us += sum(o.end - o.start for o in ops)
        lines = [o.line for o in ops]
        if len(f.examples) < _EXAMPLES:
            f.examples.append(lines)
        if self.instances is not None and len(self.instances) < _MAX_INSTANCES:
            self.instances.append((kind, lines))

    @staticmethod
    def _shape(node):
        out = _main_output(node)
        return None if out is None else (out.shape, out.dtype)

    def _near(self, a, b, reasons, details) -> None:
        """Count a near-miss; ``details`` are (format, args...) tuples, formatted for examples only."""
        key = (tuple(reasons), a.name, a.queue.label, b.name, b.queue.label)
        entry = self.near.get(key)
        if entry is None:
            if len(self.near) >= _MAX_PATTERNS:
                return
            entry = self.near[key] = {"count": 0, "examples": []}
        entry["count"] += 1
        if len(entry["examples"]) < _EXAMPLES:
            entry["examples"].append({"lines": [a.line, b.line],
                                      "detail": "; ".join(_format(d) for d in details)})
