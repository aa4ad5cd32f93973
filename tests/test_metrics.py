"""mkd.metrics: a hand-built DaemonView rendered, parsed back, and served over HTTP."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mkd.gpus import MIB, GpuProcess, GpuReading, GpuSample, attribute_processes
from mkd.metrics import MetricsServer, jobs_for_export, make_registry, write_hpc_job_mapping
from mkd.snapshot import JOB_STATES, DaemonView, JobView, count_by_state
from tests.nvml_fixtures import build_fake_nvml, nvml_env, sample_once

UUID0 = "GPU-fake-0000-0000-0000-000000000000"
UUID1 = "GPU-fake-0000-0000-0000-000000000001"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gpu(index: int, uuid: str, **kw: object) -> GpuSample:
    values: dict[str, object] = {
        "index": index,
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "utilization_pct": 87.0,
        "memory_used_bytes": 6261 * MIB,
        "memory_total_bytes": 81559 * MIB,
        "power_watts": 190.5,
        "temperature_c": 45.0,
        "sm_clock_hz": 1.98e9,
        "processes": (),
    }
    values.update(kw)
    return GpuSample(**values)  # type: ignore[arg-type]


RUNNING = JobView(
    job_id="walk-1",
    state="running",
    stage="train",
    attempt=2,
    num_envs=4096,
    devices=("cuda:0", "cuda:1"),
    gpu_uuids=(UUID0, UUID1),
    iteration=1200,
    samples=49_152_000,
    samples_per_second=81_000.5,
    train_return=41.5,
    test_return=None,  # not tested yet: no series
    train_episode_length=290.0,
    wall_time_seconds=3600.0,
    losses={"Critic_Loss": 0.25, "Actor_Loss": math.nan},
    seconds_since_progress=3.5,
    best_test_return=None,
    median_samples_per_second=80_000.0,
    retries=1,
)
DONE = JobView(job_id="probe-3", state="succeeded", attempt=1, test_return=55.0, finished_at=1000.0)


def view(**kw: object) -> DaemonView:
    jobs = (RUNNING, DONE)
    reading = GpuReading(
        True,
        None,
        (gpu(0, UUID0, processes=(GpuProcess(10, 3000 * MIB), GpuProcess(99, 100 * MIB))), gpu(1, UUID1)),
        "550.54.15",
        1000.0,
    )
    values: dict[str, object] = {
        "started_at": 900.0,
        "jobs": jobs,
        "jobs_by_state": count_by_state(jobs),
        "attempts_total": 7,
        "failures_by_class": {"A": 2, "C": 1},
        "retries_total": 3,
        "queue_length": 4,
        "rejected_files_total": 5,
        "intake_errors_total": 6,
        "gpu": reading,
        "gpu_holders": {UUID0: "walk-1", UUID1: "walk-1"},
        "gpu_process_bytes": attribute_processes(reading, {10: "walk-1"}),
        "tick_seconds": 0.012,
    }
    values.update(kw)
    return DaemonView(**values)  # type: ignore[arg-type]


def scrape(v: DaemonView) -> tuple[str, Samples]:
    text = generate_latest(make_registry(lambda: v)).decode()
    return text, parse(text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_daemon_metrics() -> None:
    _, s = scrape(view())

    assert value(s, "mkd_up") == 1
    assert value(s, "mkd_daemon_start_time_seconds") == 900.0
    assert value(s, "mkd_tick_duration_seconds") == 0.012
    assert {state: value(s, "mkd_jobs", state=state) for state in JOB_STATES} == {
        **dict.fromkeys(JOB_STATES, 0.0),
        "running": 1.0,
        "succeeded": 1.0,
    }
    assert value(s, "mkd_queue_length") == 4
    assert value(s, "mkd_attempts_total") == 7
    assert value(s, "mkd_failures_total", **{"class": "A"}) == 2
    assert value(s, "mkd_failures_total", **{"class": "C"}) == 1
    assert value(s, "mkd_retries_total") == 3
    assert value(s, "mkd_rejected_files_total") == 5
    assert value(s, "mkd_intake_errors_total") == 6


def test_counters_are_typed_as_counters() -> None:
    text, _ = scrape(view())
    for name in ("mkd_attempts", "mkd_failures", "mkd_retries", "mkd_rejected_files", "mkd_intake_errors"):
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text


def test_job_metrics() -> None:
    _, s = scrape(view())

    info = {"job_id": "walk-1", "state": "running", "stage": "train", "devices": "cuda:0,cuda:1"}
    assert value(s, "mkd_job_info", **info, num_envs="4096") == 1
    assert value(s, "mkd_job_info", job_id="probe-3", state="succeeded", stage="", devices="", num_envs="") == 1
    expected = {
        "mkd_job_attempt": 2,
        "mkd_job_iteration": 1200,
        "mkd_job_samples": 49_152_000,
        "mkd_job_samples_per_second": 81_000.5,
        "mkd_job_train_return": 41.5,
        "mkd_job_train_episode_length": 290.0,
        "mkd_job_wall_time_seconds": 3600.0,
        "mkd_job_seconds_since_progress": 3.5,
        "mkd_job_median_samples_per_second": 80_000.0,
        "mkd_job_retries": 1,
        "mkd_job_running": 1,
    }
    assert {name: value(s, name, job_id="walk-1") for name in expected} == expected
    assert value(s, "mkd_job_loss", job_id="walk-1", name="Critic_Loss") == 0.25
    assert math.isnan(value(s, "mkd_job_loss", job_id="walk-1", name="Actor_Loss"))
    assert value(s, "mkd_job_running", job_id="probe-3") == 0
    assert value(s, "mkd_job_test_return", job_id="probe-3") == 55.0


def test_missing_values_are_not_emitted() -> None:
    _, s = scrape(view())

    assert ("mkd_job_test_return", frozenset({("job_id", "walk-1")})) not in s
    assert ("mkd_job_best_test_return", frozenset({("job_id", "walk-1")})) not in s
    assert ("mkd_job_iteration", frozenset({("job_id", "probe-3")})) not in s


def test_gpu_metrics() -> None:
    _, s = scrape(view())
    g0 = {"gpu": "0", "uuid": UUID0}

    assert value(s, "mkd_nvml_up") == 1
    info = {"name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:18:00.0"}
    assert value(s, "mkd_gpu_info", **g0, **info) == 1
    assert value(s, "mkd_gpu_utilization_ratio", **g0) == pytest.approx(0.87)
    assert value(s, "mkd_gpu_memory_used_bytes", **g0) == 6261 * MIB
    assert value(s, "mkd_gpu_memory_total_bytes", **g0) == 81559 * MIB
    assert value(s, "mkd_gpu_power_watts", **g0) == 190.5
    assert value(s, "mkd_gpu_temperature_celsius", **g0) == 45.0
    assert value(s, "mkd_gpu_sm_clock_hertz", **g0) == 1.98e9
    assert value(s, "mkd_gpu_job", **g0, job_id="walk-1") == 1
    assert value(s, "mkd_gpu_job", gpu="1", uuid=UUID1, job_id="walk-1") == 1
    assert value(s, "mkd_gpu_process_memory_bytes", **g0, job_id="walk-1") == 3000 * MIB
    assert value(s, "mkd_gpu_process_memory_bytes", **g0, job_id="") == 100 * MIB


def test_unreadable_gpu_fields_are_not_emitted() -> None:
    lost = gpu(1, "", name="", pci_bus_id="", utilization_pct=None, memory_used_bytes=None,
               memory_total_bytes=None, power_watts=None, temperature_c=None, sm_clock_hz=None,
               error="GPU is lost (NVML error 15)")  # fmt: skip
    reading = GpuReading(True, None, (gpu(0, UUID0, power_watts=None), lost), "550", 0.0)
    _, s = scrape(view(gpu=reading, gpu_holders={}, gpu_process_bytes={}))

    assert value(s, "mkd_gpu_info", gpu="1", uuid="", name="", pci_bus_id="") == 1
    assert [labels for name, labels in s if name == "mkd_gpu_utilization_ratio"] == [
        frozenset({("gpu", "0"), ("uuid", UUID0)})
    ]
    assert not [labels for name, labels in s if name == "mkd_gpu_power_watts"]


def test_without_nvml() -> None:
    reading = GpuReading.unavailable("Driver Not Loaded (NVML error 9)", 0.0)
    _, s = scrape(view(gpu=reading, gpu_process_bytes={}))

    assert value(s, "mkd_nvml_up") == 0
    assert not {n for n in names(s) if n.startswith("mkd_gpu_") and n != "mkd_gpu_job"}
    # holders are the scheduler's: still shown, the index unknown
    assert value(s, "mkd_gpu_job", gpu="", uuid=UUID0, job_id="walk-1") == 1


def test_every_state_present_with_no_jobs() -> None:
    _, s = scrape(DaemonView(started_at=1.0))

    assert {value(s, "mkd_jobs", state=state) for state in JOB_STATES} == {0.0}
    assert not {n for n in names(s) if n.startswith("mkd_job_")}
    assert value(s, "mkd_nvml_up") == 0


def test_unknown_states_are_reported_too() -> None:
    _, s = scrape(view(jobs_by_state={"running": 1, "paused": 2}))
    assert value(s, "mkd_jobs", state="paused") == 2
    assert value(s, "mkd_jobs", state="queued") == 0


def test_the_view_is_read_at_scrape_time() -> None:
    current = [view(queue_length=1)]
    registry = make_registry(lambda: current[0])
    first = parse(generate_latest(registry).decode())
    current[0] = view(queue_length=9)
    second = parse(generate_latest(registry).decode())

    assert value(first, "mkd_queue_length") == 1
    assert value(second, "mkd_queue_length") == 9


def test_nothing_registered_at_import_and_registries_are_separate() -> None:
    assert b"mkd_" not in generate_latest(REGISTRY)
    _, s = scrape(view())
    assert not {n for n in names(s) if n.startswith("process_")}
    with_process = parse(generate_latest(make_registry(view, process_metrics=True)).decode())
    assert "process_cpu_seconds_total" in names(with_process)


def test_jobs_for_export_keeps_unfinished_and_recently_finished() -> None:
    old = JobView(job_id="old", state="failed", finished_at=100.0)
    recent = JobView(job_id="recent", state="succeeded", finished_at=950.0)
    queued = JobView(job_id="queued", state="queued")

    kept = jobs_for_export([old, recent, queued], now=1000.0, retention_seconds=300.0)

    assert [j.job_id for j in kept] == ["recent", "queued"]


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(make_registry(view))
    srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.stop()


def test_server_on_port_zero_is_scraped_over_http(server: MetricsServer) -> None:
    assert server.port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        assert response.status == 200
        s = parse(response.read().decode())
    assert value(s, "mkd_up") == 1
    assert value(s, "mkd_job_iteration", job_id="walk-1") == 1200


def test_server_stop_closes_the_port() -> None:
    srv = MetricsServer(make_registry(view))
    srv.start("127.0.0.1", 0)
    port = srv.port
    srv.stop()

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(RuntimeError):
        _ = srv.port


def test_metrics_from_the_fake_nvml() -> None:
    # end to end: the real pynvml reads the fake, the collector renders the reading
    env = nvml_env(build_fake_nvml(), {"GPUS": 2, "UTIL_1": 64, "POWER_MW": 123000, "PROCS_1": "4242:2048"})
    reading = sample_once(env)
    _, s = scrape(view(gpu=reading, gpu_process_bytes=attribute_processes(reading, {4242: "walk-1"})))

    assert value(s, "mkd_gpu_utilization_ratio", gpu="1", uuid=UUID1) == 0.64
    assert value(s, "mkd_gpu_power_watts", gpu="0", uuid=UUID0) == 123.0
    assert value(s, "mkd_gpu_memory_used_bytes", gpu="1", uuid=UUID1) == 2048 * MIB
    assert value(s, "mkd_gpu_process_memory_bytes", gpu="1", uuid=UUID1, job_id="walk-1") == 2048 * MIB


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_exposition() -> None:
    text, _ = scrape(view())
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hpc_job_mapping_files(tmp_path: Path) -> None:
    mapping = tmp_path / "dcgm-job-map"
    write_hpc_job_mapping(mapping, {0: "walk-1", 1: "walk-1", 2: "probe-3"})
    (mapping / "README").write_text("not ours\n")

    assert {p.name: p.read_text() for p in mapping.iterdir() if p.name != "README"} == {
        "0": "walk-1\n",
        "1": "walk-1\n",
        "2": "probe-3\n",
    }
    write_hpc_job_mapping(mapping, {1: "sweep-2"})
    assert sorted(p.name for p in mapping.iterdir()) == ["1", "README"]
    assert (mapping / "1").read_text() == "sweep-2\n"
    write_hpc_job_mapping(mapping, {})
    assert sorted(p.name for p in mapping.iterdir()) == ["README"]
