"""The deploy files, checked by the tools that read them: systemd-analyze and supervisord."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions
from supervisor.xmlrpc import SupervisorTransport

from mkd.client.install_service import render_unit, unit_template

REPO = Path(__file__).resolve().parent.parent
SUPERVISORD_DIR = REPO / "deploy" / "supervisord"
MAX_EXPOSURE = 4.5

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package: systemd)",
)


@pytest.fixture
def unit_file(tmp_path: Path) -> Path:
    """The unit as install-service writes it, with ExecStart at this interpreter (verify needs it to exist)."""
    path = tmp_path / "mkd.service"
    path.write_text(render_unit(unit_template(), python=sys.executable, user="mkd", group="mkd-submit"))
    return path


@needs_systemd_analyze
def test_systemd_analyze_verify_says_nothing(unit_file: Path) -> None:
    # verify exits 0 on "Unknown key ..., ignoring" and similar: any output is a failure.
    result = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path, unit_file: Path) -> None:
    # The check above is only worth something if verify speaks up on a broken unit.
    broken = tmp_path / "broken" / "mkd.service"
    broken.parent.mkdir()
    broken.write_text(unit_file.read_text().replace("KillMode=process", "KillMod=process"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "KillMod" in result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_exposure(unit_file: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for mkd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


HARDENING = REPO / "deploy" / "systemd" / "hardening.conf"
MAX_HARDENED_EXPOSURE = 2.0


@pytest.fixture
def hardened_unit(tmp_path: Path, unit_file: Path) -> Path:
    """The unit with deploy/systemd/hardening.conf applied (a drop-in's [Service] lines come after the unit's)."""
    path = tmp_path / "hardened" / "mkd.service"
    path.parent.mkdir()
    path.write_text(unit_file.read_text() + "\n" + HARDENING.read_text())
    return path


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for mkd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd_analyze
def test_hardening_drop_in_verifies_and_lowers_the_exposure(hardened_unit: Path, unit_file: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(hardened_unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert exposure(hardened_unit) <= MAX_HARDENED_EXPOSURE < exposure(unit_file)


def test_hardening_drop_in_allows_the_nvidia_devices() -> None:
    lines = [line.strip() for line in HARDENING.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert lines[0] == "[Service]" and "DevicePolicy=closed" in lines
    allowed = {line.split("=", 1)[1] for line in lines if line.startswith("DeviceAllow=")}
    for device in ("char-nvidia-frontend rw", "char-nvidia-uvm rw", "/dev/nvidiactl rw", "/dev/nvidia-uvm rw"):
        assert device in allowed
    assert not [line for line in lines[1:] if line.startswith("[")], "one [Service] section only"


def test_unit_keeps_the_signal_contract() -> None:
    settings: dict[str, str] = {}
    for line in unit_template().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, value)
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"  # runs outlive a restart
    assert "ExecStop" not in settings  # stop and restart keep runs
    assert "PrivateDevices" not in settings  # GPUs
    assert "MemoryDenyWriteExecute" not in settings  # CUDA/Warp JIT


# -- supervisord --------------------------------------------------------------------------


def _rewrite(text: str, values: dict[str, str | None]) -> str:
    """Set (or, for None, drop) each ``key=`` line; each key must be there exactly once."""
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
        assert len(pattern.findall(text)) == 1, f"{key}= not found exactly once"
        text = pattern.sub("" if value is None else f"{key}={value}", text)
    return text


# Stands in for mkd: starts a "run" in its own session (as mkd's shim does), records
# both pids, and exits 0 on SIGTERM leaving the run alive.
DUMMY_MKD = """\
import os, signal, subprocess, sys
run = subprocess.Popen(["sleep", "600"], start_new_session=True)
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()} {run.pid}\\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""


def _container_config(tmp_path: Path) -> Path:
    """deploy/supervisord/*.conf with host paths moved into tmp_path and mkd replaced by DUMMY_MKD."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "dummy_mkd.py").write_text(DUMMY_MKD)
    main = _rewrite(
        (SUPERVISORD_DIR / "supervisord.conf").read_text(),
        {
            "file": f"{tmp_path}/sup.sock",
            "pidfile": f"{tmp_path}/supervisord.pid",
            "logfile": f"{tmp_path}/supervisord.log",
            "logfile_maxbytes": "1MB",
            "childlogdir": str(tmp_path),
            "serverurl": f"unix://{tmp_path}/sup.sock",
            "files": f"{tmp_path}/conf.d/*.conf",
            "user": "root" if os.geteuid() == 0 else None,
        },
    )
    program = _rewrite(
        (SUPERVISORD_DIR / "mkd.conf").read_text(),
        {
            "command": f"{sys.executable} {tmp_path}/dummy_mkd.py {tmp_path}/pids",
            "directory": str(tmp_path),
            "user": None,  # the test's own user
            "startsecs": "0",  # RUNNING at once, not after 5 s
            "stdout_logfile": f"{tmp_path}/mkd.log",
            "stdout_logfile_maxbytes": "1MB",
        },
    )
    (tmp_path / "conf.d" / "mkd.conf").write_text(program)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(main)
    return conf


def test_supervisord_config_parses(tmp_path: Path) -> None:
    options = ServerOptions()
    options.configfile = str(_container_config(tmp_path))
    options.process_config(do_usage=False)
    [group] = options.process_group_configs
    [mkd] = group.process_configs
    assert mkd.name == "mkd"
    assert mkd.stopsignal == signal.SIGTERM
    assert (mkd.stopasgroup, mkd.killasgroup) == (False, False)
    assert mkd.autorestart is RestartWhenExitUnexpected
    assert mkd.exitcodes == [0]
    assert mkd.stopwaitsecs == 30
    assert mkd.umask == 0o027
    [server] = options.configroot.supervisord.server_configs
    assert server["family"] == socket.AF_UNIX  # never an inet_http_server
    assert server["chmod"] == 0o700


def test_supervisord_files_have_no_inet_server() -> None:
    for conf in SUPERVISORD_DIR.glob("*.conf"):
        assert not re.search(r"^\[inet_http_server\]", conf.read_text(), re.MULTILINE), conf


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, xmlrpc.client.Fault):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _call(sock: Path, method: str, *args: Any) -> Any:
    # A new connection per call: SupervisorTransport keeps one that a failed call
    # (supervisord not up yet) leaves unusable.
    transport = SupervisorTransport(None, None, serverurl=f"unix://{sock}")
    with xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport) as proxy:
        return getattr(proxy.supervisor, method)(*args)


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[tuple[Callable[..., Any], Path]]:
    conf = _container_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield (lambda method, *args: _call(tmp_path / "sup.sock", method, *args)), tmp_path / "pids"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        pids = (tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []
        for pid in map(int, pids):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_supervisord_restart_of_mkd_keeps_the_run(supervisord: tuple[Callable[..., Any], Path]) -> None:
    rpc, pids = supervisord

    def state() -> str:
        return str(rpc("getProcessInfo", "mkd")["statename"])

    _wait_for(lambda: state() == "RUNNING" and pids.exists(), 15, "mkd RUNNING under supervisord")
    [first_mkd, run] = map(int, pids.read_text().split())

    rpc("stopProcess", "mkd", True)
    assert state() == "STOPPED"
    assert not _alive(first_mkd)
    assert _alive(run), "stopping mkd killed the run"

    rpc("startProcess", "mkd", True)
    _wait_for(lambda: len(pids.read_text().split()) == 4, 15, "the second mkd")
    assert _alive(run), "restarting mkd killed the run"
