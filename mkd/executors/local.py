"""The local executor: each attempt runs on this host under its own shim (see mkd.engine, mkd.shim)."""

from __future__ import annotations

import time
from pathlib import Path

from mkd.engine import Engine, ShimHandle
from mkd.executors.base import LaunchRequest, RunRef, RunStatus
from mkd.fsutil import read_json
from mkd.procs import find_by_argv_tail, start_ticks

ADOPT_WAIT_SECONDS = 2.0  # a shim launched just before a crash may not have reached exec yet


class LocalExecutor:
    kind = "local"
    places_gpus = True

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine if engine is not None else Engine()

    def launch(self, request: LaunchRequest) -> RunRef:
        handle = self.engine.launch(request.attempt_dir, request.spec)
        return RunRef(kind=self.kind, pid=handle.pid, start_ticks=handle.start_ticks)

    def poll(self, ref: RunRef, attempt_dir: Path) -> RunStatus:
        return RunStatus(exit=self.engine.poll(attempt_dir, _handle(ref)))

    def stop(self, ref: RunRef, attempt_dir: Path, *, kill_now: bool = False) -> None:
        self.engine.stop(_handle(ref), attempt_dir, now_kill=kill_now)

    def adopt(self, ref: RunRef | None, attempt_dir: Path) -> RunRef | None:
        """The recorded shim, or (killed before recording it) the one found by its argv, or shim.json's."""
        if ref is not None and ref.pid:
            return ref
        tail = ["-m", "mkd.shim", str(attempt_dir)]
        if (attempt_dir / "launch.json").exists():
            deadline = time.monotonic() + ADOPT_WAIT_SECONDS
            while not find_by_argv_tail(tail) and time.monotonic() < deadline:
                time.sleep(0.05)
        for pid in find_by_argv_tail(tail):
            return RunRef(kind=self.kind, pid=pid, start_ticks=start_ticks(pid))
        data = read_json(attempt_dir / "shim.json")
        if isinstance(data, dict):
            return RunRef(kind=self.kind, pid=int(data["pid"]), start_ticks=data.get("start_ticks"))
        return None

    def alive(self, ref: RunRef) -> bool:
        return self.engine.shim_alive(_handle(ref))

    def process_group(self, attempt_dir: Path) -> int | None:
        child = self.engine.child(attempt_dir)
        return child.pgid if child is not None else None

    def kill_leftovers(self, ref: RunRef, attempt_dir: Path) -> int:
        return self.engine.kill_orphaned_group(attempt_dir)

    def tick(self) -> None:
        self.engine.reap()

    def close(self) -> None:
        self.engine.close()


def _handle(ref: RunRef) -> ShimHandle:
    return ShimHandle(ref.pid or 0, ref.start_ticks)
