"""`mkd status`'s row for a job: STAGE, NUM_ENVS and PROGRESS come from the same attempt, and the
rate shown is the run's median, not the last iteration's (issue 16: a finished job showed 22.9/s
against 56.5/s over its run, and a test stage's num_envs beside a train stage's label)."""

from __future__ import annotations

from pathlib import Path

from mkd.client.status_view import _progress
from mkd.memory import Plan
from mkd.states import JobState
from mkd.store import Store
from mkd.store_views import status_rows


def test_num_envs_and_rate_are_the_shown_attempts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "mkd.sqlite3")
    spec = {"workload": {"kind": "command", "argv": ["true"]}}
    store.insert_job(
        job_id="j", name="j", priority=0, source_file="j.toml", source_text="", spec=spec, claim_token="t", now=1.0
    )
    store.set_job_state("j", JobState.RUNNING, "started", 2.0)
    attempt = store.add_attempt(job_id="j", stage_index=0, stage_label="1-train", params=Plan(num_envs=4096),
                                dir=str(tmp_path), now=2.0)  # fmt: skip
    progress = {"iteration": 40, "samples": 5_000_000, "samples_per_second": 22.9, "median_samples_per_second": 56.5}
    store.update_attempt(attempt.id, progress=progress)
    store.update_job("j", 3.0, plan=Plan(num_envs=1, test_episodes=1))  # the next stage's plan
    (row,) = status_rows(store, None)
    assert (row["stage"], row["num_envs"]) == ("1-train", 4096)
    assert "56.5/s" in _progress(row["progress"]) and "22.9" not in _progress(row["progress"])
    store.close()
