"""Ask the running daemon for something by a control file, and wait for its answer.

The CLI never writes the store: it drops jobs/control/NAME (what a script may do too), then
reads the daemon's answer, a `control` event carrying the request's id, from the store.
With no daemon holding the lock it drops nothing and says so: a control file left for a
later daemon would be refused by it anyway (written before it started).
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mkd.client.daemon_lock import lock_holder
from mkd.control_requests import file_name, render
from mkd.fsutil import atomic_write
from mkd.layout import Layout
from mkd.store import Store

EXIT_REFUSED = 1
EXIT_NOT_FOUND = 3
EXIT_NO_DAEMON = 4
ANSWER_SECONDS = 15.0


@dataclass(frozen=True)
class Answer:
    code: int
    message: str


def no_daemon(layout: Layout) -> str:
    return (
        f"no mkd daemon is running on {layout.state_dir} (nothing holds {layout.lock}); nothing was asked. "
        "Start it with `mkd run` (or systemctl start mkd), then ask again"
    )


def ask(layout: Layout, verb: str, job: str | None, body: dict[str, Any] | None = None) -> Answer:
    """Drop the control file for `verb` and wait (bounded) for the daemon's answer."""
    if lock_holder(layout) is None:
        return Answer(EXIT_NO_DAEMON, no_daemon(layout))
    name = file_name(verb, job)
    request = uuid.uuid4().hex[:12]
    store = Store.open(layout.db, readonly=True) if layout.db.exists() else None
    try:
        last = store.last_event_id() if store else 0
        layout.control.mkdir(parents=True, exist_ok=True)
        atomic_write(layout.control / name, render({**(body or {}), "request": request}))
        deadline = time.monotonic() + ANSWER_SECONDS
        while time.monotonic() < deadline:
            if store is None and layout.db.exists():
                store = Store.open(layout.db, readonly=True)
            if store is not None:
                for event in store.events_after(last, "control"):
                    last = event.id
                    if event.data.get("request") == request:
                        ok = bool(event.data.get("ok"))
                        return Answer(0 if ok else EXIT_REFUSED, event.message)
            time.sleep(0.05)
    finally:
        if store is not None:
            store.close()
    if (layout.control / name).exists():
        return Answer(EXIT_REFUSED, f"the daemon has not taken {layout.control / name} in {ANSWER_SECONDS:.0f} s")
    return Answer(EXIT_REFUSED, f"the daemon took {name} but its answer is not in the store yet")


def say(answer: Answer) -> int:
    print(("" if answer.code == 0 else "mkd: ") + answer.message, file=sys.stdout if answer.code == 0 else sys.stderr)
    return answer.code
