"""The per-attempt shim (mkd.shim) through mkd.engine.Engine, without a daemon.

The shim starts runs with os.posix_spawn, not subprocess, and runs under python -S: these
tests pin what the run gets (its own session, default signals, nothing blocked, stdin from
/dev/null, stdout and stderr in the console log, cwd, exactly its environment, no
inherited descriptors, the run's PATH), the records it writes, and how a start fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mkd.engine import _PACKAGE_PARENT, Engine, ExitRecord, LaunchSpec, ShimHandle, shim_argv, shim_env
from mkd.procs import find_by_argv_tail, start_ticks
from mkd.shim import rotate
from tests.harness import wait_for

PROBE = """
import json, os
print(json.dumps({"cwd": os.getcwd(), "env": dict(os.environ), "stdin": os.readlink("/proc/self/fd/0"),
                  "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}), flush=True)
print("to stderr", file=os.sys.stderr, flush=True)
"""


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, token: str) -> Iterator[Engine]:
    monkeypatch.setenv("MKD_TEST_TOKEN", token)  # shims carry it: the token fixture finds leftovers
    eng = Engine()
    yield eng
    eng.close()


def run_env(token: str, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "MKD_TEST_TOKEN": token, **extra}


def launch(
    engine: Engine, folder: Path, argv: list[str], env: dict[str, str], cwd: str | None = None
) -> tuple[Path, ShimHandle]:
    attempt = folder / "attempt"
    spec = LaunchSpec(argv, env, cwd, attempt / "console.log", 2.0, 0, 3)
    return attempt, engine.launch(attempt, spec)


def finish(engine: Engine, attempt: Path, handle: ShimHandle, timeout: float = 15.0) -> ExitRecord:
    record: ExitRecord = wait_for(lambda: engine.poll(attempt, handle), timeout, "exit.json")
    wait_for(lambda: not engine.shim_alive(handle), 5, "the shim to exit")
    return record


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def signal_bits(status: str, key: str) -> int:
    line = next(line for line in status.splitlines() if line.startswith(f"{key}:"))
    return int(line.split()[1], 16)


def test_the_run_gets_its_cwd_exact_env_devnull_stdin_the_console_and_no_inherited_fd(
    engine: Engine, tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MKD_NOT_FOR_THE_RUN", "1")
    work = tmp_path / "work"
    work.mkdir()
    with open(tmp_path / "held", "wb") as held:
        os.dup2(held.fileno(), 57)  # inheritable: reaches the shim through posix_spawn
        try:
            attempt, handle = launch(
                engine, tmp_path, [sys.executable, "-c", PROBE], run_env(token, A="b c"), str(work)
            )
        finally:
            os.close(57)
    record = finish(engine, attempt, handle)
    assert (record.returncode, record.signal, record.spawn_error) == (0, None, None)
    first, second = (attempt / "console.log").read_text().splitlines()
    report = json.loads(first)
    assert second == "to stderr"
    assert report["cwd"] == str(work)
    assert report["stdin"] == "/dev/null"
    run_id = read(attempt / "launch.json")["run_id"]  # the one variable the shim adds: how escapees are found
    assert {k: v for k, v in report["env"].items() if not k.startswith("LC_")} == run_env(
        token, A="b c", MKD_RUN_ID=run_id
    )
    assert 57 not in report["fds"]
    assert len(report["fds"]) <= 4, report["fds"]  # 0, 1, 2 and the listing's own


def test_the_run_has_its_own_session_default_signals_and_nothing_blocked(
    engine: Engine, tmp_path: Path, token: str
) -> None:
    ignored = (signal.SIGQUIT, signal.SIGHUP, signal.SIGINT)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:  # the shim inherits all of this from its parent
        attempt, handle = launch(engine, tmp_path, ["cat", "/proc/self/stat", "/proc/self/status"], run_env(token))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    finish(engine, attempt, handle)
    stat, status = (attempt / "console.log").read_text().split("\n", 1)
    fields = stat.rsplit(")", 1)[1].split()
    pid, pgid, session = int(stat.split()[0]), int(fields[2]), int(fields[3])
    child = read(attempt / "child.json")
    assert pid == child["pid"] == child["pgid"] == pgid == session
    assert signal_bits(status, "SigBlk") == 0
    default = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ)
    assert not [sig for sig in default if signal_bits(status, "SigIgn") & (1 << (sig - 1))]


def test_records_name_the_processes_as_mkd_procs_does_and_the_shim_is_found_by_its_argv(
    engine: Engine, tmp_path: Path, token: str
) -> None:
    attempt, handle = launch(engine, tmp_path, ["sleep", "30"], run_env(token))
    child = wait_for(lambda: engine.child(attempt), 10, "child.json")
    assert child.start_ticks == start_ticks(child.pid) is not None
    shim = read(attempt / "shim.json")
    assert (shim["pid"], shim["start_ticks"]) == (handle.pid, handle.start_ticks)
    assert find_by_argv_tail(["-m", "mkd.shim", str(attempt)]) == [handle.pid]
    engine.stop(handle, attempt)
    record = finish(engine, attempt, handle)
    assert record.stop_requested and record.signal == signal.SIGTERM and record.returncode is None
    assert read(attempt / "exit.json")["root_exit_at"] is not None


@pytest.mark.parametrize(("script", "returncode", "sig"), [("exit 3", 3, None), ("kill -9 $$", None, 9)])
def test_the_real_exit_status(
    engine: Engine, tmp_path: Path, token: str, script: str, returncode: int | None, sig: int | None
) -> None:
    attempt, handle = launch(engine, tmp_path, ["sh", "-c", script], run_env(token))
    record = finish(engine, attempt, handle)
    assert (record.returncode, record.signal, record.spawn_error) == (returncode, sig, None)
    assert not record.stop_requested


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_bare_program_name_is_looked_up_on_the_runs_path(engine: Engine, tmp_path: Path, token: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    executable(second / "mkd-probe-tool", "#!/bin/sh\necho found on the run PATH\n")
    path = f"{first}:{second}:/usr/bin:/bin"
    attempt, handle = launch(engine, tmp_path, ["mkd-probe-tool"], run_env(token, PATH=path))
    assert finish(engine, attempt, handle).returncode == 0
    assert (attempt / "console.log").read_text() == "found on the run PATH\n"


def test_a_relative_program_path_is_relative_to_the_runs_cwd(engine: Engine, tmp_path: Path, token: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    executable(work / "tool.sh", "#!/bin/sh\npwd\n")
    attempt, handle = launch(engine, tmp_path, ["./tool.sh"], run_env(token), cwd=str(work))
    assert finish(engine, attempt, handle).returncode == 0
    assert (attempt / "console.log").read_text() == f"{work}\n"


def test_start_failures_are_recorded_as_subprocess_words_them(engine: Engine, tmp_path: Path, token: str) -> None:
    cases = {
        "missing": (["mkd-no-such-program"], None, "[Errno 2] No such file or directory: 'mkd-no-such-program'"),
        "no cwd": (["true"], str(tmp_path / "gone"), f"[Errno 2] No such file or directory: '{tmp_path / 'gone'}'"),
        "not executable": (["mkd-probe-tool"], None, "[Errno 13] Permission denied: 'mkd-probe-tool'"),
    }
    folder = tmp_path / "bin"
    folder.mkdir()
    executable(folder / "mkd-probe-tool", "#!/bin/sh\n", 0o644)  # EACCES beats the ENOENT further on
    for name, (argv, cwd, message) in cases.items():
        attempt, handle = launch(engine, tmp_path / name, argv, run_env(token, PATH=f"{folder}:/usr/bin:/bin"), cwd)
        record = finish(engine, attempt, handle)
        assert record.spawn_error == message, name
        assert not (attempt / "child.json").exists()


def test_shim_command_line_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = shim_argv("/venv/bin/python", Path("/runs/a/1"))
    assert argv[0] == "/venv/bin/python" and "-S" in argv and argv[-3:] == ["-m", "mkd.shim", "/runs/a/1"]
    env = shim_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "PYTHONPATH": "/extra", "HOME": "/h"})
    assert env == {"PYTHONPATH": f"{_PACKAGE_PARENT}{os.pathsep}/extra", "HOME": "/h"}
    assert shim_env({})["PYTHONPATH"] == _PACKAGE_PARENT
    assert (Path(_PACKAGE_PARENT) / "mkd" / "shim.py").is_file()


def test_rotate_copies_then_truncates_and_shifts_the_backups(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("x" * 10)
    assert not rotate(console, 10, 2) and not rotate(console, 0, 2)
    assert not rotate(tmp_path / "absent.log", 1, 2)
    for text in ("first" * 3, "second" * 3, "third" * 3):
        console.write_text(text)
        assert rotate(console, 10, 2)
        assert console.read_text() == ""
    assert (tmp_path / "console.log.1").read_text() == "third" * 3
    assert (tmp_path / "console.log.2").read_text() == "second" * 3
    assert not (tmp_path / "console.log.3").exists()
    console.write_text("y" * 11)
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "console.log.1").unlink()
    assert rotate(str(console), 10, 0)
    assert console.read_text() == "" and not (tmp_path / "console.log.1").exists()
