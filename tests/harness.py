"""Test helpers: wait on conditions, run a real `mkd run` process, find leaked processes.

Every process a test's daemon starts carries MKD_TEST_TOKEN in its environment, so a
test can find (and fail on) any process of its runs left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKE_MIMICKIT = REPO / "tests" / "fake_mimickit"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition", every: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {message}")
        time.sleep(every)


def processes_with_token(token: str) -> list[int]:
    found = []
    needle = f"MKD_TEST_TOKEN={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != b"Z":
            found.append(int(entry))
    return found


def mimickit_job(
    *,
    devices: str = '["cpu"]',
    num_envs: int = 8,
    env: str = "",
    retry: str = "",
    watch: str = "",
    backoff: str = "100ms",
    stop_grace: str = "2s",
    stages: str = "",
) -> str:
    """A job file for the fake MimicKit; [retry] comes last so that callers may append keys to it."""
    return f"""
[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = {devices}
num_envs = {num_envs}

[env]
{env}

[watch]
stop_grace = "{stop_grace}"
{watch}

{stages}

[retry]
backoff = "{backoff}"
{retry}
"""


def write_config(home: Path, extra: str = "") -> Path:
    config = home / "mkd.toml"
    config.write_text(
        f"""
mimickit_dir = "{FAKE_MIMICKIT}"
mimickit_python = "{sys.executable}"
tick = "50ms"
{extra}

[intake]
settle = "300ms"

[metrics]
port = 0

[gpu]
sample_every = "200ms"
""",
        encoding="utf-8",
    )
    return config


class Home:
    """A daemon's home: config, jobs/, runs/, var/ in one temporary folder."""

    def __init__(self, root: Path, token: str, extra_config: str = "") -> None:
        self.root = root
        self.token = token
        self.config = write_config(root, extra_config)
        self.incoming = root / "jobs" / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {**os.environ, "MKD_TEST_TOKEN": token, "FAKE_MK_ITER_SECONDS": "0.05"}
        self.log = root / "daemon.log"

    # --- the daemon process ----------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None, ready: bool = True) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mkd", "--config", str(self.config), "run"],
                cwd=self.root,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if ready:
            wait_for(lambda: (self.root / "var" / "metrics.port").exists() or self.proc_exited(), 20, "daemon start")
        return self.proc

    def proc_exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        (self.root / "var" / "metrics.port").unlink(missing_ok=True)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    # --- jobs ------------------------------------------------------------------------------

    def drop(self, name: str, text: str) -> Path:
        """Drop a job file the documented way: write a dotfile, then rename it in."""
        tmp = self.incoming / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        target = self.incoming / name
        os.rename(tmp, target)
        return target

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.root / 'var' / 'mkd.sqlite3'}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        return conn

    def job(self, job_id: str) -> dict[str, Any] | None:
        if not (self.root / "var" / "mkd.sqlite3").exists():
            return None
        conn = self.db()
        try:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            return None if row is None else dict(row)
        finally:
            conn.close()

    def state(self, job_id: str) -> str | None:
        job = self.job(job_id)
        return None if job is None else str(job["state"])

    def wait_state(self, job_id: str, *states: str, timeout: float = 20.0) -> str:
        def reached() -> str | None:
            state = self.state(job_id)
            return state if state in states else None

        try:
            return str(wait_for(reached, timeout, f"job {job_id} to reach {states}"))
        except AssertionError:
            raise AssertionError(
                f"job {job_id} is {self.state(job_id)!r}, not {states}; timeline:\n{self.timeline(job_id)}\n"
                f"daemon log tail:\n{self.log.read_text()[-3000:] if self.log.exists() else ''}"
            ) from None

    def report(self, job_id: str) -> str:
        """runs/JOB/report.md once it shows the job's current state (it is written just after the store)."""
        path = self.root / "runs" / job_id / "report.md"

        def current() -> str | None:
            text = path.read_text() if path.exists() else ""
            return text if f"- state: {self.state(job_id)} " in text else None

        return str(wait_for(current, 5, f"report.md of {job_id} to catch up"))

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        conn = self.db()
        try:
            rows = conn.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        finally:
            conn.close()
        out = []
        for row in rows:
            item = dict(row)
            for key in ("params", "progress", "evidence"):
                item[key] = json.loads(item[key])
            out.append(item)
        return out

    def timeline(self, job_id: str) -> str:
        conn = self.db()
        try:
            rows = conn.execute("SELECT kind, message FROM events WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        finally:
            conn.close()
        return "\n".join(f"[{r[0]}] {r[1]}" for r in rows)

    def child_pid(self, job_id: str, number: int = -1) -> int | None:
        attempts = self.attempts(job_id)
        if not attempts:
            return None
        child = Path(attempts[number]["dir"]) / "child.json"
        if not child.exists():
            return None
        return int(json.loads(child.read_text())["pid"])

    def metrics_port(self) -> int:
        return int((self.root / "var" / "metrics.port").read_text())

    def mkd(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mkd", "--config", str(self.config), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def cleanup(self) -> list[int]:
        """Stop the daemon, then kill and report every process a run left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return kill_leaked(self.token)


def kill_leaked(token: str, grace: float = 3.0) -> list[int]:
    """Kill every process carrying `token` still there after `grace` seconds (a shim may be a few
    milliseconds from exiting when its job is recorded done); returns their pids."""
    deadline = time.monotonic() + grace
    while processes_with_token(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = processes_with_token(token)
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leaked


def new_token() -> str:
    return uuid.uuid4().hex


def write_to_terminal(config: pytest.Config, lines: list[str]) -> None:
    """Lines on the terminal whatever -s says (the suites' counts: kills, fuzz cases, jobs)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
