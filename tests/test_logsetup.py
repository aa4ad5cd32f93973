"""mkd.logsetup: sd-daemon priority prefixes when stderr is journald's stream, plain lines otherwise."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
from pathlib import Path

import pytest

from mkd import logsetup
from tests.harness import Home, wait_for


def record(level: int, message: str, name: str = "mkd.daemon") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<2>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
        (5, "<7>"),  # below DEBUG
        (logging.WARNING + 5, "<4>"),  # a custom level between warning and error
    ],
)
def test_priority_prefix_per_level(level: int, prefix: str) -> None:
    assert logsetup.JournalFormatter().format(record(level, "hello")) == f"{prefix}mkd.daemon: hello"


def test_every_line_of_a_record_carries_the_prefix() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc = sys.exc_info()
    rec = logging.LogRecord("mkd.attempts", logging.ERROR, __file__, 1, "job x: error", None, exc)
    lines = logsetup.JournalFormatter().format(rec).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[0] == "<3>mkd.attempts: job x: error" and lines[-1] == "<3>ValueError: boom"


def test_journal_stream_must_name_the_stream_itself(tmp_path: Path) -> None:
    path = tmp_path / "err"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        assert logsetup.is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.is_journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logsetup.is_journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not logsetup.is_journal_stream(stream, {})
    assert not logsetup.is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_configure_picks_the_format(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        with open(tmp_path / "err", "w") as stream:
            st = os.fstat(stream.fileno())
            journal = logsetup.configure("warning", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            assert isinstance(journal.formatter, logsetup.JournalFormatter) and root.level == logging.WARNING
            plain = logsetup.configure("info", stream, {})
            assert not isinstance(plain.formatter, logsetup.JournalFormatter)
            assert root.handlers == [plain]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def run_daemon_until_ready(home: Home, env: dict[str, str]) -> str:
    """Starts `mkd run` on a taken metrics port (it logs an error and goes on), returns its log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        home.config.write_text(home.config.read_text().replace("port = 0", f"port = {port}"))
        home.start(env=env, ready=False)
        wait_for(lambda: "mkd ready" in home.log.read_text() or home.proc_exited(), 20, "daemon ready")
        assert home.stop() == 0
    return home.log.read_text()


def test_daemon_under_journald_writes_priorities_and_no_timestamp(home: Home) -> None:
    home.log.touch()
    st = os.stat(home.log)
    log = run_daemon_until_ready(home, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    lines = log.splitlines()

    assert any(re.fullmatch(r"<6>mkd\.daemon: mkd ready: .*", line) for line in lines), log
    assert any(line.startswith("<3>mkd.daemon: metrics are off: ") for line in lines), log
    assert not [line for line in lines if re.match(r"\d{4}-\d\d-\d\d", line)], "no timestamps of its own"
    assert all(re.match(r"<[0-7]>", line) for line in lines), log


def test_daemon_elsewhere_writes_timestamped_lines(home: Home) -> None:
    log = run_daemon_until_ready(home, {"JOURNAL_STREAM": "1:2"})  # a journal stream, but not this stderr
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO mkd\.daemon: mkd ready", log, flags=re.MULTILINE), log
    assert not re.search(r"^<\d>", log, flags=re.MULTILINE)
