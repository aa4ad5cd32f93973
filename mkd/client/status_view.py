"""`mkd status` and `mkd logs`: read-only views of the store and the attempts' files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mkd.report import attempt_dict
from mkd.store import Store

RECENT_FINISHED = 20
COLUMNS = ("JOB", "STATE", "STAGE", "ATTEMPT", "DEVICES", "NUM_ENVS", "PROGRESS", "AGE")


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
    rate = progress.get("samples_per_second")
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
    for row in store.status_rows(None if show_all else RECENT_FINISHED):
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
            }
        )
    return out


def show_table(store: Store, *, as_json: bool, show_all: bool) -> int:
    data = rows(store, show_all)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    if not data:
        print("no jobs")
        return 0
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
        )
        for d in data
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def show_job(store: Store, name: str, *, as_json: bool) -> int:
    job = store.find_job(name)
    if job is None:
        print(f"mkd: no job {name!r}", file=sys.stderr)
        return 3
    attempts = store.attempts(job.job_id)
    events = store.events(job.job_id)
    if as_json:
        print(
            json.dumps(
                {
                    "job_id": job.job_id,
                    "state": job.state.value,
                    "reason": job.reason,
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


def _latest_console(store: Store, job_id: str, attempt: int | None) -> Path | None:
    attempts = store.attempts(job_id)
    if attempt is not None:
        attempts = [a for a in attempts if a.number == attempt]
    return Path(attempts[-1].dir) / "console.log" if attempts else None


def show_logs(store: Store, name: str, *, follow: bool, attempt: int | None) -> int:
    job = store.find_job(name)
    if job is None:
        print(f"mkd: no job {name!r}", file=sys.stderr)
        return 3
    path = _latest_console(store, job.job_id, attempt)
    if path is None:
        print(f"mkd: {job.job_id} has not started an attempt yet", file=sys.stderr)
        return 3
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        if not follow:
            return 0
        current = store.find_job(job.job_id)
        newer = _latest_console(store, job.job_id, attempt)
        if newer is not None and newer != path:
            path, offset = newer, 0
            print(f"\n--- {newer.parent.name} ---")
            continue
        if current is None or current.state.finished:
            return 0
        time.sleep(0.5)
