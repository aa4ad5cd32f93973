"""`mkd status`: read-only views of the store: the table (with why a job waits) and one job."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from mkd.store import Store
from mkd.store_views import status_rows

RECENT_FINISHED = 20
COLUMNS = ("JOB", "STATE", "STAGE", "ATTEMPT", "DEVICES", "NUM_ENVS", "PROGRESS", "AGE", "WHY")
WAITING = frozenset({"queued", "retry_wait", "held"})
# ANSI SGR per state, used only on a terminal and never with NO_COLOR set (no-color.org)
STATE_COLOURS = {
    "running": "32",
    "succeeded": "32;1",
    "failed": "31;1",
    "cancelled": "2",
    "retry_wait": "33",
    "held": "35",
    "queued": "36",
}


def use_colour(stream: IO[str]) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(text: str, code: str | None, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code else text


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _progress(progress: dict[str, Any]) -> str:
    bits = []
    if progress.get("iteration") is not None:
        bits.append(f"iter {progress['iteration']}")
    if progress.get("samples") is not None:
        bits.append(f"{int(progress['samples']):,} samples")
    # the run's median rate: one iteration's rate swings (22.9/s shown against 56.5/s over the run)
    rate = progress.get("median_samples_per_second") or progress.get("samples_per_second")
    if rate:
        rate = float(rate)
        bits.append(f"{rate / 1000:.1f}k/s" if rate >= 1000 else f"{rate:.1f}/s")
    test = progress.get("test_result")
    if test:
        bits.append(f"Mean Return {float(test['mean_return']):.3g}")
    return ", ".join(bits) or "-"


def _granted(params: dict[str, Any]) -> str:
    """GPUs an outside scheduler gave the run, as NODE:GPU,GPU (Slurm's SLURM_JOB_GPUS on that node)."""
    gpus = params.get("granted_gpus")
    if not gpus:
        return "-"
    node = params.get("node")
    return f"{node}:gpu{','.join(gpus)}" if node else f"gpu{','.join(gpus)}"


def rows(store: Store, show_all: bool) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for row in status_rows(store, None if show_all else RECENT_FINISHED):
        params = row["params"] or {}
        out.append(
            {
                "job": row["job_id"],
                "state": row["state"],
                "stage": row["stage"],
                "attempt": row["attempt"],
                "devices": ",".join(f"cuda:{i}" for i in params.get("gpu_indices", [])) or _granted(params),
                "num_envs": row["num_envs"],
                "progress": row["progress"] or {},
                "age_seconds": now - row["submitted_at"],
                "reason": row["reason"],
                "why": row["reason"] if row["state"] in WAITING else None,
            }
        )
    return out


def format_table(data: list[dict[str, Any]], *, colour: bool = False, width: int | None = None) -> str:
    """The table as text; the WHY column is cut to `width` (a terminal's) when given."""
    if not data:
        return "no jobs\n"
    table = [COLUMNS] + [
        (
            d["job"],
            d["state"],
            str(d["stage"] or "-"),
            str(d["attempt"] or "-"),
            d["devices"],
            str(d["num_envs"] or "-"),
            _progress(d["progress"]),
            _age(d["age_seconds"]),
            d["why"] or "-",
        )
        for d in data
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    before_why = sum(widths[:-1]) + 2 * (len(COLUMNS) - 1)  # where the WHY column starts
    lines = []
    for n, r in enumerate(table):
        cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=True)]
        why = r[-1]
        if width is not None and before_why + len(why) > width:
            room = max(4, width - before_why)
            why = why[: room - 1] + "…"
        cells[-1] = why
        if n and colour:
            cells[1] = paint(cells[1], STATE_COLOURS.get(r[1]), True)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def show_table(store: Store, *, as_json: bool, show_all: bool, out: IO[str] | None = None) -> int:
    stream = out or sys.stdout
    data = rows(store, show_all)
    if as_json:
        stream.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    tty = stream.isatty()
    width = os.get_terminal_size(stream.fileno()).columns if tty else None
    stream.write(format_table(data, colour=use_colour(stream), width=width))
    return 0


def show_job(store: Store, name: str, *, as_json: bool, rejected: Path | None = None) -> int:
    job = store.find_job(name)
    if job is None:
        return no_job(name, rejected)
    attempts = store.attempts(job.job_id)
    events = store.events(job.job_id)
    if as_json:
        from mkd.report import attempt_dict  # here, not at the top: the table needs neither it nor mkd.memory

        print(
            json.dumps(
                {
                    "job_id": job.job_id,
                    "state": job.state.value,
                    "reason": job.reason,
                    "priority": job.priority,
                    "stage_index": job.stage_index,
                    "plan": None if job.plan is None else job.plan.to_json(),
                    "attempts": [attempt_dict(a, full=True) for a in attempts],
                    "events": [{"at": e.at, "kind": e.kind, "message": e.message} for e in events],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"{job.job_id}: {job.state.value} ({job.reason})")
    for a in attempts:
        print(
            f"  attempt {a.number} [{a.stage_label}] {a.outcome or a.state.value}"
            f"{' ' + a.failure_class if a.failure_class else ''} num_envs={a.params.num_envs}"
            f" {_progress(a.progress)}"
        )
        if a.failure_class and a.evidence:
            print(f"    {a.evidence[-1]}")
    print("timeline:")
    for e in events:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e.at))} [{e.kind}] {e.message}")
    return 0


def rejection_file(rejected: Path | None, name: str) -> Path | None:
    """jobs/rejected/NAME[.toml].error for a name that never became a job."""
    if rejected is None:
        return None
    for candidate in (f"{name}.error", f"{name}.toml.error"):
        path = rejected / candidate
        if path.is_file():
            return path
    return None


def no_job(name: str, rejected: Path | None) -> int:
    """Exit 3: no such job; for a file the intake rejected, where its reasons are."""
    error = rejection_file(rejected, name)
    if error is None:
        print(f"mkd: no job {name!r}", file=sys.stderr)
        return 3
    text = error.read_text(encoding="utf-8", errors="replace")
    print(f"mkd: no job {name!r}: the file was rejected; {error}:", file=sys.stderr)
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    return 3
