"""Stream capture and graphs: record a stream's ops into a DAG, replay it later.

While a stream captures, :meth:`Stream.launch` hands each op to the stream's
:class:`Capture`, which appends a :class:`Node` depending on the stream's current
*frontier* (the nodes its next op must follow). Events recorded in a capturing
stream remember that frontier; a stream that waits for such an event joins the
capture (fork) or merges the frontiers (join), as in CUDA.

A :class:`GraphExec` replays the DAG on core queues: one serial *lane* queue per
stream that took part in the capture, each node waiting (``after=``) for the
tasks of its dependencies, so branches forked during capture run concurrently
again. The launch waits for earlier work of the launch stream and for the
previous launch of the same executable graph; the stream's later work waits for
the whole replay. The API functions (cudaStreamBeginCapture, cudaGraphLaunch, ...)
are in ``_rt_graph``; other modules use :func:`check_unsafe_call`,
:func:`refuse_during_capture` and :func:`refuse_capturing_stream`.
"""

from __future__ import annotations

import itertools
import threading

import streamq

from . import _context
from ._context import _noop, _Runner
from ._errors import CudaError, cudaError_t
from ._rt_types import cudaStreamCaptureMode, cudaStreamCaptureStatus

__all__ = ["Capture", "Graph", "GraphExec", "Node", "refuse_during_capture", "refuse_capturing_stream",
           "check_unsafe_call", "thread_mode", "set_thread_mode", "live_graph", "live_exec", "register_exec",
           "forget_graph", "forget_exec"]

_Mode = cudaStreamCaptureMode
_Status = cudaStreamCaptureStatus
_ids = itertools.count(1)
_node_ids = itertools.count(0x1000)
_lock = threading.Lock()
_active: set["Capture"] = set()
_graphs: dict[int, "Graph"] = {}
_execs: dict[int, "GraphExec"] = {}
_thread = threading.local()       # .mode: the thread's cudaStreamCaptureMode


class Node:
    """One captured op: ``fn(*args)`` after the nodes ``deps`` (indices), on lane ``lane``.

    ``event`` is set for external event nodes: kind ``event_record`` records it when
    the node runs, kind ``event_wait`` waits for its record current at launch time.
    """

    __slots__ = ("index", "handle", "fn", "args", "name", "kind", "reads", "writes", "deps", "lane", "event")

    def __init__(self, index, fn, args, name, kind, reads, writes, deps, lane, event=None):
        self.index = index
        self.handle = next(_node_ids)
        self.fn, self.args, self.name, self.kind = fn, args, name, kind
        self.reads, self.writes = reads, writes
        self.deps = deps
        self.lane = lane
        self.event = event


class Graph:
    """A captured DAG of nodes (``cudaGraph_t``), owned by one device."""

    def __init__(self, device: _context.Device):
        self.device = device
        self.generation = device.generation
        self.handle = next(_ids)
        self.nodes: list[Node] = []
        self.lanes = 1
        self.capture: Capture | None = None   # set while the graph is being captured into
        with _lock:
            _graphs[self.handle] = self


class Capture:
    """One capture sequence: its origin stream, mode, thread, the graph being built,
    and the frontier of every stream taking part."""

    def __init__(self, stream: _context.Stream, mode: cudaStreamCaptureMode):
        self.id = next(_ids)
        self.mode = mode
        self.thread = threading.get_ident()
        self.origin = stream
        self.device = stream.device
        self.graph = Graph(self.device)
        self.graph.capture = self
        self.lock = threading.Lock()
        self.frontier: dict[_context.Stream, tuple[int, ...]] = {stream: ()}
        self.lanes: dict[_context.Stream, int] = {stream: 0}
        self.status = _Status.cudaStreamCaptureStatusActive
        self.reason = ""
        stream.flush_fusion()   # launches held before the capture began run now, uncaptured
        stream.capture = self
        self.device.captures.add(self)
        with _lock:
            _active.add(self)

    # -- state ---------------------------------------------------------------------------
    def has_blocking_stream(self) -> bool:
        """True if a blocking stream (one the legacy stream synchronizes with) takes part."""
        return any(s.blocking for s in list(self.frontier))

    def _check_active(self) -> None:
        if self.status != _Status.cudaStreamCaptureStatusActive:
            raise CudaError(cudaError_t.cudaErrorStreamCaptureInvalidated,
                            f"the capture sequence was invalidated: {self.reason}")

    def invalidate(self, reason: str, end: bool = False) -> None:
        """Mark the sequence invalidated (EndCapture will return no graph); ``end``: also
        detach every stream from it now (device reset, origin stream destroyed)."""
        with self.lock:
            if self.status == _Status.cudaStreamCaptureStatusActive:
                self.status = _Status.cudaStreamCaptureStatusInvalidated
                self.reason = reason
        if end:
            self._finish()
            with _lock:
                _graphs.pop(self.graph.handle, None)

    def _finish(self) -> None:
        for stream in list(self.frontier):
            if stream.capture is self:
                stream.capture = None
        self.device.captures.discard(self)
        self.graph.capture = None
        with _lock:
            _active.discard(self)

    # -- building --------------------------------------------------------------------------
    def add(self, stream, fn, args, *, name, kind, reads, writes, on_error, event=None) -> Node:
        """Append an op of ``stream`` after the stream's frontier (Stream.launch's capture hook)."""
        with self.lock:
            self._check_active()
            if on_error is not None:
                self.status = _Status.cudaStreamCaptureStatusInvalidated
                self.reason = f"{name} (a stream callback) cannot be captured"
                raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                                "cudaStreamAddCallback is not supported during stream capture")
            nodes = self.graph.nodes
            node = Node(len(nodes), fn, args, name, kind, reads, writes, self.frontier[stream],
                        self.lanes[stream], event)
            nodes.append(node)
            self.frontier[stream] = (node.index,)
            return node

    def record_point(self, stream) -> tuple[int, ...]:
        """The frontier an event recorded now in ``stream`` stands for."""
        with self.lock:
            self._check_active()
            return self.frontier[stream]

    def wait(self, stream, nodes: tuple[int, ...]) -> None:
        """``stream`` waits for ``nodes`` of this capture: it joins the capture (fork) if
        it was not capturing, or its frontier grows (join)."""
        if stream.legacy:
            raise CudaError(cudaError_t.cudaErrorStreamCaptureImplicit,
                            "the legacy stream cannot join a stream capture")
        with self.lock:
            self._check_active()
            current = stream.capture
            if current is None:
                stream.flush_fusion()
                stream.capture = self
                self.lanes[stream] = len(self.lanes)
                self.frontier[stream] = tuple(nodes)
            elif current is self:
                merged = self.frontier[stream] + tuple(n for n in nodes if n not in self.frontier[stream])
                self.frontier[stream] = merged
            else:
                raise CudaError(cudaError_t.cudaErrorStreamCaptureMerge,
                                "the event was recorded in another capture sequence")

    def leave(self, stream) -> None:
        """Detach a destroyed stream (invalidating the sequence if it had joined work)."""
        if stream is self.origin:
            self.invalidate("the origin stream was destroyed", end=True)
            return
        self.invalidate(f"{stream.label} was destroyed while capturing")
        stream.capture = None

    def end(self, stream) -> Graph:
        """cudaStreamEndCapture on ``stream``: the graph, or the error CUDA documents."""
        if stream is not self.origin:
            self.invalidate(f"capture ended on {stream.label}, not on its origin stream")
            raise CudaError(cudaError_t.cudaErrorStreamCaptureUnmatched,
                            f"the capture began on {self.origin.label}, not {stream.label}")
        if self.mode != _Mode.cudaStreamCaptureModeRelaxed and threading.get_ident() != self.thread:
            raise CudaError(cudaError_t.cudaErrorStreamCaptureWrongThread,
                            "a non-relaxed capture must end on the thread that began it")
        with self.lock:
            status, reason = self.status, self.reason
            unjoined = self._unjoined() if status == _Status.cudaStreamCaptureStatusActive else []
            self.graph.lanes = len(self.lanes)
        self._finish()
        if status != _Status.cudaStreamCaptureStatusActive or unjoined:
            with _lock:
                _graphs.pop(self.graph.handle, None)
            if unjoined:
                raise CudaError(cudaError_t.cudaErrorStreamCaptureUnjoined,
                                f"{', '.join(s.label for s in unjoined)} did not rejoin the origin stream")
            raise CudaError(cudaError_t.cudaErrorStreamCaptureInvalidated, reason)
        return self.graph

    def _unjoined(self) -> list:
        """Streams whose captured work the origin's frontier does not depend on."""
        nodes = self.graph.nodes
        reached: set[int] = set()
        todo = list(self.frontier[self.origin])
        while todo:
            i = todo.pop()
            if i not in reached:
                reached.add(i)
                todo.extend(nodes[i].deps)
        return [s for s, front in self.frontier.items()
                if s is not self.origin and any(i not in reached for i in front)]


class GraphExec:
    """An executable graph: a snapshot of a graph's nodes, replayed on lane queues."""

    def __init__(self, graph: Graph):
        self.device = graph.device
        self.generation = graph.generation
        self.handle = next(_ids)
        self.nodes = list(graph.nodes)
        self.lanes = graph.lanes
        has_dependents = {d for node in self.nodes for d in node.deps}
        self.sinks = [node.index for node in self.nodes if node.index not in has_dependents]
        self.queues: list | None = None
        self.last: tuple = ()          # the sink tasks of the previous launch
        self.lock = threading.Lock()

    def lane_queues(self) -> list:
        """The serial queues the replay runs on, one per captured stream (made on first use)."""
        if self.queues is None:
            cmg = self.device.cmg
            self.queues = [streamq.Queue(f"dev{self.device.index}.graph{self.handle}.lane{i}", cmg=cmg)
                           for i in range(self.lanes)]
            for queue in self.queues:
                _context.register_queue(queue)
        return self.queues

    def launch(self, stream: _context.Stream) -> None:
        """Replay every node in dependency order, ordered after the stream's earlier work
        and the previous launch; the stream's later work waits for the replay."""
        if stream.capture is not None:
            # Launching a graph into a capturing stream captures it as one node.
            stream.launch(self._run_in_order, name=f"graph{self.handle}", kind="graph")
            return
        device = self.device
        device.check()
        if stream.legacy:
            stream.device.check_legacy_use()
        with self.lock:
            start = streamq.Event(f"graph{self.handle}.start", timing=False)
            stream.record(start)
            roots_after = (start,) + self.last
            queues = self.lane_queues()
            tasks = []
            for node in self.nodes:
                after = tuple(tasks[d] for d in node.deps) if node.deps else roots_after
                if node.kind == "event_wait" and node.event is not None:
                    after = after + (node.event,)
                queue = queues[node.lane]
                task = queue.enqueue(_Runner(device, node.fn, node.args, node.name, None), after=after,
                                     name=node.name, kind=node.kind, reads=node.reads, writes=node.writes)
                if node.kind == "event_record" and node.event is not None:
                    queue.record_event(node.event)
                tasks.append(task)
            self.last = tuple(tasks[i] for i in self.sinks)
            if self.last:
                stream.launch(_noop, name=f"graph{self.handle}.join", kind="event_wait", after=self.last)

    def _run_in_order(self) -> None:
        for node in self.nodes:
            if node.kind == "event_record" and node.event is not None:
                continue
            node.fn(*node.args)


# -- checks other APIs make ---------------------------------------------------------------
def thread_mode() -> cudaStreamCaptureMode:
    """The calling thread's capture interaction mode (Global until changed)."""
    return getattr(_thread, "mode", _Mode.cudaStreamCaptureModeGlobal)


def set_thread_mode(mode: cudaStreamCaptureMode) -> None:
    """Set the calling thread's capture interaction mode."""
    _thread.mode = mode


def check_unsafe_call(what: str) -> None:
    """Refuse a "potentially unsafe" call (cudaMalloc, ...) as the calling thread's capture
    mode requires: cudaErrorStreamCaptureUnsupported, invalidating the capture(s) that
    forbid it. Global mode: this thread's non-relaxed captures and other threads' global
    ones forbid it; ThreadLocal: only this thread's; Relaxed: none."""
    if not _active:
        return
    mode = thread_mode()
    if mode == _Mode.cudaStreamCaptureModeRelaxed:
        return
    me = threading.get_ident()
    with _lock:
        active = list(_active)
    offending = [c for c in active if c.status == _Status.cudaStreamCaptureStatusActive and (
        (c.thread == me and c.mode != _Mode.cudaStreamCaptureModeRelaxed)
        or (mode == _Mode.cudaStreamCaptureModeGlobal and c.thread != me
            and c.mode == _Mode.cudaStreamCaptureModeGlobal))]
    if offending:
        for capture in offending:
            capture.invalidate(f"{what} was called during the capture")
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                        f"{what} is not permitted during stream capture")


def refuse_during_capture(device: _context.Device, what: str) -> None:
    """A call that must wait for the whole device (cudaDeviceSynchronize) conflicts with
    every capture on it: cudaErrorStreamCaptureUnsupported, captures invalidated."""
    if device.captures:
        for capture in list(device.captures):
            capture.invalidate(f"{what} was called during the capture")
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported,
                        f"{what} is not permitted while a stream of device {device.index} captures")


def refuse_capturing_stream(stream: _context.Stream, what: str) -> None:
    """Synchronizing with or querying a capturing stream is illegal (Unsupported, the capture
    is invalidated); on the legacy stream while a blocking stream captures it is Implicit."""
    capture = stream.capture
    if capture is not None:
        capture.invalidate(f"{what} was called on a capturing stream")
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported, f"{what} on a capturing stream")
    if stream.legacy:
        stream.device.check_legacy_use()


def _key(handle) -> int:
    try:
        return int(handle) if handle is not None else 0
    except (TypeError, ValueError):
        return 0


def live_graph(handle) -> Graph:
    """The Graph a handle names; cudaErrorInvalidValue if NULL, destroyed or from before a reset."""
    graph = _graphs.get(_key(handle))
    if graph is None or graph.generation != graph.device.generation:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"graph: not a live graph handle: {handle!r}")
    return graph


def live_exec(handle) -> GraphExec:
    """The GraphExec a handle names; cudaErrorInvalidValue if NULL, destroyed or from before a reset."""
    found = _execs.get(_key(handle))
    if found is None or found.generation != found.device.generation:
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        f"graphExec: not a live executable graph handle: {handle!r}")
    return found


def register_exec(exe: GraphExec) -> None:
    """Make ``exe`` reachable by its handle."""
    with _lock:
        _execs[exe.handle] = exe


def forget_graph(graph: Graph) -> None:
    """Drop a destroyed graph from the handle table."""
    with _lock:
        _graphs.pop(graph.handle, None)


def forget_exec(exe: GraphExec) -> None:
    """Drop a destroyed executable graph from the handle table."""
    with _lock:
        _execs.pop(exe.handle, None)
