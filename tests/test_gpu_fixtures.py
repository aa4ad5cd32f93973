"""Parser and classifier on outputs of real MimicKit runs made under mkd on two H100s
(tests/fixtures/gpu_h100; the job files are in tests/gpu/jobs, the scripts in tests/gpu)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mkd.client.explain import explain_file
from mkd.failures import FailureClass
from mkd.mimickit.classify import ExitInfo, classify, scan_live, split_lines
from mkd.mimickit.console import ConsoleParser
from mkd.mimickit.logtxt import parse_log_txt
from mkd.mimickit.results import parse_test_result
from tests.gpu.rates import steady_rates

FIXTURES = Path(__file__).parent / "fixtures" / "gpu_h100"


def text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8", errors="replace")


def rows(name: str) -> list:  # type: ignore[type-arg]
    parser = ConsoleParser()
    return parser.feed(text(name)) + parser.close()


def test_throughput_runs_by_hand_and_under_mkd_parse_alike() -> None:
    by_hand, under_mkd = rows("throughput_byhand_gpu0.console.log"), rows("throughput_mkd_gpu1.console.log")
    assert [r.iteration for r in by_hand] == [r.iteration for r in under_mkd] == list(range(10))
    assert by_hand[-1].samples == under_mkd[-1].samples == 1310720
    for name in ("throughput_byhand_gpu0.console.log", "throughput_mkd_gpu1.console.log"):
        rates = steady_rates(text(name))
        assert len(rates) == 7 and all(40_000 < r < 90_000 for r in rates)


def test_real_test_stage_result() -> None:
    result = parse_test_result(text("fast_path_02-test.console.log"))
    assert result is not None
    assert result.mean_return == 6.388124465942383 and result.episodes == 10
    assert result.mean_episode_length == 17.600000381469727


def test_missing_libgl_on_the_gpu_host_is_a_permanent_visualize_failure() -> None:
    found = classify(text("fast_path_03-visualize.console.log"), ExitInfo(1, None), stage_kind="visualize")
    assert found is not None and found.failure is FailureClass.VISUALIZE_GL and found.permanent
    assert any('Library "GL" not found' in line for line in found.evidence)
    assert "visualize_gl" in explain_file(FIXTURES / "fast_path_03-visualize.console.log")


def test_rank1_graph_oom_is_killed_live_then_classified_cuda_oom() -> None:
    log = text("dual_probe_01-probe.console.log")
    live = scan_live(split_lines(log))
    assert live is not None and live.failure is FailureClass.STARTUP_MULTI_DEVICE
    assert "Process Process-1:" in live.evidence
    final = classify(log, ExitInfo(1, None), multi_device=True, stage_kind="probe", had_progress=True)
    assert final is not None and final.failure is FailureClass.CUDA_OOM
    assert "Graph launch error" in final.evidence[-1]


def test_healthy_real_runs_raise_no_live_signature() -> None:
    for name in (
        "throughput_mkd_gpu1.console.log",
        "warmup_longrun_01-warmup.console.log",
        "warmup_longrun_02-longrun.console.log",
        "dual_probe_02-probe.console.log",
        "dual_probe_03-longrun.console.log",
    ):
        assert scan_live(split_lines(text(name))) is None, name
        assert classify(text(name), ExitInfo(0, None)) is None, name


def test_long_run_log_txt() -> None:
    table = parse_log_txt(text("warmup_longrun_02-longrun.log.txt"))
    assert [(r["Iteration"], r["Samples"]) for r in table] == [(0, 65536), (9, 655360)]


def test_metrics_scraped_during_the_dual_gpu_run() -> None:
    families = {f.name: f for f in text_string_to_metric_families(text("dual_metrics_scrape.txt"))}
    held = {s.labels["gpu"]: s.labels["job_id"] for s in families["mkd_gpu_job"].samples}
    assert held == {"0": "gpu-dual-probe", "1": "gpu-dual-probe"}
    memory = {(s.labels["gpu"], s.labels["job_id"]): s.value for s in families["mkd_gpu_process_memory_bytes"].samples}
    assert memory[("1", "")] > 70e9, "the other process holding GPU 1 is reported, owned by no job"
    assert memory[("0", "gpu-dual-probe")] > 1e9 and memory[("1", "gpu-dual-probe")] > 1e9
    assert all(0 <= s.value <= 1 for s in families["mkd_gpu_utilization_ratio"].samples)


def test_nvml_collector_matched_nvidia_smi() -> None:
    lines = text("dual_nvml_vs_nvidia-smi.tsv").splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        assert abs(int(row["mem_used_mib_mkd"]) - int(row["mem_used_mib_smi"])) <= 1
        assert row["mem_total_mib_mkd"] == row["mem_total_mib_smi"]
        assert abs(float(row["util_mkd"]) - float(row["util_smi"])) <= 5
        assert abs(float(row["power_w_mkd"]) - float(row["power_w_smi"])) <= 10


SESSION2 = Path(__file__).parent / "fixtures" / "gpu_h200_session2"


def test_gpu_memory_attributed_from_nvml_pids_matches_nvidia_smi() -> None:
    """tests/gpu/call5.sh on two H200s: a run by hand on one GPU, the same run under mkd on the
    other, then swapped. Each scrape gives the mkd job its own GPU's memory and leaves the hand-made
    run's unowned, and the per-process total is what nvidia-smi listed at the same moment."""
    expected = {"pair3": {"1": "throughput-gpu1", "0": ""}, "pair8": {"0": "throughput-gpu0", "1": ""}}
    for pair, owners in expected.items():
        scrape = (SESSION2 / f"{pair}.metrics.prom").read_text(encoding="utf-8")
        families = {f.name: f for f in text_string_to_metric_families(scrape)}
        samples = families["mkd_gpu_process_memory_bytes"].samples
        assert {s.labels["gpu"]: s.labels["job_id"] for s in samples} == owners
        apps = (SESSION2 / f"{pair}.compute_apps.csv").read_text(encoding="utf-8").splitlines()
        smi_mib = sum(int(line.split(",")[1].split()[0]) for line in apps if line.strip())
        assert abs(sum(s.value for s in samples) / 2**20 - smi_mib) <= 8, (pair, smi_mib)


def test_samples_per_second_under_mkd_within_2_percent_of_by_hand_at_the_same_moment() -> None:
    """The pairs ran at the same time on the two GPUs: by hand on GPU0 with mkd on GPU1, then swapped."""
    by_hand_gpu0, by_hand_gpu1, mkd_gpu0, mkd_gpu1 = json.loads((SESSION2 / "rates.json").read_text())
    for by_hand, under_mkd in ((by_hand_gpu0, mkd_gpu1), (by_hand_gpu1, mkd_gpu0)):
        ratio = under_mkd["median_samples_per_second"] / by_hand["median_samples_per_second"]
        assert ratio >= 0.98, (by_hand["log"], ratio)


# --- issue 19, what the CPUs allow: a real 2-process CPU run whose rank 1 dies in start-up -------
# tests/gpu/cpu_rank1_fails.py: devices = ["cpu", "cpu"] under mkd, rank 1's address space cut
# to 1000 MiB right after the root spawned it (a memory limit only one rank hits).

MIMICKIT_FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"
RANK1 = "cpu_2proc_fail_rank1_address_space_limit_under_mkd"


def test_real_cpu_rank1_start_up_failure_is_killed_live_within_5_s() -> None:
    log = (MIMICKIT_FIXTURES / f"{RANK1}.console.log").read_text(encoding="utf-8")
    live = scan_live(split_lines(log))
    assert live is not None, "rank 1's traceback must stop the run: the root would wait for it forever"
    assert "Process Process-1:" in log and "Failed to load the shared library" in log
    record = json.loads((MIMICKIT_FIXTURES / f"{RANK1}.mkd.json").read_text())
    assert record["exit_json"]["stop_requested"] is True and record["exit_json"]["signal"] == 15
    assert record["signature_to_root_killed_s"] < 5.0
    assert record["group_at_signature"], "the root and rank 1 were alive when the signature came"
    assert "env_mismatch" in record["mkd_status"][0], "what the mkd of that run said (class A now: next test)"


def test_the_same_run_by_hand_ran_on_for_minutes_after_rank_1_died() -> None:
    """Without mkd (cpu_rank1_fails_by_hand.py, same argv): the root kept building its env with rank 1
    a zombie, and only at its first broadcast, ~2 min later on 2 busy cores, gloo said the peer was gone."""
    record = json.loads((MIMICKIT_FIXTURES / "cpu_2proc_fail_rank1_address_space_limit_by_hand.json").read_text())
    stdout = (MIMICKIT_FIXTURES / "cpu_2proc_fail_rank1_address_space_limit_by_hand.stdout.txt").read_text()
    assert "Process Process-1:" in stdout and "Connection closed by peer" in stdout
    assert record["root_rc"] == 1
    alive = [s for s in record["samples"] if any(v.startswith("R ") and "run.py" in v for v in s["group"].values())]
    assert alive and alive[-1]["t_after_signature"] >= 100, "the root ran on >= 100 s after rank 1's traceback"
    assert any(v == "Z " for s in alive for v in s["group"].values()), "rank 1 a zombie the root never reaped"


def test_real_cpu_rank1_address_space_failure_is_class_a_not_an_environment_mismatch() -> None:
    log = (MIMICKIT_FIXTURES / f"{RANK1}.console.log").read_text(encoding="utf-8")
    found = classify(log, ExitInfo(None, 15), multi_device=True, stage_kind="train")
    assert found is not None and found.failure is FailureClass.STARTUP_MULTI_DEVICE and not found.permanent


# --- session 3 on one H200 (tests/gpu/s3_*.sh): issue 16 points 1 and 4 ---------------------------

H200 = Path(__file__).parent / "fixtures" / "gpu_h200_session3"


def h200(name: str) -> str:
    return (H200 / name).read_text(encoding="utf-8", errors="replace")


def test_h200_fast_path_visualize_passed_under_xvfb_run_with_a_mean_return() -> None:
    report = h200("fast_path.report.md")
    assert "- state: succeeded (stage visualize passed)" in report
    assert "- visualize: exit: returncode 0, signal None, outcome succeeded" in report
    console = h200("fast_path_03-visualize.console.log")
    result = parse_test_result(console)
    assert result is not None and result.mean_return == 6.523438453674316 and result.episodes == 1
    assert "- visualize: Mean Return: 6.523438453674316" in report
    assert classify(console, ExitInfo(0, None), stage_kind="visualize") is None
    assert scan_live(split_lines(console)) is None
    command = json.loads(h200("fast_path_03-visualize.command.json"))
    assert command["argv"][:2] == ["xvfb-run", "-a"], "no DISPLAY: mkd ran the stage under xvfb-run"
    assert command["argv"][command["argv"].index("--visualize") + 1] == "true"
    assert "DISPLAY" not in command["env_display"] and "__GLX_VENDOR_LIBRARY_NAME" not in command["env_display"]
    assert json.loads(h200("fast_path_03-visualize.exit.json"))["returncode"] == 0
    assert "llvmpipe" in h200("glxinfo_mesa.txt"), "the window's GL came from Mesa behind Xvfb"


def test_h200_test_stage_of_the_fast_path_printed_its_result() -> None:
    result = parse_test_result(h200("fast_path_02-test.console.log"))
    assert result is not None and result.episodes == 10 and result.mean_return == 6.2898383140563965


def test_h200_retries_on_a_gpu_another_process_holds_start_within_backoff_plus_1s() -> None:
    delays = json.loads(h200("shared_retry.delays.json"))
    assert delays["state"] == "succeeded" and not delays["waiting_events"]
    assert [a["class"] for a in delays["attempts"]] == ["cuda_oom", "cuda_oom", None]
    assert [a["num_envs"] for a in delays["attempts"]] == [4096, 2048, 1024]
    assert len(delays["retries"]) == 2
    for retry, n in zip(delays["retries"], (1, 2), strict=True):
        ended = json.loads(h200(f"shared_retry_0{n}-train.exit.json"))["root_exit_at"]
        started = json.loads(h200(f"shared_retry_0{n + 1}-train.child.json"))["started_at"]
        assert abs((started - ended) - retry["delay_s"]) < 0.01, "the delay is what the attempt files say"
        assert retry["delay_s"] < retry["announced_backoff_s"] + 1.0
        assert retry["delay_s"] < 3.0 * 1.1 + 1.0, "the job's 3 s backoff (+10 % jitter) + 1 s"
    for n in (1, 2):
        found = classify(h200(f"shared_retry_0{n}-train.console.log"), ExitInfo(1, None))
        assert found is not None and found.failure is FailureClass.CUDA_OOM
        assert "Warp CUDA error 2: out of memory" in found.evidence[0]
    hog = h200("shared_retry.hog.log")
    assert "held=139627MiB" in hog and "free_after=2999MiB" in hog, "another process held ~137 GiB throughout"


def test_h200_nvml_listed_each_attempt_root_beside_the_other_process() -> None:
    """What the retry's wait is keyed on: NVML's process list names the attempt's root (so mkd can
    attribute it to the attempt) next to the stranger's 140148 MiB."""
    listing = h200("shared_retry.nvml_processes.txt")
    hog_pid = h200("shared_retry.hog.log").split("pid=")[1].split()[0]
    assert f"{hog_pid}, 140148 MiB" in listing
    for n in (1, 2, 3):
        root = json.loads(h200(f"shared_retry_0{n}-train.child.json"))["pid"]
        assert f"\n{root}, " in listing, f"attempt {n}'s root {root} on the GPU"


def test_real_visualize_on_a_cpu_only_host_is_a_permanent_visualize_failure() -> None:
    """Real MimicKit on this 2-core CPU host under mkd, with Xvfb + Mesa: the GL window opened (Mesa's
    llvmpipe), then Newton's viewer failed to allocate pinned host memory without a CUDA driver."""
    log = (MIMICKIT_FIXTURES / "cpu_1proc_fail_visualize_under_xvfb_run_mesa_no_cuda.console.log").read_text()
    found = classify(log, ExitInfo(1, None), stage_kind="visualize")
    assert found is not None and found.permanent and found.failure is not FailureClass.UNKNOWN
