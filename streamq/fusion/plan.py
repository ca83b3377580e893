"""Fusion plan files: loading, validation, and matching op sequences against them.

The plan is written by the offline analyzer (``streamq fusion LOG --plan``)::

    {"version": 1,
     "chains": [{"ops": ["aten::mul", "aten::add", "aten::relu"], "kind": "vertical",
                 "queue_label": null, "occurrences": 12, "saved_bytes": 805306368,
                 "saved_us": 1840.5}]}

``ops`` is a sequence of op names executed consecutively on one queue, each
consuming the previous op's output. ``queue_label`` restricts a chain to
queues of that label (null: any queue). ``occurrences``, ``saved_bytes`` and
``saved_us`` are the analyzer's estimates; the runtime keeps them for reports.
Required: ``version``, ``chains``, and per chain ``ops`` (at least two names)
and ``kind``. Keys the runtime does not know are ignored, so the analyzer may
add fields. The runtime applies ``vertical`` chains, and of an ``epilogue``
chain (a convolution or GEMM followed by elementwise ops) the elementwise tail
when it has two ops or more; chains of other kinds (sibling, horizontal, ...)
are valid but not applied.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

__all__ = ["Plan", "PlanChain", "PlanError", "load_plan", "PLAN_VERSION"]

PLAN_VERSION = 1


class PlanError(ValueError):
    """A fusion plan is malformed; the message names the offending field."""


@dataclass(frozen=True)
class PlanChain:
    """One chain of a plan (see the module doc for the fields)."""

    ops: tuple
    kind: str
    queue_label: str | None = None
    occurrences: int = 0
    saved_bytes: int = 0
    saved_us: float = 0.0


class _Matcher:
    """The op sequences applicable on one queue, indexed for prefix tests."""

    def __init__(self, sequences):
        self.complete = frozenset(sequences)
        self.prefixes = frozenset(ops[:n] for ops in sequences for n in range(1, len(ops) + 1))
        self.extendable = frozenset(ops[:n] for ops in sequences for n in range(1, len(ops)))
        self.names = frozenset(op for ops in sequences for op in ops)

    def segments(self, ops: tuple) -> list:
        """Split ``ops`` greedily, left to right, into the longest complete chains.

        Returns ``(start, stop)`` index pairs covering ``ops``; a pair of length 1
        is an op that runs unfused.
        """
        out, i = [], 0
        while i < len(ops):
            stop = next((j for j in range(len(ops), i + 1, -1) if ops[i:j] in self.complete), i + 1)
            out.append((i, stop))
            i = stop
        return out


class Plan:
    """A validated fusion plan: its chains, and which of them apply on a queue."""

    def __init__(self, chains, source: str = "<dict>"):
        self.chains = tuple(chains)
        self.source = source
        self._matchers: dict = {}

    def __repr__(self) -> str:
        return f"<Plan {self.source!r}: {len(self.chains)} chains>"

    def applied(self, queue_label: str | None) -> tuple:
        """The op sequences fused on a queue with this label (see the module doc)."""
        out = []
        for c in self.chains:
            if c.queue_label is not None and c.queue_label != queue_label:
                continue
            if c.kind == "vertical":
                out.append(c.ops)
            elif c.kind == "epilogue" and len(c.ops) >= 3:
                out.append(c.ops[1:])
        return tuple(out)

    def matcher(self, queue_label: str | None) -> _Matcher:
        """Prefix/complete-chain lookups for one queue label (cached)."""
        m = self._matchers.get(queue_label)
        if m is None:
            m = self._matchers[queue_label] = _Matcher(self.applied(queue_label))
        return m

    @classmethod
    def from_dict(cls, data, source: str = "<dict>") -> Plan:
        """Validate a decoded plan; PlanError naming the field otherwise."""
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a plan must be a JSON object, got {type(data).__name__}")
        if "version" not in data:
            raise PlanError(f"{source}: missing field 'version'")
        version = data["version"]
        if isinstance(version, bool) or version != PLAN_VERSION:
            raise PlanError(f"{source}: field 'version' must be {PLAN_VERSION}, got {version!r}")
        if "chains" not in data:
            raise PlanError(f"{source}: missing field 'chains'")
        chains = data["chains"]
        if not isinstance(chains, list):
            raise PlanError(f"{source}: field 'chains' must be a list, got {type(chains).__name__}")
        return cls([_chain(c, f"chains[{i}]", source) for i, c in enumerate(chains)], source)


def _chain(c, where: str, source: str) -> PlanChain:
    def fail(msg):
        """Raise PlanError naming the file and this chain's field."""
        raise PlanError(f"{source}: {where}{msg}")

    if not isinstance(c, dict):
        fail(f" must be an object, got {type(c).__name__}")
    for key in ("ops", "kind"):
        if key not in c:
            fail(f": missing field '{key}'")
    ops = c["ops"]
    if not isinstance(ops, list):
        fail(f".ops must be a list of op names, got {type(ops).__name__}")
    if len(ops) < 2:
        fail(f".ops must name at least 2 ops, got {len(ops)}")
    for j, op in enumerate(ops):
        if not isinstance(op, str) or not op:
            fail(f".ops[{j}] must be a non-empty string, got {op!r}")
    kind = c["kind"]
    if not isinstance(kind, str) or not kind:
        fail(f".kind must be a non-empty string, got {kind!r}")
    label = c.get("queue_label")
    if label is not None and not isinstance(label, str):
        fail(f".queue_label must be a string or null, got {label!r}")
    numbers = {}
    for key, integral in (("occurrences", True), ("saved_bytes", True), ("saved_us", False)):
        v = c.get(key, 0)
        ok = isinstance(v, int) if integral else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (not integral and not math.isfinite(v)) or v < 0:
            kind_text = "a non-negative integer" if integral else "a non-negative number"
            fail(f".{key} must be {kind_text}, got {v!r}")
        numbers[key] = v
    return PlanChain(tuple(ops), kind, label, numbers["occurrences"], numbers["saved_bytes"],
                     float(numbers["saved_us"]))


def load_plan(plan) -> Plan:
    """A :class:`Plan` from a path (str or PathLike), a decoded dict, or a Plan (returned as is).

    Raises PlanError (a ValueError) naming the file and field for a bad plan,
    and OSError when the file cannot be read.
    """
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    if isinstance(plan, (str, os.PathLike)):
        path = os.fspath(plan)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PlanError(f"{path}: not valid JSON: {exc}") from None
        return Plan.from_dict(data, path)
    raise TypeError(f"plan must be a path, a dict, a Plan or None, got {type(plan).__name__}")
