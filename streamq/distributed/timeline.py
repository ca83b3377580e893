"""Reading the queue log of a data-parallel run: how much all-reduce time backward hid, as a timeline.

Communication time comes from the NCCL module's ``nccl`` records (one per
operation: ``start_us`` when the progress thread started it, ``end_us`` when
it completed — the time it was in flight, whichever stream issued it);
computation from the ``kernel`` tasks of the compute stream. The fraction
hidden is the time during which both ran, over the all-reduces' time. During
DDP's backward pass the compute stream runs nothing but backward kernels while
gradient all-reduces are in flight (the optimizer waits for them), so this is
the fraction of all-reduce time hidden behind backward.
"""

from __future__ import annotations

import json

__all__ = ["kernel_intervals", "load", "nccl_intervals", "overlap", "render"]


def load(path: str) -> list[dict]:
    """Every record of a queue log (JSON lines)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def kernel_intervals(records: list[dict], label: str) -> list[tuple[float, float]]:
    """(start_us, end_us) of the kernels that ran on the queue (stream) ``label``."""
    return sorted((r["start_us"], r["end_us"]) for r in records
                  if r.get("type") == "task" and r.get("label") == label and r.get("kind") == "kernel"
                  and r.get("status") == "ok" and r.get("start_us") is not None)


def nccl_intervals(records: list[dict], comm: int | None = None) -> list[tuple[float, float]]:
    """(start_us, end_us) of the NCCL operations in flight (of communicator ``comm`` if given)."""
    return sorted((r["start_us"], r["end_us"]) for r in records
                  if r.get("type") == "nccl" and (comm is None or r.get("comm") == comm))


def _union(intervals) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap(comm: list[tuple[float, float]], compute: list[tuple[float, float]]) -> dict:
    """``{"allreduce_us", "hidden_us", "fraction", "count"}``: the total time of the ``comm``
    intervals, the part of it during which some ``compute`` interval ran, and their ratio."""
    busy = _union(compute)
    total = sum(b - a for a, b in comm)
    hidden = 0.0
    for a, b in comm:
        for c, d in busy:
            if d <= a:
                continue
            if c >= b:
                break
            hidden += min(b, d) - max(a, c)
    return {"allreduce_us": total, "hidden_us": hidden, "fraction": hidden / total if total else 0.0,
            "count": len(comm)}


def render(lanes: dict[str, list[tuple[float, float]]], start_us: float, end_us: float, width: int = 100) -> str:
    """A text timeline: one row per lane, ``#`` where one of its intervals ran, ``.`` elsewhere,
    between ``start_us`` and ``end_us``."""
    span = max(end_us - start_us, 1e-9)
    pad = max(len(name) for name in lanes)
    rows = []
    for name, intervals in lanes.items():
        cells = ["."] * width
        for a, b in intervals:
            if b < start_us or a > end_us:
                continue
            first = int((max(a, start_us) - start_us) / span * width)
            last = int((min(b, end_us) - start_us) / span * width)
            for i in range(max(first, 0), min(last + 1, width)):
                cells[i] = "#"
        rows.append(f"{name:>{pad}} |{''.join(cells)}|")
    rows.append(f"{'':>{pad}}  0 ms{(end_us - start_us) / 1000:>{width - 4}.1f} ms")
    return "\n".join(rows)
