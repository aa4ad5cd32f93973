"""The operator's verbs against a real daemon: each through the CLI and through a control-file drop.

retry, pause/resume, priority, clean, wait, cancel of an unknown job, shutdown with no daemon,
stale and unknown control files, and the temp files a killed writer leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import Home, mimickit_job, wait_for

TRAIN = """
[[stages]]
name = "train"
kind = "train"
max_samples = {max_samples}
"""
TRAIN_TEST = (
    TRAIN
    + """
[[stages]]
name = "test"
kind = "test"
num_envs = 4
test_episodes = 2
model_from = "train"
"""
)
# needs a GPU the fake NVML does not have (none is loaded): waits in the queue, with a reason
WAITS_FOR_GPU = mimickit_job(devices='["cuda:0"]', stages=TRAIN.format(max_samples=2048))


def long_train(iter_seconds: str = "0.2") -> str:
    return mimickit_job(env=f'FAKE_MK_ITER_SECONDS = "{iter_seconds}"', stages=TRAIN.format(max_samples=10**8))


def fails_once(home: Home, stages: str = TRAIN.format(max_samples=1024)) -> str:
    once = home.root / "failed-once"
    env = f'FAKE_MK_FAIL = "missing_motion"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
    return mimickit_job(env=env, stages=stages)


def drop_control(home: Home, name: str, body: str = "") -> None:
    """A control file the documented way: written aside, renamed in."""
    control = home.root / "jobs" / "control"
    control.mkdir(parents=True, exist_ok=True)
    tmp = control / f".{name}.tmp"
    tmp.write_text(body)
    os.rename(tmp, control / name)


def control_events(home: Home, job_id: str | None = None) -> list[dict[str, object]]:
    conn = home.db()
    try:
        where = "job_id IS NULL" if job_id is None else "job_id = ?"
        args = () if job_id is None else (job_id,)
        rows = conn.execute(f"SELECT message, data FROM events WHERE kind = 'control' AND {where}", args).fetchall()
    finally:
        conn.close()
    return [{"message": r[0], **json.loads(r[1])} for r in rows]


def test_cancel_of_no_such_job_and_verbs_with_no_daemon(home: Home) -> None:
    home.start()
    home.drop("sleeper.toml", '[workload]\nkind = "command"\nargv = ["sleep", "600"]\n')
    home.wait_state("sleeper", "running")
    done = home.mkd("cancel", "NOSUCH")
    assert done.returncode == 3 and "no job 'NOSUCH'" in done.stderr
    assert not (home.root / "jobs" / "control" / "NOSUCH.cancel").exists()
    assert home.mkd("cancel", "sleeper").returncode == 0
    home.wait_state("sleeper", "cancelled")
    again = home.mkd("cancel", "sleeper")
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert home.stop() == 0
    # no daemon: nothing is dropped, and the CLI says why
    down = home.mkd("shutdown")
    assert down.returncode == 0 and "no mkd daemon is running" in down.stderr
    refused = home.mkd("pause", "sleeper")
    assert refused.returncode == 4 and "nothing holds" in refused.stderr
    assert list((home.root / "jobs" / "control").iterdir()) == []
    status = home.mkd("status")
    assert "mkd is not running" in status.stderr and "these rows are as of" in status.stderr
    assert "sleeper" in status.stdout


def test_a_control_file_older_than_the_daemon_is_reported_and_removed(home: Home) -> None:
    control = home.root / "jobs" / "control"
    control.mkdir(parents=True)
    (control / "shutdown").write_text("")  # what `mkd shutdown` with no daemon used to leave
    old = time.time() - 3600
    os.utime(control / "shutdown", (old, old))
    (control / "bogus.name").write_text("")
    home.start()
    wait_for(lambda: not any(control.iterdir()), 10, "the control files to be removed")
    time.sleep(1.0)
    assert home.proc is not None and home.proc.poll() is None, "the daemon obeyed a stale shutdown file"
    events = control_events(home)
    stale = [e for e in events if e["file"] == "shutdown"]
    assert stale and stale[0]["ok"] is False and "before this daemon started" in str(stale[0]["message"])
    unknown = [e for e in events if e["file"] == "bogus.name"]
    assert unknown and "unknown control file" in str(unknown[0]["message"])
    assert "control file shutdown: not obeyed" in home.log.read_text()
    assert home.mkd("shutdown").returncode == 0  # a fresh one is obeyed
    assert home.proc.wait(15) == 0


def test_temp_files_of_killed_writers_are_removed_at_start(home: Home) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    rejected = home.root / "jobs" / "rejected"
    attempt = home.root / "runs" / "old" / "attempts" / "01-train"
    (attempt / "out").mkdir(parents=True)
    rejected.mkdir(parents=True)
    (home.root / "var").mkdir()
    leftovers = [
        rejected / f".bad.toml.error.{pid}.tmp",
        home.root / "var" / f".metrics.port.{pid}.tmp",
        attempt / f".exit.json.{pid}.tmp",
        home.root / "runs" / "old" / f".status.json.{pid}.tmp",
    ]
    kept = [
        attempt / "out" / f".model.pt.{pid}.tmp",  # MimicKit's folder: never touched
        rejected / f".bad.toml.error.{os.getpid()}.tmp",  # its writer is alive
        rejected / ".notes.tmp",  # not mkd's pattern
        home.incoming / f".fresh.toml.{pid}.tmp",  # incoming: a person's write, under a minute old
    ]
    for path in leftovers + kept:
        path.write_text("half")
    home.start()
    assert [p for p in leftovers if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert f".bad.toml.error.{pid}.tmp" in home.log.read_text()
    home.stop()


def test_pause_and_resume_a_queued_and_a_running_job(home: Home) -> None:
    home.start()
    home.drop("gpu.toml", WAITS_FOR_GPU)
    home.drop("long.toml", long_train())
    wait_for(lambda: "GPU" in str((home.job("gpu") or {}).get("reason")), 20, "gpu to wait for a GPU")
    table = home.mkd("status").stdout
    assert "WHY" in table.splitlines()[0]
    gpu_line = next(line for line in table.splitlines() if line.startswith("gpu "))
    assert "GPU" in gpu_line.split("queued", 1)[1], table
    # a queued job: held at once, by the CLI
    assert home.mkd("pause", "gpu").returncode == 0
    assert home.state("gpu") == "held"
    waited = home.mkd("wait", "gpu", "--timeout", "1s")
    assert waited.returncode == 5 and "gpu is held" in waited.stderr and "mkd resume gpu" in waited.stderr
    # a running job: stopped at its checkpoint, then held; by a file drop
    wait_for(lambda: (home.attempts("long") or [{}])[-1].get("progress", {}).get("iteration", 0) >= 2, 30, "progress")
    drop_control(home, "long.pause")
    home.wait_state("long", "held", timeout=30)
    first = home.attempts("long")[-1]
    assert first["stop_reason"] == "paused" and first["failure_class"] == "paused"
    plan = json.loads(str(home.job("long")["plan"]))  # type: ignore[index]
    assert plan["model_file"].endswith("out/model.pt")
    held = home.mkd("status").stdout
    assert "paused at attempt 1" in next(line for line in held.splitlines() if line.startswith("long "))
    not_held = home.mkd("resume", "NOSUCH")
    assert not_held.returncode == 3
    assert home.mkd("resume", "long").returncode == 0
    home.wait_state("long", "running", timeout=30)
    wait_for(lambda: len(home.attempts("long")) == 2, 20, "a second attempt")
    argv = json.loads((Path(home.attempts("long")[-1]["dir"]) / "command.json").read_text())["argv"]
    assert "--model_file" in argv and argv[argv.index("--model_file") + 1] == plan["model_file"]
    drop_control(home, "gpu.resume")
    home.wait_state("gpu", "queued")
    assert "resumed by control file gpu.resume" in home.timeline("gpu")
    home.mkd("cancel", "long", check=True)
    home.mkd("cancel", "gpu", check=True)
    home.wait_state("long", "cancelled", timeout=30)
    home.stop()


def test_priority_by_cli_and_by_file(home: Home) -> None:
    home.start()
    home.drop("gpu.toml", WAITS_FOR_GPU)
    home.wait_state("gpu", "queued")
    done = home.mkd("priority", "gpu", "7")
    assert done.returncode == 0, done.stderr
    assert "priority 0 -> 7" in done.stdout
    assert home.job("gpu")["priority"] == 7  # type: ignore[index]
    drop_control(home, "gpu.priority", "priority = -3\n")
    wait_for(lambda: home.job("gpu")["priority"] == -3, 10, "priority -3")  # type: ignore[index]
    bad = home.mkd("priority", "gpu", "lots")
    assert bad.returncode == 2 and "whole number" in bad.stderr
    drop_control(home, "gpu.priority", "priority = 99999\n")
    wait_for(lambda: any("-1000 to 1000" in str(e["message"]) for e in control_events(home)), 10, "refusal")
    assert home.job("gpu")["priority"] == -3  # type: ignore[index]
    home.mkd("cancel", "gpu", check=True)
    home.stop()


def test_retry_with_a_change_from_a_stage_and_by_file(home: Home) -> None:
    home.start()
    home.drop("flaky.toml", fails_once(home, TRAIN_TEST.format(max_samples=1024)))
    home.wait_state("flaky", "failed", timeout=30)
    done = home.mkd("retry", "flaky", "--set", "num_envs=4", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert home.state("flaky") == "succeeded"
    attempts = home.attempts("flaky")
    assert attempts[1]["params"]["num_envs"] == 4
    timeline = home.timeline("flaky")
    assert "failed -> queued: retry by control file flaky.retry from stage train (num_envs=4; failed:" in timeline
    refused = home.mkd("retry", "flaky")
    assert refused.returncode == 1 and "only a failed or cancelled job" in refused.stderr
    bad = home.mkd("retry", "flaky", "--set", "color=blue")
    assert bad.returncode == 2 and "cannot be changed by a retry" in bad.stderr
    # a cancelled job, from its second stage, by a file drop
    home.drop("two.toml", long_train("0.05"))
    home.wait_state("two", "running")
    home.mkd("cancel", "two", check=True)
    home.wait_state("two", "cancelled", timeout=30)
    drop_control(home, "two.retry", 'from_stage = "nosuch"\n')
    wait_for(lambda: any("no stage 'nosuch'" in str(e["message"]) for e in control_events(home, "two")), 10, "no")
    drop_control(home, "two.retry", "[set]\nmax_samples = 1024\n")
    home.wait_state("two", "succeeded", timeout=30)
    assert home.attempts("two")[-1]["params"]["max_samples"] == 1024
    # the same by the CLI, from a stage given by number, on a cancelled job
    home.drop("three.toml", long_train("0.05"))
    home.wait_state("three", "running")
    home.mkd("cancel", "three", check=True)
    home.wait_state("three", "cancelled", timeout=30)
    again = home.mkd("retry", "three", "--from-stage", "1", "--set", "max_samples=512", "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "from stage train (max_samples=512; cancelled" in home.timeline("three")
    home.stop()


def test_wait_clean_and_submit_wait(home: Home) -> None:
    home.start()
    good = home.root / "good.toml"
    good.write_text(mimickit_job(stages=TRAIN.format(max_samples=1024)))
    done = home.mkd("submit", str(good), "--name", "good.toml", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job good" in done.stdout and "good: succeeded" in done.stdout
    home.drop("bad.toml", fails_once(home))
    assert home.mkd("wait", "good", "bad").returncode == 1
    home.drop("slow.toml", long_train())
    home.wait_state("slow", "running")
    started = time.monotonic()
    timed = home.mkd("wait", "slow", "--timeout", "1s")
    assert timed.returncode == 5 and "still not finished after 1 s: slow" in timed.stderr
    assert time.monotonic() - started < 15
    assert home.mkd("wait", "NOSUCH").returncode == 3
    home.mkd("cancel", "slow", check=True)
    home.wait_state("slow", "cancelled", timeout=30)
    # clean: a dry run changes nothing; then only the failed ones go
    dry = home.mkd("clean", "--older-than", "0s", "--state", "failed", "--dry-run")
    assert "would remove bad (failed)" in dry.stdout and "1 job(s) would be removed" in dry.stdout
    assert home.job("bad") is not None
    cleaned = home.mkd("clean", "--older-than", "0s", "--state", "failed")
    assert cleaned.returncode == 0 and "removed 1 failed job(s)" in cleaned.stdout, cleaned.stderr
    assert home.job("bad") is None and not (home.root / "runs" / "bad").exists()
    assert not (home.root / "jobs" / "failed" / "bad.toml").exists()
    assert home.job("good") is not None and home.job("slow") is not None
    drop_control(home, "clean", 'older_than = "0s"\nstates = ["cancelled"]\n')
    wait_for(lambda: home.job("slow") is None, 10, "slow to be cleaned by a file drop")
    assert home.job("good") is not None
    bad_state = home.mkd("clean", "--state", "running")
    assert bad_state.returncode == 2 and "not finished states" in bad_state.stderr
    home.stop()


def test_stage_index_by_name_number_or_default() -> None:
    from mkd.control import Refused, _stage_index
    from mkd.spec import Stage

    stages = [Stage(kind="train", name="warm"), Stage(kind="test", name="check", test_episodes=1)]
    assert _stage_index(None, stages, 1) == 1
    assert _stage_index("check", stages, 0) == 1
    assert _stage_index("1", stages, 1) == 0
    assert _stage_index(2, stages, 0) == 1
    for bad in ("nosuch", 0, 3, "0"):
        try:
            _stage_index(bad, stages, 0)
        except Refused as why:
            assert "warm, check" in str(why)
        else:
            raise AssertionError(f"{bad!r} was taken")
