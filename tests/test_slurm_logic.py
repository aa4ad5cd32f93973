"""The Slurm executor's pure parts as tables: sbatch's command line, squeue/sacct parsing, how a job's
end maps onto an exit record and a failure class, the [executor] config."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import pytest

from mkd.config import DaemonConfig
from mkd.engine import ExitRecord, LaunchSpec
from mkd.executors import build_executor
from mkd.executors.base import LaunchRequest
from mkd.executors.local import LocalExecutor
from mkd.executors.slurm import (
    SlurmExecutor,
    SlurmSettings,
    end_record,
    parse_queue,
    parse_sacct,
    pending_text,
    sbatch_argv,
    slurm_time,
)
from mkd.jobfile import JobFileError, load_text
from mkd.policy import DEFAULT_STEPS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (timedelta(seconds=1), "0-00:01:00"),
        (timedelta(minutes=90), "0-01:30:00"),
        (timedelta(days=2, seconds=61), "2-00:02:00"),
    ],
)
def test_slurm_time_rounds_up_to_minutes(limit: timedelta, expected: str) -> None:
    assert slurm_time(limit) == expected


def _request(gpus: int) -> LaunchRequest:
    spec = LaunchSpec(["python", "run.py"], {}, "/m", Path("/r/a/01-train/console.log"), 30.0, 0, 3)
    return LaunchRequest("job1", 1, "1-train", Path("/r/a/01-train"), spec, gpus)


def test_sbatch_argv() -> None:
    settings = SlurmSettings("gpu", "lab", "hi", timedelta(hours=2), ("--mem=8G",), "gpu")
    argv = sbatch_argv(settings, _request(2), Path("/r/a/01-train/slurm.sh"))
    assert argv[:2] == ["sbatch", "--parsable"] and argv[-2:] == ["--mem=8G", "/r/a/01-train/slurm.sh"]
    for item in ("--job-name=mkd:job1:01-train", "--nodes=1", "--gres=gpu:2", "--partition=gpu", "--account=lab",
                 "--qos=hi", "--time=0-02:00:00", "--output=/r/a/01-train/console.log", "--no-requeue"):  # fmt: skip
        assert item in argv
    plain = sbatch_argv(SlurmSettings("p"), _request(0), Path("/s"))
    assert not [a for a in plain if a.startswith(("--gres", "--account", "--qos", "--time"))]


def test_parsing_squeue_and_sacct() -> None:
    queue = parse_queue("12|PENDING|Resources|\n13|RUNNING|None|node7\n")
    assert queue["12"].state == "PENDING" and queue["12"].reason == "Resources" and queue["13"].node == "node7"
    acct = parse_sacct("12|CANCELLED by 0|0:15|node7\n13|TIMEOUT|0:0|node7\n14|COMPLETED|0:0|n\n")
    assert acct == {
        "12": ("CANCELLED", "0:15", "node7"),
        "13": ("TIMEOUT", "0:0", "node7"),
        "14": ("COMPLETED", "0:0", "n"),
    }
    assert pending_text("Resources") == "Slurm says Resources"
    assert pending_text("(Priority)") == "Slurm says Priority"
    assert pending_text("None") == "Slurm has not started it yet"


SHIM_EXIT = ExitRecord(3, None, False, 0, None)


@pytest.mark.parametrize(
    ("state", "recorded", "stopped", "failure", "returncode", "sig", "lost"),
    [
        ("COMPLETED", SHIM_EXIT, False, None, 3, None, False),  # the shim's exit.json is exact
        ("TIMEOUT", SHIM_EXIT, False, "slurm_timeout", 3, None, False),
        ("NODE_FAIL", None, False, "slurm_node_fail", None, None, False),
        ("BOOT_FAIL", None, False, "slurm_node_fail", None, None, False),
        ("PREEMPTED", None, False, "slurm_preempted", None, None, False),
        ("OUT_OF_MEMORY", None, False, "slurm_oom", None, None, False),
        ("DEADLINE", None, False, "slurm_timeout", None, None, False),
        ("CANCELLED", None, True, None, None, int(signal.SIGKILL), False),  # mkd's scancel before the shim ran
        ("CANCELLED", None, False, None, None, int(signal.SIGKILL), False),  # someone else's scancel: killed
        ("FAILED", None, False, None, 1, None, False),  # the batch script failed before the shim started
        ("COMPLETED", None, False, None, None, None, True),  # no exit.json: lost
    ],
)
def test_end_record(
    state: str, recorded: ExitRecord | None, stopped: bool, failure: str | None, returncode: int | None,
    sig: int | None, lost: bool,
) -> None:  # fmt: skip
    code = "1:0" if state == "FAILED" else "0:0"
    record = end_record(state, code, recorded, stopped, "7")
    assert (record.executor_failure, record.returncode, record.signal, record.lost) == (failure, returncode, sig, lost)
    if failure:
        assert record.executor_evidence == (f"Slurm job 7 ended {state} (exit code {code})",)


def test_every_slurm_failure_class_has_a_policy_row() -> None:
    for name in ("slurm_node_fail", "slurm_preempted", "slurm_timeout", "slurm_oom", "slurm_submit_refused"):
        assert DEFAULT_STEPS[name]


def test_executor_config() -> None:
    assert isinstance(build_executor(DaemonConfig().executor), LocalExecutor)
    config = load_text(DaemonConfig, (REPO / "deploy" / "slurm" / "mkd.toml").read_text(), "mkd.toml")
    executor = build_executor(config.executor)
    assert isinstance(executor, SlurmExecutor) and executor.settings.partition == "gpu"
    assert not executor.places_gpus
    for text, needle in (
        ('[executor]\nkind = "slurm"\n', "needs partition"),
        ('[executor]\nkind = "slurm"\npartition = "gpu"\nnodes = 2\n', "nodes"),
        ('[executor]\nkind = "k8s"\n', "kind"),
    ):
        with pytest.raises(JobFileError, match=needle):
            load_text(DaemonConfig, text, "mkd.toml")
