"""The process-wide fusion setting: off, automatic, or a plan (private).

Each :func:`set_mode` call makes a new :class:`_Config`; windows compare
configs by identity, so a held chain started under an older setting is
enqueued before ops offered under the new one.
"""

from __future__ import annotations

import os
import threading

from .plan import Plan, PlanError, load_plan

ENV = "STREAMQ_FUSE"
_OFF = ("", "0", "off", "false", "no")
_AUTO = ("1", "auto", "on", "true", "yes")


class _Config:
    """Fusion on: ``plan`` is a Plan, or None for the automatic mode."""

    __slots__ = ("plan",)

    def __init__(self, plan: Plan | None):
        self.plan = plan


_lock = threading.Lock()
_config: _Config | None = None
_decided = False        # set once enable/disable ran or the environment was read


def set_mode(plan, *, on: bool) -> None:
    """Switch fusion off (``on=False``) or on with ``plan`` (None: automatic)."""
    global _config, _decided
    config = _Config(None if plan is None else load_plan(plan)) if on else None
    with _lock:
        _config, _decided = config, True


def _from_env() -> _Config | None:
    raw = os.environ.get(ENV, "").strip()
    if raw.lower() in _OFF:
        return None
    if raw.lower() in _AUTO:
        return _Config(None)
    try:
        return _Config(load_plan(raw))
    except (OSError, PlanError) as exc:
        raise PlanError(f"{ENV}={raw!r}: {exc}") from exc


def current() -> _Config | None:
    """The setting in force; the first call reads ``STREAMQ_FUSE`` unless set explicitly."""
    global _config, _decided
    if not _decided:
        with _lock:
            if not _decided:
                _config = _from_env()
                _decided = True
    return _config
