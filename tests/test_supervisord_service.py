"""The real mkd under a real supervisord, configured by deploy/supervisord/.

The shipped files are copied into the test's folder with host paths moved there (the
socket, pid file, logs, the include), mkd's command pointed at this interpreter and a
test daemon config, and `user=` dropped. Everything else (autorestart=unexpected,
exitcodes=0, stopsignal, stopasgroup/killasgroup=false, ...) is as shipped. Checked:
`supervisorctl restart mkd` keeps a run alive (same pid) and the new mkd re-adopts it;
`mkd shutdown --stop-runs` stops the run and mkd, and supervisord leaves mkd stopped.

supervisord gets the home's MKD_TEST_TOKEN in its environment, so mkd and the runs
inherit it and the `home` fixture fails the test on any process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

from tests.harness import Home, processes_with_token, wait_for

REPO = Path(__file__).resolve().parent.parent
SUPERVISORD_DIR = REPO / "deploy" / "supervisord"
SLEEPER = '[workload]\nkind = "command"\nargv = ["sleep", "600"]\n'

pytestmark = pytest.mark.slow


def rewrite(text: str, values: dict[str, str | None]) -> str:
    """Set (or, for None, drop) each ``key=`` line; each key must be there exactly once."""
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
        assert len(pattern.findall(text)) == 1, f"{key}= not found exactly once"
        text = pattern.sub("" if value is None else f"{key}={value}", text)
    return text


def write_configs(home: Home, folder: Path) -> Path:
    """deploy/supervisord/*.conf, moved into `folder`, running the real mkd on `home`."""
    (folder / "conf.d").mkdir(parents=True)
    main = rewrite(
        (SUPERVISORD_DIR / "supervisord.conf").read_text(),
        {
            "file": f"{folder}/sup.sock",
            "pidfile": f"{folder}/supervisord.pid",
            "logfile": f"{folder}/supervisord.log",
            "logfile_maxbytes": "1MB",
            "childlogdir": str(folder),
            "serverurl": f"unix://{folder}/sup.sock",
            "files": f"{folder}/conf.d/*.conf",
            "user": "root" if os.geteuid() == 0 else None,
        },
    )
    program = rewrite(
        (SUPERVISORD_DIR / "mkd.conf").read_text(),
        {
            "command": f"{sys.executable} -m mkd --config {home.config} run",
            "directory": str(home.root),
            "user": None,  # the test's own user
            "startsecs": "1",  # as shipped (5) would cost 10 s of waiting for RUNNING
            "stdout_logfile": str(home.log),
            "stdout_logfile_maxbytes": "1MB",
        },
    )
    (folder / "conf.d" / "mkd.conf").write_text(program)
    conf = folder / "supervisord.conf"
    conf.write_text(main)
    return conf


@dataclass
class Supervisord:
    conf: Path
    sock: Path
    proc: subprocess.Popen[bytes]

    def rpc(self, method: str, *args: Any) -> Any:
        # A new connection per call: a failed call leaves SupervisorTransport's one
        # unusable. The transport has no timeout of its own.
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        with xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport) as proxy:
            return getattr(proxy.supervisor, method)(*args)

    def info(self) -> dict[str, Any]:
        return dict(self.rpc("getProcessInfo", "mkd"))

    def ctl(self, *args: str) -> str:
        """supervisorctl, as an operator runs it."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    def wait_running(self, other_than: int = 0) -> int:
        """mkd's pid once supervisord says RUNNING (a new pid, if `other_than` is given)."""

        def running() -> int | None:
            with contextlib.suppress(OSError, xmlrpc.client.Fault):
                info = self.info()
                if info["statename"] == "RUNNING" and info["pid"] != other_than:
                    return int(info["pid"])
            return None

        return int(wait_for(running, 20, "mkd RUNNING under supervisord", every=0.05))


@pytest.fixture
def supervisord(home: Home, tmp_path: Path) -> Iterator[Supervisord]:
    folder = tmp_path / "supervisord"
    conf = write_configs(home, folder)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        env=home.env,  # MKD_TEST_TOKEN: mkd and its runs inherit it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Supervisord(conf, folder / "sup.sock", proc)
    finally:
        # Runs are not supervisord's children (mkd's shims are in their own sessions);
        # the home fixture kills and reports any that are left.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def sleep_600_processes(home: Home) -> list[int]:
    return [
        pid
        for pid in processes_with_token(home.token)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"600"]
    ]


def test_restart_keeps_the_run_and_stop_runs_ends_all(home: Home, supervisord: Supervisord) -> None:
    first = supervisord.wait_running()
    wait_for(lambda: (home.root / "var" / "metrics.port").exists(), 20, "mkd to start up")

    home.drop("sleeper.toml", SLEEPER)
    home.wait_state("sleeper", "running")
    attempts = home.root / "runs" / "sleeper" / "attempts"
    [child] = wait_for(lambda: list(attempts.glob("01-*/child.json")), 10, "runs/sleeper/attempts/01-*/child.json")
    run = int(json.loads(child.read_text())["pid"])
    assert alive(run)

    # Restart, keep runs: mkd alone gets SIGTERM; the run is in its own session.
    out = supervisord.ctl("restart", "mkd")
    assert "mkd: stopped" in out and "mkd: started" in out, out
    second = supervisord.wait_running(other_than=first)
    assert not alive(first)
    assert alive(run), "supervisorctl restart mkd killed the run"
    wait_for(lambda: "re-adopted" in home.mkd("status", "sleeper").stdout, 10, "the new mkd to re-adopt the run")
    status = home.mkd("status", "sleeper").stdout
    assert f"run pid {run}" in status, status
    assert home.state("sleeper") == "running"
    assert home.child_pid("sleeper") == run
    assert len(home.attempts("sleeper")) == 1
    assert sleep_600_processes(home) == [run], "a second copy of the run"

    # Stop everything: the run is stopped, mkd exits 0, and supervisord leaves it stopped.
    assert home.mkd("shutdown", "--stop-runs").returncode == 0
    wait_for(lambda: supervisord.info()["statename"] == "EXITED", 20, "mkd to exit")
    info = supervisord.info()
    assert info["exitstatus"] == 0, info
    assert not alive(second)
    assert not alive(run), "mkd shutdown --stop-runs left the run"
    assert home.state("sleeper") == "cancelled"
    time.sleep(2.5)  # supervisord's loop ticks once a second: give a wrong restart its chance
    info = supervisord.info()
    assert (info["statename"], info["pid"]) == ("EXITED", 0), info
    log = (supervisord.conf.parent / "supervisord.log").read_text()
    assert "exited: mkd (exit status 0; expected)" in log, log
    assert re.match(r"mkd\s+EXITED", supervisord.ctl("status", "mkd")), supervisord.ctl("status", "mkd")
