"""Per-op time, count and bandwidth, per-queue busy time, and idle gaps per CMG, streamed.

Idle gaps are the stretches, between a CMG's first and last op, in which none
of its workers ran an op (intervals merged through a bounded sorted window).
``busy_fraction`` is the op time over the CMG's span times its cores (from the
log's ``meta`` topology; 1 core when unknown).
"""

from __future__ import annotations

import bisect
import math
import os

from .opkinds import classify
from .reader import Diagnostics, in_time_order, read_records

__all__ = ["summarize", "summary_text"]

_MAX_NAMES = 10_000
_UNION_KEEP = 512


class _Union:
    """Union of intervals seen roughly in order; counts busy time and gaps >= ``min_gap``."""

    def __init__(self, min_gap: float):
        self.min_gap = min_gap
        self.iv: list = []          # sorted, disjoint [start, end]
        self.frontier = -math.inf   # everything before it is final
        self.prev_end = None
        self.first = None
        self.busy = 0.0
        self.idle = 0.0
        self.gaps = 0
        self.longest = (0.0, None)

    def add(self, s: float, e: float) -> None:
        if e <= self.frontier:
            return
        s = max(s, self.frontier)
        iv = self.iv
        i = bisect.bisect_left(iv, [s, -math.inf])
        if i > 0 and iv[i - 1][1] >= s:
            i -= 1
        j = i
        while j < len(iv) and iv[j][0] <= e:
            s = min(s, iv[j][0])
            e = max(e, iv[j][1])
            j += 1
        iv[i:j] = [[s, e]]
        if len(iv) > 2 * _UNION_KEEP:
            self._finalize(_UNION_KEEP)

    def _finalize(self, k: int) -> None:
        for s, e in self.iv[:k]:
            if self.first is None:
                self.first = s
            if self.prev_end is not None:
                gap = s - self.prev_end
                self.idle += gap
                if gap >= self.min_gap:
                    self.gaps += 1
                if gap > self.longest[0]:
                    self.longest = (gap, self.prev_end)
            self.busy += e - s
            self.prev_end = e
        del self.iv[:k]
        if self.prev_end is not None:
            self.frontier = self.prev_end

    def close(self) -> dict:
        self._finalize(len(self.iv))
        span = 0.0 if self.first is None else self.prev_end - self.first
        return {"span_us": round(span, 3), "busy_us": round(self.busy, 3),
                "idle_us": round(self.idle, 3), "gaps": self.gaps,
                "longest_gap_us": round(self.longest[0], 3),
                "longest_gap_at_us": self.longest[1]}


def summarize(log, *, diagnostics: Diagnostics | None = None, min_gap_us: float = 100.0,
              window: int = 4096) -> dict:
    """Summarise the log at ``log``: ``ops`` by name, ``queues``, ``cmgs``, ``host_syncs``.

    ``min_gap_us``: an idle stretch at least this long counts as a gap.
    Raises FileNotFoundError if the log does not exist, ValueError for a
    negative ``min_gap_us``.
    """
    if not isinstance(min_gap_us, (int, float)) or not min_gap_us >= 0:
        raise ValueError(f"min_gap_us must be a non-negative number, got {min_gap_us!r}")
    log = os.fspath(log)
    if not os.path.exists(log):
        raise FileNotFoundError(f"no such log: {log}")
    diag = diagnostics if diagnostics is not None else Diagnostics()
    ops: dict = {}
    queues: dict = {}
    labels: dict = {}
    lanes: dict = {}
    cmg_ops: dict = {}
    syncs: dict = {}
    cores: dict = {}
    for _line, rec in in_time_order(read_records(log, diag), diag, window):
        kind = rec["type"]
        if kind == "task":
            if rec.get("status") == "cancelled":
                continue
            tkind = rec.get("kind") or "host"
            if tkind in ("event_record", "event_wait"):
                continue  # markers and gates are waiting, not work
            name = rec.get("name") if isinstance(rec.get("name"), str) else str(tkind)
            dur = rec["end_us"] - rec["start_us"]
            nbytes = sum(v.get("bytes", 0) for key in ("reads", "writes") for v in rec.get(key) or ()
                         if isinstance(v, dict) and isinstance(v.get("bytes", 0), int))
            if name not in ops and len(ops) >= _MAX_NAMES:
                name = "(other)"
            st = ops.get(name)
            if st is None:
                st = ops[name] = {"kind": classify(name, tkind), "count": 0, "total_us": 0.0,
                                  "max_us": 0.0, "bytes": 0}
            st["count"] += 1
            st["total_us"] += dur
            st["max_us"] = max(st["max_us"], dur)
            st["bytes"] += nbytes
            label = labels.get(rec["queue"], str(rec.get("label", rec["queue"])))
            qs = queues.setdefault(label, {"ops": 0, "busy_us": 0.0})
            qs["ops"] += 1
            qs["busy_us"] += dur
            cmg = rec.get("cmg")
            key = "host" if cmg is None else cmg
            lane = lanes.get(key)
            if lane is None:
                lane = lanes[key] = _Union(min_gap_us)
                cmg_ops[key] = [0, 0.0]
            lane.add(rec["start_us"], rec["end_us"])
            cmg_ops[key][0] += 1
            cmg_ops[key][1] += dur
        elif kind == "queue":
            labels[rec["queue"]] = str(rec.get("label", rec["queue"]))
        elif kind == "host_sync":
            what = str(rec.get("what"))
            s = syncs.setdefault(what, {"count": 0, "total_us": 0.0, "max_us": 0.0})
            d = rec["end_us"] - rec["start_us"]
            s["count"] += 1
            s["total_us"] += d
            s["max_us"] = max(s["max_us"], d)
        elif kind == "meta":
            for c in rec.get("topology") or ():
                if isinstance(c, dict) and isinstance(c.get("cpus"), list):
                    cores[c.get("cmg")] = max(len(c["cpus"]), 1)
    for st in ops.values():
        st["mean_us"] = round(st["total_us"] / st["count"], 3)
        st["gb_s"] = round(st["bytes"] / st["total_us"] / 1e3, 3) if st["total_us"] > 0 else None
        st["total_us"] = round(st["total_us"], 3)
        st["max_us"] = round(st["max_us"], 3)
    cmgs = {}
    for key, lane in lanes.items():
        info = lane.close()
        info["ops"], op_time = cmg_ops[key][0], cmg_ops[key][1]
        ncores = cores.get(key, 1)
        info["cores"] = ncores
        span = info["span_us"]
        info["busy_fraction"] = round(op_time / (span * ncores), 4) if span > 0 else None
        cmgs[str(key)] = info
    for qs in queues.values():
        qs["busy_us"] = round(qs["busy_us"], 3)
    for s in syncs.values():
        s["total_us"] = round(s["total_us"], 3)
        s["max_us"] = round(s["max_us"], 3)
    return {"log": log, "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["total_us"])),
            "queues": queues, "cmgs": cmgs, "host_syncs": syncs, "min_gap_us": min_gap_us,
            "diagnostics": diag.as_dict()}


def summary_text(summary: dict, top: int = 30) -> str:
    """The summary as aligned text tables (the ``top`` ops by total time)."""
    out = [f"streamq trace --summary: {summary['log']}", "",
           f"{'op':<40} {'kind':<11} {'count':>8} {'total ms':>10} {'mean µs':>10} {'GB/s':>8}"]
    for name, st in list(summary["ops"].items())[:top]:
        gbs = "-" if st["gb_s"] is None or not st["bytes"] else f"{st['gb_s']:.2f}"
        out.append(f"{name[:40]:<40} {st['kind']:<11} {st['count']:>8} {st['total_us'] / 1e3:>10.3f} "
                   f"{st['mean_us']:>10.2f} {gbs:>8}")
    if len(summary["ops"]) > top:
        out.append(f"... {len(summary['ops']) - top} more ops")
    out += ["", f"{'CMG':<6} {'ops':>8} {'span ms':>10} {'busy ms':>10} {'idle ms':>10} "
                f"{'gaps':>6} {'longest µs':>11} {'busy/cores':>10}"]
    for key, c in summary["cmgs"].items():
        frac = "-" if c["busy_fraction"] is None else f"{c['busy_fraction']:.1%}"
        out.append(f"{key:<6} {c['ops']:>8} {c['span_us'] / 1e3:>10.3f} {c['busy_us'] / 1e3:>10.3f} "
                   f"{c['idle_us'] / 1e3:>10.3f} {c['gaps']:>6} {c['longest_gap_us']:>11.1f} {frac:>10}")
    out.append(f"(gaps: idle stretches of at least {summary['min_gap_us']:g} µs with no op running "
               "on the CMG)")
    if summary["host_syncs"]:
        out += ["", f"{'host sync':<30} {'count':>8} {'total ms':>10} {'max µs':>10}"]
        for what, s in summary["host_syncs"].items():
            out.append(f"{what[:30]:<30} {s['count']:>8} {s['total_us'] / 1e3:>10.3f} {s['max_us']:>10.1f}")
    return "\n".join(out) + "\n"
