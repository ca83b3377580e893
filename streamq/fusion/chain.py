"""Chains of steps that may run as one kernel, and the fused call that runs them.

A :class:`Chain` grows one :class:`~.ops.Step` at a time. A step joins when
running the chain element by element (in parallel, in any element order) is
certain to give what running the steps one after another gives:

* it reads the previous step's output (the very same view): the dataflow link;
* it writes an array of the chain's shape and dtype;
* no memory is shared across element positions: an array the chain reads
  that overlaps an array it writes must be that same view with the full
  shape (so element i only ever reads what element i writes, and reads come
  before the write); outputs either are the same view or do not overlap.

Wiring: an operand that is the same view as an earlier step's output is taken
from that step's value (never re-read from memory); other arrays are inputs
(one per distinct view). Every step's output is written (the caller may read
it later) unless a later step of the same call writes the very same view,
which overwrites it completely, or the caller frees its memory right after the
chain (:meth:`Chain.discard`): a freed intermediate is never read again, so
its value lives only in registers - the traffic fusion exists to remove.
"""

from __future__ import annotations

import numba
import numpy as np

from . import codegen
from .layout import plan_layout
from .ops import Step

__all__ = ["Chain", "FusedCall", "self_conflict", "SERIAL_BELOW"]

try:                                    # numpy >= 2.0
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:                     # pragma: no cover - numpy 1.x
    _byte_bounds = np.byte_bounds

#: Fused calls over fewer elements run on one numba thread: waking the pool costs
#: more than the work (and much more when the cores are contended).
SERIAL_BELOW = 1 << 15


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return np.may_share_memory(a, b)


def self_conflict(step: Step) -> str | None:
    """Why a step cannot run as an elementwise kernel at all (inputs alias its output), or None."""
    for arr, key in zip(step.reads, step.read_keys):
        if key != step.out_key and _overlap(arr, step.out):
            return "an input partially overlaps the output"
    return None


class Chain:
    """Consecutive steps, each reading the previous step's output, that can fuse."""

    def __init__(self, first: Step):
        reason = self_conflict(first)
        if reason is not None:
            raise ValueError(f"step {first.op} cannot be fused: {reason}")
        self.steps = [first]
        self.shape = first.shape
        self.dtype = first.dtype
        self._out_keys = {first.out_key}
        self.dead: set[int] = set()   # indices of steps whose output memory the caller freed
        # Arrays read from memory (not a value an earlier step produced): key -> array.
        self._external = {k: a for a, k in zip(first.reads, first.read_keys)}

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def ops(self) -> tuple:
        """The op names of the steps, in order."""
        return tuple(s.op for s in self.steps)

    def refusal(self, step: Step) -> str | None:
        """Why ``step`` cannot extend the chain, or None if it can."""
        if step.shape != self.shape:
            return f"shape {step.shape} differs from the chain's {self.shape}"
        if step.dtype != self.dtype:
            return f"dtype {step.dtype} differs from the chain's {self.dtype}"
        if self.steps[-1].out_key not in step.read_keys:
            return "does not read the previous op's output"
        outs = [(s.out, s.out_key) for s in self.steps]
        new_external = {}
        for arr, key in zip(step.reads, step.read_keys):
            if key in self._out_keys:
                continue                    # a value produced earlier in the chain
            if any(_overlap(arr, o) for o, _ in outs):
                return "an input overlaps an earlier output through another view"
            new_external[key] = arr
        for o, key in outs:
            if key != step.out_key and _overlap(step.out, o):
                return "the output overlaps an earlier output through another view"
        for key, arr in {**self._external, **new_external}.items():
            in_place = key == step.out_key and arr.shape == self.shape
            if not in_place and _overlap(arr, step.out):
                return "the output overlaps an input through another view"
        return None

    def discard(self, lo: int, hi: int) -> int:
        """The memory [lo, hi) is freed after the steps held so far: outputs inside it need
        not be written. Returns how many step outputs this made dead."""
        made = 0
        for k, step in enumerate(self.steps):
            if k in self.dead:
                continue
            start, stop = _byte_bounds(step.out)
            if lo <= start and stop <= hi:
                self.dead.add(k)
                made += 1
        return made

    def append(self, step: Step) -> None:
        """Add ``step`` (ValueError if :meth:`refusal` names a reason)."""
        reason = self.refusal(step)
        if reason is not None:
            raise ValueError(f"step {step.op} cannot extend the chain: {reason}")
        for arr, key in zip(step.reads, step.read_keys):
            if key not in self._out_keys:
                self._external.setdefault(key, arr)
        self._out_keys.add(step.out_key)
        self.steps.append(step)


class FusedCall:
    """Steps of a chain run as one generated kernel; a callable for ``Queue.enqueue``.

    ``reads`` are the arrays the kernel reads from memory, ``writes`` those it
    writes, ``name`` is ``fused[op+op+...]``. ``dead``: indices of steps whose output
    is not written (its memory is freed after the call). Calling it computes the layout,
    gets the kernel (generating or loading it on first use) and runs it.
    """

    def __init__(self, steps, dead=()):
        steps = list(steps)
        if len(steps) < 2:
            raise ValueError(f"a fused call needs at least 2 steps, got {len(steps)}")
        self.steps = steps
        self.name = "fused[" + "+".join(s.op for s in steps) + "]"
        self.shape = steps[0].shape
        inputs, outputs, params, wired = {}, [], [], []
        producer = {}                       # view key -> index of the latest step writing it
        for k, step in enumerate(steps):
            operands = []
            for o, key in zip(step.operands, step.operand_keys):
                if key is None:
                    params.append(o)
                    operands.append(("param", len(params) - 1))
                elif key in producer:
                    operands.append(("val", producer[key]))
                else:
                    operands.append(("in", inputs.setdefault(key, (len(inputs), o))[0]))
            producer[step.out_key] = k
            overwritten = any(later.out_key == step.out_key for later in steps[k + 1:])
            store = None
            if not overwritten and k not in dead:
                outputs.append(step.out)
                store = len(outputs) - 1
            wired.append(codegen.ProgramStep(step.body, tuple(operands), store))
        helpers = sorted(set().union(*(s.helpers for s in steps)))
        self.program = codegen.Program(
            ops=tuple(s.op for s in steps), dtype=steps[0].dtype.name, n_inputs=len(inputs),
            n_outputs=len(outputs), n_params=len(params), steps=tuple(wired), helpers=tuple(helpers))
        self.reads = [arr for _, arr in inputs.values()]
        self.writes = outputs
        self.dead = frozenset(dead)
        self.params = tuple(params)

    def __repr__(self) -> str:
        return f"<FusedCall {self.name} shape={self.shape}>"

    def run_unfused(self) -> None:
        """Run the steps one after another with their registry implementations (dead
        outputs are written too: harmless, their memory is freed after the call)."""
        for step in self.steps:
            step.impl(*step.args, **step.kwargs)

    def __call__(self) -> None:
        layout = plan_layout(self.shape, self.reads + self.writes)
        fn = codegen.kernel(self.program, layout.kinds)
        args = [np.int64(layout.rows), np.int64(layout.inner)]
        args += [x for arg in layout.args for x in arg]
        args += self.params
        if layout.rows * layout.inner >= SERIAL_BELOW:
            fn(*args)
            return
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            fn(*args)
        finally:
            numba.set_num_threads(threads)
