"""Samples per second from MimicKit console logs, read with mkd's own parser.

    python -m tests.gpu.rates LOG [LOG ...]

For each log: the steady rate, the median of dSamples/dWall_Time between consecutive
tables, leaving out iteration 0 and the last one (both include an evaluation rollout).
Used on the GPU machine to compare a run started by hand with the same run under mkd.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

from mkd.mimickit.console import ConsoleParser


def steady_rates(text: str) -> list[float]:
    parser = ConsoleParser()
    rows = parser.feed(text) + parser.close()
    rates = []
    for prev, row in itertools.pairwise(rows[1:-1]):
        if None in (prev.samples, row.samples, prev.wall_time_h, row.wall_time_h):
            continue
        seconds = (row.wall_time_h - prev.wall_time_h) * 3600.0  # type: ignore[operator]
        if seconds > 0:
            rates.append((row.samples - prev.samples) / seconds)  # type: ignore[operator]
    return rates


def summary(path: Path) -> dict[str, object]:
    rates = steady_rates(path.read_text(errors="replace"))
    return {
        "log": path.name,
        "iterations": len(rates) + 3 if rates else 0,
        "median_samples_per_second": statistics.median(rates) if rates else None,
        "mean_samples_per_second": statistics.fmean(rates) if rates else None,
        "rates": [round(r) for r in rates],
    }


if __name__ == "__main__":
    print(json.dumps([summary(Path(p)) for p in sys.argv[1:]], indent=1))
