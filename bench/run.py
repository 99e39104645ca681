"""Run every benchmark and print its tables: ``python bench/run.py [--quick | --full] [--data-dir D]``.

Quick mode (the default) takes a few minutes on a laptop; full mode has the sizes of the
README's figures (100k cases; about 40 minutes on 2 cores, most of it loading the stores).
``--data-dir D`` keeps the generated cases and the loaded stores in D, so that a later run
(or ``--only sparql``) reuses them instead of loading them again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import breakdown  # noqa: E402
import cds_hooks  # noqa: E402
import growth  # noqa: E402
import http_api  # noqa: E402
import ingest  # noqa: E402
import pipeline  # noqa: E402
import sparql  # noqa: E402
import startup  # noqa: E402
import store_size  # noqa: E402

BENCHMARKS = {
    "pipeline": pipeline.run,  # 2. pathway in-process
    "breakdown": breakdown.run,  # 2. and 4. where a case's time goes (the profile behind them)
    "http": http_api.run,  # 2. pathway and POST /cases over HTTP
    "ingest": ingest.run,  # 4. bulk ingest (its store is reused below)
    "store_size": store_size.run,  # 3. flat with store size
    "sparql": sparql.run,  # 5. SPARQL
    "growth": growth.run,  # 5. growth: named queries and GET /cases at two store sizes
    "startup": startup.run,  # 6. memory and start-up
    "cds": cds_hooks.run,  # CDS Hooks call beside POST /pathway
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small runs, seconds (the default)")
    size.add_argument("--full", action="store_true", help="the sizes of the README figures")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only these")
    parser.add_argument("--data-dir", type=Path,
                        help="keep generated cases and loaded stores here and reuse them (default: a temporary dir)")
    args = parser.parse_args(argv)
    quick = not args.full
    ingest.set_root(args.data_dir)
    print(f"# ESI-KG benchmarks, {'quick' if quick else 'full'} mode, {dt.date.today()}, "
          f"Python {platform.python_version()}, {platform.machine()}")
    failed = []
    for name in args.only or BENCHMARKS:
        started = time.perf_counter()
        try:
            print(BENCHMARKS[name](quick), flush=True)
        except Exception:  # noqa: BLE001 - one broken benchmark does not stop the others
            failed.append(name)
            print(f"\n## {name}: FAILED\n\n```\n{traceback.format_exc()}```", flush=True)
        print(f"\n({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
