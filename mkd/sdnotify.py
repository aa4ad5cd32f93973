"""The sd_notify protocol: tell systemd (or any $NOTIFY_SOCKET listener) how the daemon is.

One datagram per message, newline-separated ``KEY=VALUE`` assignments, to the unix
socket named by $NOTIFY_SOCKET (a leading ``@`` names an abstract socket). systemd
reads the sender's pid from the socket credentials; with ``NotifyAccess=main`` it
drops messages from any other process, so only the daemon's main thread of control
should own a :class:`Notifier`.

Without $NOTIFY_SOCKET every call is a no-op returning False, and a send never
raises: notification is best effort and must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)

# Variables systemd hands the main process. A child that inherits them may try to
# notify on our behalf (systemd then logs "reception only permitted for main PID"),
# so whoever spawns children should pass them `without_notify_vars(env)`.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

# systemd reads at most PIPE_BUF bytes per datagram; STATUS is one short line.
STATUS_MAX_CHARS = 512

# A full receive queue would block a datagram send; bound it so that a stuck
# systemd cannot freeze the daemon loop.
SEND_TIMEOUT_S = 1.0


def socket_address(raw: str | None) -> str | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value, or None if it is unset or unsupported."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # vsock:CID:PORT (systemd >= 253, for VMs) is not needed by a host daemon.
    return None


def one_line(text: str) -> str:
    """STATUS text that cannot carry a second assignment (a job name with a newline)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= STATUS_MAX_CHARS else flat[: STATUS_MAX_CHARS - 3] + "..."


def without_notify_vars(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` for a child process: no notify socket, no watchdog."""
    return {key: value for key, value in env.items() if key not in NOTIFY_VARIABLES}


def _send(sock: socket.socket, address: str, message: str) -> bool:
    try:
        sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r to %r failed: %s", message, address, exc)
        return False
    return True


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.settimeout(SEND_TIMEOUT_S)
    return sock


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one message, e.g. ``"READY=1\\nSTATUS=idle"``. True if it was sent."""
    address = socket_address((os.environ if env is None else env).get("NOTIFY_SOCKET"))
    if address is None:
        return False
    try:
        sock = _new_socket()
    except OSError as exc:
        log.debug("sd_notify: no socket: %s", exc)
        return False
    with sock:
        return _send(sock, address, message)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None if the watchdog is off for ``pid``."""
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # meant for another process (we were forked or exec'd under it)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


class Notifier:
    """The daemon's link to systemd: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

    Built once from the environment; keeps one socket open for its life. Time is
    passed in (monotonic seconds), so the daemon's tick and tests share one clock.
    """

    def __init__(self, address: str | None, *, watchdog_interval_s: float | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s if address is not None else None
        self._sock: socket.socket | None = None
        self._last_status: str | None = None
        self._last_ping: float | None = None
        if address is not None:
            try:
                self._sock = _new_socket()
            except OSError as exc:
                log.debug("sd_notify: no socket: %s", exc)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, pid: int | None = None) -> Notifier:
        address = socket_address(env.get("NOTIFY_SOCKET"))
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        return cls(address, watchdog_interval_s=interval)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        return _send(self._sock, self.address, message)

    def ready(self, status: str) -> bool:
        """Startup (or a reload) is done: systemd marks the unit active."""
        self._last_status = one_line(status)
        return self.send(f"READY=1\nSTATUS={self._last_status}")

    def status(self, text: str) -> bool:
        """The one-line summary `systemctl status` shows; sent only when it changed."""
        line = one_line(text)
        if line == self._last_status:
            return False
        self._last_status = line
        return self.send(f"STATUS={line}")

    def watchdog_due(self, now_monotonic: float) -> bool:
        if self.watchdog_interval_s is None:
            return False
        return self._last_ping is None or now_monotonic - self._last_ping >= self.watchdog_interval_s

    def seconds_until_watchdog(self, now_monotonic: float) -> float | None:
        """How long the loop may sleep before the next WATCHDOG=1 is due; None without a watchdog."""
        if self.watchdog_interval_s is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.watchdog_interval_s - now_monotonic)

    def ping(self, now_monotonic: float) -> bool:
        """WATCHDOG=1: the main loop is alive. Call when `watchdog_due`."""
        if self.watchdog_interval_s is None:
            return False
        # Counted as done even when the send failed: retrying at once would spin.
        self._last_ping = now_monotonic
        return self.send("WATCHDOG=1")

    def reloading(self, *, monotonic_usec: int | None = None) -> bool:
        """Config reload started; follow with `ready` when done (systemd shows 'reloading')."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000 if monotonic_usec is None else monotonic_usec
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started: systemd shows 'deactivating' and stops expecting pings."""
        if status is None:
            return self.send("STOPPING=1")
        self._last_status = one_line(status)
        return self.send(f"STOPPING=1\nSTATUS={self._last_status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
