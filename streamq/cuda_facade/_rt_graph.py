"""Stream capture and graph API functions (cudaStreamBeginCapture ... cudaGraphLaunch).

The machinery — capture sequences, graphs, executable graphs and their replay on
lane queues — is in ``_graphs``; this module checks arguments and maps CUDA's
calls onto it.
"""

from __future__ import annotations

import operator

from . import _context, _graphs
from ._errors import CudaError, api, cudaError_t
from ._rt_types import (
    cudaGraph_t, cudaGraphExec_t, cudaGraphInstantiateFlags, cudaGraphNode_t, cudaStreamCaptureMode,
    cudaStreamCaptureStatus,
)

__all__ = ["cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaStreamIsCapturing", "cudaStreamGetCaptureInfo",
           "cudaThreadExchangeStreamCaptureMode", "cudaGraphInstantiate", "cudaGraphInstantiateWithFlags",
           "cudaGraphUpload", "cudaGraphLaunch", "cudaGraphDestroy", "cudaGraphExecDestroy", "cudaGraphGetNodes"]

_Mode = cudaStreamCaptureMode
_Status = cudaStreamCaptureStatus
_FLAG_MASK = sum(int(f) for f in cudaGraphInstantiateFlags)


def _mode(mode) -> cudaStreamCaptureMode:
    try:
        return _Mode(mode)
    except ValueError:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"mode: not a cudaStreamCaptureMode: {mode!r}") from None


def _implicit_check(stream) -> None:
    """Querying the legacy stream while a blocking stream captures: Implicit, capture kept."""
    if stream.legacy and any(c.has_blocking_stream() for c in list(stream.device.captures)):
        raise CudaError(cudaError_t.cudaErrorStreamCaptureImplicit,
                        "the legacy stream is unusable while a blocking stream captures")


# -- the API ------------------------------------------------------------------------------
@api()
def cudaStreamBeginCapture(stream, mode):
    """Start capturing ``stream``'s ops into a graph instead of running them.

    Not on the legacy stream (cudaErrorStreamCaptureUnsupported), not on a stream
    already capturing (cudaErrorIllegalState); ``mode`` is a cudaStreamCaptureMode.
    """
    mode = _mode(mode)
    s = _context.resolve_stream(stream)
    s.device.check()
    if s.legacy:
        raise CudaError(cudaError_t.cudaErrorStreamCaptureUnsupported, "the legacy stream cannot be captured")
    if s.capture is not None:
        raise CudaError(cudaError_t.cudaErrorIllegalState, f"{s.label} is already capturing")
    _graphs.Capture(s, mode)


@api(1)
def cudaStreamEndCapture(stream):
    """End the capture begun on ``stream``; returns the graph (a cudaGraph_t).

    cudaErrorIllegalState if the stream is not capturing; ...Unmatched if the capture
    began on another stream; ...WrongThread for a non-relaxed capture ended on another
    thread; ...Unjoined if a forked stream did not rejoin; ...Invalidated (no graph) if
    an illegal call invalidated the sequence."""
    s = _context.resolve_stream(stream)
    capture = s.capture
    if capture is None:
        raise CudaError(cudaError_t.cudaErrorIllegalState, f"{s.label} is not capturing")
    return cudaGraph_t(capture.end(s).handle)


@api(1)
def cudaStreamIsCapturing(stream):
    """The stream's cudaStreamCaptureStatus (None, Active or Invalidated)."""
    s = _context.resolve_stream(stream)
    _implicit_check(s)
    capture = s.capture
    return _Status.cudaStreamCaptureStatusNone if capture is None else capture.status


@api(5)
def cudaStreamGetCaptureInfo(stream):
    """``(status, id, graph, dependencies, numDependencies)`` of the stream's capture:
    the sequence's unique id, the graph being built and the nodes the next op will follow."""
    s = _context.resolve_stream(stream)
    _implicit_check(s)
    capture = s.capture
    if capture is None:
        return _Status.cudaStreamCaptureStatusNone, 0, None, [], 0
    with capture.lock:
        front = capture.frontier.get(s, ())
        nodes = [cudaGraphNode_t(capture.graph.nodes[i].handle) for i in front]
    return capture.status, capture.id, cudaGraph_t(capture.graph.handle), nodes, len(nodes)


@api(1)
def cudaThreadExchangeStreamCaptureMode(mode):
    """Set the calling thread's capture interaction mode; returns the previous one."""
    new = _mode(mode)
    old = _graphs.thread_mode()
    _graphs.set_thread_mode(new)
    return old


def _instantiate(graph, flags) -> cudaGraphExec_t:
    flags = operator.index(flags)
    if flags < 0 or flags & ~_FLAG_MASK:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"flags: unknown instantiate flags {flags:#x}")
    both = (cudaGraphInstantiateFlags.cudaGraphInstantiateFlagDeviceLaunch
            | cudaGraphInstantiateFlags.cudaGraphInstantiateFlagAutoFreeOnLaunch)
    if flags & both == both:
        raise CudaError(cudaError_t.cudaErrorInvalidValue,
                        "flags: DeviceLaunch cannot be combined with AutoFreeOnLaunch")
    g = _graphs.live_graph(graph)
    if g.capture is not None:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, "graph: it is still being captured")
    exe = _graphs.GraphExec(g)
    _graphs.register_exec(exe)
    return cudaGraphExec_t(exe.handle)


@api(1)
def cudaGraphInstantiate(graph, flags=0):
    """An executable graph made from ``graph`` (cuda-python's signature: ``(graph, flags)``)."""
    return _instantiate(graph, flags)


@api(1)
def cudaGraphInstantiateWithFlags(graph, flags=0):
    """Same as :func:`cudaGraphInstantiate`."""
    return _instantiate(graph, flags)


@api()
def cudaGraphUpload(graphExec, stream):  # noqa: N803 - CUDA's parameter name
    """Prepare ``graphExec`` for launch in ``stream``: checks the handles (nothing to upload on a CPU)."""
    exe = _graphs.live_exec(graphExec)
    _context.resolve_stream(stream)
    exe.lane_queues()


@api()
def cudaGraphLaunch(graphExec, stream):  # noqa: N803 - CUDA's parameter name
    """Replay ``graphExec`` in ``stream``: after the stream's earlier work and the previous
    launch of ``graphExec``; the stream's later work waits for it."""
    exe = _graphs.live_exec(graphExec)
    s = _context.resolve_stream(stream)
    exe.launch(s)


@api()
def cudaGraphDestroy(graph):
    """Destroy ``graph`` (executable graphs made from it stay valid). Not while it is being captured."""
    g = _graphs.live_graph(graph)
    if g.capture is not None:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, "graph: cannot destroy a graph being captured")
    _graphs.forget_graph(g)


@api()
def cudaGraphExecDestroy(graphExec):  # noqa: N803 - CUDA's parameter name
    """Destroy ``graphExec``; launches already made still complete."""
    exe = _graphs.live_exec(graphExec)
    _graphs.forget_exec(exe)


@api(2)
def cudaGraphGetNodes(graph, numNodes=0):  # noqa: N803 - CUDA's parameter name
    """``(nodes, numNodes)``: with numNodes 0, ``([], count)``; else up to numNodes node handles
    (padded with None) and the count returned."""
    g = _graphs.live_graph(graph)
    want = operator.index(numNodes)
    if want < 0:
        raise CudaError(cudaError_t.cudaErrorInvalidValue, f"numNodes must be >= 0, got {want}")
    nodes = [cudaGraphNode_t(n.handle) for n in g.nodes]
    if want == 0:
        return [], len(nodes)
    got = nodes[:want]
    return got + [None] * (want - len(got)), len(got)
