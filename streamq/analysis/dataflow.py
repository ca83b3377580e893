"""Dataflow over buffers: who last wrote the bytes an op reads, who read them since, and races.

A shadow memory (as a stream sanitizer keeps one) holds, per buffer, the
recent writes and reads of it in time order. :meth:`Shadow.check` returns the
producer of each view an op reads (the latest write overlapping it) and every
earlier access that conflicts with the op (overlapping bytes, one of the two a
write) with no happens-before path either way -- a race; :meth:`Shadow.record`
then adds the op's own accesses. Memory is bounded: a write drops the accesses
it fully covers, each buffer keeps at most ``per_buffer`` reads and as many
writes (oldest dropped), and at most ``max_buffers`` buffers are tracked (least
recently used dropped); ``free``/``alloc`` records end a buffer's lifetime, so
a reused address starts afresh.
"""

from __future__ import annotations

from collections import OrderedDict

from .graph import HappensBefore, Node

__all__ = ["Access", "Shadow"]


class Access:
    """One view of one node, as the shadow memory keeps it (``seq`` orders accesses)."""

    __slots__ = ("view", "write", "node", "seq")

    def __init__(self, view, write: bool, node: Node, seq: int):
        self.view = view
        self.write = write
        self.node = node
        self.seq = seq

    def __repr__(self) -> str:
        return f"<Access {'W' if self.write else 'R'} {self.view!r} by {self.node!r}>"


class Shadow:
    """Per-buffer access history; see the module docstring for its promises."""

    def __init__(self, max_buffers: int = 100_000, per_buffer: int = 64):
        if not isinstance(max_buffers, int) or max_buffers < 1:
            raise ValueError(f"max_buffers must be a positive integer, got {max_buffers!r}")
        if not isinstance(per_buffer, int) or per_buffer < 2:
            raise ValueError(f"per_buffer must be an integer >= 2, got {per_buffer!r}")
        self.max_buffers = max_buffers
        self.per_buffer = per_buffer
        self.buffers: OrderedDict = OrderedDict()   # buffer -> (writes, reads)
        self.seq = 0
        self.evicted = 0

    def check(self, node: Node):
        """``node``'s producers and races, before its own accesses are recorded.

        Returns ``(producers, races)``: ``producers`` lists ``(read_view,
        write_access)`` with the latest earlier write overlapping each read view
        (None if none is known); ``races`` lists ``(earlier_access, view,
        view_is_write)`` for every conflicting earlier access that neither
        happens before ``node`` nor after it.
        """
        hb = HappensBefore.hb
        buffers = self.buffers
        producers = []
        races = []
        host = node.host
        for view in node.reads:
            hist = buffers.get(view.buffer)
            last = None
            if hist is not None:
                lo, hi = view.lo, view.hi
                for acc in hist[0]:
                    if acc.view.lo < hi and lo < acc.view.hi:
                        last = acc
                        other = acc.node
                        if not (other.host and host) and not hb(other, node):
                            races.append((acc, view, False))
            producers.append((view, last))
        for view in node.writes:
            hist = buffers.get(view.buffer)
            if hist is not None:
                lo, hi = view.lo, view.hi
                for lst in hist:
                    for acc in lst:
                        if acc.view.lo < hi and lo < acc.view.hi:
                            other = acc.node
                            if not (other.host and host) and not hb(other, node):
                                races.append((acc, view, True))
        return producers, races

    def readers_after(self, write: Access, exclude: Node) -> list:
        """Reads recorded after ``write`` overlapping what it wrote, other than ``exclude``'s."""
        view = write.view
        hist = self.buffers.get(view.buffer)
        if hist is None:
            return []
        seq, lo, hi = write.seq, view.lo, view.hi
        return [a for a in hist[1] if a.seq > seq and a.node is not exclude
                and a.view.lo < hi and lo < a.view.hi]

    def record(self, node: Node) -> None:
        """Add ``node``'s accesses (call after :meth:`check`)."""
        cap = self.per_buffer
        for view in node.reads:  # an op reads its inputs before it writes its outputs
            reads = self._history(view.buffer)[1]
            self.seq += 1
            reads.append(Access(view, False, node, self.seq))
            if len(reads) > cap:
                del reads[:len(reads) - cap // 2]   # amortised: drop the oldest half
        for view in node.writes:
            writes, reads = self._history(view.buffer)
            lo, hi = view.lo, view.hi
            if writes:
                writes[:] = [a for a in writes if not (lo <= a.view.lo and a.view.hi <= hi)]
            if reads:
                reads[:] = [a for a in reads if not (lo <= a.view.lo and a.view.hi <= hi)]
            self.seq += 1
            writes.append(Access(view, True, node, self.seq))
            if len(writes) > cap:
                del writes[:len(writes) - cap]

    def _history(self, buffer) -> tuple:
        buffers = self.buffers
        hist = buffers.get(buffer)
        if hist is None:
            hist = buffers[buffer] = ([], [])
            if len(buffers) > self.max_buffers:
                buffers.popitem(last=False)
                self.evicted += 1
        else:
            buffers.move_to_end(buffer)
        return hist

    def end_lifetime(self, buffer) -> None:
        """Forget a buffer (its ``free``, or an ``alloc`` that reuses its address)."""
        self.buffers.pop(buffer, None)
