"""inotify as a wake-up for the loop, never as the source of truth.

Any event in incoming/ or control/ sets the loop's wake event; the next tick scans the
directories, so a missed event or a filesystem without inotify loses nothing.

Raw inotify through ctypes, not the watchdog package: watchdog holds an IN_MOVED_FROM that has
no matching IN_MOVED_TO for 0.5 s, and every later event queues behind it. The intake claims a
job by renaming it out of incoming/, so each claim delayed the wake for the next drop by up to
half a second (drop -> running 450 ms with 49 runs alive; 80 ms with the raw events).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
from pathlib import Path

log = logging.getLogger("mkd.watch")

# <sys/inotify.h>: a file written and closed, created, renamed in, or its owner/mode changed.
# Not IN_MODIFY (one per write() of a slow writer) nor IN_MOVED_FROM (the intake's own claims).
IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x4, 0x8, 0x80, 0x100
WAKE_MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
IN_CLOEXEC, IN_NONBLOCK = 0o2000000, 0o4000


class IncomingWatcher:
    """A thread that sets `wake` whenever inotify reports something in one of `paths`."""

    def __init__(self, paths: list[Path], wake: threading.Event) -> None:
        self.paths = paths
        self.wake = wake
        self._fd: int | None = None
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._fd = _inotify(self.paths)
        except OSError as error:  # no inotify (limits, NFS, not Linux): the periodic scan still works
            log.warning("inotify unavailable (%s); relying on the periodic scan", error)
            return
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="mkd-inotify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._fd is not None
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                os.read(self._fd, 65536)  # the events themselves do not matter, only that they came
            except BlockingIOError:
                continue
            self.wake.set()

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._fd, self._stop_r, self._stop_w = None, -1, -1


def _inotify(paths: list[Path]) -> int:
    """An inotify descriptor watching `paths` for WAKE_MASK; OSError when inotify cannot be had."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError) as error:
        raise OSError(f"no inotify in this C library: {error}") from None
    fd = int(init(IN_CLOEXEC | IN_NONBLOCK))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"inotify_init1: {os.strerror(errno)}")
    for path in paths:
        if add(fd, os.fsencode(path), WAKE_MASK) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch {path}: {os.strerror(errno)}")
    return fd
