"""An in-process daemon for loop tests: a fake clock, a fake executor and a fake NVML sampler.

The executor is the edge being faked: instead of a shim and a MimicKit process it writes a
run's console output (real MimicKit texts from tests/fixtures/mimickit) and its out/ files,
and reports an exit record when the script says the run is over. Everything inward of it
(intake, store, verdict, lifecycle, policy, stages, book) is the real code.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mkd.config import DaemonConfig, Layout
from mkd.daemon import Daemon
from mkd.executors.base import LaunchRequest, RunRef, RunStatus
from mkd.exits import ExitRecord
from mkd.gpus import GpuReading, GpuSample
from mkd.sdnotify import Notifier
from mkd.states import LIVE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mimickit"
TRAIN_TABLES = (FIXTURES / "cpu_train_nenv16_quick.stdout.txt").read_text()
OOM_TEXT = (FIXTURES / "gpu_h100_1gpu_fail_cuda_oom_hog_gpu0_at_start_nenv4096.stdout.txt").read_text()
TEST_TEXT = (FIXTURES / "cpu_test_mode_nenv4.stdout.txt").read_text()


@dataclass(frozen=True)
class Outcome:
    """What a fake run prints, whether it writes model.pt and log.txt, and how it exits."""

    text: str
    returncode: int = 0
    artifacts: bool = True


PASS_TRAIN = Outcome(TRAIN_TABLES)
OOM = Outcome(OOM_TEXT, returncode=1, artifacts=False)
CRASH = Outcome("Traceback (most recent call last):\nRuntimeError: something broke\n", returncode=1, artifacts=False)
PASS_TEST = Outcome(TEST_TEXT)


@dataclass
class FakeClock:
    mono: float = 1000.0
    wall_at: float = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_at

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_at += seconds


@dataclass
class FakeRun:
    request: LaunchRequest
    outcome: Outcome
    polls: int = 0
    stopped: bool = False


def argv_value(argv: list[str], key: str) -> str | None:
    return argv[argv.index(key) + 1] if key in argv else None


@dataclass
class FakeExecutor:
    """Runs each attempt as a script: first poll writes its output, the next one ends it."""

    script: Callable[[LaunchRequest], Outcome]
    kind: str = "fake"
    places_gpus: bool = True
    runs: dict[int, FakeRun] = field(default_factory=dict)
    launches: list[LaunchRequest] = field(default_factory=list)
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(40000))

    def launch(self, request: LaunchRequest) -> RunRef:
        pid = next(self._pids)
        self.runs[pid] = FakeRun(request, self.script(request))
        self.launches.append(request)
        return RunRef(kind=self.kind, pid=pid)

    def poll(self, ref: RunRef, attempt_dir: Path) -> RunStatus:
        run = self.runs[ref.pid or 0]
        run.polls += 1
        if run.polls == 1:
            run.request.spec.console.write_text(run.outcome.text)
            if run.outcome.artifacts:
                out = attempt_dir / "out"
                out.mkdir(parents=True, exist_ok=True)
                (out / "model.pt").write_bytes(b"weights")
                (out / "log.txt").write_text("Iteration 1\n")
            return RunStatus()
        if run.stopped:
            return RunStatus(exit=ExitRecord(None, 15, True, 0, None))
        return RunStatus(exit=ExitRecord(run.outcome.returncode, None, False, 0, None))

    def stop(self, ref: RunRef, attempt_dir: Path, *, kill_now: bool = False) -> None:
        self.runs[ref.pid or 0].stopped = True

    def adopt(self, ref: RunRef | None, attempt_dir: Path) -> RunRef | None:
        return ref

    def process_group(self, attempt_dir: Path) -> int | None:
        return None

    def kill_leftovers(self, ref: RunRef, attempt_dir: Path) -> int:
        return 0

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def argvs(self) -> list[str]:
        return [shlex.join(r.spec.argv) for r in self.launches]


class FakeSampler:
    """NVML as the daemon sees it: a fixed set of idle GPUs."""

    def __init__(self, count: int = 2, clock: FakeClock | None = None) -> None:
        self.count = count
        self.clock = clock or FakeClock()

    def sample(self) -> GpuReading:
        gpus = tuple(
            GpuSample(i, f"GPU-fake-{i}", "NVIDIA H200", f"0000:0{i}:00.0", 0.0, 0, 140 << 30, 70.0, 30.0, 1.9e9, ())
            for i in range(self.count)
        )
        return GpuReading(True, None, gpus, "999.0", self.clock.wall())

    def close(self) -> None:
        pass


def make_daemon(root: Path, script: Callable[[LaunchRequest], Outcome], gpus: int = 2) -> tuple[Daemon, FakeClock]:
    clock = FakeClock()
    config = DaemonConfig.model_validate({"paths": {"jobs_dir": "jobs", "runs_dir": "runs", "state_dir": "var"}})
    daemon = Daemon(
        config,
        Layout(config, root),
        sampler=FakeSampler(gpus, clock),  # type: ignore[arg-type]
        clock=clock.monotonic,
        wall=clock.wall,
        notifier=Notifier(None),
        metrics=False,
        executor=FakeExecutor(script),
    )
    daemon.open()
    return daemon, clock


def run_until_idle(daemon: Daemon, clock: FakeClock, *, step: float = 0.5, max_ticks: int = 2000) -> int:
    """Tick, moving the clock on, until no job is live; returns the ticks it took."""
    for ticks in range(1, max_ticks + 1):
        daemon.tick(clock.monotonic())
        if not daemon.store.jobs(set(LIVE)) and not daemon.runs.live:
            daemon.tick(clock.monotonic())  # publish the last state change's files
            return ticks
        clock.advance(step)
    raise AssertionError(f"still busy after {max_ticks} ticks: {[j.state for j in daemon.store.jobs(set(LIVE))]}")
