"""mkd.metrics: a hand-built DaemonView rendered, parsed back, and served over HTTP."""

from __future__ import annotations

import gzip
import math
import platform
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest, start_http_server
from prometheus_client.openmetrics.parser import text_string_to_metric_families as omparser
from prometheus_client.parser import text_string_to_metric_families

from mkd import metrics
from mkd.failures import FailureClass
from mkd.gpus import MIB, GpuProcess, GpuReading, GpuSample, attribute_processes
from mkd.metrics import (
    Exposition,
    MetricsServer,
    MetricsUnavailable,
    build_info,
    make_registry,
    serve,
    write_hpc_job_mapping,
)
from mkd.snapshot import (
    INTERNAL_ERROR_STEPS,
    JOB_STATES,
    DaemonView,
    Histogram,
    HistogramSnapshot,
    JobView,
)
from mkd.states import JobState
from tests.harness import Home, wait_for
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
    losses={"Critic_Loss": 0.25, "Actor_Loss": math.nan, "Clip_Frac": 0.06, "Obs_Norm_Std": math.nan},
    seconds_since_progress=3.5,
    last_progress_at=996.5,
    best_test_return=None,
    median_samples_per_second=80_000.0,
    retries=1,
)
DONE = JobView(
    job_id="probe-3",
    state="succeeded",
    attempt=1,
    test_return=55.0,
    finished_at=1000.0,
    test_mean_return=6.26,
    test_mean_episode_length=15.5,
    test_episodes=256,
)


def ticks(*seconds: float) -> HistogramSnapshot:
    histogram = Histogram()
    for s in seconds:
        histogram.observe(s)
    return histogram.snapshot()


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
        "jobs_by_state": dict(Counter(j.state for j in jobs)),
        "attempts_total": 7,
        "failures_by_class": {"cuda_oom": 2, "stall": 1},
        "retries_total": 3,
        "queue_length": 4,
        "rejected_files_total": 5,
        "intake_errors_total": 6,
        "gpu": reading,
        "gpu_holders": {UUID0: "walk-1", UUID1: "walk-1"},
        "gpu_process_bytes": attribute_processes(reading, {10: "walk-1"}),
        "tick_seconds": 0.012,
        "tick_durations": ticks(0.004, 0.012, 0.3),
        "internal_errors_by_step": {"observe": 2, "start": 0, "files": 0},
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

    assert "mkd_up" not in names(s)  # Prometheus's own up{job="mkd"} says that
    assert value(s, "mkd_build_info", version=build_info()[0], python_version=platform.python_version()) == 1
    assert value(s, "mkd_daemon_start_time_seconds") == 900.0
    assert value(s, "mkd_tick_duration_seconds_count") == 3
    assert value(s, "mkd_tick_duration_seconds_sum") == pytest.approx(0.316)
    assert value(s, "mkd_tick_duration_seconds_bucket", le="0.005") == 1
    assert value(s, "mkd_tick_duration_seconds_bucket", le="0.025") == 2
    assert value(s, "mkd_tick_duration_seconds_bucket", le="+Inf") == 3
    assert {state: value(s, "mkd_jobs", state=state) for state in JOB_STATES} == {
        **dict.fromkeys(JOB_STATES, 0.0),
        "running": 1.0,
        "succeeded": 1.0,
    }
    assert value(s, "mkd_queue_length") == 4
    assert value(s, "mkd_attempts_total") == 7
    assert value(s, "mkd_failures_total", **{"class": "cuda_oom"}) == 2
    assert value(s, "mkd_failures_total", **{"class": "stall"}) == 1
    assert value(s, "mkd_failures_total", **{"class": "nan_divergence"}) == 0
    assert value(s, "mkd_internal_errors_total", step="observe") == 2
    assert value(s, "mkd_internal_errors_total", step="files") == 0
    assert value(s, "mkd_retries_total") == 3
    assert value(s, "mkd_rejected_files_total") == 5
    assert value(s, "mkd_intake_errors_total") == 6


def test_counters_are_typed_as_counters() -> None:
    text, _ = scrape(view())
    for name in (
        "mkd_attempts",
        "mkd_failures",
        "mkd_retries",
        "mkd_rejected_files",
        "mkd_intake_errors",
        "mkd_internal_errors",
        "mkd_job_samples",
    ):
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
    assert "# TYPE mkd_tick_duration_seconds histogram" in text


def test_every_failure_class_and_step_is_exported_from_zero() -> None:
    # increase() counts a first failure only if the series existed at 0 before it
    _, s = scrape(DaemonView(started_at=1.0))
    classes = {dict(labels)["class"] for name, labels in s if name == "mkd_failures_total"}
    assert classes == {c.value for c in FailureClass} - {"cancelled"}
    assert {value(s, "mkd_failures_total", **{"class": c}) for c in classes} == {0.0}
    steps = {dict(labels)["step"]: s[(name, labels)] for name, labels in s if name == "mkd_internal_errors_total"}
    assert steps == dict.fromkeys(INTERNAL_ERROR_STEPS, 0.0)
    assert value(s, "mkd_tick_duration_seconds_count") == 0


def test_job_metrics() -> None:
    _, s = scrape(view())

    info = {"job_id": "walk-1", "state": "running", "stage": "train", "devices": "cuda:0,cuda:1"}
    assert value(s, "mkd_job_info", **info, num_envs="4096", slurm_job_id="", node="") == 1
    done = {"job_id": "probe-3", "state": "succeeded", "stage": "", "devices": "", "num_envs": ""}
    assert value(s, "mkd_job_info", **done, slurm_job_id="", node="") == 1
    expected = {
        "mkd_job_attempt": 2,
        "mkd_job_iteration": 1200,
        "mkd_job_samples_total": 49_152_000,
        "mkd_job_samples_per_second": 81_000.5,
        "mkd_job_train_return": 41.5,
        "mkd_job_train_episode_length": 290.0,
        "mkd_job_wall_time_seconds": 3600.0,
        "mkd_job_last_progress_timestamp_seconds": 996.5,
        "mkd_job_median_samples_per_second": 80_000.0,
        "mkd_job_retries": 1,
        "mkd_job_running": 1,
    }
    assert {name: value(s, name, job_id="walk-1") for name in expected} == expected
    assert value(s, "mkd_job_loss", job_id="walk-1", name="Critic_Loss") == 0.25
    assert math.isnan(value(s, "mkd_job_loss", job_id="walk-1", name="Actor_Loss"))
    # the optimizer's statistics are not losses
    assert value(s, "mkd_job_train_stat", job_id="walk-1", name="Clip_Frac") == 0.06
    assert math.isnan(value(s, "mkd_job_train_stat", job_id="walk-1", name="Obs_Norm_Std"))
    assert {dict(labels)["name"] for name, labels in s if name == "mkd_job_loss"} == {"Critic_Loss", "Actor_Loss"}
    assert value(s, "mkd_job_test_stage_mean_return", job_id="probe-3") == 6.26
    assert value(s, "mkd_job_test_stage_mean_episode_length", job_id="probe-3") == 15.5
    assert value(s, "mkd_job_test_stage_episodes", job_id="probe-3") == 256
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


def test_a_published_view_is_rendered_once_and_a_new_one_again(monkeypatch: pytest.MonkeyPatch) -> None:
    current = [view(queue_length=1)]
    expected = generate_latest(make_registry(lambda: current[0]))
    rendered: list[DaemonView] = []
    families = metrics.families

    def counting(v: DaemonView) -> Iterator[metrics.Metric]:
        rendered.append(v)
        return families(v)

    monkeypatch.setattr(metrics, "families", counting)
    exposition = Exposition(make_registry(lambda: current[0]))

    first, headers = exposition.body(None, None)
    again, _ = exposition.body(None, None)
    assert first == expected
    assert again is first  # the same bytes, served again
    assert rendered == [current[0]]  # the collector ran once
    assert headers == (("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),)

    current[0] = view(queue_length=9)
    third, _ = exposition.body(None, None)
    assert len(rendered) == 2
    assert value(parse(third.decode()), "mkd_queue_length") == 9
    assert exposition.renders == 2


def test_each_format_is_rendered_once_per_view_and_gzip_reuses_it() -> None:
    fixed = view()
    exposition = Exposition(make_registry(lambda: fixed))
    openmetrics = "application/openmetrics-text; version=1.0.0"
    plain, _ = exposition.body(None, None)
    om, om_headers = exposition.body(openmetrics, None)
    zipped, zipped_headers = exposition.body(openmetrics, "gzip, deflate")
    assert exposition.body(openmetrics, "gzip")[0] is zipped
    assert exposition.renders == 2  # text and OpenMetrics; the gzipped one is compressed from the second
    assert om.endswith(b"# EOF\n") and not plain.endswith(b"# EOF\n")
    assert gzip.decompress(zipped) == om
    assert dict(zipped_headers) == {**dict(om_headers), "Content-Encoding": "gzip"}


def test_process_metrics_are_fresh_each_second_and_mkds_part_rendered_once() -> None:
    fixed = view()
    clock = [100.0]
    exposition = Exposition(make_registry(lambda: fixed, process_metrics=True), monotonic=lambda: clock[0])
    first, _ = exposition.body(None, None)
    sum(i * i for i in range(3_000_000))  # burn CPU: process_cpu_seconds_total must move
    clock[0] += 0.5
    same, _ = exposition.body(None, None)
    clock[0] += metrics.PROCESS_REFRESH_SECONDS
    second, _ = exposition.body(None, None)

    assert exposition.renders == 1
    cpu = [value(parse(b.decode()), "process_cpu_seconds_total") for b in (first, same, second)]
    assert cpu[0] == cpu[1] < cpu[2]
    assert value(parse(second.decode()), "mkd_job_iteration", job_id="walk-1") == 1200


def test_with_process_metrics_each_format_is_whole() -> None:
    fixed = view()
    exposition = Exposition(make_registry(lambda: fixed, process_metrics=True))
    openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    om, _ = exposition.body(openmetrics, None)
    zipped, headers = exposition.body(openmetrics, "gzip")
    plain_zipped, _ = exposition.body(None, "gzip")

    assert om.count(b"# EOF") == 1 and om.endswith(b"# EOF\n")
    assert dict(headers)["Content-Encoding"] == "gzip"
    for body, fmt in ((om, openmetrics), (gzip.decompress(zipped), openmetrics), (gzip.decompress(plain_zipped), "")):
        families = {f.name for f in (omparser(body.decode()) if fmt else text_string_to_metric_families(body.decode()))}
        assert {"mkd_job_iteration", "process_cpu_seconds", "mkd_job_samples"} <= families
    assert exposition.renders == 2  # text and OpenMetrics, once each


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/metrics", {}),
    ("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}),
    ("GET", "/metrics", {"Accept": "application/openmetrics-text"}),
    ("GET", "/metrics", {"Accept": "text/plain; version=1.0.0; escaping=allow-utf-8"}),
    ("GET", "/metrics", {"Accept-Encoding": "gzip"}),
    ("GET", "/", {}),
    ("GET", "/metrics?name[]=mkd_build_info&name[]=mkd_queue_length", {}),
    ("GET", "/favicon.ico", {}),
    ("OPTIONS", "/metrics", {}),
    ("POST", "/metrics", {}),
]


def _fetch(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, got, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, body = error.code, dict(error.headers), error.read()
    if got.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return status, {k: v for k, v in got.items() if k in ("Content-Type", "Content-Encoding", "Allow")}, body


@pytest.fixture(scope="module")
def both_servers() -> Iterator[tuple[int, int]]:
    """mkd's server and prometheus_client's own, serving one fixed view: (ours, theirs) ports."""
    fixed = view()
    ours = MetricsServer(make_registry(lambda: fixed))
    ours.start("127.0.0.1", 0)
    theirs, thread = start_http_server(0, addr="127.0.0.1", registry=make_registry(lambda: fixed))
    try:
        yield ours.port, theirs.server_port
    finally:
        ours.stop()
        theirs.shutdown()
        theirs.server_close()
        thread.join(5)


@pytest.mark.parametrize(("method", "path", "headers"), REQUESTS, ids=[f"{m} {p} {h}" for m, p, h in REQUESTS])
def test_the_server_answers_as_prometheus_clients_own(
    both_servers: tuple[int, int], method: str, path: str, headers: dict[str, str]
) -> None:
    ours, theirs = both_servers
    expected = _fetch(theirs, method, path, headers)
    assert _fetch(ours, method, path, headers) == expected
    assert _fetch(ours, method, path, headers) == expected  # from the cache


def test_scrapes_of_one_view_over_http_render_it_once() -> None:
    current = [view(queue_length=1)]
    srv = MetricsServer(make_registry(lambda: current[0]))
    srv.start("127.0.0.1", 0)
    try:
        bodies = [_fetch(srv.port, "GET", "/metrics", {})[2] for _ in range(3)]
        assert srv.exposition.renders == 1
        assert bodies[0] == bodies[1] == bodies[2]
        current[0] = view(queue_length=9)
        assert value(parse(_fetch(srv.port, "GET", "/metrics", {})[2].decode()), "mkd_queue_length") == 9
        assert srv.exposition.renders == 2
    finally:
        srv.stop()


def test_metrics_from_the_fake_nvml() -> None:
    # end to end: the real pynvml reads the fake, the collector renders the reading
    env = nvml_env(build_fake_nvml(), {"GPUS": 2, "UTIL_1": 64, "POWER_MW": 123000, "PROCS_1": "4242:2048"})
    reading = sample_once(env)
    _, s = scrape(view(gpu=reading, gpu_process_bytes=attribute_processes(reading, {4242: "walk-1"})))

    assert value(s, "mkd_gpu_utilization_ratio", gpu="1", uuid=UUID1) == 0.64
    assert value(s, "mkd_gpu_power_watts", gpu="0", uuid=UUID0) == 123.0
    assert value(s, "mkd_gpu_memory_used_bytes", gpu="1", uuid=UUID1) == 2048 * MIB
    assert value(s, "mkd_gpu_process_memory_bytes", gpu="1", uuid=UUID1, job_id="walk-1") == 2048 * MIB


def test_gpu_health_metrics_from_the_fake_nvml() -> None:
    fake = {"GPUS": 2, "ENERGY_MJ_0": 5_000_250, "CLOCKS_EVENT_REASONS_1": 0x24, "XID_1": "79,48",
            "ECC_CORRECTED_0": 3, "ECC_UNCORRECTED_1": "ns"}  # fmt: skip
    reading = sample_once(nvml_env(build_fake_nvml(), fake))
    text, s = scrape(view(gpu=reading, gpu_process_bytes={}))
    g0, g1 = {"gpu": "0", "uuid": UUID0}, {"gpu": "1", "uuid": UUID1}

    assert "# TYPE mkd_gpu_energy_joules_total counter" in text and "# TYPE mkd_gpu_xid_errors_total counter" in text
    assert value(s, "mkd_gpu_energy_joules_total", **g0) == 5000.25
    assert value(s, "mkd_gpu_clocks_event_active", **g1, reason="sw_power_cap") == 1
    assert value(s, "mkd_gpu_clocks_event_active", **g1, reason="sw_thermal_slowdown") == 1
    assert value(s, "mkd_gpu_clocks_event_active", **g1, reason="hw_slowdown") == 0
    assert value(s, "mkd_gpu_clocks_event_active", **g0, reason="sw_power_cap") == 0
    assert value(s, "mkd_gpu_xid_errors_total", **g1) == 2 and value(s, "mkd_gpu_last_xid", **g1) == 48
    assert value(s, "mkd_gpu_xid_errors_total", **g0) == 0 and value(s, "mkd_gpu_last_xid", **g0) == 0
    assert value(s, "mkd_gpu_ecc_errors_total", **g0, type="corrected") == 3
    assert value(s, "mkd_gpu_ecc_errors_total", **g1, type="corrected") == 0
    assert ("mkd_gpu_ecc_errors_total", frozenset({**g1, "type": "uncorrected"}.items())) not in s


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


def test_job_states_are_the_stores_own() -> None:
    assert tuple(s.value for s in JobState) == JOB_STATES


def test_a_taken_port_is_one_line_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsUnavailable) as raised:
            serve(make_registry(view), "127.0.0.1", port)
    message = str(raised.value)
    assert f"127.0.0.1:{port} ([metrics] port)" in message
    assert "Address already in use" in message and "keeps supervising" in message
    assert "\n" not in message


def test_a_host_that_does_not_resolve_names_the_host_key() -> None:
    with pytest.raises(MetricsUnavailable, match=r"\[metrics\] host"):
        serve(make_registry(view), "no-such-host.invalid", 0)


def test_daemon_on_a_taken_port_keeps_supervising(home: Home) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        home.config.write_text(home.config.read_text().replace("port = 0", f"port = {port}"))
        home.start(ready=False)
        wait_for(lambda: "mkd ready" in home.log.read_text() or home.proc_exited(), 20, "daemon ready")
        assert not home.proc_exited()
        home.drop("after.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
        job = wait_for(lambda: home.db().execute("SELECT job_id FROM jobs").fetchone(), 20, "the job taken in")
        home.wait_state(job[0], "succeeded")
        log = home.log.read_text()
        assert home.stop() == 0
    errors = [line for line in log.splitlines() if "metrics are off" in line]
    assert len(errors) == 1 and f"127.0.0.1:{port} ([metrics] port)" in errors[0]
    assert "Traceback" not in log
    assert not (home.root / "var" / "metrics.port").exists()


def test_a_slurm_job_carries_its_slurm_job_id_and_node_for_the_join_with_a_nodes_exporter() -> None:
    slurm = JobView(
        job_id="on-cluster", state="running", stage="1-train", devices=("cuda:1",), slurm_job_id="42", node="n1"
    )
    _, s = scrape(DaemonView(started_at=1.0, jobs=[slurm]))
    labels = {"job_id": "on-cluster", "state": "running", "stage": "1-train", "devices": "cuda:1", "num_envs": ""}
    assert value(s, "mkd_job_info", **labels, slurm_job_id="42", node="n1") == 1
