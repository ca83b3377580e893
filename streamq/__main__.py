"""The ``streamq`` command line (also ``python -m streamq``)."""

from __future__ import annotations

import argparse
import sys


def _topology(args) -> int:
    import streamq
    for cmg in streamq.topology():
        print(cmg)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``streamq`` console script."""
    parser = argparse.ArgumentParser(prog="streamq", description="streamq tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("topology", help="print the CMGs, their CPUs and NUMA nodes as the runtime sees them")
    args = parser.parse_args(argv)
    return {"topology": _topology}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
