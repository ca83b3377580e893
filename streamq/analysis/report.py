"""Rendering an :class:`~streamq.analysis.analyzer.Analysis`: text, JSON, and the fusion plan.

The plan file is what the run-time fusion reads (keep its format exactly)::

    {"version": 1, "chains": [{"ops": ["aten::mul", "aten::add", "aten::relu"],
      "kind": "vertical", "queue_label": "stream0", "occurrences": 12,
      "saved_bytes": 1610612736, "saved_us": 5321.5}]}

``ops`` run consecutively on one queue, each consuming the previous op's
output; ``saved_bytes`` and ``saved_us`` are totals over the occurrences.
Only vertical and epilogue chains go into a plan.
"""

from __future__ import annotations

import json
import os

from .fusion import REASONS

__all__ = ["as_json", "as_text", "plan", "write_plan", "human_bytes", "PLAN_VERSION"]

PLAN_VERSION = 1


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _us(t: float) -> str:
    if t >= 1e6:
        return f"{t / 1e6:.2f} s"
    if t >= 1e3:
        return f"{t / 1e3:.2f} ms"
    return f"{t:.1f} µs"


def _finding_dict(rank: int, f) -> dict:
    n = max(f.occurrences, 1)
    return {"rank": rank, "kind": f.kind, "queue": f.queue, "ops": list(f.ops),
            "shapes": None if f.shapes is None else
            [None if s is None else {"shape": list(s[0]), "dtype": s[1]} for s in f.shapes],
            "occurrences": f.occurrences, "saved_bytes": f.saved_bytes,
            "saved_bytes_each": f.saved_bytes // n, "launches_saved": f.launches,
            "measured_us": round(f.measured_us, 3), "estimated_saved_us": round(f.estimated_us, 3),
            "examples": f.examples}


def as_json(analysis) -> dict:
    """The whole analysis as a JSON-ready dict (findings ranked, near-misses, races, model)."""
    return {"log": analysis.path, "counts": analysis.counts,
            "cost_model": analysis.fit.as_dict(),
            "findings": [_finding_dict(i + 1, f) for i, f in enumerate(analysis.findings)],
            "near_misses": analysis.near_misses, "races": analysis.races,
            "diagnostics": analysis.diagnostics.as_dict()}


def as_text(analysis, top: int = 20) -> str:
    """A readable report: cost model, top ``top`` findings, near-misses, races, damaged lines."""
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    out = []
    c, fit = analysis.counts, analysis.fit
    out.append(f"streamq fusion: {analysis.path}: {c['records']} records, {c['tasks']} tasks, "
               f"{analysis.diagnostics.count} damaged lines skipped")
    bw = "unknown" if not fit.bandwidth else f"{fit.bandwidth / 1e3:.2f} GB/s"
    out.append(f"cost model (fitted from this log, {fit.samples} ops, {fit.method}): "
               f"per-op overhead {fit.overhead_us:.2f} µs + dispatch gap {fit.dispatch_gap_us:.2f} µs, "
               f"bandwidth {bw}")
    out.append("")
    findings = analysis.findings
    out.append(f"Fusion candidates ({len(findings)} patterns, ranked by estimated time saved)")
    if not findings:
        out.append("  none")
    for i, f in enumerate(findings[:top]):
        n = max(f.occurrences, 1)
        out.append(f"  #{i + 1} {f.kind:<10} queue {f.queue!r}: {' -> '.join(f.ops)}  x{f.occurrences}")
        out.append(f"      each: {human_bytes(f.saved_bytes / n)} of intermediates not written+read, "
                   f"{f.launches / n:g} launches saved")
        out.append(f"      total: {human_bytes(f.saved_bytes)}, {f.launches} launches, "
                   f"~{_us(f.estimated_us)} saved of {_us(f.measured_us)} measured")
        ex = "; ".join(", ".join(str(x) for x in lines) for lines in f.examples)
        out.append(f"      log lines: {ex}")
    if len(findings) > top:
        out.append(f"  ... {len(findings) - top} more (--format json lists all)")
    out.append("")
    near = analysis.near_misses
    out.append(f"Near misses ({len(near)} patterns): pairs that would fuse but for one reason")
    if not near:
        out.append("  none")
    for n in near[:top]:
        reason = n["reasons"][0]
        out.append(f"  {reason:<16} {n['producer']['op']} ({n['producer']['queue']}) -> "
                   f"{n['consumer']['op']} ({n['consumer']['queue']})  x{n['count']}: {REASONS[reason]}")
        for ex in n["examples"][:1]:
            detail = f" -- {ex['detail']}" if ex["detail"] else ""
            out.append(f"      e.g. log lines {ex['lines'][0]} -> {ex['lines'][1]}{detail}")
    out.append("")
    races = analysis.races
    out.append(f"Races ({sum(r['count'] for r in races)} found, {len(races)} patterns): "
               "overlapping accesses, one a write, with no happens-before path")
    if not races:
        out.append("  none")
    for r in races[:top]:
        a, b = r["first"], r["second"]
        out.append(f"  {a['access']} by {a['op']} ({a['queue']}) vs {b['access']} by {b['op']} "
                   f"({b['queue']})  x{r['count']}")
        for ex in r["examples"][:1]:
            buf = ex["buffer"]
            buf = hex(buf) if isinstance(buf, int) else repr(buf)
            out.append(f"      e.g. log lines {ex['lines'][0]} and {ex['lines'][1]}, buffer {buf} "
                       f"bytes [{ex['bytes'][0]}, {ex['bytes'][1]})")
    diag = analysis.diagnostics.lines(analysis.path)
    if diag:
        out.append("")
        out.append("Log problems")
        out.extend("  " + line for line in diag)
    return "\n".join(out) + "\n"


def plan(analysis) -> dict:
    """The plan for the run-time fusion: vertical and epilogue chains, grouped by ops and queue."""
    chains: dict = {}
    for f in analysis.findings:
        if f.kind not in ("vertical", "epilogue"):
            continue
        key = (f.ops, f.kind, f.queue)
        c = chains.get(key)
        if c is None:
            c = chains[key] = {"ops": list(f.ops), "kind": f.kind, "queue_label": f.queue,
                               "occurrences": 0, "saved_bytes": 0, "saved_us": 0.0}
        c["occurrences"] += f.occurrences
        c["saved_bytes"] += f.saved_bytes
        c["saved_us"] += f.estimated_us
    out = sorted(chains.values(), key=lambda c: (-c["saved_us"], c["ops"]))
    for c in out:
        c["saved_us"] = round(c["saved_us"], 3)
    return {"version": PLAN_VERSION, "chains": out}


def write_plan(analysis, path) -> dict:
    """Write :func:`plan` to ``path`` as JSON; returns the plan."""
    data = plan(analysis)
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return data
