"""Runs: drop -> running, failure -> next attempt, class D hang -> killed, the daemon's cost while
it supervises 20 runs for a minute, and what one job start costs with 50 attempts alive."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from tests.bench.common import (
    Row,
    bench_home,
    cpu_seconds,
    drop_at,
    peak_rss_bytes,
    percentile,
    query,
    read_json,
    rss_bytes,
    run_each,
    running,
)
from tests.harness import Home, mimickit_job, wait_for

STARTS = 30
RETRIES = 20
HANGS = 5
SUPERVISED = 20
SUPERVISE_SECONDS = 60.0
LIVE_FOR_START_COST = 50


def attempts(home: Home, job_id: str) -> list[Path]:
    return [Path(str(r[0])) for r in query(home, "SELECT dir FROM attempts WHERE job_id = ? ORDER BY id", (job_id,))]


def child_started(attempt_dir: Path) -> float | None:
    data = read_json(attempt_dir / "child.json")
    return float(str(data["started_at"])) if data else None


def drop_to_running(root: Path) -> list[Row]:
    """A fake MimicKit job dropped into an idle daemon; latency = child.json's started_at (the shim
    writes it right after starting the run) - the rename. The note splits it: intake (the job row's
    submitted_at), the daemon's start work (the attempt row), the shim's own start (shim.json), the run."""
    home = bench_home(root)
    job = mimickit_job(stages='[[stages]]\nkind = "train"\nmax_samples = 512\n')
    latencies = []
    parts: dict[str, list[float]] = {"intake": [], "start": [], "shim": [], "spawn": []}
    with running(home):
        for i in range(STARTS):
            name = f"run{i:03d}"
            at = drop_at(home, f"{name}.toml", job)
            dirs = wait_for(lambda n=name: attempts(home, n), 10, "an attempt")
            started = wait_for(lambda d=dirs[0]: child_started(d), 10, "child.json")
            latencies.append((started - at) * 1000)
            queued = float(str(query(home, "SELECT submitted_at FROM jobs WHERE job_id = ?", (name,))[0][0]))
            row = float(str(query(home, "SELECT started_at FROM attempts WHERE job_id = ?", (name,))[0][0]))
            shim = (dirs[0] / "shim.json").stat().st_mtime
            for key, value in (("intake", queued - at), ("start", row - queued), ("shim", shim - row),
                               ("spawn", started - shim)):  # fmt: skip
                parts[key].append(value * 1000)
            wait_for(lambda n=name: home.state(n) in ("succeeded", "failed"), 20, "the run to end")
            time.sleep(0.2)
    split = ", ".join(f"{k} {percentile(v, 50):.0f}" for k, v in parts.items())
    note = f"{STARTS} drops of a fake MimicKit job, to child.json; p50 ms: {split}"
    return [
        Row("drop -> running, p50", percentile(latencies, 50), "ms", 100, note),
        Row("drop -> running, p99", percentile(latencies, 99), "ms", None),
    ]


def failure_to_next_attempt(root: Path) -> list[Row]:
    """A run that crashes at iteration 1 every time, backoff 0 s; latency = the root's exit (exit.json
    root_exit_at, when the shim reaped it) -> the next attempt's child.json started_at."""
    home = bench_home(root)
    retry = f"max_attempts = {RETRIES + 1}\nmax_no_progress = 100"
    job = mimickit_job(
        env='FAKE_MK_FAIL = "crash_at=1"', backoff="0s", retry=retry, stages='[[stages]]\nkind = "train"\n'
    )
    latencies = []
    with running(home):
        drop_at(home, "crash.toml", job)
        home.wait_state("crash", "failed", timeout=120)
        dirs = attempts(home, "crash")
        for before, after in itertools.pairwise(dirs):
            ended = read_json(before / "exit.json")
            started = child_started(after)
            if ended and started and ended.get("root_exit_at"):
                latencies.append((started - float(str(ended["root_exit_at"]))) * 1000)
    note = f"{len(latencies)} retries, crash_at=1, backoff 0 s"
    return [
        Row("failure -> next attempt's process, p50", percentile(latencies, 50), "ms", None, note),
        Row("failure -> next attempt's process, p99", percentile(latencies, 99), "ms", None),
    ]


def hang_detection(root: Path) -> list[Row]:
    """Class D (FAKE_MK_FAIL=nccl_abort_at=2): the abort lines are the run's last output, so the
    console's mtime is when the signature was printed; killed = exit.json root_exit_at."""
    home = bench_home(root)
    job = mimickit_job(
        num_envs=256,
        env='FAKE_MK_FAIL = "nccl_abort_at=2"',
        backoff="0s",
        retry=f"ladder = [256, 128, 64, 32, 16]\nmax_attempts = {HANGS}",
        stages='[[stages]]\nkind = "train"\n',
    )
    latencies = []
    with running(home):
        drop_at(home, "hang.toml", job)
        home.wait_state("hang", "failed", timeout=120)
        for attempt in attempts(home, "hang"):
            ended = read_json(attempt / "exit.json")
            if ended and ended.get("root_exit_at"):
                printed = (attempt / "console.log").stat().st_mtime
                latencies.append(float(str(ended["root_exit_at"])) - printed)
        classes = {str(r[0]) for r in query(home, "SELECT failure_class FROM attempts WHERE job_id = 'hang'")}
    note = f"{len(latencies)} hangs, classified {', '.join(sorted(classes))}"
    return [Row("class D hang: signature -> run killed, max", max(latencies, default=float("nan")), "s", 5.0, note)]


def supervising(root: Path) -> list[Row]:
    """20 long fake runs printing a table every second; the daemon's CPU time over a minute and its
    peak RSS (VmHWM) by the end."""
    home = bench_home(root, env={"FAKE_MK_ITER_SECONDS": "1"})
    job = mimickit_job(stages='[[stages]]\nkind = "train"\nmax_samples = 1000000000\n')
    with running(home) as daemon:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        for i in range(SUPERVISED):
            drop_at(home, f"long{i:02d}.toml", job)
        wait_for(
            lambda: query(home, "SELECT COUNT(*) FROM attempts WHERE state = 'running'")[0][0] == SUPERVISED,
            60,
            "20 runs with progress",
        )
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < SUPERVISE_SECONDS:
            time.sleep(1.0)
            rss.append(rss_bytes(pid) or 0)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        peak = peak_rss_bytes(pid) or 0
        assert cpu0 is not None and cpu1 is not None
    share = (cpu1 - cpu0) / (t1 - t0) * 100
    note = f"{SUPERVISED} fake runs, one table/s each, {t1 - t0:.0f} s"
    return [
        Row("daemon CPU supervising 20 runs", share, "%", 1.0, note + " (% of one core)"),
        Row("daemon peak RSS supervising 20 runs", peak / 2**20, "MB", 100, f"RSS at the end {rss[-1] / 2**20:.0f} MB"),
    ]


def start_cost(root: Path) -> list[Row]:
    """With 50 attempts alive and jobs queued, how long the loop takes to start one more job: the
    time between successive child.json started_at of the queued jobs, while slots free up."""
    home = bench_home(root, extra=f"max_running = {LIVE_FOR_START_COST}")
    long_job = '[workload]\nkind = "command"\nargv = ["sleep", "600"]\n'
    with running(home):
        for i in range(LIVE_FOR_START_COST - 1):
            drop_at(home, f"hold{i:02d}.toml", long_job)
        wait_for(
            lambda: query(home, "SELECT COUNT(*) FROM attempts")[0][0] >= LIVE_FOR_START_COST - 1,
            120,
            "49 runs alive",
            every=0.2,
        )
        time.sleep(3)
        started = []
        for i in range(10):  # one slot: each short job starts when the previous one ends
            at = drop_at(home, f"short{i:02d}.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
            dirs = wait_for(lambda n=f"short{i:02d}": attempts(home, n), 30, "an attempt")
            began = wait_for(lambda d=dirs[0]: child_started(d), 30, "child.json")
            started.append((began - at) * 1000)
            wait_for(lambda n=f"short{i:02d}": home.state(n) == "succeeded", 30, "done")
        ticks = _tick_seconds(home)
    return [
        Row(
            "drop -> running with 49 runs alive, p50",
            percentile(started, 50),
            "ms",
            100,
            "same target as the idle case",
        ),
        Row("loop tick with 49 runs alive (mean of mkd_tick_duration_seconds)", ticks * 1000, "ms", None),
    ]


def _tick_seconds(home: Home) -> float:
    import urllib.request

    port = home.metrics_port()
    found: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(("mkd_tick_duration_seconds_sum ", "mkd_tick_duration_seconds_count ")):
                name, number = line.split()
                found[name] = float(number)
    count = found.get("mkd_tick_duration_seconds_count", 0.0)
    return found.get("mkd_tick_duration_seconds_sum", float("nan")) / count if count else float("nan")


def run() -> list[Row]:
    return run_each(drop_to_running, failure_to_next_attempt, hang_detection, supervising, start_cost)


def main() -> None:
    from tests.bench.common import table

    print(table(run()))


if __name__ == "__main__":
    main()
