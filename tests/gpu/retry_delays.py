"""Each retry's delay in a daemon home: the dead attempt's root exit (exit.json root_exit_at, when
its shim reaped it) -> the next attempt's child.json started_at, beside the backoff the daemon
announced ("next attempt in X s") and any "waiting for" event between them.

    python retry_delays.py HOME_DIR JOB_ID      # prints JSON
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import sys
from pathlib import Path


def read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main(home: str, job_id: str) -> dict[str, object]:
    conn = sqlite3.connect(f"file:{Path(home) / 'var' / 'mkd.sqlite3'}?mode=ro", uri=True)
    attempts = conn.execute(
        "SELECT id, dir, params, failure_class, evidence FROM attempts WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    events = [str(r[0]) for r in conn.execute("SELECT message FROM events WHERE job_id = ? ORDER BY id", (job_id,))]
    job = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    backoffs = [float(m) for e in events for m in re.findall(r"next attempt in ([0-9.]+) s", e)]
    rows = []
    for n, (_id, folder, params, failure, evidence) in enumerate(attempts):
        ended = read(Path(folder) / "exit.json")
        child = read(Path(folder) / "child.json")
        row: dict[str, object] = {
            "attempt": n + 1,
            "num_envs": json.loads(params).get("num_envs"),
            "gpu_indices": json.loads(params).get("gpu_indices"),
            "class": failure,
            "evidence": json.loads(evidence)[:3] if evidence else [],
            "root_pid": child.get("pid"),
            "started_at": child.get("started_at"),
            "root_exit_at": ended.get("root_exit_at"),
            "returncode": ended.get("returncode"),
        }
        rows.append(row)
    retries = []
    for before, after in itertools.pairwise(rows):
        if before["root_exit_at"] and after["started_at"]:
            delay = float(str(after["started_at"])) - float(str(before["root_exit_at"]))
            backoff = backoffs[len(retries)] if len(retries) < len(backoffs) else None
            over = None if backoff is None else round(delay - backoff, 3)
            retries.append(
                {
                    "after_attempt": before["attempt"],
                    "delay_s": round(delay, 3),
                    "announced_backoff_s": backoff,
                    "over_backoff_s": over,
                }
            )
    return {
        "job": job_id,
        "state": job[0] if job else None,
        "attempts": rows,
        "retries": retries,
        "waiting_events": [e for e in events if e.startswith("waiting for")],
        "events": events,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1))
