"""The inotify wake-up of the loop: every way a job file or a control file arrives wakes it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mkd.watch import IncomingWatcher


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    wake = threading.Event()
    watcher = IncomingWatcher([incoming], wake)
    watcher.start()
    try:
        yield incoming, wake
    finally:
        watcher.stop()


def renamed_in(incoming: Path) -> None:
    tmp = incoming.parent / "job.toml.tmp"
    tmp.write_text("[job]\n")
    os.rename(tmp, incoming / "job.toml")


def written_in_place(incoming: Path) -> None:
    (incoming / "job.toml").write_text("[job]\n")


@pytest.mark.parametrize("arrive", [renamed_in, written_in_place])
def test_a_file_arriving_wakes_the_loop(watched: tuple[Path, threading.Event], arrive: Callable[[Path], None]) -> None:
    incoming, wake = watched
    arrive(incoming)
    assert wake.wait(5), f"no wake-up after {arrive.__name__}"


def test_a_changed_owner_or_mode_wakes_the_loop(watched: tuple[Path, threading.Event]) -> None:
    """A file refused for its owner is taken once someone chowns it: that must wake the loop too."""
    incoming, wake = watched
    written_in_place(incoming)
    assert wake.wait(5)
    wake.clear()
    os.chmod(incoming / "job.toml", 0o600)
    assert wake.wait(5)


def test_a_drop_right_after_a_claim_still_wakes(watched: tuple[Path, threading.Event], tmp_path: Path) -> None:
    """The intake claims a file by renaming it out of incoming/; the next drop must wake the loop
    (watchdog held the unpaired move for 0.5 s, and every later event behind it)."""
    incoming, wake = watched
    (incoming / "a.toml").write_text("[job]\n")
    assert wake.wait(5)
    os.rename(incoming / "a.toml", tmp_path / "claimed-a.toml")
    wake.clear()
    renamed_in(incoming)
    assert wake.wait(5)


def test_without_inotify_the_watcher_says_so_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = IncomingWatcher([tmp_path / "missing"], threading.Event())
    with caplog.at_level(logging.WARNING, logger="mkd.watch"):
        watcher.start()
    assert "relying on the periodic scan" in caplog.text
    watcher.stop()
