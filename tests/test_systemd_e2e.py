"""mkd as a systemd service under a real systemd: PID 1 of a systemd-nspawn container.

Prepare once (root; Debian packages systemd-container and debootstrap):
    deploy/nspawn/make-rootfs.sh CACHE_DIR
Run:
    MKD_NSPAWN_ROOTFS=CACHE_DIR/rootfs pytest -m slow -s tests/test_systemd_e2e.py

The container boots the cached rootfs with --volatile=overlay (changes go to a tmpfs
and vanish), with no network. The checkout under test is copied in and installed into
the rootfs' venv, then `mkd.client.install_service` installs the unit as on a host.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTFS = os.environ.get("MKD_NSPAWN_ROOTFS", "")
VENV_PYTHON = "/opt/mkd/venv/bin/python"
DROPIN = "/etc/systemd/system/mkd.service.d/e2e.conf"
TIMINGS: dict[str, float] = {}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ROOTFS, reason="set MKD_NSPAWN_ROOTFS to a rootfs made by deploy/nspawn/make-rootfs.sh"),
]


def job_file() -> str:
    """A job that runs `sleep 600` as a plain command, on no GPU."""
    return '[job]\nname = "e2e-sleep"\n[workload]\nkind = "command"\nargv = ["sleep", "600"]\n[resources]\ngpus = 0\n'


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Container:
    """A booted systemd-nspawn container, driven through nsenter."""

    def __init__(self, nspawn: subprocess.Popen[bytes], leader: int) -> None:
        self.nspawn = nspawn
        self.leader = leader

    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, input=text)

    def show(self, prop: str) -> str:
        return self.run("systemctl", "show", "mkd", "-p", prop, "--value").strip()

    def run_pids(self) -> set[int]:
        """The pids of `sleep` processes of user mkd: the runs of these tests."""
        out = self.run("pgrep", "-u", "mkd", "-x", "sleep", check=False)
        return {int(pid) for pid in out.split()}

    def journal(self) -> str:
        return self.run("journalctl", "-u", "mkd", "--no-pager", "-o", "short-precise")

    def reset(self) -> None:
        """Stop mkd and its runs, remove the test's drop-in: the next test starts clean."""
        self.run("systemctl", "stop", "mkd", check=False)
        for pid in self.run_pids():
            self.run("kill", "-KILL", str(pid), check=False)
        self.run("rm", "-f", DROPIN)
        self.run("systemctl", "daemon-reload")
        self.run("systemctl", "reset-failed", "mkd", check=False)


def _copy_checkout(dst: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build"
    )
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)


def _boot(rootfs: Path, src: Path, standin: Path, log: Path) -> Container:
    argv = ["systemd-nspawn", "--quiet", "--directory", str(rootfs), "--volatile=overlay", "--boot"]
    # No host systemd or machined to register with; no network needed or wanted.
    argv += ["--register=no", "--keep-unit", "--private-network", "--console=pipe"]
    argv += ["--machine", f"mkd-e2e-{os.getpid()}", f"--bind={src}:/opt/mkd/src", f"--bind-ro={standin}:/opt/mkd/e2e"]
    with log.open("wb") as out:
        nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def leader() -> int | None:
        found = subprocess.run(["pgrep", "-P", str(nspawn.pid), "-x", "systemd"], capture_output=True, text=True)
        return int(found.stdout.split()[0]) if found.stdout.split() else None

    try:
        container = Container(nspawn, wait_for(leader, 30, "systemd in the container"))

        def booted() -> bool:
            state = container.run("systemctl", "is-system-running", "--wait", check=False).strip()
            return state in ("running", "degraded")

        wait_for(booted, 60, "the container to finish booting")
    except BaseException:
        _poweroff(nspawn)
        raise
    return container


def _poweroff(nspawn: subprocess.Popen[bytes]) -> None:
    nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
    try:
        nspawn.wait(timeout=30)
    except subprocess.TimeoutExpired:
        nspawn.kill()
        nspawn.wait()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    rootfs = Path(ROOTFS)
    if os.geteuid() != 0:
        pytest.skip("systemd-nspawn needs root")
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        pytest.skip("systemd-nspawn or nsenter not installed (Debian packages systemd-container, util-linux)")
    assert (rootfs / ".mkd-rootfs").is_file() and (rootfs / "opt/mkd/venv.key").is_file(), (
        f"{rootfs} is not a prepared rootfs: run deploy/nspawn/make-rootfs.sh first"
    )
    base = tmp_path_factory.mktemp("e2e")
    started = time.monotonic()
    _copy_checkout(base / "src")
    (base / "e2e").mkdir()
    (base / "e2e" / "standin_mkd.py").write_text(STANDIN_MKD)
    container = _boot(rootfs, base / "src", base / "e2e", base / "console.log")
    TIMINGS["boot"] = time.monotonic() - started
    try:
        started = time.monotonic()
        # Editable: install-service reads deploy/systemd/mkd.service from the checkout.
        container.run(
            VENV_PYTHON, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "-e", "/opt/mkd/src", timeout=120,
        )  # fmt: skip
        print(container.run(VENV_PYTHON, "-m", "mkd.client.install_service", "--python", VENV_PYTHON))
        TIMINGS["install"] = time.monotonic() - started
        yield container
    finally:
        started = time.monotonic()
        _poweroff(container.nspawn)
        TIMINGS["poweroff"] = time.monotonic() - started
        print("e2e timings (s):", {name: round(seconds, 2) for name, seconds in TIMINGS.items()})


# A stand-in for `mkd run` that keeps the daemon's contract with systemd through
# mkd.sdnotify: on first start it starts a "run" (sleep) in its own session, as the
# shim does; later starts adopt it. SIGTERM: exit, leaving the run.
STANDIN_MKD = """\
import os, signal, subprocess, time
from pathlib import Path
from mkd.sdnotify import Notifier

stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
pidfile = Path("/var/lib/mkd/standin-run.pid")
try:
    pid = int(pidfile.read_text())
    os.kill(pid, 0)
    how = "adopted"
except (OSError, ValueError):
    pid = subprocess.Popen(["sleep", "600"], start_new_session=True).pid
    pidfile.write_text(str(pid))
    how = "started"
notifier = Notifier.from_env()
notifier.ready(f"stand-in: run {pid} {how}")
pings = 0
while not stop:
    now = time.monotonic()
    if notifier.watchdog_due(now):
        notifier.ping(now)
        pings += 1
        notifier.status(f"stand-in: run {pid} {how}, ping {pings}")
    time.sleep(0.05)
notifier.stopping("stand-in: stopping, run left running")
"""

STANDIN_DROPIN = f"""\
[Service]
ExecStart=
ExecStart={VENV_PYTHON} /opt/mkd/e2e/standin_mkd.py
WatchdogSec=2
TimeoutAbortSec=2
RestartSec=1
"""


@pytest.fixture
def clean(container: Container) -> Iterator[Container]:
    try:
        yield container
    finally:
        print(container.journal())
        container.reset()
        container.run("rm", "-f", "/var/lib/mkd/standin-run.pid")


def _watchdog_restarts(container: Container) -> None:
    """SIGSTOP the daemon: systemd's watchdog must kill it and start a new one."""
    main = container.show("MainPID")
    restarts = int(container.show("NRestarts"))
    started = time.monotonic()
    container.run("kill", "-STOP", main)

    def restarted() -> bool:
        return (
            int(container.show("NRestarts")) == restarts + 1
            and container.show("MainPID") not in ("0", main)
            and container.show("ActiveState") == "active"
        )

    wait_for(restarted, 60, "the watchdog to restart the stopped daemon")
    TIMINGS["watchdog_restart"] = time.monotonic() - started
    assert "Failed with result 'watchdog'" in container.journal()


@pytest.mark.timeout(300)
def test_unit_under_real_systemd(clean: Container) -> None:
    """The installed unit with a stand-in daemon: READY, STATUS, watchdog, runs outlive restarts."""
    container = clean
    unit = container.run("cat", "/etc/systemd/system/mkd.service")
    assert f"ExecStart={VENV_PYTHON} -m mkd --config /etc/mkd/mkd.toml run" in unit
    container.write(DROPIN, STANDIN_DROPIN)
    container.run("systemctl", "daemon-reload")

    container.run("systemctl", "start", "mkd")  # Type=notify: returns after READY=1
    status = container.run("systemctl", "status", "mkd", "--no-pager")
    print(status)
    assert "active (running)" in status
    assert 'Status: "stand-in: run' in status
    assert container.show("WatchdogUSec") == "2s"
    [run] = container.run_pids()
    container.run("nsenter", "-t", str(run), "-m", "sh", "-c", "echo kept > /tmp/e2e-run-file")

    container.run("systemctl", "restart", "mkd")
    assert container.run_pids() == {run}
    assert f"run {run} adopted" in container.show("StatusText")
    # The run's /tmp survives the restart (it would not with PrivateTmp=yes).
    assert container.run("nsenter", "-t", str(run), "-m", "cat", "/tmp/e2e-run-file") == "kept\n"

    _watchdog_restarts(container)
    assert container.run_pids() == {run}

    container.run("systemctl", "stop", "mkd")
    assert container.show("ActiveState") == "inactive"
    assert container.run_pids() == {run}, "systemctl stop must leave runs running"


@pytest.mark.timeout(300)
def test_daemon_keeps_runs_across_restart_and_watchdog(clean: Container) -> None:
    """The real `mkd run`: a job's run keeps its pid through a restart and a watchdog kill."""
    if importlib.util.find_spec("mkd.__main__") is None:
        pytest.skip("`python -m mkd run` does not exist yet (no mkd/__main__.py)")
    container = clean
    container.write(DROPIN, "[Service]\nWatchdogSec=3\nTimeoutAbortSec=2\nRestartSec=1\n")
    container.run("systemctl", "daemon-reload")

    started = time.monotonic()
    container.run("systemctl", "start", "mkd")
    TIMINGS["daemon_ready"] = time.monotonic() - started
    status = container.run("systemctl", "status", "mkd", "--no-pager")
    print(status)
    assert 'Status: "' in status

    idle_status = container.show("StatusText")
    # Written beside incoming/ and renamed in, as a submitter would, so intake never
    # sees half a file. Owned by root, whom intake accepts.
    container.write("/var/lib/mkd/jobs/.e2e-sleep.toml", job_file())
    container.run("mv", "/var/lib/mkd/jobs/.e2e-sleep.toml", "/var/lib/mkd/jobs/incoming/e2e-sleep.toml")
    [run] = wait_for(container.run_pids, 60, "the job's run (sleep 600) to start")
    wait_for(lambda: container.show("StatusText") != idle_status, 10, "STATUS= to show the running job")
    # With NotifyAccess=main systemd would drop a run's messages; they must not be able to try.
    environ = container.run("cat", f"/proc/{run}/environ").split("\0")
    assert not [v for v in environ if v.startswith(("NOTIFY_SOCKET=", "WATCHDOG_"))], environ

    container.run("systemctl", "restart", "mkd")
    _stays(lambda: container.run_pids() == {run}, 3, "the run to keep its pid, alone, after a restart")

    main = container.show("MainPID")
    container.run("systemctl", "reload", "mkd")  # SIGHUP: reload config, same process
    wait_for(lambda: container.show("ActiveState") == "active", 10, "mkd active after a reload")
    assert container.show("MainPID") == main

    _watchdog_restarts(container)
    _stays(lambda: container.run_pids() == {run}, 3, "the run to keep its pid after a watchdog restart")

    container.run(VENV_PYTHON, "-m", "mkd", "--config", "/etc/mkd/mkd.toml", "shutdown", "--stop-runs")
    wait_for(lambda: not container.run_pids(), 90, "mkd shutdown --stop-runs to stop the run")
    wait_for(lambda: container.show("ActiveState") in ("inactive", "failed"), 30, "mkd to exit")
    assert container.show("Result") == "success", "a clean shutdown must not count as a failure"


def _stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Holds for the whole window: for things that must NOT happen (a duplicate run, a kill)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"expected {what}"
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_journal_gets_mkds_priorities(clean: Container) -> None:
    """journalctl -p warning shows a warning the real `mkd run` logged, and not its info lines;
    no line carries a second timestamp (mkd.logsetup under JOURNAL_STREAM)."""
    if importlib.util.find_spec("mkd.__main__") is None:
        pytest.skip("`python -m mkd run` does not exist yet (no mkd/__main__.py)")
    container = clean
    config = "/etc/mkd/mkd.toml"
    original = container.run("cat", config)
    try:
        container.run("systemctl", "start", "mkd")
        # A changed [metrics] table on SIGHUP: mkd warns that it takes effect at the next restart.
        container.write(config, original + "\n[metrics]\nport = 19411\n")
        container.run("systemctl", "reload", "mkd")

        def warnings() -> str:
            return container.run("journalctl", "-u", "mkd", "-p", "warning", "--no-pager", "-o", "cat")

        wait_for(lambda: "takes effect at the next restart" in warnings(), 30, "mkd's warning in journalctl -p warning")
        assert "mkd ready" not in warnings(), "info lines are not warnings"
        everything = container.run("journalctl", "-u", "mkd", "--no-pager", "-o", "cat")
        assert "mkd.daemon: mkd ready" in everything
        assert not [line for line in everything.splitlines() if line[:4].isdigit()], "a second timestamp"
        record = container.run(
            "journalctl", "-u", "mkd", "--no-pager", "-o", "json", "--output-fields=PRIORITY,MESSAGE", "-p", "warning"
        )  # fmt: skip
        assert '"PRIORITY":"4"' in record.replace(" ", "")
    finally:
        container.write(config, original)


@pytest.mark.timeout(300)
def test_daemon_runs_a_job_under_the_hardening_drop_in(clean: Container) -> None:
    """deploy/systemd/hardening.conf (system call filter, closed device policy, private mounts):
    the real `mkd run` starts, takes a job in and runs it, and a restart keeps the run."""
    if importlib.util.find_spec("mkd.__main__") is None:
        pytest.skip("`python -m mkd run` does not exist yet (no mkd/__main__.py)")
    container = clean
    container.write(DROPIN, (REPO / "deploy" / "systemd" / "hardening.conf").read_text())
    container.run("systemctl", "daemon-reload")
    assert container.show("SystemCallFilter"), "the allow list is in force"
    assert container.show("DevicePolicy") == "closed" and container.show("PrivateMounts") == "yes"

    container.run("systemctl", "start", "mkd")
    assert container.show("ActiveState") == "active"
    container.write("/var/lib/mkd/jobs/.e2e-sleep.toml", job_file())
    container.run("mv", "/var/lib/mkd/jobs/.e2e-sleep.toml", "/var/lib/mkd/jobs/incoming/e2e-sleep.toml")
    [run] = wait_for(container.run_pids, 60, "the job's run (sleep 600) to start under the filter")
    container.run("systemctl", "restart", "mkd")
    _stays(lambda: container.run_pids() == {run}, 3, "the run to keep its pid after a restart")
    journal = container.journal()
    assert "Operation not permitted" not in journal and "Bad system call" not in journal, journal
    container.run(VENV_PYTHON, "-m", "mkd", "--config", "/etc/mkd/mkd.toml", "shutdown", "--stop-runs")
    wait_for(lambda: not container.run_pids(), 90, "mkd shutdown --stop-runs to stop the run")
