"""Load: 1,000 queued jobs run 50 at a time by a real daemon, over a history of 10,000 jobs.

The history is written straight into a fresh store with mkd.store.Store before the daemon
starts (tests/bench/common.py: build_history), finished two days ago, one attempt each.
The behaviour is checked with generous bounds; the figures themselves (latencies against
their targets) are the benchmark's job: `python -m tests.bench`.

On 2 cores this takes about 4 minutes, not the ~1 minute that 1,000 x 2 s / 50 slots allows:
each job start costs the daemon one /proc scan per live attempt (AttemptRunner.mkd_pids, from
_place, even for a job that needs no GPU), ~150 ms with 50 attempts alive, so the loop starts
about 5 jobs a second. The test prints the throughput it got.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bench.common import install_history, median, percentile, rss_bytes, status_in_process
from tests.harness import Home, wait_for

JOBS = 1000
MIMICKIT_EVERY = 20  # every 20th job is a fake MimicKit training run, the others `sleep 2`
MAX_RUNNING = 50
HISTORY = 10_000
SLEEP_JOB = '[workload]\nkind = "command"\nargv = ["sleep", "2"]\n'
MIMICKIT_JOB = """
[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = ["cpu"]
num_envs = 8

[[stages]]
kind = "train"
max_samples = 5120
"""


class Sampler(threading.Thread):
    """Every 0.5 s: the daemon's RSS and the attempts alive in the store; every 3 s the time of
    `mkd status` in process (config, read-only store, query, table) while the daemon works."""

    def __init__(self, home: Home, pid: int) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.pid = pid
        self.stop_event = threading.Event()
        self.rss: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.alive: list[int] = []
        self.status_seconds: list[float] = []
        self.started = time.monotonic()

    def run(self) -> None:
        next_status = 0.0
        while not self.stop_event.wait(0.5):
            now = time.monotonic() - self.started
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.rss.append((now, rss))
            conn = self.home.db()
            try:
                alive = conn.execute("SELECT COUNT(*) FROM attempts WHERE state != 'ended'").fetchone()[0]
                self.alive.append(int(alive))
            finally:
                conn.close()
            if now >= next_status:
                next_status = now + 3.0
                self.status_seconds.append(status_in_process(self.home.config))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def cli_status_seconds(home: Home) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "--config", str(home.config), "status"],
        cwd=home.root,
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.load
def test_a_thousand_jobs_fifty_at_a_time_over_ten_thousand_in_history(tmp_path: Path, token: str) -> None:
    home = Home(tmp_path, token, extra_config=f"max_running = {MAX_RUNNING}\n")
    install_history(tmp_path / "var", HISTORY)
    names = [f"load{i:04d}" for i in range(JOBS)]
    try:
        proc = home.start()
        sampler = Sampler(home, proc.pid)
        sampler.start()
        dropped_at = time.monotonic()
        for i, name in enumerate(names):
            home.drop(f"{name}.toml", MIMICKIT_JOB if i % MIMICKIT_EVERY == 0 else SLEEP_JOB)

        def finished() -> int:
            conn = home.db()
            try:
                return int(
                    conn.execute(
                        "SELECT COUNT(*) FROM jobs WHERE job_id LIKE 'load%' AND finished_at IS NOT NULL"
                    ).fetchone()[0]
                )
            finally:
                conn.close()

        wait_for(lambda: finished() >= 100, 120, "the first 100 jobs")
        warm = time.monotonic() - sampler.started
        cli_mid = cli_status_seconds(home)
        wait_for(lambda: finished() == JOBS, 400, f"{JOBS} jobs to finish", every=0.5)
        run_seconds = time.monotonic() - dropped_at
        cli_end = cli_status_seconds(home)
        sampler.stop()
        assert home.stop() == 0
    finally:
        leftover = home.cleanup()
    assert not leftover, f"processes left behind: {leftover}"

    conn = home.db()
    try:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs WHERE job_id LIKE 'load%' GROUP BY state"))
        total = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        per_job = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE job_id LIKE 'load%' GROUP BY job_id HAVING COUNT(*) > 1"
        ).fetchall()
    finally:
        conn.close()
    warm_rss = [r for t, r in sampler.rss if t >= warm][:6]
    last_rss = [r for _, r in sampler.rss][-6:]
    growth_mb = (median(last_rss) - median(warm_rss)) / 2**20
    figures = (
        f"{JOBS} jobs in {run_seconds:.0f} s ({JOBS / run_seconds:.1f} jobs/s), at most {max(sampler.alive)} "
        f"attempts alive (limit {MAX_RUNNING}); {total} jobs in the store; daemon RSS "
        f"{median(warm_rss) / 2**20:.1f} MB after warm-up ({warm:.0f} s), {median(last_rss) / 2**20:.1f} MB at the "
        f"end ({growth_mb:+.1f} MB), peak {max(r for _, r in sampler.rss) / 2**20:.1f} MB; mkd status in process "
        f"p50 {percentile(sampler.status_seconds, 50) * 1000:.0f} ms, max {max(sampler.status_seconds) * 1000:.0f} ms "
        f"({len(sampler.status_seconds)} samples); as a command {cli_mid * 1000:.0f} ms mid-run, "
        f"{cli_end * 1000:.0f} ms at the end"
    )
    print(f"\n{figures}")
    assert states == {"succeeded": JOBS}, f"{states}; {figures}"
    assert total == JOBS + HISTORY
    assert not per_job, f"jobs that needed a second attempt: {per_job[:5]}"
    assert max(sampler.alive) <= MAX_RUNNING, figures
    assert max(sampler.alive) >= MAX_RUNNING * 0.8, f"never close to {MAX_RUNNING} at once; {figures}"
    assert growth_mb < 30, f"the daemon's memory grows; {figures}"
    assert max(sampler.status_seconds) < 1.0, f"mkd status slow under load; {figures}"
    assert cli_end < 5.0, figures
