"""A timeline picture of a queue log: one lane per worker thread, grouped by CMG.

Ops are coloured by kind (elementwise, complex, reduction, ...); the members
of fusion candidates found by the analyzer are outlined in red. Needs
matplotlib (``pip install matplotlib``); without it :func:`plot_timeline`
raises ImportError saying so. A plot cannot show millions of ops: at most
``max_ops`` are drawn (the earliest), and the caller is told how many were left out.
"""

from __future__ import annotations

import os

from .analyzer import analyze
from .opkinds import classify
from .reader import Diagnostics, in_time_order, read_records

__all__ = ["plot_timeline", "COLOURS"]

#: Colour of each op kind in the plot.
COLOURS = {"elementwise": "#4c9be8", "broadcast": "#77b7f0", "injective": "#9ad0f5",
           "reduction": "#f2a541", "complex": "#8e5cc7", "opaque": "#8c8c8c", "copy": "#3fb27f",
           "fill": "#a3d9a5", "sync": "#d9d9d9", "host": "#c9b28f",
           "free": "#eeeeee"}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("streamq trace --plot needs matplotlib: pip install matplotlib") from exc
    return plt


def plot_timeline(log, out_png, *, highlight: bool = True, max_ops: int = 200_000,
                  diagnostics: Diagnostics | None = None) -> dict:
    """Draw the timeline of the log at ``log`` into ``out_png``.

    ``highlight``: run the fusion analysis first and outline candidate members.
    Returns counts (``ops`` drawn, ``left_out``, ``highlighted``, ``lanes``).
    Raises ImportError without matplotlib, FileNotFoundError without the log.
    """
    if not isinstance(max_ops, int) or max_ops < 1:
        raise ValueError(f"max_ops must be a positive integer, got {max_ops!r}")
    plt = _pyplot()
    log = os.fspath(log)
    if not os.path.exists(log):
        raise FileNotFoundError(f"no such log: {log}")
    diag = diagnostics if diagnostics is not None else Diagnostics()
    fused: set = set()
    if highlight:
        analysis = analyze(log, diagnostics=Diagnostics(), collect_instances=True)
        for _kind, lines in analysis.instances:
            fused.update(lines)
            if len(fused) > 4 * max_ops:
                break
    lanes: dict = {}          # (cmg, thread) -> list of (start, dur, kind, fused)
    drawn = left_out = 0
    t0 = None
    for line, rec in in_time_order(read_records(log, diag), diag):
        if rec["type"] != "task" or rec.get("status") == "cancelled":
            continue
        tkind = rec.get("kind") or "host"
        if tkind in ("event_record", "event_wait"):
            continue
        if drawn >= max_ops:
            left_out += 1
            continue
        drawn += 1
        start = rec["start_us"]
        t0 = start if t0 is None else min(t0, start)
        name = rec.get("name") if isinstance(rec.get("name"), str) else tkind
        key = (rec.get("cmg"), rec.get("thread"))
        lanes.setdefault(key, []).append((start, rec["end_us"] - start, classify(name, tkind),
                                          line in fused))
    order = sorted(lanes, key=lambda k: (k[0] is None, k[0] if k[0] is not None else 0, str(k[1])))
    fig_h = max(2.0, 0.45 * len(order) + 1.2)
    fig, ax = plt.subplots(figsize=(14, fig_h))
    t0 = t0 or 0.0
    highlighted = 0
    for y, key in enumerate(order):
        by_kind: dict = {}
        for start, dur, kind, is_fused in lanes[key]:
            by_kind.setdefault((kind, is_fused), []).append(((start - t0) / 1e3, max(dur / 1e3, 1e-4)))
        for (kind, is_fused), bars in by_kind.items():
            ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=COLOURS[kind],
                           edgecolors="red" if is_fused else "none", linewidth=1.2 if is_fused else 0)
            if is_fused:
                highlighted += len(bars)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([("host" if c is None else f"CMG {c}") + f" · thread {t}" for c, t in order])
    ax.set_xlabel("time (ms since the first op)")
    ax.set_title(f"streamq timeline: {os.path.basename(log)}" +
                 (" (fusion candidates outlined in red)" if highlight else ""))
    present = sorted({kind for bars in lanes.values() for _s, _d, kind, _f in bars})
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k]) for k in present]
    if handles:
        ax.legend(handles, present, loc="upper right", fontsize="small", ncol=min(len(handles), 5))
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.fspath(out_png), dpi=110)
    plt.close(fig)
    return {"ops": drawn, "left_out": left_out, "highlighted": highlighted, "lanes": len(order)}
