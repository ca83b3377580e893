"""The machine as CMGs (core-memory groups): who runs where, whose memory is near.

A CMG is a set of CPUs that share a memory controller: a NUMA node on most
machines, an L3 domain where the machine has one NUMA node but several L3
caches (AMD CCDs, for example), or whatever ``STREAMQ_TOPOLOGY`` says:

- ``CxN``: C CMGs of N cores each, taken in order from the CPUs this process may
  run on (``2x1`` on a two-core machine gives CMG 0 = CPU 0, CMG 1 = CPU 1);
- ``0-11;12-23``: explicit CPU lists, one per CMG, separated by ``;``.

The topology is read once per process (:func:`topology`); :func:`reset_topology`
exists for tests that change the environment before any queue has started.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from dataclasses import dataclass

__all__ = ["CMG", "TopologyError", "topology", "current_cmg", "parse_cpu_list"]


class TopologyError(ValueError):
    """``STREAMQ_TOPOLOGY`` or the system's description of it cannot be used."""


@dataclass(frozen=True)
class CMG:
    """One core-memory group: its index, the CPUs its workers are pinned to, its NUMA node."""

    index: int
    cpus: tuple[int, ...]
    numa_node: int | None

    @property
    def ncores(self) -> int:
        """How many CPUs (and so how many busy workers at most) this CMG has."""
        return len(self.cpus)

    def __str__(self) -> str:
        node = "?" if self.numa_node is None else self.numa_node
        return f"CMG {self.index}: CPUs {format_cpu_list(self.cpus)}, NUMA node {node}"


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse Linux's CPU list syntax (``0-3,8,10-11``) into a sorted tuple."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise TopologyError(f"bad CPU list element {part!r} in {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise TopologyError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus) -> str:
    """Format CPUs back into the compact ``0-3,8`` syntax."""
    cpus = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _numa_nodes(allowed: set[int]) -> dict[int, tuple[int, ...]]:
    nodes: dict[int, tuple[int, ...]] = {}
    for path in glob.glob("/sys/devices/system/node/node[0-9]*/cpulist"):
        node = int(re.search(r"node(\d+)/cpulist$", path).group(1))
        text = _read(path)
        if text is None:
            continue
        cpus = tuple(c for c in parse_cpu_list(text) if c in allowed)
        if cpus:
            nodes[node] = cpus
    return dict(sorted(nodes.items()))


def _l3_domains(allowed: set[int]) -> list[tuple[int, ...]]:
    domains: set[tuple[int, ...]] = set()
    for cpu in sorted(allowed):
        for index_dir in glob.glob(f"/sys/devices/system/cpu/cpu{cpu}/cache/index[0-9]*"):
            if _read(os.path.join(index_dir, "level")) != "3":
                continue
            shared = _read(os.path.join(index_dir, "shared_cpu_list"))
            if shared:
                domain = tuple(c for c in parse_cpu_list(shared) if c in allowed)
                if domain:
                    domains.add(domain)
    return sorted(domains)


def _node_of(cpu: int, nodes: dict[int, tuple[int, ...]]) -> int | None:
    for node, cpus in nodes.items():
        if cpu in cpus:
            return node
    return None


def _from_override(spec: str, allowed: list[int], nodes) -> tuple[CMG, ...]:
    spec = spec.strip()
    m = re.fullmatch(r"(\d+)\s*[xX]\s*(\d+)", spec)
    if m:
        count, per = int(m.group(1)), int(m.group(2))
        if count < 1 or per < 1:
            raise TopologyError(f"STREAMQ_TOPOLOGY={spec!r}: counts must be positive")
        if count * per > len(allowed):
            raise TopologyError(
                f"STREAMQ_TOPOLOGY={spec!r} needs {count * per} CPUs but this process may run on "
                f"only {len(allowed)} ({format_cpu_list(allowed)})")
        groups = [tuple(allowed[i * per:(i + 1) * per]) for i in range(count)]
    else:
        groups = [parse_cpu_list(part) for part in spec.split(";") if part.strip()]
        if not groups or any(not g for g in groups):
            raise TopologyError(f"STREAMQ_TOPOLOGY={spec!r}: expected 'CxN' or CPU lists like '0-11;12-23'")
        seen: set[int] = set()
        for g in groups:
            bad = [c for c in g if c not in allowed]
            if bad:
                raise TopologyError(f"STREAMQ_TOPOLOGY={spec!r}: CPUs {bad} are not available to this process")
            if seen & set(g):
                raise TopologyError(f"STREAMQ_TOPOLOGY={spec!r}: CPUs {sorted(seen & set(g))} are in two CMGs")
            seen.update(g)
    return tuple(CMG(i, g, _node_of(g[0], nodes)) for i, g in enumerate(groups))


def detect_topology() -> tuple[CMG, ...]:
    """Read the topology from ``STREAMQ_TOPOLOGY`` or sysfs (no caching)."""
    allowed_set = set(os.sched_getaffinity(0))
    allowed = sorted(allowed_set)
    nodes = _numa_nodes(allowed_set)
    spec = os.environ.get("STREAMQ_TOPOLOGY", "").strip()
    if spec:
        return _from_override(spec, allowed, nodes)
    if len(nodes) > 1:
        return tuple(CMG(i, cpus, node) for i, (node, cpus) in enumerate(nodes.items()))
    only_node = next(iter(nodes), None)
    domains = _l3_domains(allowed_set)
    if len(domains) > 1 and sum(len(d) for d in domains) == len(allowed) and not _overlap(domains):
        return tuple(CMG(i, d, only_node) for i, d in enumerate(domains))
    return (CMG(0, tuple(allowed), only_node),)


def _overlap(domains) -> bool:
    seen: set[int] = set()
    for d in domains:
        if seen & set(d):
            return True
        seen.update(d)
    return False


_lock = threading.Lock()
_topology: tuple[CMG, ...] | None = None


def topology() -> tuple[CMG, ...]:
    """The machine as CMGs, in index order (read once, then cached)."""
    global _topology
    if _topology is None:
        with _lock:
            if _topology is None:
                _topology = detect_topology()
    return _topology


def reset_topology() -> None:
    """Forget the cached topology (only meaningful before any worker has started)."""
    global _topology
    with _lock:
        _topology = None


class _ThreadState(threading.local):
    cmg = None      # a class-level default: no AttributeError for threads that never set it


_thread_state = _ThreadState()


def current_cmg() -> CMG | None:
    """The CMG whose worker runs the calling task, or None outside streamq's workers."""
    return _thread_state.cmg


def _set_current_cmg(cmg: CMG | None) -> None:
    _thread_state.cmg = cmg
