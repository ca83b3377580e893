"""Cross-queue races found in a log: an offline stream sanitizer's findings, grouped.

A race is two accesses to overlapping bytes of one buffer, at least one a
write, by ops with no happens-before path between them: two queues (or two
tasks of one concurrent queue) not ordered by events, dependencies or syncs,
or an op and a host read/write not ordered by a host synchronization.
Identical races (same ops, queues and access kinds) are counted once with a
few examples.
"""

from __future__ import annotations

__all__ = ["RaceReport"]

_EXAMPLES = 3
_MAX_PATTERNS = 10_000


def _who(node) -> str:
    return "host" if node.queue is None else node.queue.label


class RaceReport:
    """Collects races from :meth:`~streamq.analysis.dataflow.Shadow.check` and groups them."""

    def __init__(self):
        self.groups: dict = {}
        self.total = 0

    def add(self, earlier_access, node, view, view_is_write: bool) -> None:
        """Record one race between an earlier access and ``node``'s ``view``."""
        self.total += 1
        a = earlier_access.node
        key = (a.name, _who(a), earlier_access.write, node.name, _who(node), view_is_write)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= _MAX_PATTERNS:
                key = ("(other)", "", False, "(other)", "", False)
                group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = {"count": 0, "examples": []}
        group["count"] += 1
        if len(group["examples"]) < _EXAMPLES:
            lo = max(earlier_access.view.lo, view.lo)
            hi = min(earlier_access.view.hi, view.hi)
            group["examples"].append({"lines": [a.line, node.line], "buffer": view.buffer,
                                      "bytes": [lo, hi]})

    def as_list(self) -> list:
        """Race groups, most frequent first, as JSON-ready dicts."""
        out = []
        for (an, aq, aw, bn, bq, bw), g in self.groups.items():
            out.append({"first": {"op": an, "queue": aq, "access": "write" if aw else "read"},
                        "second": {"op": bn, "queue": bq, "access": "write" if bw else "read"},
                        "count": g["count"], "examples": g["examples"]})
        out.sort(key=lambda r: (-r["count"], r["first"]["op"], r["second"]["op"]))
        return out
