"""Offline analysis of queue logs: fusion candidates, races, timelines, summaries.

``streamq fusion LOG`` and ``streamq trace LOG`` (``python -m streamq``) are the
command-line faces of this package; docs/fusion-analyzer.md explains the rules.
Every function streams the log once in bounded memory; damaged lines are
reported with their line numbers and skipped.
"""

from .analyzer import Analysis, analyze
from .opkinds import OP_KINDS, classify
from .reader import Diagnostics, read_records
from .report import as_json, as_text, plan, write_plan

__all__ = ["Analysis", "analyze", "OP_KINDS", "classify", "Diagnostics", "read_records",
           "as_json", "as_text", "plan", "write_plan"]
