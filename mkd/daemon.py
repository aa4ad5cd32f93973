"""The daemon: one loop, one `tick(now)`, a list of named steps.

control files -> intake -> observe attempts -> start runnable jobs -> GPU samples ->
publish. Signal handlers only record; the loop acts. This is the only module that wires
the store, intake, engine, scheduler, policy and metrics together.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from mkd import report
from mkd.attempts import AttemptRunner
from mkd.config import DaemonConfig, Layout
from mkd.control import ControlFiles
from mkd.executors.base import Executor
from mkd.executors.local import LocalExecutor
from mkd.gpu_ledger import GpuLedger
from mkd.gpus import GpuReading, GpuSampler
from mkd.intake import Intake
from mkd.launcher import Launcher
from mkd.leftovers import remove_dead_temp_files
from mkd.publisher import Publisher
from mkd.runs import Runs
from mkd.sdnotify import Notifier
from mkd.snapshot import DaemonView, Histogram
from mkd.store import Store, StoreError
from mkd.watch import IncomingWatcher

log = logging.getLogger("mkd.daemon")
PUBLISH_SECONDS = 1.0


class AlreadyRunning(RuntimeError):
    pass


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        layout: Layout,
        *,
        sampler: GpuSampler | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        metrics: bool | None = None,
        reload: Callable[[], DaemonConfig] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.clock = clock
        self.wall = wall
        self.sampler = sampler if sampler is not None else GpuSampler()
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.rng = rng or random.Random()
        self.metrics_enabled = config.metrics.enabled if metrics is None else metrics
        self.load_config = reload
        self.executor = executor
        self.wake = threading.Event()
        self.stop_requests = 0
        self.reload_requested = False
        self.shutdown_stop_runs = False
        self.started_at = wall()
        self._lock_fd: int | None = None
        self._watcher: IncomingWatcher | None = None
        self._metrics: Any = None
        self.metrics_error: str | None = None  # why /metrics is not served
        self.tick_durations = Histogram()
        self._view: DaemonView = DaemonView(started_at=self.started_at)
        self._next_gpu_sample = 0.0
        self._published_at = -1e9
        self.store: Store
        self.intake: Intake
        self.runs: Runs
        self.ledger: GpuLedger
        self.launcher: Launcher
        self.runner: AttemptRunner
        self.publisher: Publisher
        self.control: ControlFiles

    # --- life cycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock, open the store, re-adopt runs, start intake; then READY."""
        self.layout.create()
        self._take_lock()
        self.store = Store.open(self.layout.db)
        self.intake = Intake(self.config, self.layout, self.store, wall=self.wall)
        self.runs = Runs(
            self.config,
            self.layout,
            self.store,
            self.executor if self.executor is not None else LocalExecutor(),
            clock=self.clock,
            wall=self.wall,
            rng=self.rng,
        )
        self.ledger = GpuLedger(self.runs)
        self.launcher = Launcher(self.runs, self.ledger)
        self.runner = AttemptRunner(self.runs, self.ledger)
        forgetters = [self.runs.forget, self.ledger.forget, self.launcher.forget, self.runner.forget]
        self.publisher = Publisher(self.runs, self.ledger, forgetters)
        self.runs.gpu = self.sampler.sample()
        remove_dead_temp_files(self.layout)
        self.control = ControlFiles(self.layout, self.store, self.runner, on_shutdown=self._shutdown, wall=self.wall)
        recovered = self.intake.recover_claims()
        if recovered.accepted or recovered.rejected:
            log.info("finished interrupted intake: %s", recovered)
        self.runner.restore(self.clock())
        self._watcher = IncomingWatcher([self.layout.incoming, self.layout.control], self.wake)
        self._watcher.start()
        if self.metrics_enabled:
            self._start_metrics()
        self._view = self.publisher.view(self.clock(), self.started_at, 0.0)  # no notify before READY
        self.notifier.ready(self.status_line())
        log.info("mkd ready: jobs in %s, runs in %s", self.layout.jobs_dir, self.layout.runs_dir)

    def close(self) -> None:
        """Leave runs running (they are re-adopted by the next daemon) and release everything."""
        log.info("mkd stopping; %d run(s) keep running and will be re-adopted", len(self.runs.live))
        self.notifier.stopping()
        if self._watcher is not None:
            self._watcher.stop()
        if self._metrics is not None:
            self._metrics.stop()
        self.runs.executor.close()
        self.sampler.close()
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> None:
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another mkd is running on {self.layout.state_dir} (lock {self.layout.lock})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _start_metrics(self) -> None:
        from mkd.metrics import MetricsUnavailable, make_registry, serve

        try:
            server = serve(
                make_registry(lambda: self._view, process_metrics=True),
                self.config.metrics.host,
                self.config.metrics.port,
            )
        except MetricsUnavailable as error:  # keep supervising: say so once, loudly, and in STATUS=
            log.error("%s", error)
            self.metrics_error = error.short
            (self.layout.state_dir / "metrics.port").unlink(missing_ok=True)
            return
        (self.layout.state_dir / "metrics.port").write_text(f"{server.port}\n")
        self._metrics = server
        log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, server.port)

    # --- the loop -------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        started = self.clock()
        now = started if now is None else now
        for step in (self._control, self._intake, self._observe, self._start, self._files, self._gpus, self._publish):
            step(now)
        self._tick_seconds = self.clock() - started
        self.tick_durations.observe(self._tick_seconds)

    def _control(self, now: float) -> None:
        self.control.scan(now)

    def _shutdown(self, stop_runs: bool) -> None:
        """A shutdown control file: as SIGTERM (or stop every run first)."""
        self.stop_requests = max(self.stop_requests, 1)
        self.shutdown_stop_runs = self.shutdown_stop_runs or stop_runs

    def _intake(self, now: float) -> None:
        if self.stop_requests:
            return
        result = self.intake.scan(now)
        if result.accepted:
            self.runs.poke()

    def _observe(self, now: float) -> None:
        self.runner.observe(now)

    def _start(self, now: float) -> None:
        if self.stop_requests:
            return
        self.launcher.start_runnable(now)

    def _files(self, now: float) -> None:
        self.publisher.publish_pending()
        self.publisher.refresh(now)

    def _gpus(self, now: float) -> None:
        if now < self._next_gpu_sample:
            return
        self._next_gpu_sample = now + self.config.gpu.sample_every.total_seconds()
        reading: GpuReading = self.sampler.sample()
        self.ledger.on_gpu_reading(reading, now)
        self.runs.poke()  # memory may have been freed: queued jobs may fit now

    def _publish(self, now: float) -> None:
        """The view for metrics, status and STATUS=, rebuilt at most once a second; the watchdog every tick."""
        if self.notifier.watchdog_due(now):
            self.notifier.ping(now)
        if now - self._published_at < PUBLISH_SECONDS:
            return
        self._published_at = now
        view = self.publisher.view(now, self.started_at, getattr(self, "_tick_seconds", 0.0))
        self._view = replace(view, tick_durations=self.tick_durations.snapshot(), metrics_error=self.metrics_error)
        self.notifier.status(self.status_line())
        if self.config.metrics.hpc_job_mapping_dir:
            from mkd.metrics import write_hpc_job_mapping

            write_hpc_job_mapping(Path(self.config.metrics.hpc_job_mapping_dir), self.ledger.holders_by_index())

    def status_line(self) -> str:
        line = report.status_line(self._view)
        return f"{line} · /metrics OFF: {self.metrics_error}" if self.metrics_error else line

    def view(self) -> DaemonView:
        return self._view

    # --- running in the foreground ---------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_requests += 1
        self.wake.set()

    def _on_child_exit(self, signum: int, frame: FrameType | None) -> None:
        """A shim we started exited: its attempt ended, look at once (the loop's period is long)."""
        self.wake.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, self._on_child_exit)

    def _sleep_seconds(self, period: float) -> float:
        """The loop's period, cut short for the next watchdog ping or the end of a retry's backoff."""
        now = self.clock()
        deadlines = (
            self.notifier.seconds_until_watchdog(now),
            self.launcher.seconds_until_due(),
            self.control.seconds_until_due(),
        )
        return min([period, *(d for d in deadlines if d is not None)])

    def run(self) -> int:
        """Tick until asked to stop. First SIGTERM: graceful; second: at once."""
        self.install_signal_handlers()
        period = self.config.tick.total_seconds()
        try:
            while True:
                self.wake.clear()
                self.tick()
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
                if self.stop_requests and self._may_exit():
                    break
                self.wake.wait(self._sleep_seconds(period))
        except StoreError as error:
            log.error("stopping: %s", error)
            return 70
        finally:
            self.close()
        return 0

    def _may_exit(self) -> bool:
        if self.stop_requests > 1 or not self.shutdown_stop_runs:
            return True
        self.runner.stop_all(self.clock(), "daemon shutdown --stop-runs")
        return not self.runs.live

    def _reload(self) -> None:
        """SIGHUP: read the config again. Paths and the metrics address need a restart; the rest applies."""
        self.notifier.reloading()
        if self.load_config is None:
            log.info("SIGHUP: no config file to reload (embedded defaults)")
        else:
            try:
                fresh = self.load_config()
            except Exception as error:  # a bad edit must not stop the daemon: keep the old config
                log.error("SIGHUP: config not reloaded, keeping the old one: %s", error)
            else:
                kept = [k for k in ("paths", "metrics") if getattr(fresh, k) != getattr(self.config, k)]
                if kept:
                    log.warning("SIGHUP: %s changed; takes effect at the next restart", ", ".join(kept))
                    fresh = fresh.model_copy(update={k: getattr(self.config, k) for k in kept})
                self.config = fresh
                self.intake.config = fresh
                self.runs.reconfigure(fresh)
                logging.getLogger().setLevel(fresh.log_level.upper())
                log.info("SIGHUP: config reloaded")
        self.notifier.ready(self.status_line())
