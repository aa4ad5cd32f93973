"""mkd.sdnotify against a real datagram socket, received the way systemd receives it."""

from __future__ import annotations

import os
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkd.sdnotify import Notifier, notify, one_line, socket_address, watchdog_interval, without_notify_vars


@dataclass
class Receiver:
    """A NOTIFY_SOCKET listener: reads one message and the sender's pid from its credentials."""

    sock: socket.socket
    env_value: str

    def receive(self) -> tuple[int, dict[str, str]]:
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pids = [
            struct.unpack("3i", payload[:12])[0]
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        ]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return pids[0], fields

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value}


def _bind(address: str, env_value: str) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    sock.settimeout(5)
    try:
        yield Receiver(sock, env_value)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        yield from _bind(path, path)
    else:
        name = f"mkd-test-{uuid.uuid4().hex}"
        yield from _bind("\0" + name, "@" + name)


def test_notify_sends_one_datagram_with_our_pid(receiver: Receiver) -> None:
    assert notify("READY=1\nSTATUS=watching jobs/incoming", env=receiver.env)
    pid, fields = receiver.receive()
    assert pid == os.getpid()
    assert fields == {"READY": "1", "STATUS": "watching jobs/incoming"}


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not notify("READY=1", env={})
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert not notifier.ready("up")
    assert not notifier.watchdog_due(0.0)
    assert not notifier.ping(0.0)
    assert not notifier.stopping()


def test_send_failure_returns_false_and_does_not_raise(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")}
    assert not notify("READY=1", env=env)
    with Notifier.from_env(env) as notifier:
        assert notifier.enabled
        assert not notifier.ready("up")


def test_lifecycle_messages(receiver: Receiver) -> None:
    with Notifier.from_env(receiver.env) as notifier:
        assert notifier.ready("watching jobs/incoming, 0 running")
        assert receiver.receive()[1] == {"READY": "1", "STATUS": "watching jobs/incoming, 0 running"}

        assert notifier.status("2 running, 1 queued")
        assert receiver.receive()[1] == {"STATUS": "2 running, 1 queued"}

        assert notifier.reloading(monotonic_usec=123)
        assert receiver.receive()[1] == {"RELOADING": "1", "MONOTONIC_USEC": "123"}

        assert notifier.stopping("stopping; runs keep running")
        assert receiver.receive()[1] == {"STOPPING": "1", "STATUS": "stopping; runs keep running"}
        receiver.assert_empty()


def test_status_is_sent_only_when_it_changed(receiver: Receiver) -> None:
    with Notifier.from_env(receiver.env) as notifier:
        notifier.ready("idle")
        receiver.receive()
        assert not notifier.status("idle")
        assert notifier.status("1 running")
        assert not notifier.status("1 running")
        assert receiver.receive()[1] == {"STATUS": "1 running"}
        receiver.assert_empty()


def test_status_stays_one_line(receiver: Receiver) -> None:
    # A job name with a newline must not smuggle in a second assignment.
    with Notifier.from_env(receiver.env) as notifier:
        notifier.status("job evil\nREADY=1\nWATCHDOG=1")
        assert receiver.receive()[1] == {"STATUS": "job evil READY=1 WATCHDOG=1"}
    assert len(one_line("x" * 10_000)) == 512


def test_watchdog_pings_every_half_interval(receiver: Receiver) -> None:
    env = {**receiver.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier.from_env(env) as notifier:
        assert notifier.watchdog_interval_s == 2.0
        pinged = []
        for tick in range(0, 101):  # a 0.05 s loop over 5 s of fake monotonic time
            now = 1000.0 + tick * 0.05
            if notifier.watchdog_due(now):
                assert notifier.ping(now)
                pinged.append(round(now - 1000.0, 2))
        assert pinged == [0.0, 2.0, 4.0]
        for _ in pinged:
            assert receiver.receive()[1] == {"WATCHDOG": "1"}
        receiver.assert_empty()


def test_watchdog_is_off_for_another_pid(receiver: Receiver) -> None:
    env = {**receiver.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier.from_env(env)
    try:
        assert notifier.watchdog_interval_s is None
        assert not notifier.watchdog_due(0.0)
        assert not notifier.ping(0.0)
        assert notifier.ready("up")  # the rest still works
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(env, pid=42) == interval


def test_socket_address() -> None:
    assert socket_address(None) is None
    assert socket_address("") is None
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@name") == "\0name"
    assert socket_address("vsock:2:1234") is None


def test_children_do_not_inherit_the_notify_variables() -> None:
    env = {"PATH": "/bin", "NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2"}
    assert without_notify_vars(env) == {"PATH": "/bin"}
