"""The real `mkd run` against a NOTIFY_SOCKET listener that reads it the way systemd does.

A datagram socket bound in the test's folder, with SO_PASSCRED, so each message comes
with the sender's pid (systemd's NotifyAccess=main drops messages from any other pid).
The daemon gets NOTIFY_SOCKET and WATCHDOG_USEC, no WATCHDOG_PID, as from systemd.
Checked: READY=1 only once start-up is done, STATUS follows the jobs, WATCHDOG=1 every
WATCHDOG_USEC/2 and none while the loop is frozen (SIGSTOP), STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Home, wait_for

WATCHDOG_USEC = 400_000
PING_S = WATCHDOG_USEC / 2 / 1_000_000  # what sd_watchdog_enabled(3) tells a daemon to use
SLEEPER = '[workload]\nkind = "command"\nargv = ["sleep", "600"]\n'


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() when received
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]
    started_up: bool  # the store and the metrics port file existed when it arrived


class Listener:
    """Collects every datagram on a thread; tests read `messages` and wait on it."""

    def __init__(self, path: Path, started_up: Callable[[], bool]) -> None:
        self.path = path
        self.started_up = started_up
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener")
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            at = time.monotonic()
            started_up = self.started_up()  # checked at once: READY must find start-up done
            pids = [
                struct.unpack("3i", payload[:12])[0]
                for level, kind, payload in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            ]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.messages.append(Message(at, pids[0] if pids else -1, fields, started_up))

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._sock.close()

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait(self, predicate: Callable[[Message], bool], what: str, timeout: float = 10.0) -> Message:
        """The first message (in order of arrival) for which `predicate` holds."""

        def found() -> Message | None:
            return next((m for m in self.snapshot() if predicate(m)), None)

        return wait_for(found, timeout, what)  # type: ignore[no-any-return]

    def pings(self, since: float = 0.0) -> list[float]:
        return [m.at for m in self.snapshot() if m.fields.get("WATCHDOG") == "1" and m.at >= since]

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.snapshot() if "STATUS" in m.fields]


@pytest.fixture
def listener(home: Home) -> Iterator[Listener]:
    var = home.root / "var"
    receiver = Listener(
        home.root / "notify.sock",
        lambda: (var / "mkd.sqlite3").exists() and (var / "metrics.port").exists(),
    )
    yield receiver
    receiver.close()


def start(home: Home, listener: Listener) -> int:
    """`mkd run` as systemd starts a Type=notify unit with WatchdogSec= (no WATCHDOG_PID)."""
    home.env.pop("WATCHDOG_PID", None)
    proc = home.start(env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}, ready=False)
    listener.wait(lambda m: m.fields.get("READY") == "1", "READY=1", timeout=20)
    return proc.pid


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def is_ready(message: Message) -> bool:
    return message.fields.get("READY") == "1"


def test_ready_only_after_start_up(home: Home, listener: Listener) -> None:
    pid = start(home, listener)
    ready = listener.wait(is_ready, "READY=1")
    assert ready.started_up, "READY=1 arrived before the store and the metrics port file existed"
    assert ready.pid == pid  # NotifyAccess=main would accept it
    assert ready.fields["STATUS"].startswith("0 running")
    # Start-up really is done: the metrics endpoint the port file names answers.
    port = home.metrics_port()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
    assert {m.pid for m in listener.snapshot()} == {pid}
    assert home.stop() == 0


def test_ready_is_the_first_message(home: Home, listener: Listener) -> None:
    start(home, listener)
    messages = listener.snapshot()
    before = [m.fields for m in messages[: next(i for i, m in enumerate(messages) if is_ready(m))]]
    home.stop()
    assert before == [], f"sent before READY=1: {before}"


def test_status_follows_the_jobs(home: Home, listener: Listener) -> None:
    pid = start(home, listener)
    home.drop("sleeper.toml", SLEEPER)
    running = listener.wait(lambda m: m.fields.get("STATUS", "").startswith("1 running (sleeper"), "1 running")
    assert home.state("sleeper") == "running"
    assert home.mkd("cancel", "sleeper").returncode == 0
    idle = listener.wait(lambda m: m.at > running.at and m.fields.get("STATUS", "").startswith("0 running"), "idle")
    home.wait_state("sleeper", "cancelled")
    assert home.stop() == 0

    ready_at = listener.wait(is_ready, "READY=1").at
    statuses = [m.fields["STATUS"] for m in listener.snapshot() if "STATUS" in m.fields and m.at >= ready_at]
    heads = [status.split(" · ")[0] for status in statuses]  # the GPU part varies with the host
    assert heads[0] == heads[-1] == "0 running", statuses
    assert "1 running (sleeper)" in heads, statuses
    assert all(a != b for a, b in itertools.pairwise(statuses)), f"STATUS resent unchanged: {statuses}"
    assert idle.at > running.at
    assert {m.pid for m in listener.snapshot()} == {pid}


@pytest.mark.parametrize("tick", ["50ms", "30s"])
def test_watchdog_pings_every_half_timeout(home: Home, listener: Listener, tick: str) -> None:
    """Also with a loop period far longer than the watchdog: the loop wakes for each ping."""
    home.config.write_text(home.config.read_text().replace('tick = "50ms"', f'tick = "{tick}"'), encoding="utf-8")
    start(home, listener)
    ready_at = listener.wait(is_ready, "READY=1").at
    wait_for(lambda: len(listener.pings(ready_at)) >= 16, 10, "16 watchdog pings")
    home.stop()
    pings = listener.pings(ready_at)
    intervals = [b - a for a, b in itertools.pairwise(pings)]
    median = statistics.median(intervals)
    print(f"watchdog intervals (s), expected {PING_S}: {[round(i, 3) for i in intervals]}")
    assert abs(median - PING_S) <= 0.5 * PING_S, intervals
    assert max(intervals) < WATCHDOG_USEC / 1e6, intervals  # systemd would have fired


def test_watchdog_stops_while_the_loop_is_frozen(home: Home, listener: Listener) -> None:
    pid = start(home, listener)
    ready_at = listener.wait(is_ready, "READY=1").at
    wait_for(lambda: len(listener.pings(ready_at)) >= 3, 5, "3 watchdog pings")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: process_state(pid) == "T", 2, "the daemon to be stopped")
        stopped_at = time.monotonic()
        time.sleep(5 * PING_S)  # the absence of pings is the point: wait it out
        silent = listener.pings(stopped_at + 0.05)  # one sent just before the stop may arrive late
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    assert silent == [], f"{len(silent)} pings while the daemon was stopped"
    wait_for(lambda: len(listener.pings(resumed_at)) >= 3, 5, "pings again after SIGCONT")
    first = listener.pings(resumed_at)[0]
    assert first - resumed_at < 2 * PING_S
    before = [at for at in listener.pings(ready_at) if at < resumed_at]
    assert first - before[-1] > 3 * PING_S
    assert home.stop() == 0


def test_stopping_on_sigterm(home: Home, listener: Listener) -> None:
    pid = start(home, listener)
    wait_for(lambda: len(listener.pings()) >= 2, 5, "2 watchdog pings")
    assert home.stop(signal.SIGTERM) == 0
    stopping = listener.wait(lambda m: m.fields.get("STOPPING") == "1", "STOPPING=1", timeout=2)
    assert stopping.pid == pid
    assert listener.snapshot()[-1] == stopping, "messages after STOPPING=1"
