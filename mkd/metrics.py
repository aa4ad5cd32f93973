"""Prometheus metrics, rendered at scrape time from the daemon's latest DaemonView.

This is the only module that imports prometheus_client.  Nothing is
registered at import: make_registry(get_view) builds a fresh registry holding
one collector, which asks get_view() for the current snapshot on each collect
and keeps no metric state of its own.  MetricsServer serves a registry over
HTTP (bind 127.0.0.1 unless told otherwise).

Rendering the text is most of a scrape's cost (~13 ms with 8 GPUs and 50
jobs), and the daemon publishes a new view about once a second, whatever the
scrape rate.  So the server renders once per published view: Exposition keeps
the bytes of the view it last rendered (per format, gzipped or not) and serves
them until get_view() returns another object.  The bytes are prometheus_client's
own encoders' output, the same as an uncached scrape of the same view.

Labels: the job label is ``job_id`` (Prometheus renames a scraped ``job`` label
to ``exported_job``); ``gpu`` is the NVML index, as in dcgm-exporter.
A value mkd does not know (None in the view) is not emitted: the series is
absent, not zero.  Losses may be NaN and are exported as NaN.

Cardinality: per-job series exist only for the jobs in the view.  The daemon
puts in the view every job that is not finished and the finished ones for
``retention_seconds`` after they finished (mkd.publisher.Publisher.view), so a
long-running daemon's series count stays bounded by its active jobs.
mkd_jobs{state} counts every job the daemon knows, exported or not.

GPU metrics and their DCGM (dcgm-exporter) counterparts, for dashboards that
show both or move from one to the other (dcgm-exporter labels a GPU ``UUID``;
the recording rule mkd:gpu_job:uuid in deploy/prometheus joins the two):

| mkd metric (labels)                              | DCGM field (unit)                    | mkd value        |
|--------------------------------------------------|--------------------------------------|------------------|
| mkd_gpu_utilization_ratio (gpu, uuid)            | DCGM_FI_DEV_GPU_UTIL (%)             | DCGM / 100       |
| mkd_gpu_memory_used_bytes (gpu, uuid)            | DCGM_FI_DEV_FB_USED (MiB)            | DCGM * 2**20     |
| mkd_gpu_memory_total_bytes (gpu, uuid)           | DCGM_FI_DEV_FB_TOTAL (MiB) (*)       | DCGM * 2**20     |
| mkd_gpu_power_watts (gpu, uuid)                  | DCGM_FI_DEV_POWER_USAGE (W)          | same             |
| mkd_gpu_energy_joules_total (gpu, uuid)          | DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ) | DCGM / 1000 |
| mkd_gpu_temperature_celsius (gpu, uuid)          | DCGM_FI_DEV_GPU_TEMP (C)             | same             |
| mkd_gpu_sm_clock_hertz (gpu, uuid)               | DCGM_FI_DEV_SM_CLOCK (MHz)           | DCGM * 1e6       |
| mkd_gpu_clocks_event_active (gpu, uuid, reason)  | DCGM_FI_DEV_CLOCKS_EVENT_REASONS (bits) | 0/1 per bit   |
| mkd_gpu_xid_errors_total (gpu, uuid)             | none (count of XID events)           | since mkd started|
| mkd_gpu_last_xid (gpu, uuid)                     | DCGM_FI_DEV_XID_ERRORS               | same (0: none)   |
| mkd_gpu_ecc_errors_total (gpu, uuid, type)       | DCGM_FI_DEV_ECC_SBE/DBE_VOL_TOTAL    | corrected/uncorrected |
| mkd_gpu_info (gpu, uuid, name, pci_bus_id)       | labels gpu UUID modelName pci_bus_id | 1                |
| mkd_gpu_job (gpu, uuid, job_id)                  | label hpc_job (job mapping files)    | 1 per held GPU   |
| mkd_gpu_process_memory_bytes (gpu, uuid, job_id) | none (NVML per-process memory)       | bytes; job_id "" |

(*) FB_TOTAL = FB_USED + FB_FREE + FB_RESERVED.  mkd reads NVML's v2 memory
info, so "used" excludes the driver's reserve (~480 MiB on an H100) and
matches FB_USED and nvidia-smi's memory.used; on drivers without v2 (before
R510) used includes the reserve.
mkd_gpu_process_memory_bytes uses job_id "" for processes no mkd job owns.
A GPU that cannot report a field (no ECC, no energy counter, no XID events)
has no series for it.
write_hpc_job_mapping() writes dcgm-exporter's job mapping files, so a
dcgm-exporter on the same host labels its own metrics with mkd's job ids.

Counters from 0: mkd_failures_total has a series for every failure class and
mkd_internal_errors_total one for every step from the start, so increase()
counts the first one.  mkd_job_samples_total is a counter (rate() it);
mkd_job_samples_per_second is kept beside it because it is measured on
MimicKit's own Wall_Time between two iterations (independent of the scrape
interval), and its median is what MkdThroughputDropped compares to.
mkd_job_loss holds the columns that are losses (*_Loss); the other optimizer
columns (Clip_Frac, Imp_Ratio, Adv_*, Obs_Norm_*) are mkd_job_train_stat.

All metric names:

    mkd_build_info{version,python_version}, mkd_daemon_start_time_seconds,
    mkd_tick_duration_seconds (histogram), mkd_jobs{state}, mkd_queue_length,
    mkd_attempts_total, mkd_failures_total{class}, mkd_retries_total,
    mkd_rejected_files_total, mkd_intake_errors_total,
    mkd_internal_errors_total{step},
    mkd_job_info{job_id,state,stage,devices,num_envs,slurm_job_id,node}, mkd_job_attempt,
    mkd_job_iteration, mkd_job_samples_total, mkd_job_samples_per_second,
    mkd_job_train_return, mkd_job_test_return, mkd_job_best_test_return,
    mkd_job_train_episode_length, mkd_job_test_episode_length,
    mkd_job_wall_time_seconds, mkd_job_loss{job_id,name},
    mkd_job_train_stat{job_id,name}, mkd_job_last_progress_timestamp_seconds,
    mkd_job_median_samples_per_second, mkd_job_retries, mkd_job_running,
    mkd_job_test_stage_mean_return, mkd_job_test_stage_mean_episode_length,
    mkd_job_test_stage_episodes (all mkd_job_* carry job_id),
    mkd_nvml_up, mkd_gpu_* (table above); and, from the daemon, process_*.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import importlib.metadata
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.process_collector import ProcessCollector

from mkd.failures import FailureClass
from mkd.gpus import GpuReading, GpuSample, clocks_event_reasons
from mkd.snapshot import INTERNAL_ERROR_STEPS, JOB_STATES, DaemonView, Histogram, HistogramSnapshot, JobView

log = logging.getLogger("mkd.metrics")

GetView = Callable[[], DaemonView]


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


@functools.cache
def build_info() -> tuple[str, str]:
    """(mkd's version, Python's version) for mkd_build_info."""
    try:
        version = importlib.metadata.version("mkd")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return version, platform.python_version()


# Every failure class an attempt can be recorded with (cancelled is mkd's own stop, not a failure).
FAILURE_CLASSES: tuple[str, ...] = tuple(c.value for c in FailureClass if c is not FailureClass.CANCELLED)


def _histogram(name: str, doc: str, snap: HistogramSnapshot | None) -> HistogramMetricFamily:
    if snap is None:
        snap = Histogram().snapshot()
    buckets = [(_bound(b), n) for b, n in zip(snap.bounds, snap.cumulative, strict=False)]
    buckets.append(("+Inf", snap.count))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snap.total)


def _bound(bound: float) -> str:
    return str(float(bound))  # "0.005", "1.0": as prometheus_client writes le


def _daemon_families(view: DaemonView) -> Iterator[Metric]:
    version, python = build_info()
    info = _gauge("mkd_build_info", "mkd's version and Python's (value 1).", ["version", "python_version"])
    info.add_metric([version, python], 1)
    yield info
    yield GaugeMetricFamily(
        "mkd_daemon_start_time_seconds", "When the daemon started (unix time).", value=view.started_at
    )
    yield _histogram("mkd_tick_duration_seconds", "How long the daemon loop's ticks take.", view.tick_durations)
    jobs = _gauge("mkd_jobs", "Jobs known to the daemon, per state.", ["state"])
    states = list(JOB_STATES) + sorted(set(view.jobs_by_state) - set(JOB_STATES))
    for state in states:
        jobs.add_metric([state], view.jobs_by_state.get(state, 0))
    yield jobs
    yield GaugeMetricFamily("mkd_queue_length", "Jobs waiting to start.", value=view.queue_length)
    yield CounterMetricFamily("mkd_attempts_total", "Attempts started.", value=view.attempts_total)
    failures = CounterMetricFamily(
        "mkd_failures_total", "Failed attempts, per failure class (every class from 0).", labels=["class"]
    )
    for cls in list(FAILURE_CLASSES) + sorted(set(view.failures_by_class) - set(FAILURE_CLASSES)):
        failures.add_metric([cls], view.failures_by_class.get(cls, 0))
    yield failures
    yield CounterMetricFamily("mkd_retries_total", "Attempts that were retries.", value=view.retries_total)
    yield CounterMetricFamily(
        "mkd_rejected_files_total", "Job files rejected by validation.", value=view.rejected_files_total
    )
    yield CounterMetricFamily(
        "mkd_intake_errors_total", "Errors while taking in job files.", value=view.intake_errors_total
    )
    internal = CounterMetricFamily(
        "mkd_internal_errors_total",
        "Errors mkd caught in a step of its loop so one job could not stop it (a bug: see the daemon's log).",
        labels=["step"],
    )
    steps = dict.fromkeys(INTERNAL_ERROR_STEPS, 0) | dict(view.internal_errors_by_step)
    for step, n in steps.items():
        internal.add_metric([step], n)
    yield internal


JOB_INFO_LABELS = ("job_id", "state", "stage", "devices", "num_envs", "slurm_job_id", "node")

# (metric name, help, JobView attribute) for the per-job gauges labelled by job_id alone.
_JOB_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("mkd_job_attempt", "Current attempt number of the job (1-based).", "attempt"),
    ("mkd_job_iteration", "Last training iteration reported by MimicKit.", "iteration"),
    (
        "mkd_job_samples_per_second",
        "Throughput between MimicKit's last two iterations, by its own Wall_Time (not the scrape's clock).",
        "samples_per_second",
    ),
    ("mkd_job_train_return", "Last Train_Return.", "train_return"),
    ("mkd_job_test_return", "Last Test_Return (MimicKit's evaluation during training).", "test_return"),
    ("mkd_job_best_test_return", "Best Test_Return so far.", "best_test_return"),
    ("mkd_job_train_episode_length", "Last Train_Episode_Length.", "train_episode_length"),
    ("mkd_job_test_episode_length", "Last Test_Episode_Length.", "test_episode_length"),
    ("mkd_job_wall_time_seconds", "MimicKit's Wall_Time of the current attempt.", "wall_time_seconds"),
    (
        "mkd_job_last_progress_timestamp_seconds",
        "When MimicKit last printed a new iteration (unix time); absent before the first one.",
        "last_progress_at",
    ),
    (
        "mkd_job_median_samples_per_second",
        "Median of the attempt's samples/s between iterations (what MkdThroughputDropped compares to).",
        "median_samples_per_second",
    ),
    ("mkd_job_retries", "Attempts of the job that were retries.", "retries"),
    ("mkd_job_test_stage_mean_return", "The last test stage's result: MimicKit's Mean Return.", "test_mean_return"),
    (
        "mkd_job_test_stage_mean_episode_length",
        "The last test stage's result: MimicKit's Mean Episode Length.",
        "test_mean_episode_length",
    ),
    ("mkd_job_test_stage_episodes", "The last test stage's result: MimicKit's Episodes.", "test_episodes"),
)


def is_loss(column: str) -> bool:
    """Critic_Loss, Actor_Loss, Action_Bound_Loss...: the columns that are losses."""
    return "loss" in column.lower()


def _job_families(jobs: tuple[JobView, ...]) -> Iterator[Metric]:
    info = _gauge("mkd_job_info", "A job's state and settings (value 1).", JOB_INFO_LABELS)
    for j in jobs:
        num_envs = "" if j.num_envs is None else str(j.num_envs)
        info.add_metric(
            [j.job_id, j.state, j.stage or "", ",".join(j.devices), num_envs, j.slurm_job_id or "", j.node or ""], 1
        )
    yield info
    samples = CounterMetricFamily(
        "mkd_job_samples",
        "Samples trained so far, summed across attempts (rate() it for samples/s).",
        labels=["job_id"],
    )
    for j in jobs:
        if j.samples is not None:
            samples.add_metric([j.job_id], j.samples)
    yield samples
    for name, doc, attr in _JOB_GAUGES:
        family = _gauge(name, doc, ["job_id"])
        for j in jobs:
            value = getattr(j, attr)
            if value is not None:
                family.add_metric([j.job_id], value)
        yield family
    loss = _gauge("mkd_job_loss", "Last value of each loss column MimicKit logs (NaN as logged).", ["job_id", "name"])
    stat = _gauge(
        "mkd_job_train_stat",
        "Last value of MimicKit's other optimizer statistics (Clip_Frac, Imp_Ratio, Adv_*, Obs_Norm_*; NaN as logged).",
        ["job_id", "name"],
    )
    for j in jobs:
        for column, value in sorted(j.losses.items()):
            (loss if is_loss(column) else stat).add_metric([j.job_id, column], value)
    yield loss
    yield stat
    running = _gauge("mkd_job_running", "1 while the job has a running attempt, else 0.", ["job_id"])
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
    yield from _gpu_health_families(reading)
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


def _gpu_health_families(reading: GpuReading) -> Iterator[Metric]:
    """What DCGM users watch beyond the gauges: energy, clock event reasons, XID and ECC errors."""
    labels = ["gpu", "uuid"]
    energy = CounterMetricFamily(
        "mkd_gpu_energy_joules",
        "Energy the GPU used since the driver loaded (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION in joules).",
        labels=labels,
    )
    reasons = _gauge(
        "mkd_gpu_clocks_event_active",
        "1 while this clocks event (throttle) reason holds the GPU's clocks (DCGM_FI_DEV_CLOCKS_EVENT_REASONS bits).",
        [*labels, "reason"],
    )
    xids = CounterMetricFamily(
        "mkd_gpu_xid_errors",
        "XID errors NVML reported since mkd started, all XIDs (the XID: mkd_gpu_last_xid and the daemon's log).",
        labels=labels,
    )
    last_xid = _gauge("mkd_gpu_last_xid", "The last XID NVML reported, 0 for none (DCGM_FI_DEV_XID_ERRORS).", labels)
    ecc = CounterMetricFamily(
        "mkd_gpu_ecc_errors",
        "ECC errors since the driver loaded (volatile; DCGM_FI_DEV_ECC_SBE_VOL_TOTAL, _DBE_VOL_TOTAL).",
        labels=[*labels, "type"],
    )
    for g in reading.gpus:
        ids = [str(g.index), g.uuid]
        if g.energy_joules is not None:
            energy.add_metric(ids, g.energy_joules)
        if g.clocks_event_reasons is not None:
            for reason, active in clocks_event_reasons(g.clocks_event_reasons).items():
                reasons.add_metric([*ids, reason], 1 if active else 0)
        if g.xid_errors is not None:
            xids.add_metric(ids, g.xid_errors)
            last_xid.add_metric(ids, g.last_xid or 0)
        if g.ecc_corrected is not None:
            ecc.add_metric([*ids, "corrected"], g.ecc_corrected)
        if g.ecc_uncorrected is not None:
            ecc.add_metric([*ids, "uncorrected"], g.ecc_uncorrected)
    yield from (energy, reasons, xids, last_xid, ecc)


def families(view: DaemonView) -> Iterator[Metric]:
    """Every mkd metric family for one view."""
    yield from _daemon_families(view)
    yield from _job_families(view.jobs)
    yield from _gpu_families(view)


class MkdCollector:
    """Renders the DaemonView that get_view() returns at collect time."""

    def __init__(self, get_view: GetView) -> None:
        self._get_view = get_view

    def describe(self) -> list[Metric]:
        # Present so a registry never calls collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        return families(self._get_view())


class _OneView:
    """A collector of one fixed view: what Exposition renders, so the bytes match the view they are cached for."""

    def __init__(self, view: DaemonView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        return families(self._view)


class MkdRegistry(CollectorRegistry):
    """The registry make_registry builds: mkd's collector (and the process_* metrics if asked).

    It remembers get_view, so Exposition can tell when the published view changed, and keeps
    the process collector in a registry of its own too, so Exposition can render those few
    series of the moment at every scrape and mkd's many series once per view."""

    def __init__(self, get_view: GetView, *, process_metrics: bool = False) -> None:
        super().__init__(auto_describe=False)
        self.get_view = get_view
        self.process_metrics = process_metrics
        self.process_registry: CollectorRegistry | None = None
        self.register(MkdCollector(get_view))
        if process_metrics:
            collector = ProcessCollector(registry=None)
            self.register(collector)
            self.process_registry = CollectorRegistry(auto_describe=False)
            self.process_registry.register(collector)


def make_registry(get_view: GetView, *, process_metrics: bool = False) -> MkdRegistry:
    """A fresh registry with mkd's collector (and the process_* metrics if asked)."""
    return MkdRegistry(get_view, process_metrics=process_metrics)


Headers = tuple[tuple[str, str], ...]
_ACCEPTS_KEPT = 32  # distinct Accept headers remembered; a scraper sends the same one every time
_EOF = b"# EOF\n"
PROCESS_REFRESH_SECONDS = 1.0  # process_* are read from /proc at most this often (scrapes come every 15 s)


class Exposition:
    """The /metrics response for a registry, rendered once per published view.

    body() asks get_view() for the current view at every call (the daemon's attribute:
    cheap).  While that is the same object as last time, the bytes already rendered for it
    in the format the client asked for are reused; a new view drops them all.  The process_*
    metrics (values of the moment) are rendered again once they are PROCESS_REFRESH_SECONDS
    old, and appended.  Another kind of registry, or a name[] filter in the query, is rendered
    whole at every call, as prometheus_client does."""

    def __init__(self, registry: CollectorRegistry, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._monotonic = monotonic
        self._tails: dict[tuple[str, bool], tuple[float, bytes]] = {}
        self._get_view: GetView | None = None
        self._process: CollectorRegistry | None = None
        if isinstance(registry, MkdRegistry):
            self._get_view = registry.get_view
            self._process = registry.process_registry
        self._lock = threading.Lock()
        self._view: DaemonView | None = None
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._encoders: dict[str, tuple[Callable[[Any], bytes], str]] = {}
        self.renders = 0  # how many times mkd's part was rendered (tests read it)

    def body(self, accept: str | None, accept_encoding: str | None, query: str = "") -> tuple[bytes, Headers]:
        """The bytes and headers to answer a GET with (query: the URL's, for its name[] filter)."""
        zipped = gzip_accepted(accept_encoding or "")
        names = parse_qs(query).get("name[]") if query else None
        with self._lock:  # one render per view and format, even when scrapes come together
            encoder, content_type = self._encoder(accept or "")
            if names is not None or self._get_view is None:
                registry = self._registry.restricted_registry(names) if names is not None else self._registry
                self.renders += 1
                return _headed(encoder(registry), content_type, zipped)
            view = self._get_view()
            if view is not self._view:
                self._view, self._bodies = view, {}
            mine = self._mine(view, encoder, content_type, zipped)
            if self._process is None:
                return mine, _headers(content_type, zipped)
            return mine + self._tail(encoder, content_type, zipped), _headers(content_type, zipped)

    def _tail(self, encoder: Callable[[Any], bytes], content_type: str, zipped: bool) -> bytes:
        """The process part: a few series of the moment, rendered at most every
        PROCESS_REFRESH_SECONDS (gzipped as a second gzip member: a stream may hold several,
        RFC 1952 2.2)."""
        assert self._process is not None
        now = self._monotonic()
        found = self._tails.get((content_type, zipped))
        if found is None or now - found[0] >= PROCESS_REFRESH_SECONDS:
            tail = encoder(self._process)
            found = self._tails[(content_type, zipped)] = (
                now,
                gzip.compress(tail, compresslevel=6) if zipped else tail,
            )
        return found[1]

    def _mine(self, view: DaemonView, encoder: Callable[[Any], bytes], content_type: str, zipped: bool) -> bytes:
        """mkd's part for this view and format, rendered (and gzipped) once.  With the process
        part to follow, OpenMetrics' closing "# EOF" is left to it."""
        found = self._bodies.get((content_type, zipped))
        if found is None:
            plain = self._bodies.get((content_type, False))
            if plain is None:
                self.renders += 1
                plain = encoder(_OneView(view))
                if self._process is not None and plain.endswith(_EOF):
                    plain = plain[: -len(_EOF)]
                self._bodies[(content_type, False)] = plain
            found = gzip.compress(plain, compresslevel=6) if zipped else plain
            self._bodies[(content_type, zipped)] = found
        return found

    def _encoder(self, accept: str) -> tuple[Callable[[Any], bytes], str]:
        """prometheus_client's choice of format for an Accept header, remembered."""
        found = self._encoders.get(accept)
        if found is None:
            if len(self._encoders) >= _ACCEPTS_KEPT:
                self._encoders.clear()
            found = self._encoders[accept] = choose_encoder(accept)
        return found


def _headers(content_type: str, zipped: bool) -> Headers:
    if zipped:
        return (("Content-Type", content_type), ("Content-Encoding", "gzip"))
    return (("Content-Type", content_type),)


def _headed(output: bytes, content_type: str, zipped: bool) -> tuple[bytes, Headers]:
    return (gzip.compress(output) if zipped else output), _headers(content_type, zipped)


class _Server(ThreadingHTTPServer):
    """A thread per request, like prometheus_client's server; the handler finds the exposition here."""

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, exposition: Exposition) -> None:
        self.address_family = family  # read by the constructor below to make the socket
        self.exposition = exposition
        super().__init__(address, _MetricsHandler)


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET on any path but /favicon.ico: the exposition; OPTIONS: what is allowed; other methods:
    405.  The answers of prometheus_client's own server, minus its per-request WSGI layer."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if unquote(path, "iso-8859-1") == "/favicon.ico":
            self._send(200, b"", ())
            return
        server = self.server
        assert isinstance(server, _Server)
        body, headers = server.exposition.body(self.headers.get("Accept"), self.headers.get("Accept-Encoding"), query)
        self._send(200, body, headers)

    def do_OPTIONS(self) -> None:
        self._send(200, b"", (("Allow", "OPTIONS,GET"),))

    def _not_allowed(self) -> None:
        body = f"# HTTP 405 Method Not Allowed: {self.command}; use OPTIONS or GET\n".encode()
        self._send(405, body, (("Allow", "OPTIONS,GET"),))

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _send(self, status: int, body: bytes, headers: Headers) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


class MetricsServer:
    """Serves a registry on /metrics from a background thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.exposition = Exposition(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (an IPv6 address too); port 0 picks a free port (see .port)."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self._server = _Server((str(address[0]), port), family, self.exposition)
        self._thread = threading.Thread(target=self._server.serve_forever, name="mkd-metrics", daemon=True)
        self._thread.start()

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


class MetricsUnavailable(RuntimeError):
    """/metrics could not be served; the message is the one line to log (what, which key, the fix),
    `short` the part for a status line."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


def serve(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """A started MetricsServer on host:port, or MetricsUnavailable saying which [metrics] key to change.

    A taken port is common on a GPU host (another exporter, a second mkd); the daemon keeps
    supervising runs without /metrics rather than crash-looping under systemd."""
    server = MetricsServer(registry)
    try:
        server.start(host, port)
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, socket.gaierror):
            key, fix = "host", "set [metrics] host to an address of this machine"
        elif error.errno == errno.EADDRINUSE:
            key, fix = "port", "set [metrics] port to a free port (0 picks one) in the config given by --config"
        elif error.errno == errno.EADDRNOTAVAIL:
            key, fix = "host", "set [metrics] host to an address of this machine"
        else:
            key, fix = "port", "set [metrics] port to a port mkd may listen on (above 1023 without privileges)"
        short = f"cannot listen on {host}:{port} ([metrics] {key}): {reason}"
        raise MetricsUnavailable(
            f"metrics are off: {short}; {fix} and restart mkd. mkd keeps supervising runs without /metrics", short
        ) from None
    return server


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
