"""`python -m tests.bench`: every benchmark, one table, each figure beside its target.

    python -m tests.bench                       # everything (~6 min on 2 cores)
    python -m tests.bench intake runs            # some groups: intake, runs, metrics
    python -m tests.bench --profile DIR runs     # each daemon under cProfile: DIR/<scenario>.prof,
                                                 # and the top functions of each printed after the table

A figure that misses its target is printed all the same, marked MISS. Not collected by
pytest (the files are bench_*.py); nothing here changes mkd.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import time
from pathlib import Path

from tests.bench import bench_intake, bench_metrics, bench_runs, bench_shared_gpu, bench_slurm, common

GROUPS = {
    "intake": bench_intake,
    "runs": bench_runs,
    "metrics": bench_metrics,
    "shared_gpu": bench_shared_gpu,
    "slurm": bench_slurm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--profile", type=Path, help="run each daemon under cProfile, stats into this folder")
    args = parser.parse_args(argv)
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    if args.profile is not None:
        common.PROFILE_DIR = args.profile.resolve()
    started = time.monotonic()
    rows: list[common.Row] = []
    for name in args.groups or list(GROUPS):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += GROUPS[name].run()
    print(f"\nmkd benchmarks on {common.machine()}; {time.monotonic() - started:.0f} s\n")
    print(common.table(rows))
    misses = [r.name for r in rows if r.verdict == "MISS"]
    print(f"\n{len(misses)} of {sum(r.target is not None for r in rows)} targets missed" if misses else "\nall met")
    if common.PROFILE_DIR is not None:
        for prof in sorted(common.PROFILE_DIR.glob("*.prof")):
            stats = pstats.Stats(str(prof))
            print(f"\n=== {prof.name}: the daemon's mkd functions by cumulative time ===")
            stats.sort_stats("cumulative").print_stats("/mkd/", 14)
            print(f"=== {prof.name}: by own time ===")
            stats.sort_stats("tottime").print_stats(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
