"""Command line: ``python -m pyquant info`` (or ``pyquant info``) prints the configuration."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyquant", description="pyquant: exact int8 and sparse kernels for CPUs")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print versions, CPU features, ISA paths and threads")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    import pyquant

    if args.json:
        print(json.dumps(pyquant.config(), indent=2))
    else:
        pyquant.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
