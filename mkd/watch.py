"""inotify (through watchdog) as a wake-up for the loop, never as the source of truth.

Any event in incoming/ or control/ sets the loop's wake event; the next tick scans the
directories, so a missed event or a filesystem without inotify loses nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("mkd.watch")


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("opened", "closed_no_write"):
            self.wake.set()


class IncomingWatcher:
    def __init__(self, paths: list[Path], wake: threading.Event) -> None:
        self.paths = paths
        self.wake = wake
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        try:
            observer = Observer()
            handler = _Wake(self.wake)
            for path in self.paths:
                observer.schedule(handler, str(path), recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as error:  # no inotify (limits, NFS): the periodic scan still works
            log.warning("inotify unavailable (%s); relying on the periodic scan", error)
            return
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
