"""The read models of the views: the rows `mkd status` shows and the per-job attempt summary the
daemon's published view needs, each one indexed query over the store's tables."""

from __future__ import annotations

import json
from typing import Any

from mkd.store import LIVE_SQL, Store


def status_rows(store: Store, finished_limit: int | None) -> list[dict[str, Any]]:
    """Live jobs and the newest finished ones, with their latest attempt: what `mkd status` shows.

    One indexed query, no spec parsing, so it stays fast with 10,000 jobs in history.
    """
    live = LIVE_SQL
    limit = "" if finished_limit is None else f" LIMIT {int(finished_limit)}"
    sql = (
        "WITH shown AS ("
        f" SELECT * FROM (SELECT seq FROM jobs WHERE state IN {live})"
        f" UNION SELECT * FROM (SELECT seq FROM jobs WHERE state NOT IN {live} ORDER BY seq DESC{limit}))"
        " SELECT j.job_id, j.state, j.reason, j.submitted_at, j.stage_index, j.plan,"
        " a.number, a.stage_label, a.params, a.progress"
        " FROM jobs j JOIN shown s ON s.seq = j.seq"
        " LEFT JOIN attempts a ON a.id = (SELECT MAX(id) FROM attempts WHERE job_id = j.job_id)"
        " ORDER BY j.seq"
    )
    out = []
    for row in store.query(sql):
        plan = json.loads(row["plan"])
        params = json.loads(row["params"]) if row["params"] else {}
        out.append(
            {
                "job_id": row["job_id"],
                "state": row["state"],
                "reason": row["reason"],
                "submitted_at": row["submitted_at"],
                "stage": row["stage_label"] or f"stage {row['stage_index'] + 1}",
                "attempt": row["number"],
                # the shown attempt's num_envs, of the same stage as STAGE (the plan may be the next stage's)
                "num_envs": params.get("num_envs") if row["number"] else plan.get("num_envs"),
                "params": params,
                "progress": json.loads(row["progress"]) if row["progress"] else {},
            }
        )
    return out


def attempt_summaries(store: Store, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per job: attempts, retries (failed attempts another one followed), last failure, last progress.

    One grouped query over the given jobs, for the view the daemon publishes once a second.
    """
    if not job_ids:
        return {}
    marks = ",".join("?" * len(job_ids))
    sql = (
        "SELECT a.job_id, COUNT(*), SUM(a.failure_class IS NOT NULL AND a.id < m.last_id),"
        " (SELECT failure_class FROM attempts f WHERE f.job_id = a.job_id AND f.failure_class IS NOT NULL"
        "  ORDER BY f.id DESC LIMIT 1),"
        " l.progress, l.params, l.run_ref"
        f" FROM attempts a JOIN (SELECT job_id, MAX(id) AS last_id FROM attempts WHERE job_id IN ({marks})"
        " GROUP BY job_id) m ON m.job_id = a.job_id JOIN attempts l ON l.id = m.last_id GROUP BY a.job_id"
    )
    return {
        str(r[0]): {
            "attempts": int(r[1]),
            "retries": int(r[2] or 0),
            "last_failure": r[3],
            "progress": json.loads(r[4]),
            "params": json.loads(r[5]),
            "run_ref": json.loads(r[6] or "{}"),
        }
        for r in store.query(sql, job_ids)
    }
