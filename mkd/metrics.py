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
import gzip
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
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

    It remembers get_view, so Exposition can tell when the published view changed."""

    def __init__(self, get_view: GetView, *, process_metrics: bool = False) -> None:
        super().__init__(auto_describe=False)
        self.get_view = get_view
        self.process_metrics = process_metrics
        self.register(MkdCollector(get_view))
        if process_metrics:
            ProcessCollector(registry=self)


def make_registry(get_view: GetView, *, process_metrics: bool = False) -> MkdRegistry:
    """A fresh registry with mkd's collector (and the process_* metrics if asked)."""
    return MkdRegistry(get_view, process_metrics=process_metrics)


Headers = tuple[tuple[str, str], ...]
_ACCEPTS_KEPT = 32  # distinct Accept headers remembered; a scraper sends the same one every time


class Exposition:
    """The /metrics response for a registry, rendered once per published view.

    body() asks get_view() for the current view at every call (the daemon's attribute:
    cheap).  While that is the same object as last time, the bytes already rendered for it
    in the format the client asked for are returned again; a new view drops them all.  A
    registry with the process_* metrics (values of the moment), another kind of registry,
    or a name[] filter in the query is rendered at every call, as prometheus_client does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._get_view: GetView | None = None
        if isinstance(registry, MkdRegistry) and not registry.process_metrics:
            self._get_view = registry.get_view
        self._lock = threading.Lock()
        self._view: DaemonView | None = None
        self._bodies: dict[tuple[str, bool], tuple[bytes, Headers]] = {}
        self._encoders: dict[str, tuple[Callable[[Any], bytes], str]] = {}
        self.renders = 0  # how many times the text was rendered (tests read it)

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
            found = self._bodies.get((content_type, zipped))
            if found is None:
                plain = self._bodies.get((content_type, False))
                if plain is None:
                    self.renders += 1
                    plain = _headed(encoder(_OneView(view)), content_type, False)
                    self._bodies[(content_type, False)] = plain
                found = _headed(plain[0], content_type, True) if zipped else plain
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


def _headed(output: bytes, content_type: str, zipped: bool) -> tuple[bytes, Headers]:
    if zipped:
        return gzip.compress(output), (("Content-Type", content_type), ("Content-Encoding", "gzip"))
    return output, (("Content-Type", content_type),)


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
