"""mkd on a real one-node Slurm cluster (tests/slurm/cluster.py): real mkd daemons submit, watch,
stop and re-adopt real Slurm jobs that run the fake MimicKit under mkd's shim.

Skipped only where the Slurm packages are not installed and CI is not set; under CI=true a
missing cluster is a failure (CI installs slurm-wlm, slurmdbd, mariadb-server and munge).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mkd.client.doctor_slurm import slurm_checks
from mkd.config import DaemonConfig, ExecutorConfig
from tests.harness import Home, mimickit_job, new_token, processes_with_token, wait_for
from tests.slurm.cluster import NODE, Cluster, ClusterError, missing_binaries


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    why = ""
    missing = missing_binaries()
    if missing:
        why = f"the Slurm test cluster needs {', '.join(missing)} (apt-get install slurm-wlm slurmdbd mariadb-server)"
    elif os.geteuid() != 0:
        why = "the Slurm test cluster needs root (slurmd, mknod of the fake GPUs)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    # Not under pytest's basetemp: another pytest run of the same user may prune it while the cluster runs.
    base = Path(tempfile.mkdtemp(prefix="mkd-slurm-"))
    try:
        started = Cluster(base).start()
    except ClusterError as error:
        pytest.fail(f"the Slurm test cluster did not start: {error}")
    yield started
    started.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def slurm_home(tmp_path: Path, cluster: Cluster) -> Iterator[Home]:
    """A daemon home whose [executor] is the test cluster; no process or Slurm job outlives the test."""
    extra = f'[executor]\nkind = "slurm"\npartition = "{cluster.partition}"\n'
    home = Home(tmp_path, new_token(), extra_config=extra)
    home.env.update(cluster.env)
    yield home
    left = squeue(cluster, "-t", "pending,running")
    if left:
        slurm(cluster, "scancel", *left)
    leaked = home.cleanup()
    assert not leaked, f"processes left behind by the test's runs: {leaked}"
    assert not left, f"Slurm jobs left behind: {left}"


def slurm(cluster: Cluster, *argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=cluster.client_env(), timeout=30, check=True)
    return done.stdout


def squeue(cluster: Cluster, *args: str) -> list[str]:
    return slurm(cluster, "squeue", "-h", "-o", "%i", *args).split()


def sacct(cluster: Cluster, job_id: str) -> dict[str, str]:
    out = slurm(cluster, "sacct", "--parsable2", "-n", "-X", "-j", job_id, "-o", "JobID,JobName,State,AllocTRES")
    for line in out.splitlines():
        jid, name, state, tres = line.split("|")
        if jid == job_id:
            return {"name": name, "state": state, "tres": tres}
    return {}


def slurm_id(attempt: dict[str, Any]) -> str:
    return str(json.loads(attempt["run_ref"])["slurm_job_id"])


def job(*, num_envs: int = 8, devices: str = '["cpu"]', env: str = "", retry: str = "", stages: str = "") -> str:
    return mimickit_job(num_envs=num_envs, devices=devices, env=env, retry=retry, stages=stages)


TRAIN_TEST = """
[[stages]]
name = "train"
kind = "train"
max_samples = 2560

[[stages]]
name = "test"
kind = "test"
num_envs = 1
test_episodes = 10
model_from = "train"
"""


def long_train(samples: int = 256 * 400) -> str:
    return f'[[stages]]\nkind = "train"\nmax_samples = {samples}\n'


def running_job(home: Home, cluster: Cluster, name: str) -> str:
    """Wait until the job's attempt runs as a Slurm job; its Slurm id."""
    home.wait_state(name, "running", timeout=30)
    attempt = wait_for(lambda: [a for a in home.attempts(name) if a["run_ref"]], 20, f"{name}'s attempt")[-1]
    job_id = slurm_id(attempt)
    wait_for(lambda: job_id in squeue(cluster, "-t", "running"), 20, f"Slurm job {job_id} running")
    wait_for(lambda: home.child_pid(name) is not None, 20, f"{name}'s run started")
    return job_id


def test_fast_path_train_then_test_through_slurm(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop("fast.toml", job(stages=TRAIN_TEST))
    slurm_home.wait_state("fast", "succeeded", timeout=60)
    attempts = slurm_home.attempts("fast")
    assert [a["stage_label"] for a in attempts] == ["train", "test"]
    for attempt in attempts:
        # slurmctld hands finished jobs to slurmdbd asynchronously: until it has, sacct may show a
        # placeholder record (name "allocation") for a job that ended within a second
        name = f"mkd:fast:{Path(attempt['dir']).name}"
        record = wait_for(
            lambda a=attempt, n=name: (r := sacct(cluster, slurm_id(a))).get("name") == n and r, 20, f"{name} in sacct"
        )
        assert record["state"] == "COMPLETED", record
        folder = Path(attempt["dir"])
        assert json.loads((folder / "exit.json").read_text())["returncode"] == 0
    assert len({slurm_id(a) for a in attempts}) == 2
    shown = json.loads(slurm_home.mkd("status", "fast", "--json", check=True).stdout)["attempts"]
    assert [a["slurm_job_id"] for a in shown] == [slurm_id(a) for a in attempts]  # the join key for node metrics
    last = slurm_id(attempts[-1])
    report = (slurm_home.root / "runs" / "fast" / "report.md").read_text()
    assert f"(Slurm job {slurm_id(attempts[0])})" in report and f"(Slurm job {last})" in report
    with urllib.request.urlopen(f"http://127.0.0.1:{slurm_home.metrics_port()}/metrics", timeout=10) as response:
        info = [line for line in response.read().decode().splitlines() if line.startswith("mkd_job_info{")]
    mine = [line for line in info if 'job_id="fast"' in line]
    assert len(mine) == 1 and f'slurm_job_id="{last}"' in mine[0] and f'node="{NODE}"' in mine[0], info
    test_console = (Path(attempts[1]["dir"]) / "console.log").read_text()
    assert "Mean Return" in test_console
    assert (Path(attempts[0]["dir"]) / "out" / "model.pt").exists()


def test_max_running_still_caps_the_jobs_mkd_has_in_slurm(tmp_path: Path, cluster: Cluster) -> None:
    extra = f'max_running = 1\n[executor]\nkind = "slurm"\npartition = "{cluster.partition}"\n'
    home = Home(tmp_path, new_token(), extra_config=extra)
    home.env.update(cluster.env)
    try:
        home.start()
        for name in ("first", "second"):
            home.drop(f"{name}.toml", job(stages=long_train(256 * 20)))
        for name in ("first", "second"):
            home.wait_state(name, "succeeded", timeout=60)
        (first,), (second,) = home.attempts("first"), home.attempts("second")
        assert second["started_at"] >= first["ended_at"], "the second job went to Slurm only after the first ended"
    finally:
        assert not home.cleanup()


def test_two_gpu_job_gets_both_gpus_and_the_next_waits_with_slurms_reason(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop("dual.toml", job(devices='["cuda:0", "cuda:1"]', stages=long_train()))
    job_id = running_job(slurm_home, cluster, "dual")
    env = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{slurm_home.child_pid('dual')}/environ").read_text().split("\0")
        if "=" in item
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["SLURM_JOB_ID"] == job_id
    wait_for(lambda: "gres/gpu=2" in sacct(cluster, job_id).get("tres", ""), 20, "sacct's AllocTRES gres/gpu=2")
    granted = wait_for(lambda: slurm_home.attempts("dual")[0]["params"].get("granted_gpus"), 10, "granted GPUs")
    assert granted == ["0", "1"]
    slurm_home.drop("single.toml", job(devices='["cuda:0"]', stages=long_train(2560)))
    status = wait_for(
        lambda: (out := slurm_home.mkd("status", "single").stdout) and "waiting: Slurm says Resources" in out and out,
        20,
        "Slurm's reason in mkd status",
    )
    assert status.startswith("single: running (waiting: Slurm says Resources)"), status
    assert "mkdnode:gpu0,1" in slurm_home.mkd("status").stdout  # the table's devices: what Slurm gave
    slurm_home.mkd("cancel", "dual", check=True)
    slurm_home.wait_state("dual", "cancelled", timeout=30)
    slurm_home.wait_state("single", "succeeded", timeout=60)
    assert "the executor gave it GPU(s) 0" in slurm_home.timeline("single")


def test_cuda_oom_steps_num_envs_down_the_ladder_on_slurm(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop(
        "oom.toml",
        job(num_envs=256, devices='["cuda:0"]', env='FAKE_MK_FAIL = "oom_above=128"', retry="ladder = [256, 128, 64]",
            stages='[[stages]]\nkind = "train"\nmax_samples = 20480\n'),
    )  # fmt: skip
    slurm_home.wait_state("oom", "succeeded", timeout=60)
    first, second = slurm_home.attempts("oom")
    assert first["failure_class"] == "cuda_oom"
    assert any("Failed to allocate" in line for line in first["evidence"])
    argv = json.loads((Path(second["dir"]) / "command.json").read_text())["argv"]
    assert second["params"]["num_envs"] == 128 and argv[argv.index("--num_envs") + 1] == "128"
    assert "cuda_oom: step num_envs down from 256 to 128" in slurm_home.timeline("oom")
    assert slurm_id(first) != slurm_id(second)
    assert sacct(cluster, slurm_id(first))["state"] == "COMPLETED"  # the shim's exit.json holds the failure


def test_cancel_leaves_no_process_not_even_a_setsid_child(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop(
        "escape.toml",
        '[workload]\nkind = "command"\nargv = ["sh", "-c", "setsid sleep 300 & sleep 300"]\n'
        '[watch]\nstop_grace = "2s"\n',
    )
    slurm_home.wait_state("escape", "running", timeout=30)

    def run_processes() -> list[int]:  # the daemon carries the token too
        return [p for p in processes_with_token(slurm_home.token) if slurm_home.proc and p != slurm_home.proc.pid]

    wait_for(lambda: len(run_processes()) >= 3, 20, "sh, its sleep and the setsid sleep")
    job_id = slurm_id(slurm_home.attempts("escape")[0])
    slurm_home.mkd("cancel", "escape", check=True)
    slurm_home.wait_state("escape", "cancelled", timeout=30)
    wait_for(lambda: not run_processes(), 15, "no process of the run left")
    wait_for(lambda: job_id not in squeue(cluster), 15, "the Slurm job gone")
    record = json.loads((Path(slurm_home.attempts("escape")[0]["dir"]) / "exit.json").read_text())
    assert record["stop_requested"], "the shim stopped the run and recorded it"


def test_daemon_sigkill_and_restart_readopts_the_same_slurm_job(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop("adopt.toml", job(stages=long_train(256 * 160)))
    job_id = running_job(slurm_home, cluster, "adopt")
    slurm_home.kill()
    time.sleep(0.5)
    slurm_home.start()
    slurm_home.wait_state("adopt", "succeeded", timeout=60)
    (attempt,) = slurm_home.attempts("adopt")
    assert slurm_id(attempt) == job_id and attempt["outcome"] == "succeeded"
    assert f"re-adopted attempt 1 (Slurm job {job_id}" in slurm_home.timeline("adopt")
    name = f"mkd:adopt:{Path(attempt['dir']).name}"
    names = slurm(cluster, "sacct", "--parsable2", "-n", "-X", "--name", name, "-o", "JobID")
    assert names.split() == [job_id], "one submission only"


def test_a_slurmctld_restart_during_a_run_is_survived(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    slurm_home.drop("ctld.toml", job(stages=long_train(256 * 160)))
    job_id = running_job(slurm_home, cluster, "ctld")
    away = cluster.restart_slurmctld()
    assert away < 30
    slurm_home.wait_state("ctld", "succeeded", timeout=60)
    (attempt,) = slurm_home.attempts("ctld")
    assert slurm_id(attempt) == job_id and attempt["outcome"] == "succeeded"
    assert sacct(cluster, job_id)["state"] == "COMPLETED"


def test_slurm_time_limit_is_its_own_class_and_a_long_run_resumes(slurm_home: Home, cluster: Cluster) -> None:
    slurm_home.start()
    stages = '[[stages]]\nkind = "long_run"\nmax_samples = 102400\n'
    slurm_home.drop("limit.toml", job(stages=stages, env='FAKE_MK_ITER_SECONDS = "0.1"'))
    job_id = running_job(slurm_home, cluster, "limit")
    wait_for(lambda: (Path(slurm_home.attempts("limit")[0]["dir"]) / "out" / "model.pt").exists(), 20, "model.pt")
    slurm(cluster, "scontrol", "update", f"jobid={job_id}", "EndTime=now")  # the job reaches its time limit now
    wait_for(lambda: len(slurm_home.attempts("limit")) >= 2, 40, "a second attempt")
    first, second = slurm_home.attempts("limit")[:2]
    assert first["failure_class"] == "slurm_timeout"
    assert any(f"Slurm job {job_id} ended TIMEOUT" in line for line in first["evidence"])
    assert sacct(cluster, job_id)["state"] == "TIMEOUT"
    assert second["params"]["model_file"] == str(Path(first["dir"]) / "out" / "model.pt")
    assert "slurm_timeout: run again unchanged" in slurm_home.timeline("limit")
    slurm_home.mkd("cancel", "limit", check=True)
    slurm_home.wait_state("limit", "cancelled", timeout=30)


def test_a_refused_submission_is_classified_not_unknown(tmp_path: Path, cluster: Cluster) -> None:
    home = Home(tmp_path, new_token(), extra_config='[executor]\nkind = "slurm"\npartition = "no-such-partition"\n')
    home.env.update(cluster.env)
    try:
        home.start()
        home.drop("refused.toml", job(stages=long_train(2560), retry="max_attempts = 2"))
        home.wait_state("refused", "failed", timeout=30)
        attempts = home.attempts("refused")
        assert [a["failure_class"] for a in attempts] == ["slurm_submit_refused"] * 2
        assert "invalid partition" in attempts[0]["evidence"][0].lower()
    finally:
        assert not home.cleanup()


def test_stop_signal_reaches_the_shim_not_only_slurms_steps(slurm_home: Home, cluster: Cluster) -> None:
    """mkd cancel of a run that ignores SIGTERM: the shim's grace, then its SIGKILL; exit.json written."""
    slurm_home.start()
    slurm_home.drop("stubborn.toml", job(env='FAKE_MK_FAIL = "ignore_sigterm"', stages=long_train()))
    running_job(slurm_home, cluster, "stubborn")
    started = time.monotonic()
    slurm_home.mkd("cancel", "stubborn", check=True)
    slurm_home.wait_state("stubborn", "cancelled", timeout=30)
    assert time.monotonic() - started >= 1.5, "the job's stop_grace (2 s) passes before the kill"
    (attempt,) = slurm_home.attempts("stubborn")
    record = json.loads((Path(attempt["dir"]) / "exit.json").read_text())
    assert record["stop_requested"] and record["signal"] == signal.SIGKILL


def test_doctor_checks_the_commands_accounting_and_the_partition(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    good = ExecutorConfig(kind="slurm", partition=cluster.partition)
    lines = [c.render() for c in slurm_checks(DaemonConfig(executor=good))]
    assert lines[0].startswith("[  ok] Slurm commands found: sbatch, squeue, sacct, scancel, scontrol, sinfo"), lines
    assert "[  ok] Slurm accounting answers (sacct)" in lines
    assert any(line.startswith(f"[  ok] partition {cluster.partition}: up, 1 node(s), GRES gpu:2") for line in lines)
    bad = ExecutorConfig(kind="slurm", partition="nope", gres="gpu")
    checks = slurm_checks(DaemonConfig(executor=bad))
    assert [c.level for c in checks][-1] == "fail" and "partition 'nope' does not exist" in checks[-1].what
    assert slurm_checks(DaemonConfig()) == []  # the local executor: nothing to check
