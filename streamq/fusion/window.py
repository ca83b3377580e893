"""The peephole window one serial queue owns: it holds fusable ops and enqueues them fused.

The CUDA facade calls, for each elementwise kernel launch on a stream,
``window.offer(op_name, args, kwargs)``. True: the window took the op and will
enqueue it (fused with its neighbours, or alone) at a later :meth:`flush`.
False: the op is not fusable now; the caller must call :meth:`flush` and then
launch the op normally. The caller also calls :meth:`flush` at anything that
could observe memory or order: synchronizations, event record/wait, host reads
and writes, memcpy/memset, any op it does not offer.

A stream-ordered free (``cudaFreeAsync``) need not flush: :meth:`discard` tells
the window that memory is freed after the ops it holds, so outputs held ops
write there are dead (never written: their values stay in registers) and the
free itself is deferred until the held ops are enqueued.

What the window holds is always a :class:`~.chain.Chain`: consecutive ops each
reading the previous op's output. An op that cannot extend the held chain
(no dataflow link, another shape or dtype, aliasing, the plan does not continue
that way, ``max_ops`` reached) makes the window enqueue what it holds first,
then start a new chain with that op - so queue order is always launch order.

Modes (see :mod:`streamq.fusion`): automatic (any chain of 2 or more fusable
ops runs as one kernel) or a plan (only the plan's chains fuse; what is held is
split greedily, left to right, into the longest chains the plan names, the rest
runs unfused). A chain the plan names is enqueued as soon as it is complete
and no longer plan chain starts with it. With fusion disabled, ``offer``
returns False. At interpreter exit every window is flushed before streamq
finishes the queues' work, so held ops run as launched ops would.
"""

from __future__ import annotations

import logging
import threading
import weakref

from .. import trace
from . import _state
from .chain import Chain, FusedCall, self_conflict
from .ops import parse

__all__ = ["FusionWindow"]

_logger = logging.getLogger("streamq")
_warned_fallback = False
_live_windows: "weakref.WeakSet[FusionWindow]" = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_installed = False


def _flush_all_at_exit() -> None:
    """Enqueue what every window still holds, so it runs before streamq drains its queues."""
    for window in list(_live_windows):
        try:
            window.flush()
        except Exception:  # one broken window must not keep the others' work from running
            _logger.exception("streamq.fusion: could not flush %r at exit", window)


def _install_exit_hook() -> None:
    # streamq's own exit hook drains every queue from threading's exit hooks, which run
    # in reverse order of registration: registered later, this one runs before it.
    global _exit_hook_installed
    with _exit_hook_lock:
        if not _exit_hook_installed:
            register = getattr(threading, "_register_atexit", None)
            if register is None:  # pragma: no cover - very old Pythons
                import atexit
                register = atexit.register
            register(_flush_all_at_exit)
            _exit_hook_installed = True


class FusionWindow:
    """The fusion window of one serial queue (or of anything with Queue's ``enqueue``).

    ``max_ops`` bounds how many ops one fused kernel may hold (default 16).
    ``describe`` maps each array to what the queue log records for it (the
    facade passes its ``BufferRef.of``); by default the array itself. It is
    only called while the log is on. Thread-safe: several host threads may
    launch onto one stream.
    """

    def __init__(self, queue, *, max_ops: int = 16, describe=None):
        # A streamq.Queue, or anything that enqueues like one (the facade passes its stream,
        # so fused ops go through the stream's own checks and ordering).
        if not all(hasattr(queue, name) for name in ("enqueue", "label", "concurrent")):
            raise TypeError(f"queue must be a streamq.Queue or have its enqueue/label/concurrent, "
                            f"got {type(queue).__name__}")
        if queue.concurrent:
            raise ValueError(f"queue must be a serial queue, got concurrent {queue.label!r}")
        if isinstance(max_ops, bool) or not isinstance(max_ops, int) or max_ops < 2:
            raise ValueError(f"max_ops must be an integer >= 2, got {max_ops!r}")
        if describe is not None and not callable(describe):
            raise TypeError(f"describe must be callable or None, got {type(describe).__name__}")
        self.queue = queue
        self.max_ops = max_ops
        self.describe = describe
        self._lock = threading.Lock()
        self._chain: Chain | None = None
        self._config = None          # the fusion config the held chain was started under
        self._deferred: list = []    # callables to run right after the held chain is enqueued
        _install_exit_hook()
        _live_windows.add(self)

    def __repr__(self) -> str:
        return f"<FusionWindow of {self.queue.label!r} holding {list(self.pending)}>"

    @property
    def pending(self) -> tuple:
        """The op names held, in launch order (empty when nothing is held)."""
        chain = self._chain
        return () if chain is None else chain.ops

    def offer(self, op_name: str, args: tuple = (), kwargs: dict | None = None) -> bool:
        """Take one kernel launch into the window; False if it is not fusable.

        ``args``/``kwargs`` are exactly the kernel-registry op's arguments.
        On False nothing was enqueued for this op: flush, then launch it.
        """
        if not isinstance(op_name, str):
            raise TypeError(f"op_name must be a string, got {type(op_name).__name__}")
        if not isinstance(args, tuple):
            raise TypeError(f"args must be a tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict or None, got {type(kwargs).__name__}")
        config = _state.current()
        if config is None:
            return False
        matcher = None if config.plan is None else config.plan.matcher(self.queue.label)
        if matcher is not None and op_name not in matcher.names:
            return False
        step = parse(op_name, args, kwargs)
        if step is None:
            return False
        with self._lock:
            chain = self._chain
            if chain is not None and self._config is config and self._extends(chain, step, matcher):
                chain.append(step)
            else:
                self._flush_locked()
                if self_conflict(step) is not None:
                    return False
                if matcher is not None and (op_name,) not in matcher.prefixes:
                    return False
                self._chain, self._config = Chain(step), config
            if matcher is not None and self._chain.ops not in matcher.extendable:
                self._flush_locked()         # a complete plan chain nothing extends
        return True

    def _extends(self, chain: Chain, step, matcher) -> bool:
        if len(chain) >= self.max_ops:
            return False
        if matcher is not None and chain.ops + (step.op,) not in matcher.prefixes:
            return False
        return chain.refusal(step) is None

    def discard(self, lo: int, hi: int, then=None) -> bool:
        """Memory [lo, hi) is freed after the ops held now; False if nothing is held.

        True: held ops' outputs inside the range will not be written, and
        ``then()`` (the free itself, if given) runs right after the held ops
        are enqueued, at the next flush - so the chain can go on growing across
        the free. False: the window holds nothing; the caller frees as usual.
        """
        if then is not None and not callable(then):
            raise TypeError(f"then must be callable or None, got {type(then).__name__}")
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo > hi:
            raise ValueError(f"need integer bounds lo <= hi, got {lo!r}, {hi!r}")
        with self._lock:
            chain = self._chain
            if chain is None:
                return False
            chain.discard(lo, hi)
            if then is not None:
                self._deferred.append(then)
        return True

    def flush(self) -> list:
        """Enqueue everything held onto the queue; returns the Tasks enqueued, in order.

        A fused group becomes one ``kind="kernel"`` task named
        ``fused[op+op+...]`` with the arrays it reads and writes; an op that is
        not fused becomes its own task, named by its op. Cheap when nothing is held.
        """
        if self._chain is None:
            return []
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> list:
        chain, config = self._chain, self._config
        self._chain = self._config = None
        if chain is None:
            return []
        try:
            return self._enqueue(chain, config)
        finally:
            deferred, self._deferred = self._deferred, []
            for then in deferred:
                then()

    def _enqueue(self, chain: Chain, config) -> list:
        steps = chain.steps
        if config.plan is None:
            groups = [(0, len(steps))]
        else:
            groups = config.plan.matcher(self.queue.label).segments(chain.ops)
        tasks = []
        for start, stop in groups:
            if stop - start == 1:
                s = steps[start]
                fn, args, kwargs, name, reads, writes = s.impl, s.args, s.kwargs, s.op, s.reads, [s.out]
            else:
                call = FusedCall(steps[start:stop], dead={k - start for k in chain.dead if start <= k < stop})
                fn, args, kwargs, name, reads, writes = (_run_fused, (call,), None, call.name,
                                                         call.reads, call.writes)
            if not trace.enabled():
                reads = writes = ()
            elif self.describe is not None:
                reads = [self.describe(a) for a in reads]
                writes = [self.describe(a) for a in writes]
            tasks.append(self.queue.enqueue(fn, args, kwargs, name=name, kind="kernel",
                                            reads=reads, writes=writes))
        return tasks


def _run_fused(call: FusedCall) -> None:
    """Task body: run the fused kernel; if its module cannot be written, run the ops unfused."""
    global _warned_fallback
    try:
        call()
    except OSError as exc:
        if not _warned_fallback:
            _warned_fallback = True
            _logger.warning("streamq.fusion: cannot write fused kernels (%s); running ops "
                            "unfused. Set STREAMQ_CACHE_DIR to a writable directory.", exc)
        call.run_unfused()
