"""Supervision with real processes, the real shim and a real daemon, against the fake MimicKit.

Covers: a job runs to completion; runs survive a SIGKILLed daemon and are re-adopted
(same PID, one copy, progress continues); cancel and timeout leave no process, workers
included; each multi-device attempt gets its own free master port; two jobs never share
a GPU (through the faked NVML boundary).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.harness import Home, wait_for
from tests.nvml_fixtures import build_fake_nvml, nvml_env

MK = """
[workload]
kind = "mimickit"
arg_file = "args/deepmimic_humanoid_ppo_args.txt"
engine_config = "data/engines/newton_engine.yaml"
devices = {devices}
num_envs = {num_envs}

[env]
{env}

[[stages]]
kind = "train"
max_samples = {max_samples}
{stage_extra}

[watch]
stop_grace = "2s"
"""


def mk_job(
    devices: str = '["cpu"]', num_envs: int = 8, max_samples: int = 2560, env: str = "", stage_extra: str = ""
) -> str:
    return MK.format(devices=devices, num_envs=num_envs, max_samples=max_samples, env=env, stage_extra=stage_extra)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def group_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid and fields[0] != b"Z":
                out.append(int(entry))
    return out


def test_mimickit_job_runs_to_completion_with_progress(home: Home) -> None:
    home.start()
    home.drop("train.toml", mk_job(max_samples=8 * 32 * 10))
    home.wait_state("train", "succeeded")
    (attempt,) = home.attempts("train")
    assert attempt["progress"]["samples"] == 2560 and attempt["progress"]["iteration"] == 9
    command = json.loads((Path(attempt["dir"]) / "command.json").read_text())
    assert command["env"]["PYTHONUNBUFFERED"] == "1"
    assert command["argv"][1:] == [
        "mimickit/run.py", "--arg_file", "args/deepmimic_humanoid_ppo_args.txt",
        "--engine_config", "data/engines/newton_engine.yaml", "--mode", "train", "--visualize", "false",
        "--devices", "cpu", "--num_envs", "8", "--max_samples", "2560", "--out_dir", f"{attempt['dir']}/out",
    ]  # fmt: skip
    assert (Path(attempt["dir"]) / "out" / "model.pt").exists()
    report = home.report("train")
    assert "- 1-train: model.pt: yes" in report and "- 1-train: log.txt: yes" in report
    home.stop()


def test_daemon_sigkill_run_survives_and_is_readopted(home: Home) -> None:
    home.start()
    home.drop("long.toml", mk_job(max_samples=8 * 32 * 120, env='FAKE_MK_ITER_SECONDS = "0.05"'))
    home.wait_state("long", "running")
    pid = wait_for(lambda: home.child_pid("long"), 10, "the run's pid")
    wait_for(lambda: (home.attempts("long")[0]["progress"].get("iteration") or 0) >= 3, 10, "progress")
    home.kill()
    assert alive(pid), "the run outlives a SIGKILLed daemon"
    before = home.attempts("long")[0]["progress"]["iteration"]
    home.start()
    wait_for(lambda: "re-adopted attempt 1" in home.timeline("long"), 10, "re-adoption")
    wait_for(lambda: (home.attempts("long")[0]["progress"].get("iteration") or 0) > before + 5, 15, "progress resumes")
    attempts = home.attempts("long")
    assert len(attempts) == 1, "no second copy started"
    assert home.child_pid("long") == pid and alive(pid)
    home.wait_state("long", "succeeded", timeout=30)
    assert home.attempts("long")[0]["returncode"] == 0, "the exit status of a re-adopted run is its real one"
    home.stop()


def test_run_that_ends_while_daemon_is_down_gets_its_real_exit_status(home: Home) -> None:
    home.start()
    once = home.root / "crashed-once"
    env = f'FAKE_MK_FAIL = "crash_at=6"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
    home.drop("crash.toml", mk_job(max_samples=8 * 32 * 40, env=env) + '\n[retry]\nbackoff = "100ms"\n')
    home.wait_state("crash", "running")
    wait_for(lambda: home.child_pid("crash"), 10, "pid")
    home.kill()
    attempt_dir = Path(home.attempts("crash")[0]["dir"])
    wait_for((attempt_dir / "exit.json").exists, 15, "the shim to record the exit")
    home.start()
    home.wait_state("crash", "succeeded", timeout=30)
    first, second = home.attempts("crash")
    assert first["returncode"] == 1 and first["failure_class"] == "unknown"
    assert "RuntimeError" in " ".join(first["evidence"])
    assert second["returncode"] == 0
    assert "ended while mkd was down" in home.timeline("crash")
    home.stop(signal.SIGTERM)


def test_cancel_leaves_no_process_including_lingering_workers(home: Home) -> None:
    home.start()
    home.drop(
        "dual.toml",
        mk_job(devices='["cpu", "cpu"]', max_samples=10**9, env='FAKE_MK_FAIL = "linger,ignore_sigterm"'),
    )
    home.wait_state("dual", "running")
    pid = wait_for(lambda: home.child_pid("dual"), 10, "pid")
    wait_for(lambda: len(group_of(pid)) >= 2, 10, "the worker process")
    members = group_of(pid)
    assert home.mkd("cancel", "dual").returncode == 0
    home.wait_state("dual", "cancelled", timeout=20)
    wait_for(lambda: not any(alive(p) for p in members), 10, "every process of the group to be gone")
    attempt = home.attempts("dual")[0]
    assert attempt["outcome"] == "stopped" and attempt["signal"] == signal.SIGKILL, "SIGTERM ignored -> SIGKILL"
    home.stop()


def test_stage_timeout_kills_the_group(home: Home) -> None:
    home.start()
    home.drop(
        "slow.toml",
        mk_job(devices='["cpu", "cpu"]', max_samples=10**9, env='FAKE_MK_FAIL = "hang"', stage_extra='timeout = "1s"')
        + "\n[retry]\nmax_attempts = 1\n",
    )
    home.wait_state("slow", "failed", timeout=30)
    attempt = home.attempts("slow")[0]
    assert attempt["failure_class"] == "timeout"
    assert "stage timeout of 1 s reached" in attempt["evidence"][0]
    child = json.loads((Path(attempt["dir"]) / "child.json").read_text())
    assert not group_of(child["pgid"])
    assert (Path(attempt["dir"]) / "postmortem" / "log_tail.txt").exists()
    home.stop()


def test_workers_die_with_their_root(home: Home) -> None:
    home.start()
    home.drop(
        "orphan.toml",
        mk_job(devices='["cpu", "cpu"]', max_samples=10**9, env='FAKE_MK_FAIL = "linger"')
        + "\n[retry]\nmax_attempts = 1\n",
    )
    home.wait_state("orphan", "running")
    pid = wait_for(lambda: home.child_pid("orphan"), 10, "pid")
    wait_for(lambda: len(group_of(pid)) >= 2, 10, "the worker")
    workers = [p for p in group_of(pid) if p != pid]
    os.kill(pid, signal.SIGKILL)  # the root dies, as after an OOM kill
    home.wait_state("orphan", "failed", timeout=20)
    assert not any(alive(w) for w in workers), "no worker outlives the root"
    assert "outlived the root; killed" in home.timeline("orphan")
    home.stop()


def test_each_multi_device_attempt_gets_a_free_port(home: Home) -> None:
    home.start()
    for name in ("a", "b"):
        home.drop(f"{name}.toml", mk_job(devices='["cpu", "cpu"]', max_samples=8 * 2 * 32 * 30))
    for name in ("a", "b"):
        home.wait_state(name, "succeeded", timeout=30)
    ports = []
    for name in ("a", "b"):
        attempt = home.attempts(name)[0]
        argv = json.loads((Path(attempt["dir"]) / "command.json").read_text())["argv"]
        port = int(argv[argv.index("--master_port") + 1])
        console = (Path(attempt["dir"]) / "console.log").read_text()
        assert f"Using master port: {port}" in console
        ports.append(port)
    assert ports[0] != ports[1]
    home.stop()


def test_two_jobs_never_share_a_gpu(home: Home) -> None:
    lib = build_fake_nvml()
    home.start(env=nvml_env(lib, {"FAKE_NVML_GPUS": 2}))
    job = mk_job(devices='["cuda:0"]', max_samples=8 * 32 * 30)
    for name in ("g1", "g2", "g3"):
        home.drop(f"{name}.toml", job)
    names = ("g1", "g2", "g3")
    wait_for(lambda: all(home.state(n) for n in names), 15, "all three jobs taken")
    wait_for(lambda: sum(home.state(n) == "running" for n in names) == 2, 15, "two jobs running")
    running = [n for n in ("g1", "g2", "g3") if home.state(n) == "running"]
    waiting = next(n for n in ("g1", "g2", "g3") if n not in running)
    assert home.state(waiting) == "queued"
    gpus = [home.attempts(n)[0]["params"]["gpu_uuids"] for n in running]
    assert len(gpus[0]) == len(gpus[1]) == 1 and gpus[0] != gpus[1]
    wait_for(lambda: "waiting for 1 free GPU(s)" in home.timeline(waiting), 5, "the waiting reason")
    for name in ("g1", "g2", "g3"):
        home.wait_state(name, "succeeded", timeout=30)
    env = json.loads((Path(home.attempts(waiting)[0]["dir"]) / "command.json").read_text())["env"]
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    home.stop()


def test_gpu_busy_with_another_process_is_skipped(home: Home) -> None:
    lib = build_fake_nvml()
    fake = {"FAKE_NVML_GPUS": 2, "FAKE_NVML_PROCS_0": "999999:60000"}  # GPU0: 60 GB held by a stranger
    home.start(env=nvml_env(lib, fake))
    home.drop("g.toml", mk_job(devices='["cuda:0"]', max_samples=8 * 32 * 3))
    home.wait_state("g", "succeeded", timeout=20)
    assert home.attempts("g")[0]["params"]["gpu_indices"] == [1]
    home.stop()


def test_sighup_reloads_the_config_and_job_defaults(home: Home) -> None:
    home.start()
    home.config.write_text(home.config.read_text() + '\n[retry]\nmax_attempts = 1\nbackoff = "0s"\n')
    assert home.proc is not None
    home.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: config reloaded" in home.log.read_text(), 10, "the reload")
    home.drop("once.toml", mk_job(env='FAKE_MK_FAIL = "crash_at=1"'))
    home.wait_state("once", "failed", timeout=20)
    assert len(home.attempts("once")) == 1, "the reloaded default max_attempts = 1 applies to a job that is silent"
    home.config.write_text(home.config.read_text() + "\nbogus = 1\n")
    home.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded, keeping the old one" in home.log.read_text(), 10, "the refusal")
    assert home.proc.poll() is None
    home.stop()


def test_scheduling_across_eight_gpus(home: Home) -> None:
    """Eight simulated GPUs: single-GPU jobs spread one per GPU, a 4-GPU job takes four free ones,
    and what does not fit waits (the scheduling an 8-GPU host needs; issue: scale check)."""
    home.start(env=nvml_env(build_fake_nvml(), {"FAKE_NVML_GPUS": 8}))
    long = 8 * 32 * 80
    home.drop("four.toml", mk_job(devices='["cuda:0", "cuda:1", "cuda:2", "cuda:3"]', max_samples=long))
    home.wait_state("four", "running")
    for i in range(5):
        home.drop(f"one{i}.toml", mk_job(devices='["cuda:0"]', max_samples=long))
        home.wait_state(f"one{i}", "queued", "running")
    names = [f"one{i}" for i in range(5)] + ["four"]
    wait_for(lambda: sum(home.state(n) == "running" for n in names) == 5, 20, "five jobs placed")
    placed = {n: home.attempts(n)[0]["params"]["gpu_indices"] for n in names if home.state(n) == "running"}
    used = [i for gpus in placed.values() for i in gpus]
    assert len(used) == len(set(used)), f"a GPU given twice: {placed}"
    waiting = [n for n in names if n not in placed]
    assert waiting == ["one4"] and len(used) == 8, "FIFO: the fifth single-GPU job waits for a free GPU"
    wait_for(lambda: "waiting for" in home.timeline(waiting[0]), 5, "the reason it waits")
    for name in names:
        home.wait_state(name, "succeeded", timeout=60)
    four = home.attempts("four")[0]
    assert len(four["params"]["gpu_indices"]) == 4
    env = json.loads((Path(four["dir"]) / "command.json").read_text())["env"]
    assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 4
    home.stop()


def test_a_slow_loop_still_reacts_at_once_to_a_runs_end_and_a_backoffs_end(home: Home) -> None:
    """The loop ticks once a second by default (tick = 30 s here): a run's end (SIGCHLD from its
    shim) and the end of a retry's backoff wake it, so neither waits for the next tick."""
    home.config.write_text(home.config.read_text().replace('tick = "50ms"', 'tick = "30s"'), encoding="utf-8")
    home.start()
    once = home.root / "crashed-once"
    env = f'FAKE_MK_FAIL = "crash_at=2"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
    home.drop("crash.toml", mk_job(max_samples=8 * 32 * 4, env=env) + '\n[retry]\nbackoff = "2s"\n')
    home.wait_state("crash", "succeeded", timeout=20)  # two attempts, a 2 s backoff: far under one 30 s tick
    first, second = home.attempts("crash")
    assert first["returncode"] == 1 and second["returncode"] == 0
    home.stop(signal.SIGTERM)
