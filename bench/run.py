"""Run every benchmark and print its tables: ``python bench/run.py [--quick | --full]``."""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline  # noqa: E402

BENCHMARKS = {"pipeline": pipeline.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small runs, seconds (the default)")
    size.add_argument("--full", action="store_true", help="the sizes of the README figures")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these")
    args = parser.parse_args(argv)
    quick = not args.full
    print(f"# ESI-KG benchmarks, {'quick' if quick else 'full'} mode, {dt.date.today()}, "
          f"Python {platform.python_version()}, {platform.machine()}")
    for name in args.only or BENCHMARKS:
        print(BENCHMARKS[name](quick), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
