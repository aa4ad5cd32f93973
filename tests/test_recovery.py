"""Each failure class, driven through a real daemon into the fake MimicKit: the classification,
the next attempt's exact changed parameter, and the final outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Home, mimickit_job, wait_for
from tests.nvml_fixtures import build_fake_nvml, nvml_env


def job(
    *,
    devices: str = '["cuda:0"]',
    num_envs: int = 64,
    env: str = "",
    retry: str = "",
    watch: str = "",
    stages: str = '[[stages]]\nkind = "train"\nmax_samples = 20480\n',
) -> str:
    return mimickit_job(devices=devices, num_envs=num_envs, env=env, retry=retry, watch=watch, stages=stages)


def once(home: Home, mode: str) -> str:
    return f'FAKE_MK_FAIL = "{mode}"\nFAKE_MK_FAIL_ONCE_FILE = "{home.root / "failed-once"}"'


@pytest.fixture
def gpu_home(home: Home) -> Home:
    home.start(env=nvml_env(build_fake_nvml(), {"FAKE_NVML_GPUS": 2}))
    return home


def attempts(home: Home, name: str) -> list[dict[str, Any]]:
    return home.attempts(name)


def argv_of(attempt: dict[str, Any]) -> list[str]:
    return list(json.loads((Path(attempt["dir"]) / "command.json").read_text())["argv"])


def env_of(attempt: dict[str, Any]) -> dict[str, str]:
    return dict(json.loads((Path(attempt["dir"]) / "command.json").read_text())["env"])


def test_cuda_oom_steps_num_envs_down_the_ladder(gpu_home: Home) -> None:
    gpu_home.drop("oom.toml", job(num_envs=256, env='FAKE_MK_FAIL = "oom_above=128"', retry="ladder = [256, 128, 64]"))
    gpu_home.wait_state("oom", "succeeded", timeout=30)
    first, second = attempts(gpu_home, "oom")
    assert first["failure_class"] == "cuda_oom"
    assert any("Failed to allocate" in line for line in first["evidence"])
    assert second["params"]["num_envs"] == 128 and "--num_envs" in argv_of(second)
    assert argv_of(second)[argv_of(second).index("--num_envs") + 1] == "128"
    assert "cuda_oom: step num_envs down from 256 to 128" in gpu_home.timeline("oom")


def test_class_a_multi_device_startup_nccl_then_ladder_then_pass(gpu_home: Home) -> None:
    gpu_home.drop(
        "dual.toml",
        job(devices='["cuda:0", "cuda:1"]', num_envs=256, env='FAKE_MK_FAIL = "oom_above=128"',
            retry="ladder = [256, 128]\nmax_attempts = 5"),
    )  # fmt: skip
    gpu_home.wait_state("dual", "succeeded", timeout=40)
    first, second, third = attempts(gpu_home, "dual")
    assert first["failure_class"] == "startup_multi_device"
    assert "Process Process-1:" in first["evidence"]
    assert first["outcome"] == "stopped", "the hung root is killed at once, not waited for"
    assert second["params"]["nccl_preset"] == "runbook" and second["params"]["num_envs"] == 256
    assert env_of(second)["NCCL_P2P_DISABLE"] == "1" and "NCCL_P2P_DISABLE" not in env_of(first)
    assert second["failure_class"] == "startup_multi_device"
    assert third["params"]["num_envs"] == 128 and third["params"]["nccl_preset"] == "runbook"
    assert third["params"]["gpus"] == 2
    report = gpu_home.report("dual")
    assert "apply the NCCL preset 'runbook'" in report and "NCCL preset applied: yes (runbook)" in report


def test_ladder_spent_falls_back_to_one_device(gpu_home: Home) -> None:
    gpu_home.drop(
        "fb.toml",
        job(devices='["cuda:0", "cuda:1"]', num_envs=128, env=once(gpu_home, "nccl_init"),
            retry='ladder = [128]\non = { startup_multi_device = "single_device" }'),
    )  # fmt: skip
    gpu_home.wait_state("fb", "succeeded", timeout=30)
    first, second = attempts(gpu_home, "fb")
    assert first["failure_class"] == "startup_multi_device"
    assert second["params"]["gpus"] == 1 and argv_of(second).count("cuda:0") == 1 and "cuda:1" not in argv_of(second)


def test_class_d_nccl_abort_is_killed_within_5_s(gpu_home: Home) -> None:
    gpu_home.drop(
        "abort.toml",
        job(num_envs=128, env=once(gpu_home, "nccl_abort_at=3"), retry="ladder = [128, 64]",
            watch='stall_timeout = "10m"'),
    )  # fmt: skip
    gpu_home.wait_state("abort", "succeeded", timeout=30)
    first, second = attempts(gpu_home, "abort")
    assert first["failure_class"] == "nccl_abort_hang"
    console = Path(first["dir"]) / "console.log"
    signature_at = console.stat().st_mtime  # nothing is printed after the abort lines
    assert first["ended_at"] - signature_at < 5.0
    assert second["params"]["num_envs"] == 64
    assert (Path(first["dir"]) / "postmortem" / "processes.txt").exists()
    assert (Path(first["dir"]) / "postmortem" / "gpus.txt").read_text().strip()


def test_port_in_use_takes_a_new_port(home: Home) -> None:
    home.start()
    home.drop("port.toml", job(devices='["cpu", "cpu"]', env=once(home, "port_in_use")))
    home.wait_state("port", "succeeded", timeout=30)
    first, second = attempts(home, "port")
    assert first["failure_class"] == "port_in_use"
    assert first["params"]["master_port"] != second["params"]["master_port"]
    assert "port_in_use: take a new master port" in home.timeline("port")


def test_visualize_glsl_failure_retries_with_mesa_overrides(home: Home) -> None:
    home.start(env={"DISPLAY": ":99"})
    stages = '[[stages]]\nkind = "visualize"\n'
    home.drop("vis.toml", job(devices='["cpu"]', env='FAKE_MK_FAIL = "glsl"', stages=stages))
    home.wait_state("vis", "succeeded", timeout=30)
    first, second = attempts(home, "vis")
    assert first["failure_class"] == "visualize_gl"
    assert second["params"]["mesa"] is True
    assert env_of(second)["MESA_GLSL_VERSION_OVERRIDE"] == "330"
    assert "--visualize" in argv_of(second) and argv_of(second)[argv_of(second).index("--visualize") + 1] == "true"


def test_visualize_without_display_is_skipped_with_reason(home: Home) -> None:
    env = {k: v for k, v in home.env.items() if k != "DISPLAY"}
    home.env = env
    home.start(env={"PATH": "/usr/bin:/bin"})
    stages = '[[stages]]\nkind = "train"\nmax_samples = 512\n[[stages]]\nkind = "visualize"\n'
    home.drop("novis.toml", job(devices='["cpu"]', stages=stages))
    home.wait_state("novis", "succeeded", timeout=30)
    assert len(attempts(home, "novis")) == 1
    report = home.report("novis")
    assert "- 2-visualize: status: skipped: no DISPLAY and no virtual display" in report


def test_stall_is_caught_within_stall_timeout_plus_5_s(home: Home) -> None:
    home.start()
    home.drop("stall.toml", job(devices='["cpu"]', env=once(home, "stall_at=3"), watch='stall_timeout = "1s"'))
    home.wait_state("stall", "succeeded", timeout=30)
    first, second = attempts(home, "stall")
    assert first["failure_class"] == "stall"
    last_table_at = (Path(first["dir"]) / "console.log").stat().st_mtime
    assert first["ended_at"] - last_table_at < 1.0 + 5.0
    assert second["params"] == {**first["params"], "master_port": second["params"]["master_port"]}


def test_nan_divergence_is_stopped_within_an_iteration_and_not_retried(home: Home) -> None:
    home.start()
    env = 'FAKE_MK_FAIL = "nan_at=2"\nFAKE_MK_ITER_SECONDS = "0.5"'
    home.drop("nan.toml", job(devices='["cpu"]', env=env, stages=(
        '[[stages]]\nkind = "train"\nmax_samples = 1000000\n')))  # fmt: skip
    home.wait_state("nan", "failed", timeout=30)
    (first,) = attempts(home, "nan")
    assert first["failure_class"] == "nan_divergence"
    assert first["progress"]["iteration"] <= 3
    assert "retrying cannot fix this" in home.job("nan")["reason"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("mode", "klass"),
    [("env_mismatch", "env_mismatch"), ("missing_motion", "config_error")],
)
def test_permanent_errors_are_not_retried(home: Home, mode: str, klass: str) -> None:
    home.start()
    home.drop("perm.toml", job(devices='["cpu"]', env=f'FAKE_MK_FAIL = "{mode}"'))
    home.wait_state("perm", "failed", timeout=30)
    (first,) = attempts(home, "perm")
    assert first["failure_class"] == klass


def test_long_run_exit_resumes_from_model_with_remaining_samples(home: Home) -> None:
    home.start()
    stages = '[[stages]]\nkind = "long_run"\nmax_samples = 38400\n'
    home.drop(
        "long.toml",
        job(devices='["cpu"]', num_envs=100, env=once(home, "crash_at=6"), retry="ladder = [100, 50]", stages=stages),
    )
    home.wait_state("long", "succeeded", timeout=40)
    first, second = attempts(home, "long")
    assert first["failure_class"] == "long_run_exited"
    assert second["params"]["num_envs"] == 50, "one change: num_envs down"
    assert second["params"]["model_file"] == str(Path(first["dir"]) / "out" / "model.pt")
    done = first["progress"]["samples"]
    assert second["params"]["max_samples"] == 38400 - done
    status_json = home.root / "runs" / "long" / "status.json"
    wait_for(lambda: json.loads(status_json.read_text())["state"] == "succeeded", 5, "status.json to catch up")


def test_crash_loop_breaker(home: Home) -> None:
    home.start()
    home.drop(
        "loop.toml",
        job(devices='["cpu"]', env='FAKE_MK_FAIL = "cublas_oom"',
            retry='max_attempts = 10\nmax_no_progress = 2\non = { cuda_oom = "retry" }'),
    )  # fmt: skip
    home.wait_state("loop", "failed", timeout=30)
    assert len(attempts(home, "loop")) == 2
    assert "2 attempts in a row without progress (crash-loop breaker)" in home.job("loop")["reason"]  # type: ignore[index]


def test_retries_exhausted_keeps_unknown_evidence(home: Home) -> None:
    home.start()
    home.drop("crash.toml", job(devices='["cpu"]', env='FAKE_MK_FAIL = "crash_at=2"', retry="max_attempts = 2"))
    home.wait_state("crash", "failed", timeout=30)
    tried = attempts(home, "crash")
    assert len(tried) == 2 and all(a["failure_class"] == "unknown" for a in tried)
    assert tried[-1]["evidence"], "the last lines of the log are kept"
    wait_for(lambda: "retries exhausted (2 of 2 attempts)" in home.job("crash")["reason"], 5, "reason")  # type: ignore[index]
