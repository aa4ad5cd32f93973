"""Hostile job files dropped into a real `mkd run`: the daemon never stops (its PID never
changes), every such file ends in jobs/rejected/ beside a `.error` that names its problem
(and its original name, when it had to be kept under another), and a valid job dropped after
them still runs to success.

A name near the filesystem's limit used to stop the daemon for good: the claim's rename into
var/claimed/TOKEN__NAME raised ENAMETOOLONG, and every restart died on the same file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mkd.admission import Verdict, display_name
from mkd.config import DaemonConfig, Layout
from mkd.intake import Intake
from mkd.store import Store
from tests.harness import Home, wait_for

JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'
BAD = JOB + "bogus = 1\n"
ROOT = os.geteuid() == 0


@dataclass
class Hostile:
    name: str | bytes  # bytes: a name that is not UTF-8
    make: Callable[[Path], None]  # creates the file at the given path
    problem: str  # what its .error must say

    @property
    def text_name(self) -> str:
        return os.fsdecode(self.name)


def _write(content: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        tmp = path.with_name("." + "tmp-" + str(time.monotonic_ns()) + ".tmp")
        tmp.write_bytes(content)
        os.rename(tmp, path)

    return make


def _link(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)

    return make


def _owned_by(uid: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        tmp = path.with_name(".owned.tmp")
        tmp.write_text(JOB)
        os.chown(tmp, uid, uid)
        os.rename(tmp, path)

    return make


def _mode(mode: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        tmp = path.with_name(".mode.tmp")
        tmp.write_text(JOB)
        os.chmod(tmp, mode)
        os.rename(tmp, path)

    return make


def _mkdir(path: Path) -> None:
    path.mkdir()
    (path / "inside.toml").write_text(JOB)


def hostile_files(tmp: Path) -> list[Hostile]:
    (tmp / "adir").mkdir(exist_ok=True)
    cases = [
        Hostile("a" * 240 + ".toml", _write(JOB.encode()), "over the 128-byte limit"),
        Hostile("b" * 250 + ".toml", _write(BAD.encode()), "over the 128-byte limit"),  # 255 bytes: the most a name has
        Hostile("new\nline.toml", _write(JOB.encode()), "control character (U+000A"),
        Hostile("tab\there.toml", _write(JOB.encode()), "control character (U+0009"),
        Hostile("bell\x07.toml", _write(JOB.encode()), "control character (U+0007"),
        Hostile("invoice\u202eftp.toml", _write(JOB.encode()), "U+202E (right-to-left override)"),
        Hostile("zero\u200bwidth.toml", _write(JOB.encode()), "U+200B (zero width space)"),
        Hostile(b"latin\xe9.toml", _write(JOB.encode()), "the file name is not UTF-8"),
        Hostile("fifo.toml", lambda p: os.mkfifo(p), "is not a regular file"),
        Hostile("zero.toml", _link("/dev/zero"), "is a symbolic link"),
        Hostile("dirlink.toml", _link(str(tmp / "adir")), "is a symbolic link"),
        Hostile("dangling.toml", _link(str(tmp / "nothing-here")), "is a symbolic link"),
        Hostile("folder.toml", _mkdir, "is not a regular file"),
        Hostile("huge.toml", _sparse(10 * 2**30), "10737418240 bytes is over the 262144-byte limit"),
        Hostile("content-latin1.toml", _write(JOB.encode() + b'description = "caf\xe9"\n'), "not UTF-8 text"),
        Hostile("nul.toml", _write(JOB.encode() + b"\x00\n"), "not valid TOML"),
        Hostile("num-envs.toml", _write(b'[workload]\nkind = "mimickit"\nnum_envs = 1e30\n'), "between 1 and 1048576"),
        Hostile("timeout.toml", _write((JOB + '[watch]\nstall_timeout = "99999999999h"\n').encode()), "1s and 30d"),
        Hostile("empty.toml", _write(b""), "workload: required key is missing"),
    ]
    if ROOT:
        cases.append(Hostile("stranger.toml", _owned_by(4242), "owned by uid 4242, who may not submit jobs"))
    else:
        cases.append(Hostile("locked.toml", _mode(0), "mkd cannot read it (Permission denied)"))
    return cases


def _errors(home: Home) -> dict[str, str]:
    rejected = home.root / "jobs" / "rejected"
    return {p.name: p.read_text() for p in rejected.iterdir() if p.name.endswith(".error")}


def _error_of(home: Home, case: Hostile) -> str:
    """The .error whose first line names this file; its rejected file must be beside it."""
    shown = display_name(case.text_name)
    for error_name, text in _errors(home).items():
        if text.startswith(f"{shown}:"):
            kept = home.root / "jobs" / "rejected" / error_name[: -len(".error")]
            assert os.path.lexists(kept), f"{error_name} without its file"
            return text
    raise AssertionError(f"no .error for {shown!r}; found {sorted(_errors(home))}")


def _candidates(incoming: Path) -> list[str]:
    return [os.fsdecode(n) for n in os.listdir(os.fsencode(incoming)) if not n.startswith(b".")]


def _daemon_pid(home: Home) -> int:
    return int((home.root / "var" / "mkd.lock").read_text().strip())


def _vanishing(incoming: Path, stop: threading.Event, counts: dict[str, int]) -> None:
    """Files that appear and are gone again a moment later, as the intake claims them."""
    n = 0
    while not stop.is_set():
        path = incoming / f"vanish{n:04d}.toml"
        path.write_text(JOB if n % 2 else BAD)
        time.sleep(0.001 * (n % 7))
        try:
            path.unlink()
            counts["removed"] += 1
        except FileNotFoundError:
            counts["taken"] += 1
        n += 1


@pytest.mark.timeout(180)
def test_hostile_files_never_stop_the_daemon(home: Home, tmp_path: Path) -> None:
    home.start()
    assert home.proc is not None
    pid = home.proc.pid
    assert _daemon_pid(home) == pid
    cases = hostile_files(tmp_path)
    stop = threading.Event()
    counts = {"removed": 0, "taken": 0}
    racer = threading.Thread(target=_vanishing, args=(home.incoming, stop, counts))
    racer.start()
    try:
        for case in cases:
            case.make(Path(os.fsdecode(os.fsencode(home.incoming) + b"/" + os.fsencode(case.name))))
        time.sleep(1.0)
    finally:
        stop.set()
        racer.join()

    def settled() -> bool:
        return not [n for n in _candidates(home.incoming) if not n.startswith("vanish")] or home.proc_exited()

    wait_for(settled, 30, "every hostile file to leave incoming")
    assert not home.proc_exited(), f"the daemon died:\n{home.log.read_text()[-3000:]}"
    wait_for(lambda: not _candidates(home.incoming), 15, "the vanishing files' survivors to be taken")
    for case in cases:
        text = _error_of(home, case)
        assert case.problem in text, f"{case.text_name!r}: {text}"
        if display_name(case.text_name) != case.text_name:
            assert f"(its own name: {display_name(case.text_name, full=True)})" in text, text
    rejected = home.root / "jobs" / "rejected"
    assert stat.S_ISFIFO(os.lstat(rejected / "fifo.toml").st_mode), "the FIFO was moved, never opened"
    assert os.readlink(rejected / "zero.toml") == "/dev/zero", "the link was moved, not followed"
    assert (rejected / "folder.toml" / "inside.toml").exists()
    assert (tmp_path / "adir").is_dir(), "a link's target is untouched"

    for name, says in (("fifo", "is not a regular file"), ("a" * 240, "over the 128-byte limit")):
        status = home.mkd("status", name)  # a rejected file is no job: status points at its .error
        assert status.returncode == 3 and "rejected at intake" in status.stdout and says in status.stdout, status

    home.drop("after.toml", '[workload]\nkind = "command"\nargv = ["sh", "-c", "echo still here"]\n')
    home.wait_state("after", "succeeded")
    assert home.proc.poll() is None and home.proc.pid == pid and _daemon_pid(home) == pid, "the daemon restarted"
    assert "Traceback" not in home.log.read_text(), home.log.read_text()[-3000:]
    print(f"\nhostile files: {len(cases)} classes; vanishing files: {counts}")
    assert home.stop() == 0


def test_a_daemon_starts_past_hostile_leftovers_in_claimed(home: Home) -> None:
    """recover_claims at start-up: whatever sits in var/claimed/ is finished or set aside, never fatal."""
    claimed = home.root / "var" / "claimed"
    claimed.mkdir(parents=True)
    (claimed / "1-1-0__bad.toml").write_text(BAD)
    (claimed / "1-1-1__dir.toml").mkdir()
    os.mkfifo(claimed / "1-1-2__fifo.toml")
    os.symlink("/dev/zero", claimed / "1-1-3__zero.toml")
    (claimed / ("1-1-4__" + "n\u202e" * 20 + ".toml")).write_text(JOB)
    (claimed / "1-1-5__good.toml").write_text(JOB)
    home.start()
    assert home.proc is not None and not home.proc_exited(), home.log.read_text()[-3000:]
    home.wait_state("good", "succeeded")
    assert not list(claimed.iterdir()), "every leftover claim finished or set aside"
    errors = _errors(home)
    assert "workload.bogus: unknown key" in errors["bad.toml.error"]
    assert "is not a regular file" in errors["dir.toml.error"] and "is not a regular file" in errors["fifo.toml.error"]
    assert "is a symbolic link" in errors["zero.toml.error"]
    assert any("U+202E" in text for text in errors.values())
    home.drop("after.toml", JOB)
    home.wait_state("after", "succeeded")
    assert home.stop() == 0


def test_a_file_that_cannot_be_set_aside_is_left_alone_not_retried_every_tick(home: Home) -> None:
    """When even the .error cannot be written (here: a folder is in its way), the file stays in
    incoming: logged once, left alone until it changes, and the loop goes on."""
    rejected = home.root / "jobs" / "rejected"
    (rejected / "bad.toml.error").mkdir(parents=True)
    home.start()
    home.drop("bad.toml", BAD)
    wait_for(lambda: "cannot set bad.toml aside" in home.log.read_text(), 10, "the log line")
    home.drop("good.toml", JOB)
    home.wait_state("good", "succeeded")
    time.sleep(0.5)  # ten ticks
    assert home.log.read_text().count("cannot set bad.toml aside") == 1
    assert (home.incoming / "bad.toml").exists()
    (rejected / "bad.toml.error").rmdir()
    home.drop("bad.toml", BAD + "# changed\n")  # a new file: tried again
    wait_for((rejected / "bad.toml.error").is_file, 10, "bad.toml set aside once it could be")
    assert home.stop(signal.SIGTERM) == 0


# --- the same principle, step by step, in-process ------------------------------------------------


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    config = DaemonConfig()
    layout = Layout(config, tmp_path)
    layout.create()
    found = Intake(config, layout, Store.open(layout.db))
    yield found
    found.store.close()


@contextlib.contextmanager
def no_hang(seconds: int) -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_renamed_over_the_file_between_check_and_claim_does_not_block(intake: Intake, tmp_path: Path) -> None:
    path = intake.layout.incoming / "swap.toml"
    path.write_text(JOB)
    real = intake.admission.judge

    def judge_then_swap(judged: Path, name: str, **kwargs: bool) -> Verdict:
        verdict = real(judged, name, **kwargs)
        if judged == path:
            os.mkfifo(tmp_path / "fifo")
            os.rename(tmp_path / "fifo", path)
        return verdict

    intake.admission.judge = judge_then_swap  # type: ignore[method-assign]
    (intake.layout.incoming / "next.toml").write_text(JOB)
    with no_hang(5):
        result = intake.scan(0.0)
    assert result.rejected == ["swap.toml"] and result.accepted == ["next"]
    assert "is not a regular file" in (intake.layout.rejected / "swap.toml.error").read_text()
    assert stat.S_ISFIFO(os.lstat(intake.layout.rejected / "swap.toml").st_mode)


@pytest.mark.parametrize("errno_", [errno.ENAMETOOLONG, errno.EIO, errno.EXDEV])
def test_any_error_of_the_claim_sets_the_file_aside(
    intake: Intake, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    real = os.rename

    def rename(src: Any, dst: Any) -> None:
        if "claimed" in str(dst) and "doomed" in str(src):
            raise OSError(errno_, os.strerror(errno_))
        real(src, dst)

    monkeypatch.setattr("mkd.intake.os.rename", rename)
    (intake.layout.incoming / "doomed.toml").write_text(JOB)
    (intake.layout.incoming / "fine.toml").write_text(JOB)
    result = intake.scan(0.0)
    assert result.rejected == ["doomed.toml"] and result.accepted == ["fine"]
    text = (intake.layout.rejected / "doomed.toml.error").read_text()
    assert f"doomed.toml: mkd could not take this file (OSError: [Errno {errno_}]" in text
    assert intake.store.counters()["intake_errors_total"] == 1


def test_an_unreadable_file_is_set_aside(intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 000 as a user other than root (root reads it anyway): the open raises EACCES."""
    real = os.open

    def deny(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("locked.toml"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags, *args)

    monkeypatch.setattr("mkd.admission.os.open", deny)
    (intake.layout.incoming / "locked.toml").write_text(JOB)
    assert intake.scan(0.0).rejected == ["locked.toml"]
    assert "locked.toml: mkd cannot read it (Permission denied); make it readable" in (
        (intake.layout.rejected / "locked.toml.error").read_text()
    )
