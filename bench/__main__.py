"""`make bench`: every benchmark, each figure next to a baseline from the same run."""

from __future__ import annotations

import argparse
import sys

from bench import dataplane


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--only", choices=["dataplane", "control", "health", "scaleout",
                                       "neighbours"],
                    help="run one group")
    args = ap.parse_args()
    if args.only in (None, "dataplane"):
        print(dataplane.report(dataplane.run()), flush=True)
    if args.only in (None, "control"):
        try:
            from bench import control
        except ImportError:
            print("\n(control-plane benchmarks not available yet)")
        else:
            print()
            print(control.report(control.run()), flush=True)
    if args.only in (None, "health"):
        from bench import health

        print()
        print(health.report(health.run()), flush=True)
    if args.only in (None, "scaleout"):
        from bench import scaleout

        print()
        print(scaleout.report(scaleout.run()), flush=True)
    if args.only in (None, "neighbours"):
        from bench import neighbours

        print()
        print(neighbours.report(neighbours.run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
