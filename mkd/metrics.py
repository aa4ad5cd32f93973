"""Prometheus metrics, rendered at scrape time from the daemon's latest DaemonView.

This is the only module that imports prometheus_client.  Nothing is
registered at import: make_registry(get_view) builds a fresh registry holding
one collector, which asks get_view() for the current snapshot on each scrape
and keeps no metric state of its own.  MetricsServer serves a registry over
HTTP (bind 127.0.0.1 unless told otherwise).

Labels: the job label is ``job_id`` (Prometheus renames a scraped ``job`` label
to ``exported_job``); ``gpu`` is the NVML index, as in dcgm-exporter.
A value mkd does not know (None in the view) is not emitted: the series is
absent, not zero.  Losses may be NaN and are exported as NaN.

Cardinality: per-job series exist only for the jobs in the view.  The daemon
puts in the view every job that is not finished and the finished ones for
``retention_seconds`` after they finished (jobs_for_export), so a
long-running daemon's series count stays bounded by its active jobs.
mkd_jobs{state} counts every job the daemon knows, exported or not.

GPU metrics and their DCGM (dcgm-exporter) counterparts, for dashboards that
show both or move from one to the other:

| mkd metric (labels)                              | DCGM field (unit)                    | mkd value        |
|--------------------------------------------------|--------------------------------------|------------------|
| mkd_gpu_utilization_ratio (gpu, uuid)            | DCGM_FI_DEV_GPU_UTIL (%)             | DCGM / 100       |
| mkd_gpu_memory_used_bytes (gpu, uuid)            | DCGM_FI_DEV_FB_USED (MiB)            | DCGM * 2**20     |
| mkd_gpu_memory_total_bytes (gpu, uuid)           | DCGM_FI_DEV_FB_TOTAL (MiB) (*)       | DCGM * 2**20     |
| mkd_gpu_power_watts (gpu, uuid)                  | DCGM_FI_DEV_POWER_USAGE (W)          | same             |
| mkd_gpu_temperature_celsius (gpu, uuid)          | DCGM_FI_DEV_GPU_TEMP (C)             | same             |
| mkd_gpu_sm_clock_hertz (gpu, uuid)               | DCGM_FI_DEV_SM_CLOCK (MHz)           | DCGM * 1e6       |
| mkd_gpu_info (gpu, uuid, name, pci_bus_id)       | labels gpu UUID modelName pci_bus_id | 1                |
| mkd_gpu_job (gpu, uuid, job_id)                  | label hpc_job (job mapping files)    | 1 per held GPU   |
| mkd_gpu_process_memory_bytes (gpu, uuid, job_id) | none (NVML per-process memory)       | bytes; job_id "" |

(*) FB_TOTAL = FB_USED + FB_FREE + FB_RESERVED.  mkd reads NVML's v2 memory
info, so "used" excludes the driver's reserve (~480 MiB on an H100) and
matches FB_USED and nvidia-smi's memory.used; on drivers without v2 (before
R510) used includes the reserve.
mkd_gpu_process_memory_bytes uses job_id "" for processes no mkd job owns.
write_hpc_job_mapping() writes dcgm-exporter's job mapping files, so a
dcgm-exporter on the same host labels its own metrics with mkd's job ids.

All metric names:

    mkd_up, mkd_daemon_start_time_seconds, mkd_tick_duration_seconds,
    mkd_jobs{state}, mkd_queue_length, mkd_attempts_total,
    mkd_failures_total{class}, mkd_retries_total, mkd_rejected_files_total,
    mkd_intake_errors_total,
    mkd_job_info{job_id,state,stage,devices,num_envs}, mkd_job_attempt,
    mkd_job_iteration, mkd_job_samples, mkd_job_samples_per_second,
    mkd_job_train_return, mkd_job_test_return, mkd_job_best_test_return,
    mkd_job_train_episode_length, mkd_job_test_episode_length,
    mkd_job_wall_time_seconds, mkd_job_loss{job_id,name},
    mkd_job_seconds_since_progress, mkd_job_median_samples_per_second,
    mkd_job_retries, mkd_job_running (all mkd_job_* carry job_id),
    mkd_nvml_up, mkd_gpu_* (table above).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from mkd.gpus import GpuReading, GpuSample
from mkd.snapshot import JOB_STATES, DaemonView, JobView

GetView = Callable[[], DaemonView]


def jobs_for_export(jobs: Iterable[JobView], now: float, retention_seconds: float) -> tuple[JobView, ...]:
    """Unfinished jobs, and finished ones for retention_seconds (wall time) after they finished."""
    return tuple(j for j in jobs if j.finished_at is None or now - j.finished_at < retention_seconds)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _daemon_families(view: DaemonView) -> Iterator[Metric]:
    yield GaugeMetricFamily("mkd_up", "1 while the mkd daemon answers scrapes.", value=1)
    yield GaugeMetricFamily(
        "mkd_daemon_start_time_seconds", "When the daemon started (unix time).", value=view.started_at
    )
    yield GaugeMetricFamily(
        "mkd_tick_duration_seconds", "How long the daemon's last tick took.", value=view.tick_seconds
    )
    jobs = _gauge("mkd_jobs", "Jobs known to the daemon, per state.", ["state"])
    states = list(JOB_STATES) + sorted(set(view.jobs_by_state) - set(JOB_STATES))
    for state in states:
        jobs.add_metric([state], view.jobs_by_state.get(state, 0))
    yield jobs
    yield GaugeMetricFamily("mkd_queue_length", "Jobs waiting to start.", value=view.queue_length)
    yield CounterMetricFamily("mkd_attempts_total", "Attempts started.", value=view.attempts_total)
    failures = CounterMetricFamily("mkd_failures_total", "Failed attempts, per failure class.", labels=["class"])
    for cls, n in sorted(view.failures_by_class.items()):
        failures.add_metric([cls], n)
    yield failures
    yield CounterMetricFamily("mkd_retries_total", "Attempts that were retries.", value=view.retries_total)
    yield CounterMetricFamily(
        "mkd_rejected_files_total", "Job files rejected by validation.", value=view.rejected_files_total
    )
    yield CounterMetricFamily(
        "mkd_intake_errors_total", "Errors while taking in job files.", value=view.intake_errors_total
    )


JOB_INFO_LABELS = ("job_id", "state", "stage", "devices", "num_envs")

# (metric name, help, JobView attribute) for the per-job gauges labelled by job_id alone.
_JOB_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("mkd_job_attempt", "Current attempt number of the job (1-based).", "attempt"),
    ("mkd_job_iteration", "Last training iteration reported by MimicKit.", "iteration"),
    ("mkd_job_samples", "Samples so far, summed across attempts.", "samples"),
    ("mkd_job_samples_per_second", "Recent training throughput.", "samples_per_second"),
    ("mkd_job_train_return", "Last Train_Return.", "train_return"),
    ("mkd_job_test_return", "Last Test_Return.", "test_return"),
    ("mkd_job_best_test_return", "Best Test_Return so far.", "best_test_return"),
    ("mkd_job_train_episode_length", "Last Train_Episode_Length.", "train_episode_length"),
    ("mkd_job_test_episode_length", "Last Test_Episode_Length.", "test_episode_length"),
    ("mkd_job_wall_time_seconds", "MimicKit's Wall_Time of the current attempt.", "wall_time_seconds"),
    (
        "mkd_job_seconds_since_progress",
        "Seconds since the last new iteration.",
        "seconds_since_progress",
    ),
    ("mkd_job_median_samples_per_second", "Median throughput over the job.", "median_samples_per_second"),
    ("mkd_job_retries", "Retries of the job so far.", "retries"),
)


def _job_families(jobs: tuple[JobView, ...]) -> Iterator[Metric]:
    info = _gauge("mkd_job_info", "A job's state and settings (value 1).", JOB_INFO_LABELS)
    for j in jobs:
        num_envs = "" if j.num_envs is None else str(j.num_envs)
        info.add_metric([j.job_id, j.state, j.stage or "", ",".join(j.devices), num_envs], 1)
    yield info
    for name, doc, attr in _JOB_GAUGES:
        family = _gauge(name, doc, ["job_id"])
        for j in jobs:
            value = getattr(j, attr)
            if value is not None:
                family.add_metric([j.job_id], value)
        yield family
    loss = _gauge("mkd_job_loss", "Last value of each loss column MimicKit logs (NaN as logged).", ["job_id", "name"])
    for j in jobs:
        for loss_name, value in sorted(j.losses.items()):
            loss.add_metric([j.job_id, loss_name], value)
    yield loss
    running = _gauge("mkd_job_running", "1 while the job is starting or running, else 0.", ["job_id"])
    for j in jobs:
        running.add_metric([j.job_id], 1 if j.active else 0)
    yield running


# (metric name, help, function of a GpuSample) for the per-GPU gauges labelled gpu, uuid.
_GPU_GAUGES: tuple[tuple[str, str, Callable[[GpuSample], float | None]], ...] = (
    (
        "mkd_gpu_utilization_ratio",
        "GPU utilization, 0..1 (DCGM_FI_DEV_GPU_UTIL / 100).",
        lambda g: None if g.utilization_pct is None else g.utilization_pct / 100.0,
    ),
    (
        "mkd_gpu_memory_used_bytes",
        "GPU memory used (DCGM_FI_DEV_FB_USED, bytes).",
        lambda g: g.memory_used_bytes,
    ),
    (
        "mkd_gpu_memory_total_bytes",
        "GPU memory in total (NVML).",
        lambda g: g.memory_total_bytes,
    ),
    ("mkd_gpu_power_watts", "Power draw (DCGM_FI_DEV_POWER_USAGE).", lambda g: g.power_watts),
    ("mkd_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP).", lambda g: g.temperature_c),
    ("mkd_gpu_sm_clock_hertz", "SM clock (DCGM_FI_DEV_SM_CLOCK in hertz).", lambda g: g.sm_clock_hz),
)


def _gpu_label(reading: GpuReading, uuid: str) -> str:
    gpu = reading.by_uuid(uuid)
    return "" if gpu is None else str(gpu.index)


def _gpu_families(view: DaemonView) -> Iterator[Metric]:
    reading = view.gpu
    yield GaugeMetricFamily("mkd_nvml_up", "1 if NVML answered the last GPU sample.", value=int(reading.available))
    info = _gauge("mkd_gpu_info", "A GPU's identity (value 1).", ["gpu", "uuid", "name", "pci_bus_id"])
    for g in reading.gpus:
        info.add_metric([str(g.index), g.uuid, g.name, g.pci_bus_id], 1)
    yield info
    for name, doc, get in _GPU_GAUGES:
        family = _gauge(name, doc, ["gpu", "uuid"])
        for g in reading.gpus:
            value = get(g)
            if value is not None:
                family.add_metric([str(g.index), g.uuid], value)
        yield family
    held = _gauge("mkd_gpu_job", "1 for each GPU a job holds.", ["gpu", "uuid", "job_id"])
    for uuid, job_id in sorted(view.gpu_holders.items()):
        held.add_metric([_gpu_label(reading, uuid), uuid, job_id], 1)
    yield held
    procs = _gauge(
        "mkd_gpu_process_memory_bytes",
        'GPU memory of processes per job (job_id "" for processes no mkd job owns).',
        ["gpu", "uuid", "job_id"],
    )
    for (uuid, job_id), used in sorted(view.gpu_process_bytes.items()):
        procs.add_metric([_gpu_label(reading, uuid), uuid, job_id], used)
    yield procs


class MkdCollector:
    """Renders the DaemonView that get_view() returns at scrape time."""

    def __init__(self, get_view: GetView) -> None:
        self._get_view = get_view

    def describe(self) -> list[Metric]:
        # Present so a registry never calls collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        view = self._get_view()
        yield from _daemon_families(view)
        yield from _job_families(view.jobs)
        yield from _gpu_families(view)


def make_registry(get_view: GetView, *, process_metrics: bool = False) -> CollectorRegistry:
    """A fresh registry with mkd's collector (and the process_* metrics if asked)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MkdCollector(get_view))
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """Serves a registry on /metrics from a background thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port; port 0 picks a free port (see .port)."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_port)

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)


def write_hpc_job_mapping(directory: Path, holders_by_gpu_index: Mapping[int, str]) -> None:
    """dcgm-exporter's --hpc-job-mapping-dir: a file per held GPU, named by its
    index, holding the job id.  Each file is replaced atomically; files of GPUs
    no longer held are removed; other files are left alone.  (dcgm-exporter
    skips names that are not integers, so the dot-named temp files are safe.)"""
    directory.mkdir(parents=True, exist_ok=True)
    for index, job_id in holders_by_gpu_index.items():
        path = directory / str(index)
        content = f"{job_id}\n"
        try:
            if path.read_text() == content:
                continue
        except OSError:
            pass
        tmp = directory / f".{index}.tmp"
        with open(tmp, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    keep = {str(i) for i in holders_by_gpu_index}
    for entry in os.scandir(directory):
        if entry.name.isdigit() and entry.name not in keep and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
