"""What the daemon tracks about a running attempt between ticks (runtime only, never persisted).

It tails the attempt's console log by offset (the child writes straight to the file; the
daemon only reads), feeds the MimicKit console parser, and keeps the progress figures
that status, metrics and the stall check need.
"""

from __future__ import annotations

import codecs
import functools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkd.executors.base import RunRef
from mkd.mimickit.console import ConsoleParser, IterationRow
from mkd.mimickit.progress import LOSS_WORDS

READ_CHUNK = 1 << 20


@dataclass
class LiveAttempt:
    attempt_id: int
    job_id: str
    dir: Path
    console: Path
    handle: RunRef
    started_mono: float
    gpu_indices: tuple[int, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    stage_kind: str = "train"
    parser: ConsoleParser = field(default_factory=ConsoleParser)
    offset: int = 0
    last_progress_mono: float | None = None
    stop_reason: str | None = None  # set when mkd stops it: cancelled, stall, timeout, or a failure class
    stop_evidence: tuple[str, ...] = ()
    stop_sent_mono: float | None = None
    pgid: int | None = None  # the run's process group, from child.json once the shim wrote it
    pending_reason: str | None = None  # why an outside scheduler (Slurm) has not started it yet
    granted_gpus: tuple[str, ...] | None = None  # what an outside scheduler gave it
    gpu_pids: set[int] = field(default_factory=set)  # its processes NVML has listed (a retry waits for them)
    rates: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    util_samples: list[float] = field(default_factory=list)
    best_test_return: float | None = None
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _prev_row: IterationRow | None = None
    _read_count: int = 0  # bumped at each read of new output: keys the progress cache
    _progress_cache: tuple[tuple[int, int], dict[str, Any]] | None = None

    def read_new(self) -> tuple[list[str], list[IterationRow]]:
        """New complete console lines and iteration tables since the last call."""
        try:
            size = self.console.stat().st_size
        except FileNotFoundError:
            return [], []
        if size < self.offset:  # rotated (copy-truncate): start again from the top
            self.offset = 0
        if size == self.offset:
            return [], []
        with open(self.console, "rb", buffering=0) as handle:
            handle.seek(self.offset)
            raw = handle.read(min(size - self.offset, READ_CHUNK))  # not a 1 MiB buffer per read
        self.offset += len(raw)
        self._read_count += 1
        text = self._decoder.decode(raw)
        rows = self.parser.feed(text)
        lines = self.parser.new_lines
        for row in rows:
            self._rate(row)
            test_return = row.get("Test_Return")
            if test_return is not None and math.isfinite(test_return):
                self.best_test_return = max(test_return, self.best_test_return or test_return)
        return lines, rows

    def _rate(self, row: IterationRow) -> None:
        prev, self._prev_row = self._prev_row, row
        if prev is None or row.samples is None or prev.samples is None:
            return
        if row.wall_time_h is None or prev.wall_time_h is None:
            return
        seconds = (row.wall_time_h - prev.wall_time_h) * 3600.0
        if seconds > 0 and row.samples > prev.samples:
            self.rates.append((row.samples - prev.samples) / seconds)

    @property
    def last(self) -> IterationRow | None:
        return self.parser.last

    def samples_per_second(self) -> float | None:
        return self.rates[-1] if self.rates else None

    def median_samples_per_second(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def mean_utilization(self) -> float | None:
        return sum(self.util_samples) / len(self.util_samples) if self.util_samples else None

    def progress(self) -> dict[str, Any]:
        """The figures recorded in the store and shown by status and metrics.

        Computed again only after new output or a new utilization sample: the view, the store
        and status.json all ask for it each second.
        """
        key = (self._read_count, len(self.util_samples))
        if self._progress_cache is None or self._progress_cache[0] != key:
            self._progress_cache = (key, self._compute_progress())
        return dict(self._progress_cache[1])

    def _compute_progress(self) -> dict[str, Any]:
        row = self.last
        out: dict[str, Any] = {}
        if row is not None:
            out.update(
                iteration=row.iteration,
                samples=row.samples,
                wall_time_seconds=None if row.wall_time_h is None else row.wall_time_h * 3600.0,
                train_return=row.get("Train_Return"),
                test_return=row.get("Test_Return"),
                train_episode_length=row.get("Train_Episode_Length"),
                test_episode_length=row.get("Test_Episode_Length"),
                losses={k: v for k, v in row.values.items() if _is_loss(k) and isinstance(v, float | int)},
            )
        out["best_test_return"] = self.best_test_return
        out["samples_per_second"] = self.samples_per_second()
        out["median_samples_per_second"] = self.median_samples_per_second()
        out["mean_gpu_utilization"] = self.mean_utilization()
        result = self.parser.test_result
        if result is not None:
            out["test_result"] = {
                "mean_return": result.mean_return,
                "mean_episode_length": result.mean_episode_length,
                "episodes": result.episodes,
            }
        finite: dict[str, Any] = _finite(out)
        return finite


@functools.lru_cache(maxsize=512)
def _is_loss(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in LOSS_WORDS)


def _finite(value: Any) -> Any:
    """JSON has no NaN: NaN becomes the string "nan" in records (metrics export the float)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
