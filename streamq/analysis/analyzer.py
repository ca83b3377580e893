"""One streaming pass over a queue log: happens-before, dataflow, races, fusion, cost model.

:func:`analyze` reads the log once, in bounded memory, and returns an
:class:`Analysis` holding the ranked fusion findings, near-misses, races and
the fitted cost model. ``streamq fusion LOG`` prints it (:mod:`.report`).
"""

from __future__ import annotations

import os

from .cost import CostModel
from .dataflow import Shadow
from .fusion import FusionMiner
from .graph import HappensBefore
from .opkinds import FUSABLE
from .races import RaceReport
from .reader import Diagnostics, in_time_order, read_records

__all__ = ["Analysis", "analyze"]


class Analysis:
    """The result of :func:`analyze`.

    ``findings``: :class:`~streamq.analysis.fusion.Finding` objects ranked by
    estimated time saved (each has ``estimated_us``); ``near_misses``: dicts
    (reasons, producer/consumer op and queue, count, examples); ``races``:
    dicts (see :class:`~streamq.analysis.races.RaceReport`); ``fit``: the cost
    model; ``diagnostics``: damaged lines and notes; ``counts``: records and
    tasks seen; ``instances``: when requested, ``(kind, [lines])`` of the
    finding occurrences (the first 500,000).
    """

    def __init__(self, path, findings, near_misses, races, fit, diagnostics, counts, meta,
                 instances):
        self.path = path
        self.findings = findings
        self.near_misses = near_misses
        self.races = races
        self.fit = fit
        self.diagnostics = diagnostics
        self.counts = counts
        self.meta = meta
        self.instances = instances


def analyze(path, *, diagnostics: Diagnostics | None = None, min_savings: int = 0,
            window: int = 4096, collect_instances: bool = False) -> Analysis:
    """Analyse the queue log at ``path`` (``.jsonl`` or ``.jsonl.gz``) in one pass.

    ``min_savings``: drop findings whose total saved bytes are below it (a
    horizontal fusion saves launches, not bytes, so any positive value drops
    it). ``window``: records held to restore time order. Damaged lines are
    reported in ``diagnostics`` and skipped. Raises FileNotFoundError if the log
    does not exist, ValueError for a negative ``min_savings``.
    """
    if not isinstance(min_savings, int) or isinstance(min_savings, bool) or min_savings < 0:
        raise ValueError(f"min_savings must be a non-negative integer of bytes, got {min_savings!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such log: {path}")
    diag = diagnostics if diagnostics is not None else Diagnostics()
    hb = HappensBefore(diag)
    shadow = Shadow()
    races = RaceReport()
    miner = FusionMiner(shadow, diag)
    if collect_instances:
        miner.instances = []
    cost = CostModel()
    counts = {"records": 0, "tasks": 0, "host_syncs": 0, "host_accesses": 0}
    meta = None
    for line, rec in in_time_order(read_records(path, diag), diag, window):
        counts["records"] += 1
        kind = rec["type"]
        if kind == "task":
            node = hb.task(line, rec)
            if node.status == "cancelled":
                continue
            counts["tasks"] += 1
            if node.cls == "free":
                continue    # a stream-ordered free: its "free" record ends the lifetime; chains go on
            q = node.queue
            producers, found = shadow.check(node)
            for acc, view, is_write in found:
                races.add(acc, node, view, is_write)
            if node.cls != "sync":
                if node.status == "ok" and node.cls in FUSABLE:
                    # Only memory-bound ops teach the model what fusing saves: a convolution's
                    # time is compute, and would pass for a huge per-op overhead.
                    cost.observe(node.rbytes + node.wbytes, node.end - node.start)
                prev = q.last_item
                if (prev is not None and not q.concurrent and prev.cls != "sync"
                        and node.submit < prev.end):
                    cost.observe_gap(node.start - prev.end)
            miner.op(node, producers)
            shadow.record(node)
            if not q.concurrent:
                q.last_item = node
                if node.cls == "sync" or node.status != "ok":
                    q.last_boundary = node.ordinal
        elif kind == "host_sync":
            counts["host_syncs"] += 1
            scope = hb.host_sync(rec)
            if scope == "queue":
                affected = [hb.queues[rec["queue"]]]
            elif scope == "event":
                q = hb.marker_queue.get(rec.get("event"))
                affected = [] if q is None else [q]
            else:
                affected = hb.queues.values()
            for q in affected:
                q.last_boundary = q.ordinal + 0.5
        elif kind in ("host_read", "host_write"):
            counts["host_accesses"] += 1
            node = hb.host_access(line, rec)
            _producers, found = shadow.check(node)
            for acc, view, is_write in found:
                races.add(acc, node, view, is_write)
            miner.host_access(node)
            shadow.record(node)
        elif kind in ("alloc", "free"):
            shadow.end_lifetime(rec["buffer"])
            miner.end_lifetime(rec["buffer"])
        elif kind == "queue":
            hb.queue(rec)
        elif kind == "meta" and meta is None:
            meta = rec
    miner.finish()
    fit = cost.fit()
    findings = [f for f in miner.findings.values() if f.saved_bytes >= min_savings]
    for f in findings:
        f.estimated_us = fit.saved_us(f.saved_bytes, f.launches)
        if f.measured_us > 0:   # fusing never saves more than the fused ops took
            f.estimated_us = min(f.estimated_us, f.measured_us)
    findings.sort(key=lambda f: (-f.estimated_us, -f.saved_bytes, f.ops))
    near = [{"reasons": list(key[0]), "producer": {"op": key[1], "queue": key[2]},
             "consumer": {"op": key[3], "queue": key[4]}, "count": v["count"],
             "examples": v["examples"]} for key, v in miner.near.items()]
    near.sort(key=lambda n: (-n["count"], n["reasons"], n["producer"]["op"]))
    if shadow.evicted:
        diag.note("shadow-memory history trimmed (buffers or accesses beyond the window)", shadow.evicted)
    return Analysis(path, findings, near, races.as_list(), fit, diag, counts, meta, miner.instances)
