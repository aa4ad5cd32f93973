"""`mkd status --watch`: the status table redrawn in place on a terminal, until Ctrl-C.

On a terminal each frame homes the cursor and clears the screen first (as watch(1) does);
piped, frames follow one another, each after a timestamp line, so a log of them reads well.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import IO

from mkd.client.daemon_lock import lock_holder, not_running_banner
from mkd.client.status_view import show_job, show_table
from mkd.layout import Layout
from mkd.store import Store

HOME_AND_CLEAR = "\x1b[H\x1b[2J"


def frame(layout: Layout, *, show_all: bool, job: str | None, tty: bool) -> str:
    buffer = _Frame(tty)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    buffer.write(f"mkd status, every few seconds, at {stamp} (Ctrl-C to stop)\n")
    if lock_holder(layout) is None:
        buffer.write(not_running_banner(layout) + "\n")
    if not layout.db.exists():
        buffer.write("no jobs yet\n")
        return buffer.getvalue()
    store = Store.open(layout.db, readonly=True)
    try:
        if job:
            saved = sys.stdout
            sys.stdout = buffer
            try:
                show_job(store, job, as_json=False, rejected=layout.rejected)
            finally:
                sys.stdout = saved
        else:
            show_table(store, as_json=False, show_all=show_all, out=buffer)
    finally:
        store.close()
    return buffer.getvalue()


class _Frame(io.StringIO):
    """A buffer that answers isatty() as the real output does (colour and width follow it)."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def fileno(self) -> int:
        return sys.stdout.fileno()


def watch_status(
    layout: Layout, *, show_all: bool, interval: float, job: str | None = None, out: IO[str] | None = None
) -> int:
    stream = out or sys.stdout
    tty = stream.isatty()
    try:
        while True:
            text = frame(layout, show_all=show_all, job=job, tty=tty)
            stream.write((HOME_AND_CLEAR if tty else "") + text + ("" if tty else "\n"))
            stream.flush()
            time.sleep(max(0.2, interval))
    except KeyboardInterrupt:
        if tty:
            stream.write("\n")
        return 0
    except BrokenPipeError:
        os._exit(0)
