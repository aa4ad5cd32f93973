"""A real `mkd run` with real inotify: drops are taken fast, and SIGKILL at any moment loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.harness import Home, wait_for

JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'
BAD = '[workload]\nkind = "command"\nargv = ["true"]\nbogus = 1\n'


def test_drop_is_queued_and_runs(home: Home) -> None:
    home.start()
    home.drop("hello.toml", '[workload]\nkind = "command"\nargv = ["sh", "-c", "echo hello"]\n')
    home.wait_state("hello", "succeeded")
    status = json.loads(home.mkd("status", "--json", check=True).stdout)
    assert [(s["job"], s["state"]) for s in status] == [("hello", "succeeded")]
    assert (home.root / "jobs" / "done" / "hello.toml").exists()
    console = Path(home.attempts("hello")[0]["dir"]) / "console.log"
    assert console.read_text() == "hello\n"
    assert home.stop() == 0


def test_files_present_at_start_are_taken(home: Home) -> None:
    home.drop("early.toml", JOB)
    home.start()
    home.wait_state("early", "succeeded")
    home.stop()


def test_invalid_drop_is_rejected_with_error_file(home: Home) -> None:
    home.start()
    home.drop("bad.toml", BAD)
    error = home.root / "jobs" / "rejected" / "bad.toml.error"
    wait_for(error.exists, 10, "bad.toml.error")
    assert "bad.toml:4:1: workload.bogus: unknown key 'bogus'. Allowed here: argv, cwd, kind" in error.read_text()
    home.stop()


def test_submit_and_cancel_through_the_cli(home: Home) -> None:
    home.start()
    job = home.root / "sleeper.toml"
    job.write_text('[workload]\nkind = "command"\nargv = ["sleep", "600"]\n')
    done = home.mkd("submit", str(job))
    assert done.returncode == 0, done.stderr
    home.wait_state("sleeper", "running")
    pid = wait_for(lambda: home.child_pid("sleeper"), 10, "child pid")
    assert home.mkd("cancel", "sleeper").returncode == 0
    home.wait_state("sleeper", "cancelled")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the run to be gone")
    assert "cancel requested by control file sleeper.cancel" in home.timeline("sleeper")
    detail = home.mkd("status", "sleeper").stdout
    assert "sleeper: cancelled" in detail and "timeline:" in detail
    home.stop()


def _dropper(home: Home, names: list[str], stop: threading.Event) -> None:
    rng = random.Random(7)
    for name in names:
        if stop.is_set():
            return
        text = BAD if name.startswith("bad") else JOB
        if rng.random() < 0.5:
            home.drop(name, text)
        else:  # written in place, as `cp` would
            (home.incoming / name).write_text(text)
        time.sleep(rng.uniform(0.0, 0.03))


@pytest.mark.fault
def test_sigkill_at_random_moments_loses_no_file(home: Home) -> None:
    """105 SIGKILLs of a real daemon while files are dropped: each file ends in exactly one place."""
    names = [f"bad{i:03d}.toml" if i % 10 == 3 else f"job{i:03d}.toml" for i in range(300)]
    stop = threading.Event()
    dropper = threading.Thread(target=_dropper, args=(home, names, stop))
    dropper.start()
    rng = random.Random(11)
    kills = 0
    try:
        while kills < 105:
            home.start(ready=False)
            time.sleep(rng.uniform(0.05, 0.7))
            home.kill()
            kills += 1
    finally:
        stop.set()
        dropper.join()
    home.start()
    expected_jobs = {n[:-5] for n in names if n.startswith("job")}
    expected_bad = {n for n in names if n.startswith("bad")}

    def settled() -> bool:
        conn = home.db()
        try:
            ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs")]
        finally:
            conn.close()
        rejected = {p.name for p in (home.root / "jobs" / "rejected").iterdir() if p.suffix == ".toml"}
        return set(ids) == expected_jobs and rejected == expected_bad

    wait_for(settled, 60, "every file accounted for")
    conn = home.db()
    try:
        ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs")]
    finally:
        conn.close()
    assert len(ids) == len(set(ids)) == len(expected_jobs), "no job queued twice"
    assert not [p for p in home.incoming.iterdir() if not p.name.startswith(".")], "nothing left in incoming"
    assert not list((home.root / "var" / "claimed").iterdir()), "no claim left half-done"
    for name in expected_bad:
        assert (home.root / "jobs" / "rejected" / f"{name}.error").exists()
    print(f"\nkills={kills} files={len(names)} jobs={len(ids)} rejected={len(expected_bad)}")
    home.stop(signal.SIGTERM)
