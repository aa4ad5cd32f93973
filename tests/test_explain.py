"""`mkd explain` on real logs: class, evidence, inferred exit status and device count, progress."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from mkd.client.explain import explain_file, explain_main, explain_report, infer_exit, infer_multi_device
from mkd.mimickit.classify import ExitInfo

FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8", errors="replace")


def run_json(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert explain_main([str(FIXTURES / name), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report, dict)
    return report


def test_class_a_from_a_bare_log(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", capsys)
    assert report["failure"] == "startup_multi_device"
    assert report["multi_device"] is True
    assert (report["exit"]["returncode"], report["exit"]["signal"]) == (137, None)
    assert "EXIT_CODE" in report["exit"]["inferred_from"]
    assert "Process Process-1:" in report["evidence"]
    assert report["progress"] is None


def test_human_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert explain_main([str(FIXTURES / "cpu_fail_agent_missing_key.stdout.txt")]) == 0
    text = capsys.readouterr().out
    assert "verdict: config_error (permanent)" in text
    assert "  | KeyError: 'discount'" in text
    assert "exit status: 1 (the log ends with a traceback)" in text
    assert "multi-device: no" in text


def test_progress_and_test_result() -> None:
    train = explain_report(FIXTURES / "gpu_h100_2gpu_train_nenv4096_default_nccl.stdout.txt")
    assert (train["failure"], train["verdict"]) == (None, "ok")
    assert train["progress"] == {"iteration": 9, "samples": 2621440, "wall_time_h": 0.0102}
    assert train["multi_device"] is True
    test = explain_file(FIXTURES / "gpu_h100_1gpu_test_nenv256.stdout.txt")
    assert "verdict: ok" in test
    assert "test result: Mean Return 6.262083530426025, Mean Episode Length 17.4296875, Episodes 256" in test


@pytest.mark.parametrize(
    ("name", "failure", "exit_info"),
    [
        ("cpu_1proc_sigINT_default_disposition.stdout.txt", "killed", ExitInfo(None, signal.SIGINT)),
        ("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt", "nan_divergence", ExitInfo(None, 15)),
        ("cpu_2proc_master_port_in_use_second_run.stdout.txt", "port_in_use", None),
        ("gpu_h100_1gpu_train_nenv2048_timeout55s.stdout.txt", "timeout", ExitInfo(124, None)),
        ("gpu_h100_1gpu_fail_cuda_oom_hog_after_first_iteration_nenv4096.stdout.txt", "cuda_oom", ExitInfo(1, None)),
        ("cpu_fail_num_envs_not_int.stdout.txt", "config_error", ExitInfo(1, None)),
        ("cpu_2proc_sigTERM_process_group.stdout.txt", None, None),
    ],
)
def test_real_logs(name: str, failure: str | None, exit_info: ExitInfo | None) -> None:
    report = explain_report(FIXTURES / name)
    assert report["failure"] == failure
    assert infer_exit(read(name))[0] == exit_info


def test_unknown_exit_is_said_so() -> None:
    text = explain_file(FIXTURES / "cpu_2proc_sigTERM_process_group.stdout.txt")
    assert "verdict: no failure signature found" in text
    assert "exit status: unknown" in text
    assert "progress: iteration 0, samples 512" in text


def test_multi_device_inference_and_override() -> None:
    assert infer_multi_device(read("cpu_2proc_train_nenv8.stdout.txt"))
    assert infer_multi_device(read("gpu_h100_2gpu_kill9_root.stdout.txt"))
    assert not infer_multi_device(read("cpu_train_nenv16_quick.stdout.txt"))
    oom = "Building deepmimic env\nWarp CUDA error 2: out of memory (in function wp_alloc_device_async, x)\n"
    assert infer_exit(oom) == (None, "the log does not end with a traceback or an exit marker")


def test_multi_device_override(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(
        "Building deepmimic env\nWarp CUDA error 2: out of memory (in function wp_alloc_device_async, x)\n"
        "Traceback (most recent call last):\nRuntimeError: Failed to allocate 34406400 bytes on device 'cuda:0'\n"
    )
    assert "verdict: cuda_oom" in explain_file(log)
    assert "verdict: startup_multi_device" in explain_file(log, multi_device=True)


def test_a_traceback_followed_by_more_output_is_not_the_end() -> None:
    exit_info, why = infer_exit(read("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt")[:-20])
    assert exit_info is None, why


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert explain_main([str(tmp_path / "absent.log")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert explain_main([str(tmp_path)]) == 2


def test_a_huge_log_is_read_by_its_head_and_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mkd.client.explain._HEAD_BYTES", 200)
    monkeypatch.setattr("mkd.client.explain._TAIL_BYTES", 5000)
    report = explain_report(FIXTURES / "gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt")
    assert report["multi_device"] is True, "the head still shows 'Using master port'"
    assert report["exit"]["returncode"] == 137
    assert report["failure"] == "startup_multi_device", "the tail keeps the child's last words"
    assert report["evidence"] == ["RuntimeError: Failed to allocate 34406400 bytes on device 'cuda:1'"]


def test_explain_reads_the_exit_status_mkd_recorded_beside_the_log(tmp_path: Path) -> None:
    from mkd.client.explain import explain_report

    console = tmp_path / "console.log"
    console.write_text("Setting seed: 1\nBuilding deepmimic env\n")
    (tmp_path / "exit.json").write_text('{"returncode": null, "signal": 9}')
    report = explain_report(console)
    assert report["exit"]["signal"] == 9 and report["exit"]["inferred_from"] == "exit.json beside the log"


def attempt_folder(root: Path, log_fixture: str, exit_record: dict[str, Any]) -> Path:
    """runs/JOB/attempts/01-train/ as mkd lays it out: console.log and the shim's exit.json."""
    folder = root / "runs" / "job-1" / "attempts" / "01-train"
    folder.mkdir(parents=True)
    (folder / "console.log").write_text(read(log_fixture))
    (folder / "exit.json").write_text(json.dumps(exit_record))
    return folder / "console.log"


STOPPED = {"returncode": None, "signal": 15, "stop_requested": True, "lingering_workers": 0}


def test_a_run_mkd_stopped_is_never_blamed_on_something_outside_mkd(tmp_path: Path) -> None:
    console = attempt_folder(tmp_path, "cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", STOPPED)
    report = explain_report(console)
    assert (report["failure"], report["verdict"], report["stopped_by_mkd"]) == (None, "stopped by mkd", True)
    text = explain_file(console)
    assert "outside mkd" not in text and "stopped by: mkd (reason not recorded beside the log)" in text
    assert "exit status: killed by signal 15 (exit.json beside the log, sent by mkd)" in text
    not_stopped = attempt_folder(
        tmp_path / "b", "cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", {**STOPPED, "stop_requested": False}
    )
    assert explain_report(not_stopped)["failure"] == "killed", "a signal mkd did not send is still 'killed'"


def test_the_jobs_status_json_gives_the_daemons_class(tmp_path: Path) -> None:
    console = attempt_folder(tmp_path, "cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", STOPPED)
    attempt = {"dir": str(console.parent), "state": "ended", "failure_class": "timeout", "outcome": "stopped"}
    (console.parent.parent.parent / "status.json").write_text(json.dumps({"attempts": [attempt]}))
    report = explain_report(console)
    assert (report["failure"], report["stop_reason"], report["recorded_in"]) == ("timeout", "timeout", "status.json")
    assert report["permanent"] is False and "time limit" in report["remedy"]
    assert "stopped by: mkd (timeout)" in explain_file(console)


def test_a_signature_in_the_log_of_a_stopped_run_is_still_shown(tmp_path: Path) -> None:
    """mkd kills a class A root at once; without a record the log's own cause is the verdict."""
    console = attempt_folder(
        tmp_path, "gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", {**STOPPED, "signal": 9}
    )
    report = explain_report(console)
    assert report["failure"] == "startup_multi_device" and report["stopped_by_mkd"] is True


def test_a_lingering_rank_is_found_as_peer_lost(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16: rank 1's TCPStore Broken pipe warnings after its root died; explain found nothing."""
    report = run_json("gpu_h100_2gpu_kill9_root.stdout.txt", capsys)
    assert report["failure"] == "peer_lost" and report["permanent"] is False
    assert "kills the whole process group" in report["remedy"]
    assert any("Broken pipe" in line for line in report["evidence"])
