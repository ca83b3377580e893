"""The ``streamq`` command line (also ``python -m streamq``).

Subcommands: ``topology`` (the CMGs as the runtime sees them), ``fusion LOG``
(fusion candidates, near-misses and races found in a queue log, optionally a
fusion plan) and ``trace LOG`` (Chrome trace, timeline plot, summary). See
docs/fusion-analyzer.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``"4096"``, ``"64K"``, ``"16MiB"``, ``"1G"`` -> bytes (binary units); argparse type."""
    m = _SIZE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 4096, 64K, 16MiB)")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def _topology(args) -> int:
    import streamq
    for cmg in streamq.topology():
        print(cmg)
    return 0


def _report_damage(diag, path) -> None:
    if diag.count or diag.notes:
        for line in diag.lines(path):
            print(f"streamq: {line}", file=sys.stderr)


def _fusion(args) -> int:
    from .analysis import Diagnostics, analyze, as_json, as_text, write_plan
    diag = Diagnostics()
    analysis = analyze(args.log, diagnostics=diag, min_savings=args.min_savings)
    if args.format == "json":
        sys.stdout.write(json.dumps(as_json(analysis), indent=1) + "\n")
    else:
        sys.stdout.write(as_text(analysis, top=args.top))
    if args.plan:
        data = write_plan(analysis, args.plan)
        print(f"streamq: wrote {len(data['chains'])} chains to {args.plan}", file=sys.stderr)
    if args.format == "json":
        _report_damage(diag, args.log)
    elif diag.count:  # the text report lists them at its end
        print(f"streamq: {diag.count} damaged lines skipped (listed at the end of the report)",
              file=sys.stderr)
    return 0


def _trace(args) -> int:
    from .analysis import Diagnostics
    if not (args.chrome or args.plot or args.summary):
        print("streamq trace: give at least one of --chrome OUT.json, --plot OUT.png, --summary",
              file=sys.stderr)
        return 2
    diag = Diagnostics()
    if args.chrome:
        from .analysis.chrome import write_chrome
        stats = write_chrome(args.log, args.chrome, diagnostics=diag)
        print(f"streamq: wrote {stats['events']} trace events ({stats['ops']} ops, {stats['flows']} "
              f"flows) to {args.chrome}", file=sys.stderr)
        diag_once, diag = diag, Diagnostics()
        _report_damage(diag_once, args.log)
    if args.summary:
        from .analysis.summary import summarize, summary_text
        summary = summarize(args.log, diagnostics=diag, min_gap_us=args.gap_us)
        if args.format == "json":
            sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        else:
            sys.stdout.write(summary_text(summary))
        if not args.chrome:
            _report_damage(diag, args.log)
        diag = Diagnostics()
    if args.plot:
        from .analysis.plot import plot_timeline
        stats = plot_timeline(args.log, args.plot, diagnostics=diag)
        more = f", {stats['left_out']} left out" if stats["left_out"] else ""
        print(f"streamq: drew {stats['ops']} ops in {stats['lanes']} lanes ({stats['highlighted']} in "
              f"fusion candidates{more}) to {args.plot}", file=sys.stderr)
        if not (args.chrome or args.summary):
            _report_damage(diag, args.log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamq`` command."""
    parser = argparse.ArgumentParser(prog="streamq", description="streamq tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("topology", help="print the CMGs, their CPUs and NUMA nodes as the runtime sees them")
    fu = sub.add_parser("fusion", help="find fusion candidates, near-misses and races in a queue log")
    fu.add_argument("log", help="queue log (.jsonl or .jsonl.gz)")
    fu.add_argument("--format", choices=("text", "json"), default="text")
    fu.add_argument("--min-savings", type=parse_bytes, default=0, metavar="BYTES",
                    help="hide findings that save fewer bytes in total (e.g. 1M)")
    fu.add_argument("--plan", metavar="PLAN.json", help="write the chosen chains for the run-time fusion")
    fu.add_argument("--top", type=int, default=20, help="rows per table in text output (default 20)")
    tr = sub.add_parser("trace", help="convert a queue log to a Chrome trace, a plot or a summary")
    tr.add_argument("log", help="queue log (.jsonl or .jsonl.gz)")
    tr.add_argument("--chrome", metavar="OUT.json", help="write Chrome trace events (.gz compresses)")
    tr.add_argument("--plot", metavar="OUT.png", help="draw the timeline (needs matplotlib)")
    tr.add_argument("--summary", action="store_true", help="print per-op time, count, bandwidth, "
                    "idle gaps per CMG")
    tr.add_argument("--format", choices=("text", "json"), default="text", help="of --summary")
    tr.add_argument("--gap-us", type=float, default=100.0,
                    help="shortest idle stretch counted as a gap in --summary (default 100 µs)")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``streamq`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "top", 1) < 1:
        parser.error("--top must be at least 1")
    if getattr(args, "gap_us", 0.0) < 0:
        parser.error("--gap-us must not be negative")
    handler = {"topology": _topology, "fusion": _fusion, "trace": _trace}[args.command]
    try:
        return handler(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ImportError) as exc:
        print(f"streamq {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
