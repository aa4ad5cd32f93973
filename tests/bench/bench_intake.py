"""Intake and status: drop -> queued for single drops, 1,000 files at once, `mkd status` at 10,000 jobs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.common import (
    Row,
    bench_home,
    drop_at,
    install_history,
    percentile,
    query,
    run_each,
    running,
    status_in_process,
    status_rows_seconds,
)
from tests.harness import wait_for

SINGLE_DROPS = 40
BURST = 1000
HISTORY = 10_000
QUICK_JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'
WAITS_FOR_A_GPU = '[workload]\nkind = "command"\nargv = ["true"]\n[resources]\ngpus = 1\n'  # no GPU here: stays queued


def drop_to_queued(root: Path) -> list[Row]:
    """One file at a time into an idle daemon, 0.2-1.5 s apart (seeded); latency = the job row's
    submitted_at - the rename. The note counts the drops an inotify wake took (under 10 ms); the
    others waited for the loop's periodic scan (tick, 100 ms)."""
    home = bench_home(root)
    rng = random.Random(7)
    latencies = []
    with running(home):
        for i in range(SINGLE_DROPS):
            name = f"single{i:03d}"
            at = drop_at(home, f"{name}.toml", QUICK_JOB)
            wait_for(lambda n=name: query(home, "SELECT 1 FROM jobs WHERE job_id = ?", (n,)), 10, "queued")
            submitted = float(str(query(home, "SELECT submitted_at FROM jobs WHERE job_id = ?", (name,))[0][0]))
            latencies.append((submitted - at) * 1000)
            wait_for(lambda n=name: home.state(n) == "succeeded", 10, "done")  # idle again before the next drop
            time.sleep(rng.uniform(0.2, 1.5))
    woken = sum(1 for v in latencies if v < 10)
    note = f"{SINGLE_DROPS} drops 0.2-1.5 s apart into an idle daemon; {woken} woken by inotify (< 10 ms)"
    return [
        Row("drop -> queued, single drop, p50", percentile(latencies, 50), "ms", 50, note),
        Row("drop -> queued, single drop, p99", percentile(latencies, 99), "ms", None),
    ]


def burst(root: Path) -> list[Row]:
    """1,000 files renamed into incoming at once; jobs that wait for a GPU, so only intake is measured."""
    home = bench_home(root)
    with running(home):
        staged = []
        for i in range(BURST):
            tmp = home.incoming / f".burst{i:04d}.toml.tmp"
            tmp.write_text(WAITS_FOR_A_GPU)
            staged.append(tmp)
        first = time.time()
        for tmp in staged:
            os.rename(tmp, tmp.with_name(tmp.name[1:-4]))
        wait_for(lambda: query(home, "SELECT COUNT(*) FROM jobs")[0][0] == BURST, 120, "1,000 jobs queued", every=0.1)
        last = float(query(home, "SELECT MAX(submitted_at) FROM jobs")[0][0])
    return [Row("1,000 files dropped at once -> all queued", last - first, "s", 5.0, "renamed in a burst")]


def status(root: Path) -> list[Row]:
    """`mkd status` over a store of 10,000 finished jobs (built with mkd.store.Store) and a running daemon."""
    home = bench_home(root)
    install_history(root / "var", HISTORY)
    with running(home):
        command = [sys.executable, "-m", "mkd", "--config", str(home.config), "status"]
        cli = []
        for _ in range(7):
            started = time.perf_counter()
            subprocess.run(command, cwd=root, env=home.env, capture_output=True, check=True, timeout=60)
            cli.append((time.perf_counter() - started) * 1000)
        inner = [status_in_process(home.config) * 1000 for _ in range(20)]
        query_ms = [status_rows_seconds(root / "var" / "mkd.sqlite3") * 1000 for _ in range(20)]
        bare = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import mkd.cli"], check=True)
            bare.append((time.perf_counter() - started) * 1000)
    return [
        Row(
            "mkd status at 10,000 jobs, the command, p50",
            percentile(cli, 50),
            "ms",
            200,
            f"of which ~{percentile(bare, 50):.0f} ms is starting Python and importing mkd.cli",
        ),
        Row(
            "mkd status at 10,000 jobs, in process, p50",
            percentile(inner, 50),
            "ms",
            200,
            f"config + read-only store + query + table; the query alone {percentile(query_ms, 50):.1f} ms",
        ),
    ]


def run() -> list[Row]:
    return run_each(drop_to_queued, burst, status)


def main() -> None:
    from tests.bench.common import table

    print(table(run()))


if __name__ == "__main__":
    main()
