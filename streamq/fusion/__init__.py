"""Fusion applied at run time: consecutive elementwise ops on a serial queue run as one kernel.

Turn it on with ``STREAMQ_FUSE=plan.json`` in the environment (read at first
use; ``STREAMQ_FUSE=auto`` for the automatic mode, empty or ``0`` for off), or
:func:`enable` / :func:`disable`:

* ``enable(plan)``: fuse the chains a plan file names (written by
  ``streamq fusion LOG --plan plan.json``; a path, a decoded dict or a
  :class:`Plan`);
* ``enable()`` (plan None): the automatic mode, fusing any consecutive fusable
  elementwise ops where each consumes the previous op's output.

The CUDA facade gives each serial queue a :class:`FusionWindow` and offers it
every elementwise launch; the window enqueues held ops as one generated numba
kernel (``fused[op+op+...]`` in the queue log). Fused results are bit-identical
to running the ops one by one with the default (numba) kernels. Kernels are
generated as module files under :func:`cache_dir` and reused by later
processes without recompiling. See ``docs/fusion.md``.
"""

from __future__ import annotations

from . import _state
from .codegen import cache_dir
from .ops import FUSABLE_OPS
from .plan import Plan, PlanChain, PlanError, load_plan
from .window import FusionWindow

__all__ = ["enable", "disable", "enabled", "active_plan", "FusionWindow", "Plan", "PlanChain",
           "PlanError", "load_plan", "cache_dir", "FUSABLE_OPS"]


def enable(plan=None) -> None:
    """Turn fusion on: with ``plan`` (path, dict or Plan) only its chains, None for automatic.

    The plan is loaded and validated now (PlanError naming the field, OSError
    for an unreadable file). Overrides ``STREAMQ_FUSE``.
    """
    _state.set_mode(plan, on=True)


def disable() -> None:
    """Turn fusion off: windows take no more ops (held ones are enqueued at their next flush)."""
    _state.set_mode(None, on=False)


def enabled() -> bool:
    """True while fusion is on (reads ``STREAMQ_FUSE`` on the first call if not set explicitly)."""
    return _state.current() is not None


def active_plan() -> Plan | None:
    """The plan in force, or None when fusion is off or automatic."""
    config = _state.current()
    return None if config is None else config.plan
