"""Helpers shared by the benchmarks and tests/test_load.py: a history of finished jobs built
straight into a store, /proc readings of the daemon, percentiles, and a table printer."""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from dataclasses import dataclass
from pathlib import Path

from mkd.config import DaemonConfig, Layout
from mkd.memory import Plan
from mkd.states import AttemptState, JobState
from mkd.store import Store
from mkd.store_views import status_rows
from tests.harness import Home

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HISTORY_SPEC = {"workload": {"kind": "command", "argv": ["true"]}}
HISTORY_SOURCE = '[workload]\nkind = "command"\nargv = ["true"]\n'


def build_history(db: Path, jobs: int, *, finished_days_ago: float = 2.0) -> None:
    """`jobs` finished jobs, one ended attempt each, written through mkd.store.Store into a fresh
    store at `db`: the history `mkd status` and the daemon see at 10,000 jobs.

    Built on /dev/shm (where fsync is free) and copied to `db`; the finish times lie
    `finished_days_ago` in the past, beyond the metrics retention, as a real history would."""
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="mkd-history-", dir=shm if shm.is_dir() else None))
    try:
        store = Store.open(work / "mkd.sqlite3")
        start = time.time() - finished_days_ago * 86400 - jobs
        for i in range(jobs):
            now = start + i
            job_id = f"hist{i:05d}"
            store.insert_job(
                job_id=job_id,
                name=job_id,
                priority=0,
                source_file=f"{job_id}.toml",
                source_text=HISTORY_SOURCE,
                spec=HISTORY_SPEC,
                claim_token=f"history-{i}",
                now=now,
            )
            store.set_job_state(job_id, JobState.RUNNING, "attempt 1 started", now)
            attempt = store.add_attempt(
                job_id=job_id,
                stage_index=0,
                stage_label="1-command",
                params=Plan(),
                dir=f"/nonexistent/{job_id}",
                now=now,
            )
            failed = i % 7 == 0
            store.update_attempt(
                attempt.id,
                state=AttemptState.ENDED,
                ended_at=now + 0.5,
                returncode=1 if failed else 0,
                outcome="failed" if failed else "succeeded",
                failure_class="unknown" if failed else None,
            )
            final = JobState.FAILED if failed else JobState.SUCCEEDED
            store.set_job_state(job_id, final, "retries exhausted" if failed else "stage 1-command passed", now + 0.5)
        store.close()
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "mkd.sqlite3", db)
    finally:
        shutil.rmtree(work, ignore_errors=True)


_HISTORY_CACHE: dict[int, bytes] = {}


def history_bytes(jobs: int) -> bytes:
    """The bytes of a history store (built once per process)."""
    if jobs not in _HISTORY_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            build_history(Path(tmp) / "mkd.sqlite3", jobs)
            _HISTORY_CACHE[jobs] = (Path(tmp) / "mkd.sqlite3").read_bytes()
    return _HISTORY_CACHE[jobs]


def install_history(state_dir: Path, jobs: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "mkd.sqlite3").write_bytes(history_bytes(jobs))


def status_in_process(config_path: Path) -> float:
    """Seconds `mkd status` takes once Python and mkd are loaded: config, read-only store, query, table."""
    from mkd import cli

    sink = io.StringIO()
    started = time.perf_counter()
    with redirect_stdout(sink):
        code = cli.main(["--config", str(config_path), "status"])
    elapsed = time.perf_counter() - started
    assert code == 0, sink.getvalue()
    return elapsed


def status_rows_seconds(db: Path) -> float:
    """Seconds for the store query behind `mkd status` alone."""
    store = Store.open(db, readonly=True)
    try:
        started = time.perf_counter()
        status_rows(store, 20)
        return time.perf_counter() - started
    finally:
        store.close()


def layout_for(config_path: Path) -> Layout:
    from mkd.cli import load_config

    config, layout = load_config(str(config_path))
    assert isinstance(config, DaemonConfig)
    return layout


# --- /proc ------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of `pid` (its threads included), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- numbers ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One line of the benchmark table."""

    name: str
    value: float
    unit: str
    target: float | None  # the figure must be below this; None: no target, reported only
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None or self.value != self.value:  # NaN: not measured
            return "-" if self.value == self.value else "n/a"
        return "ok" if self.value < self.target else "MISS"

    def cells(self) -> tuple[str, ...]:
        target = "-" if self.target is None else f"< {fmt(self.target, self.unit)}"
        return (self.name, fmt(self.value, self.unit), target, self.verdict, self.note)


def fmt(value: float, unit: str) -> str:
    if value != value:
        return "n/a"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "us":
        return f"{value:.0f} µs"
    return f"{value:g} {unit}"


def table(rows: list[Row]) -> str:
    header = ("benchmark", "measured", "target", "", "notes")
    lines = [header, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except OSError:
        pass
    release = os.uname().release
    return f"{cpus} CPU(s) ({model}), {memory / 1024:.1f} GiB RAM, Linux {release}, Python {sys.version.split()[0]}"


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- a daemon home with the daemon's own defaults ---------------------------------------------


def bench_home(root: Path, extra: str = "", env: dict[str, str] | None = None) -> Home:
    """A Home whose config keeps mkd's defaults (tick 2 s, settle 2 s, GPU samples every 5 s),
    unlike the test harness's faster settings; metrics on a free port."""
    from tests.harness import FAKE_MIMICKIT, new_token

    home = Home(root, new_token())
    home.config.write_text(
        f'mimickit_dir = "{FAKE_MIMICKIT}"\nmimickit_python = "{sys.executable}"\n{extra}\n\n[metrics]\nport = 0\n',
        encoding="utf-8",
    )
    home.env.update(env or {})
    return home


PROFILE_DIR: Path | None = None  # set by `python -m tests.bench --profile DIR`: each daemon runs under cProfile


@contextmanager
def running(home: Home, env: dict[str, str] | None = None) -> Iterator[Home]:
    """The daemon started; at the end every run stopped and every leftover process killed.

    With PROFILE_DIR set, the daemon runs under cProfile and its stats land in
    PROFILE_DIR/<home folder name>.prof when it exits (`mkd shutdown --stop-runs`)."""
    try:
        if PROFILE_DIR is None:
            home.start(env=env)
        else:
            _start_profiled(home, PROFILE_DIR / f"{home.root.name}.prof", env)
        yield home
    finally:
        if home.proc is not None and home.proc.poll() is None:
            home.mkd("shutdown", "--stop-runs")
            with suppress(subprocess.TimeoutExpired):  # killed below
                home.proc.wait(60)
        home.cleanup()


def _start_profiled(home: Home, out: Path, env: dict[str, str] | None) -> None:
    from tests.harness import wait_for

    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "mkd", "--config", str(home.config), "run"]
    with open(home.log, "ab") as log:
        home.proc = subprocess.Popen(
            argv, cwd=home.root, env={**home.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
    wait_for(lambda: (home.root / "var" / "metrics.port").exists() or home.proc_exited(), 30, "daemon start")


def query(home: Home, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = home.db()
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def drop_at(home: Home, name: str, text: str) -> float:
    """Drop a job file the documented way; returns the wall time of the rename."""
    tmp = home.incoming / f".{name}.tmp"
    tmp.write_text(text, encoding="utf-8")
    at = time.time()
    os.rename(tmp, home.incoming / name)
    return at


def run_each(*benches: Callable[[Path], list[Row]]) -> list[Row]:
    """Run each benchmark in a fresh temporary folder; their rows in order."""
    rows: list[Row] = []
    for bench in benches:
        with tempfile.TemporaryDirectory(prefix=f"mkd-bench-{bench.__name__}-") as tmp:
            rows += bench(Path(tmp))
    return rows
