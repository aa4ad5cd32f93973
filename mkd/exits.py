"""How a run ended, as its shim records it in ATTEMPT_DIR/exit.json: the one reader of that file.

The shim writes exit.json wherever the run is (this host or a cluster node); the daemon, the
verdict and `mkd explain` all read it through `read_exit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkd.fsutil import read_json


@dataclass(frozen=True)
class ExitRecord:
    returncode: int | None
    signal: int | None
    stop_requested: bool
    lingering_workers: int
    spawn_error: str | None
    lost: bool = False  # the shim died without writing exit.json
    executor_failure: str | None = None  # a FailureClass the executor saw (Slurm ended the job: TIMEOUT, NODE_FAIL)
    executor_evidence: tuple[str, ...] = ()


def read_exit(attempt_dir: Path) -> ExitRecord | None:
    data: Any = read_json(attempt_dir / "exit.json")
    if not isinstance(data, dict):
        return None
    return ExitRecord(
        returncode=data.get("returncode"),
        signal=data.get("signal"),
        stop_requested=bool(data.get("stop_requested")),
        lingering_workers=int(data.get("lingering_workers") or 0),
        spawn_error=data.get("spawn_error"),
    )
