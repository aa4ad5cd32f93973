"""Fault injection against a real daemon: SIGKILL at random moments and at precise points,
a killed shim, a full disk, a locked or corrupt store, a second daemon, a run that ignores
SIGTERM.

Most restarts go through a fork server: one Python process that has imported mkd once and
forks a fresh `mkd run` (cli.main) per start, so a restart costs ~60 ms instead of ~0.7 s
of imports and the kills land in the loop rather than in `import pydantic`. The forked
daemon is the real daemon code (STYLE 14: importing does nothing, so a fork after the
imports is a clean start). A start may also arm a kill point: the daemon SIGKILLs itself
right before or after the Nth call of a named store/engine/runner function whose
arguments contain a given text, which hits the narrow windows a timer rarely hits. The
final phase of each test runs the real `python -m mkd run`.

Every job carries MKD_FAULT_JOB=<name> in its [env], so a scan of /proc maps each run's
process group to its job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mkd.mimickit.console import ConsoleParser
from tests.harness import Home, mimickit_job, new_token, processes_with_token, wait_for, write_to_terminal

# The fork server. Requests are JSON lines on stdin: {"op": "spawn", cwd, env, log, argv,
# kill} -> {"pid": N}; {"op": "wait", "pid": N} -> {"status": exit code, -9 for SIGKILL}.
FORKSERVER = r'''
import functools, json, os, signal, sys, traceback
import mkd.cli, mkd.daemon, mkd.metrics, mkd.watch, mkd.gpus
from mkd import attempts, engine, intake, store

OWNERS = {"Store": store.Store, "Engine": engine.Engine, "AttemptRunner": attempts.AttemptRunner,
          "Intake": intake.Intake, "attempts": attempts}

def arm(spec):
    """spec = "Owner.attr|before|after|after_stop_shim|N|text": SIGKILL self at the Nth matching call."""
    target, when, nth, needle = spec.split("|")
    owner_name, _, attr = target.partition(".")
    owner = OWNERS[owner_name]
    original = getattr(owner, attr)
    calls = [0]

    def die(extra=""):
        with open(os.environ["MKD_FAULT_HITS"], "a") as hits:
            hits.write(spec + extra + "\n")
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        hit = needle in repr((args, kwargs))
        if hit:
            calls[0] += 1
            hit = calls[0] == int(nth)
        if hit and when == "before":
            die()
        result = original(*args, **kwargs)
        if hit and when == "after_stop_shim":  # the shim is slow to start: stopped before it wrote shim.json
            os.kill(result.pid, signal.SIGSTOP)
            die(f" shim={result.pid}")
        if hit and when == "after":
            die()
        return result

    setattr(owner, attr, wrapper)

def child(req):
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if req.get("kill"):
        arm(req["kill"])
    try:
        code = mkd.cli.main(req["argv"])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
    elif req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
'''

SEED = 20261125
RANDOM_KILLS = 200  # SIGKILLs sent by the test after a random delay (kill points come on top)
FAKE_ENV = "MKD_FAULT_JOB"


# --- the fork server and a daemon started through it -------------------------------------


class ForkServer:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MKD_TEST_TOKEN"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKSERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lock = threading.Lock()

    def request(self, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(fields) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the fork server died (rc {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def forkserver() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


@dataclass
class Tally:
    random_kills: int = 0
    point_kills: int = 0
    jobs: int = 0
    rejected: int = 0
    notes: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts for the whole module, written to the terminal at its end (whatever -s says)."""
    counts = Tally()
    yield counts
    line = (
        f"test_faults: {counts.random_kills + counts.point_kills} daemon SIGKILLs "
        f"({counts.random_kills} at random moments, {counts.point_kills} at kill points), "
        f"{counts.jobs} jobs, {counts.rejected} rejected files"
    )
    write_to_terminal(request.config, [line, *(f"  {note}" for note in counts.notes)])


class Forked:
    """One daemon started through the fork server."""

    def __init__(self, server: ForkServer, home: Home, kill: str | None = None) -> None:
        self.server = server
        self.home = home
        env = {**home.env, "MKD_FAULT_HITS": str(home.root / "kill-points.txt")}
        argv = ["--config", str(home.config), "run"]
        answer = server.request(op="spawn", cwd=str(home.root), env=env, log=str(home.log), argv=argv, kill=kill)
        self.pid = int(answer["pid"])
        self.status: int | None = None

    def exited(self) -> bool:
        if self.status is not None:
            return True
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as handle:
                return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            return True

    def wait(self) -> int:
        if self.status is None:
            self.status = int(self.server.request(op="wait", pid=self.pid)["status"])
            (self.home.root / "var" / "metrics.port").unlink(missing_ok=True)
        return self.status

    def kill(self) -> int:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        return self.wait()

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: (self.home.root / "var" / "metrics.port").exists() or self.exited(), timeout, "daemon start")


@contextlib.contextmanager
def forked(server: ForkServer, home: Home, kill: str | None = None) -> Iterator[Forked]:
    daemon = Forked(server, home, kill)
    try:
        yield daemon
    finally:
        daemon.kill()


# --- jobs ------------------------------------------------------------------------------------


TRAIN_TEST = """
[[stages]]
name = "train"
kind = "train"
max_samples = 1536

[[stages]]
name = "test"
kind = "test"
num_envs = 1
test_episodes = 2
model_from = "train"
"""


def mk(
    name: str, *, num_envs: int = 8, env: str = "", retry: str = "", stages: str = TRAIN_TEST, devices: str = '["cpu"]'
) -> str:
    env = f'{FAKE_ENV} = "{name}"\n{env}'
    return mimickit_job(
        devices=devices, num_envs=num_envs, env=env, retry=retry, stages=stages, backoff="50ms", stop_grace="1s"
    )


def once(home: Home, name: str, mode: str) -> str:
    (home.root / "once").mkdir(exist_ok=True)
    return f'FAKE_MK_FAIL = "{mode}"\nFAKE_MK_FAIL_ONCE_FILE = "{home.root / "once" / name}"'


@dataclass(frozen=True)
class Kind:
    """A kind of job in the mix: its file, its stages, the final state it must reach."""

    name: str
    expected: str  # succeeded | failed | cancelled | rejected
    stages: int = 1
    last_train: str | None = None  # label of the last train-kind stage (its model.pt must exist)


KINDS = {
    "two": Kind("two", "succeeded", 2, "train"),
    "retry": Kind("retry", "succeeded", 2, "train"),
    "warm": Kind("warm", "succeeded", 2, "longrun"),
    "probe": Kind("probe", "succeeded", 2, "after"),
    "cmd": Kind("cmd", "succeeded", 1),
    "perm": Kind("perm", "failed", 1),
    "long": Kind("long", "cancelled", 1),
    "bad": Kind("bad", "rejected"),
}
MIX = ["two"] * 6 + ["retry"] * 4 + ["warm"] * 3 + ["probe"] * 3 + ["cmd"] * 3 + ["perm", "long", "bad"]


def job_text(home: Home, kind: str, name: str) -> str:
    if kind == "two":
        return mk(name)
    if kind == "retry":
        return mk(name, env=once(home, name, "crash_at=2"))
    if kind == "warm":
        stages = (
            '[[stages]]\nname = "warmup"\nkind = "warmup"\nmax_samples = 8192\n'
            '[[stages]]\nname = "longrun"\nkind = "long_run"\nmax_samples = 8192\n'
        )
        return mk(name, num_envs=64, env=once(home, name, "oom_above=40"), retry="ladder = [64, 32]", stages=stages)
    if kind == "probe":
        stages = (
            '[[stages]]\nname = "probe"\nkind = "probe"\nladder = [64, 32, 16]\npoint_max_samples = 1000000\n'
            '[[stages]]\nname = "after"\nkind = "train"\nmax_samples = 8192\n'
        )
        return mk(name, env='FAKE_MK_FAIL = "oom_above=40"', stages=stages)
    if kind == "cmd":
        return f'[workload]\nkind = "command"\nargv = ["sh", "-c", "sleep 0.3"]\n[env]\n{FAKE_ENV} = "{name}"\n'
    if kind == "perm":
        return mk(name, env='FAKE_MK_FAIL = "env_mismatch"', stages='[[stages]]\nkind = "train"\nmax_samples = 1536\n')
    if kind == "long":
        env = 'FAKE_MK_ITER_SECONDS = "0.2"\nFAKE_MK_FAIL = "ignore_sigterm"'
        return mk(name, env=env, stages='[[stages]]\nkind = "train"\nmax_samples = 1000000000\n')
    if kind == "bad":
        return f'[workload]\nkind = "command"\nargv = ["true"]\nbogus = "{name}"\n'
    raise ValueError(kind)


def cancel(home: Home, job_id: str) -> None:
    """What `mkd cancel` does: a control file, written aside and renamed in."""
    control = home.root / "jobs" / "control"
    control.mkdir(parents=True, exist_ok=True)
    tmp = control / f".{job_id}.cancel.tmp"
    tmp.write_text("requested by test_faults\n")
    os.rename(tmp, control / f"{job_id}.cancel")


# --- looking at the store, the files and the process table ---------------------------------


def query(home: Home, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    if not (home.root / "var" / "mkd.sqlite3").exists():
        return []
    conn = home.db()
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def live_attempts_per_job(home: Home) -> dict[str, int]:
    """Jobs with more than one attempt not ended (state and ended_at both say so)."""
    rows = query(
        home,
        "SELECT job_id, COUNT(*) FROM attempts WHERE ended_at IS NULL OR state != 'ended' "
        "GROUP BY job_id HAVING COUNT(*) > 1",
    )
    return {str(r[0]): int(r[1]) for r in rows}


def run_groups() -> dict[str, set[int]]:
    """job -> process groups of live (non-zombie) processes carrying MKD_FAULT_JOB=job."""
    groups: dict[str, set[int]] = {}
    needle = f"{FAKE_ENV}=".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = handle.read()
            if needle not in env:
                continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z":
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle):
                groups.setdefault(item[len(needle) :].decode(), set()).add(int(fields[2]))
    return groups


class Watcher(threading.Thread):
    """Samples the process table (every ~50 ms) and the store (every ~200 ms) during a test:
    never two process groups of one job, never two attempts of one job alive."""

    def __init__(self, home: Home) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.stop_event = threading.Event()
        self.violations: list[str] = []
        self.samples = 0

    def run(self) -> None:
        next_store = 0.0
        while not self.stop_event.wait(0.05):
            self.samples += 1
            for job, pgids in run_groups().items():
                if len(pgids) > 1:
                    self.violations.append(f"job {job}: {len(pgids)} live process groups at once {sorted(pgids)}")
            if time.monotonic() >= next_store:
                next_store = time.monotonic() + 0.2
                with contextlib.suppress(sqlite3.Error):
                    for job, n in live_attempts_per_job(self.home).items():
                        self.violations.append(f"job {job}: {n} attempts alive at once in the store")

    def stop(self) -> list[str]:
        self.stop_event.set()
        self.join(5)
        return self.violations


@contextlib.contextmanager
def watching(home: Home) -> Iterator[Watcher]:
    watcher = Watcher(home)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def attempt_interval(attempt: sqlite3.Row | dict[str, Any]) -> tuple[float, float] | None:
    """When the attempt's child ran: child.json started_at to exit.json ended_at (or the
    store's ended_at when the shim left no exit record)."""
    folder = Path(attempt["dir"])
    try:
        started = float(json.loads((folder / "child.json").read_text())["started_at"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        ended = float(json.loads((folder / "exit.json").read_text())["ended_at"])
    except (OSError, ValueError, KeyError):
        ended = float(attempt["ended_at"] or time.time())
    return started, ended


def overlapping_runs(home: Home, job_id: str) -> list[str]:
    attempts = home.attempts(job_id)
    spans = [(a["number"], attempt_interval(a)) for a in attempts]
    found = []
    for i, (n1, s1) in enumerate(spans):
        for n2, s2 in spans[i + 1 :]:
            if s1 and s2 and s1[0] < s2[1] and s2[0] < s1[1]:
                found.append(f"job {job_id}: attempts {n1} and {n2} ran at the same time ({s1} vs {s2})")
    return found


def mirror_folders(home: Home, job_id: str) -> list[str]:
    jobs = home.root / "jobs"
    return sorted(p.parent.name for p in jobs.glob(f"*/{job_id}.toml") if p.parent.name != "rejected")


def status_json(home: Home, job_id: str) -> dict[str, Any]:
    path = home.root / "runs" / job_id / "status.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


FOLDER = {"succeeded": "done"}


def truth_problems(home: Home, job_id: str, kind: Kind) -> list[str]:
    """Does the job's final state tell the truth, in the store, status.json and the jobs/ mirror?"""
    problems: list[str] = []
    job = home.job(job_id)
    if job is None:
        return [f"job {job_id}: not in the store"]
    state = str(job["state"])
    if state != kind.expected:
        problems.append(f"job {job_id} ({kind.name}): {state} ({job['reason']}), expected {kind.expected}")
    if state in ("failed", "cancelled") and not str(job["reason"]).strip():
        problems.append(f"job {job_id}: {state} without a reason")
    attempts = home.attempts(job_id)
    alive = [a["number"] for a in attempts if a["state"] != "ended" or a["ended_at"] is None]
    if alive:
        problems.append(f"job {job_id}: attempts {alive} not ended in a finished job")
    data = json.loads(job["stage_data"])
    results = data.get("results", {})
    if state == "succeeded":
        passed = [label for label, r in results.items() if r.get("passed")]
        if len(passed) != kind.stages:
            problems.append(f"job {job_id}: {len(passed)} stages passed in the store, expected {kind.stages}")
        if kind.last_train:
            final = [a for a in attempts if a["stage_label"] == kind.last_train]
            model = Path(final[-1]["dir"]) / "out" / "model.pt" if final else None
            if model is None or not model.exists() or final[-1]["outcome"] != "succeeded":
                problems.append(f"job {job_id}: no model.pt from a passing {kind.last_train} attempt")
    status = status_json(home, job_id)
    if status.get("state") != state or status.get("results", {}) != results:
        problems.append(f"job {job_id}: status.json says {status.get('state')!r}, the store {state}")
    folders = mirror_folders(home, job_id)
    if folders != [FOLDER.get(state, state)]:
        problems.append(f"job {job_id}: job file in jobs/{folders}, the store says {state}")
    return problems


def rerun_stages(home: Home, job_id: str) -> list[str]:
    """Stages that ran again after one of their attempts had passed (a probe ladder's rungs
    are several passing attempts of one stage by design): a decision lost to a kill."""
    out = []
    passed: set[str] = set()
    for attempt in home.attempts(job_id):
        if attempt["stage_label"] == "probe":
            continue
        if attempt["stage_label"] in passed:
            out.append(f"{job_id}:{attempt['stage_label']}#{attempt['number']}")
        if attempt["outcome"] == "succeeded":
            passed.add(attempt["stage_label"])
    return out


def leftover_processes(home: Home) -> list[int]:
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not processes_with_token(home.token), 15, "every run process to end")
    return processes_with_token(home.token)


# --- 1. SIGKILL at random moments, with a mix of jobs flowing ------------------------------

KILL_POINTS = [
    "Intake._record_claimed|before|1|",  # claimed by rename, not recorded
    "Store.insert_job|after|1|",  # recorded, not mirrored
    "Store.add_attempt|after|1|",  # attempt row, no shim yet
    "Engine.launch|after|1|",  # shim started, its pid not recorded
    "Store.set_job_state|after|1|JobState.RUNNING",
    "Store.update_attempt|after|1|AttemptState.ENDED",  # attempt ended, its decision not saved
    "Store.bump|after|1|retries_total",  # retry counted, not applied
    "Store.set_job_state|after|1|JobState.RETRY_WAIT",
    "Store.update_job|after|1|'stage_index'",  # next stage saved, state not
    "Store.set_job_state|after|2|",
    "AttemptRunner.stop|after|1|",  # a probe's early stop or a cancel sent
    "Store.set_job_state|after|1|JobState.SUCCEEDED",
    "Store.set_job_state|after|1|JobState.CANCELLED",
]


def census(home: Home) -> set[str]:
    """What was in flight when the daemon died."""
    phases = set()
    if any(not p.name.startswith(".") for p in home.incoming.iterdir()) or any(
        (home.root / "var" / "claimed").glob("*")
    ):
        phases.add("intake")
    states = {str(r[0]) for r in query(home, "SELECT state FROM jobs")}
    if "queued" in states:
        phases.add("scheduling")
    if "retry_wait" in states:
        phases.add("retry")
    if query(home, "SELECT 1 FROM attempts WHERE state = 'starting' AND started_at > ? LIMIT 1", (time.time() - 0.5,)):
        phases.add("attempt start")
    if query(home, "SELECT 1 FROM attempts WHERE state IN ('running', 'stopping') LIMIT 1"):
        phases.add("running")
    if query(home, "SELECT 1 FROM jobs WHERE stage_index > 0 AND state IN ('queued', 'running') LIMIT 1"):
        phases.add("stage promotion")
    return phases


@pytest.mark.fault
@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_keeps_every_job_true(home: Home, forkserver: ForkServer, tally: Tally) -> None:
    """200 SIGKILLs after random delays (plus kill points) while jobs flow: train -> test jobs,
    jobs that fail once and retry after 50 ms, warm-up promotions, probe ladders, commands,
    a permanent failure, cancels of runs that ignore SIGTERM, invalid files."""
    rng = random.Random(SEED)
    names: dict[str, str] = {}  # job name -> kind
    order = [rng.choice(MIX) for _ in range(75)]
    to_cancel: dict[str, int] = {}  # job -> loop iteration at which to cancel it
    phases: dict[str, int] = {}
    point_hits: dict[str, int] = {}
    random_kills = point_kills = 0
    loop_started = time.monotonic()
    with watching(home) as watcher:
        iteration = 0
        while random_kills < RANDOM_KILLS:
            iteration += 1
            point = rng.choice(KILL_POINTS) if rng.random() < 0.35 else None
            delay = rng.uniform(0.02, 0.6)
            drop_at = rng.uniform(0.0, delay) if order and iteration % 3 == 0 else None
            daemon = Forked(forkserver, home, point)
            try:
                started = time.monotonic()
                while time.monotonic() - started < delay and not daemon.exited():
                    if drop_at is not None and time.monotonic() - started >= drop_at:
                        kind = order.pop()
                        name = f"{kind}{len(names):03d}"
                        names[name] = kind
                        home.drop(f"{name}.toml", job_text(home, kind, name))
                        if kind == "long":
                            to_cancel[name] = iteration + rng.randint(3, 15)
                        drop_at = None
                    time.sleep(0.005)
                for name in [n for n, due in to_cancel.items() if due <= iteration and home.state(n)]:
                    cancel(home, name)  # once the job is in the store: a cancel of an unknown job is dropped
                    del to_cancel[name]
                if daemon.exited():
                    status = daemon.wait()
                    assert status == -signal.SIGKILL, (
                        f"the daemon exited by itself with {status} (kill point {point}):\n"
                        f"{home.log.read_text()[-3000:]}"
                    )
                    point_kills += 1
                    assert point is not None
                    point_hits[point] = point_hits.get(point, 0) + 1
                else:
                    daemon.kill()
                    random_kills += 1
            finally:
                daemon.kill()
            for phase in census(home):
                phases[phase] = phases.get(phase, 0) + 1
            assert not live_attempts_per_job(home), "two attempts of one job alive in the store after a kill"
        for kind in order:  # what the loop did not get to drop
            name = f"{kind}{len(names):03d}"
            names[name] = kind
            home.drop(f"{name}.toml", job_text(home, kind, name))
        tally.random_kills += random_kills
        tally.point_kills += point_kills
        # the real daemon takes it from here
        loop_seconds = time.monotonic() - loop_started
        home.start()
        valid = {n for n, k in names.items() if k != "bad"}

        def settled() -> bool:
            if stuck(home):
                return True  # fails just below, with the log
            rows = query(home, "SELECT job_id, state, cancel_requested FROM jobs")
            for row in rows:  # a long job must be cancelled: ask again until it is
                pending = (home.root / "jobs" / "control" / f"{row[0]}.cancel").exists()
                live = row[1] in ("queued", "running", "retry_wait")
                if names[str(row[0])] == "long" and live and not row[2] and not pending:
                    cancel(home, str(row[0]))
            done = {str(r[0]) for r in rows if r[1] in ("succeeded", "failed", "cancelled")}
            return done == valid and len(rows) == len(valid)

        try:
            wait_for(settled, 90, "every job to finish", every=0.2)
            assert not stuck(home), f"a refused transition: {home.log.read_text()[-3000:]}"
        except AssertionError:
            live = "('queued', 'running', 'retry_wait')"
            remaining = query(home, f"SELECT job_id, state, reason FROM jobs WHERE state IN {live}")
            raise AssertionError(
                f"jobs stuck: {[tuple(r) for r in remaining]}; daemon log tail:\n{home.log.read_text()[-3000:]}"
            ) from None
        with contextlib.suppress(AssertionError):  # files follow the store within a tick
            wait_for(lambda: all(status_json(home, n).get("state") == home.state(n) for n in valid), 10, "files")
        assert home.stop() == 0
        leftover = leftover_processes(home)
        violations = watcher.stop()
    drain_seconds = time.monotonic() - loop_started - loop_seconds

    counts = f"{random_kills} random kills, {point_kills} kill points, {len(names)} files"
    # every dropped file: one job row or one rejection
    ids = [str(r[0]) for r in query(home, "SELECT job_id FROM jobs")]
    assert sorted(ids) == sorted(valid), f"jobs in the store != valid files dropped ({counts})"
    rejected = sorted(p.name for p in (home.root / "jobs" / "rejected").glob("*.toml"))
    assert rejected == sorted(f"{n}.toml" for n, k in names.items() if k == "bad"), counts
    assert all((home.root / "jobs" / "rejected" / f"{name}.error").exists() for name in rejected)
    assert not [p for p in home.incoming.iterdir() if not p.name.startswith(".")], "files left in incoming"
    assert not list((home.root / "var" / "claimed").iterdir()), "a claim left half-done"
    # every job's final state tells the truth
    problems: list[str] = []
    for name in sorted(valid):
        problems += truth_problems(home, name, KINDS[names[name]])
        problems += overlapping_runs(home, name)
        problems += [f"a passed stage ran again: {r}" for r in rerun_stages(home, name)]
    assert not problems, f"{counts}:\n" + "\n".join(problems)
    assert not violations, f"{counts}: " + "\n".join(sorted(set(violations))[:20])
    assert not leftover, f"{counts}: run processes left behind: {leftover}"
    lost = query(home, "SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'")[0][0]
    attempts = query(home, "SELECT COUNT(*) FROM attempts")[0][0]
    tally.jobs += len(valid)
    tally.rejected += len(rejected)
    tally.notes.append(
        f"random-kill loop: {counts}, {attempts} attempts ({lost} lost: killed between the attempt row and its shim), "
        f"{watcher.samples} process-table samples, kill loop {loop_seconds:.0f} s, drain {drain_seconds:.0f} s; "
        "kills with work in flight: " + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
    )
    tally.notes.append("kill points hit: " + ", ".join(f"{k.split('|')[0]}:{v}" for k, v in sorted(point_hits.items())))
    print(f"\n{counts}; {tally.notes[-2]}")


# --- SIGKILL at precise points ---------------------------------------------------------------

RETRY_THEN_TEST = [("train", "failed"), ("train", "succeeded"), ("test", "succeeded")]


def kill_at(forkserver: ForkServer, home: Home, point: str, name: str, text: str, tally: Tally) -> str:
    """Drop `text`, let a forked daemon run until it SIGKILLs itself at `point`; returns the hit line."""
    with forked(forkserver, home, point) as daemon:
        home.drop(f"{name}.toml", text)
        wait_for(daemon.exited, 30, f"the daemon to reach kill point {point}")
        assert daemon.wait() == -signal.SIGKILL, home.log.read_text()[-3000:]
    tally.point_kills += 1
    hits = (home.root / "kill-points.txt").read_text().splitlines()
    assert hits and hits[-1].startswith(point), f"kill point {point} not reached"
    return hits[-1]


def stuck(home: Home) -> bool:
    """A refused state change: the daemon logs it each tick and the job never moves again."""
    return "TransitionError: a job cannot go from" in home.log.read_text()


def finish_with_real_daemon(home: Home, name: str) -> str:
    home.start()
    final = ("succeeded", "failed", "cancelled")
    wait_for(lambda: home.state(name) in final or stuck(home), 40, f"job {name} to finish", every=0.1)
    assert home.state(name) in final, f"{name} is stuck in {home.state(name)}:\n{home.log.read_text()[-2000:]}"
    state = str(home.state(name))
    with contextlib.suppress(AssertionError):  # status.json follows the store within milliseconds
        wait_for(lambda: status_json(home, name).get("state") == state, 3, "status.json")
    assert home.stop() == 0
    return state


def outcomes(home: Home, name: str) -> list[tuple[str, str]]:
    return [(a["stage_label"], a["outcome"]) for a in home.attempts(name)]


@pytest.mark.fault
@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ("Intake._record_claimed|before|1|", RETRY_THEN_TEST),
        ("Store.insert_job|after|1|", RETRY_THEN_TEST),
        ("Store.add_attempt|after|1|", [("train", "lost"), *RETRY_THEN_TEST]),
        ("Engine.launch|after|1|", RETRY_THEN_TEST),
        ("Store.set_job_state|after|1|JobState.RUNNING", RETRY_THEN_TEST),
        ("Store.update_attempt|after|1|AttemptState.ENDED", RETRY_THEN_TEST),
        ("Store.bump|after|1|retries_total", RETRY_THEN_TEST),
        ("Store.set_job_state|after|1|JobState.RETRY_WAIT", RETRY_THEN_TEST),
        ("Store.update_job|after|1|'stage_index'", RETRY_THEN_TEST),
        pytest.param(
            "Store.update_attempt|after|2|AttemptState.ENDED",
            RETRY_THEN_TEST,
            id="Store.update_attempt|after|2|AttemptState.ENDED",
        ),
        pytest.param(
            "Store.set_job_state|after|1|JobState.SUCCEEDED",
            RETRY_THEN_TEST,
            id="Store.set_job_state|after|1|JobState.SUCCEEDED",
        ),
    ],
)
def test_kill_points(home: Home, forkserver: ForkServer, tally: Tally, point: str, expected: list[Any]) -> None:
    """A train -> test job whose train fails once: the daemon SIGKILLs itself at one precise point,
    a real daemon takes over, and everything must read as if nothing had happened."""
    with watching(home) as watcher:
        kill_at(forkserver, home, point, "kp", mk("kp", env=once(home, "kp", "crash_at=2")), tally)
        state = finish_with_real_daemon(home, "kp")
        leftover = leftover_processes(home)
    tally.jobs += 1
    assert state == "succeeded", home.timeline("kp")
    assert outcomes(home, "kp") == expected, home.timeline("kp")
    problems = truth_problems(home, "kp", KINDS["retry"])
    problems += [f"a passed stage ran again: {r}" for r in rerun_stages(home, "kp")]
    assert not problems, problems
    assert not overlapping_runs(home, "kp")
    assert not watcher.violations
    assert not leftover


@pytest.mark.fault
@pytest.mark.parametrize(
    ("point", "stages", "expected"),
    [
        ("Store.add_attempt|after|2|", TRAIN_TEST, [("train", "failed"), ("train", "lost"), *RETRY_THEN_TEST[1:]]),
        (
            "Engine.launch|after|2|",
            '[[stages]]\nname = "train"\nkind = "train"\nmax_samples = 1536\n',
            [("train", "failed"), ("train", "succeeded")],
        ),
    ],
    ids=["attempt-row-of-a-retry", "shim-of-a-retry-in-the-last-stage"],
)
def test_kill_between_a_retrys_attempt_and_running(
    home: Home, forkserver: ForkServer, tally: Tally, point: str, stages: str, expected: list[Any]
) -> None:
    """The job fails once and waits to retry; the daemon dies after the retry's attempt row (or its
    shim) exists but before the job is marked running."""
    kill_at(forkserver, home, point, "rw", mk("rw", env=once(home, "rw", "crash_at=2"), stages=stages), tally)
    state = finish_with_real_daemon(home, "rw")
    tally.jobs += 1
    assert state == "succeeded" and outcomes(home, "rw") == expected, home.timeline("rw")


@pytest.mark.fault
def test_a_retry_decision_survives_a_kill(home: Home, forkserver: ForkServer, tally: Tally) -> None:
    text = mk(
        "oom",
        num_envs=64,
        env='FAKE_MK_FAIL = "oom_above=40"',
        retry="ladder = [64, 32]\nmax_attempts = 2",
        stages='[[stages]]\nkind = "train"\nmax_samples = 8192\n',
    )
    kill_at(forkserver, home, "Store.update_attempt|after|1|AttemptState.ENDED", "oom", text, tally)
    finish_with_real_daemon(home, "oom")
    tally.jobs += 1
    tried = [(a["params"]["num_envs"], a["failure_class"]) for a in home.attempts("oom")]
    assert tried == [(64, "cuda_oom"), (32, None)], f"max_attempts = 2, ladder [64, 32]; tried {tried}"


@pytest.mark.fault
def test_a_shim_slow_to_start_is_not_run_twice(home: Home, forkserver: ForkServer, tally: Tally) -> None:
    """The daemon dies right after spawning a shim, before recording its pid, and the shim needs
    more than 2 s to start (a loaded host): simulated by SIGSTOP until the next daemon is up."""
    text = f'[workload]\nkind = "command"\nargv = ["sleep", "2"]\n[env]\n{FAKE_ENV} = "slow"\n'
    text += '[retry]\nbackoff = "50ms"\n'
    shim = 0
    with watching(home) as watcher:
        try:
            hit = kill_at(forkserver, home, "Engine.launch|after_stop_shim|1|", "slow", text, tally)
            shim = int(hit.rsplit("shim=", 1)[1])
            home.start()  # ready after restore, which waits up to 2 s for shim.json
            restored = ("re-adopted attempt 1", "attempt 1 ended while mkd was down")
            wait_for(
                lambda: len(home.attempts("slow")) >= 2 or any(r in home.timeline("slow") for r in restored),
                10,
                "a decision: the late shim adopted, or a second attempt",
            )
            time.sleep(0.3)
            os.kill(shim, signal.SIGCONT)  # the shim, late, goes on
            home.wait_state("slow", "succeeded", "failed", timeout=20)
            time.sleep(2.5)  # the late run's own two seconds
            home.stop()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGCONT)
        leftover = leftover_processes(home)
    tally.jobs += 1
    assert not leftover
    assert not overlapping_runs(home, "slow") and not watcher.violations, (
        f"two runs of one job at once: {watcher.violations[:3]}; attempts {outcomes(home, 'slow')}"
    )


# --- the process engine killed under a running job --------------------------------------------


@pytest.mark.fault
def test_a_killed_shim_is_noticed_its_run_killed_and_retried(home: Home, tally: Tally) -> None:
    text = mk(
        "shim",
        devices='["cpu", "cpu"]',
        env='FAKE_MK_ITER_SECONDS = "0.1"',
        stages='[[stages]]\nkind = "train"\nmax_samples = 12800\n',
    )
    with watching(home) as watcher:
        home.start()
        home.drop("shim.toml", text)
        home.wait_state("shim", "running")
        first = Path(home.attempts("shim")[0]["dir"])
        # the run's own console (the store gets progress every few seconds only)
        wait_for(lambda: console_iterations(first / "console.log") >= 2, 15, "progress")
        shim = json.loads((first / "shim.json").read_text())["pid"]
        pgid = json.loads((first / "child.json").read_text())["pgid"]
        members = run_groups()["shim"]
        assert members == {pgid}
        group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
        assert len(group) >= 2, "the root and its worker"
        os.kill(shim, signal.SIGKILL)
        wait_for(lambda: home.attempts("shim")[0]["outcome"] == "lost", 10, "the attempt to be marked lost")
        wait_for(lambda: not [p for p in group if _alive(p)], 5, "the orphaned group to be killed")
        home.wait_state("shim", "succeeded", timeout=40)
        home.stop()
        leftover = leftover_processes(home)
    tally.jobs += 1
    first_attempt, second = home.attempts("shim")
    assert first_attempt["failure_class"] == "lost" and second["outcome"] == "succeeded"
    assert "process(es) killed" in first_attempt["evidence"][0]
    assert int(first_attempt["evidence"][0].split("; ")[1].split()[0]) >= 2, first_attempt["evidence"]
    assert "lost: run again unchanged" in home.timeline("shim")
    assert not overlapping_runs(home, "shim") and not watcher.violations
    assert not leftover


def console_iterations(console: Path) -> int:
    parser = ConsoleParser()
    parser.feed(console.read_text(errors="replace") if console.exists() else "")
    return parser.last.iteration if parser.last is not None else -1


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[2])
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# --- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only); unmounted at the end, lazily if something still holds it."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


@pytest.mark.fault
def test_runs_disk_full_fails_the_job_with_the_reason_and_the_daemon_stays_up(home: Home, tally: Tally) -> None:
    text = '[workload]\nkind = "command"\nargv = ["sh", "-c", "yes 0123456789 | head -c 3000000"]\n'
    text += f'[env]\n{FAKE_ENV} = "fill"\n[retry]\nbackoff = "50ms"\nmax_attempts = 2\n'
    with tmpfs(home.root / "runs", "1m"):
        try:
            home.start()
            home.drop("fill.toml", text)
            wait_for(lambda: home.proc_exited() or home.state("fill") in ("failed", "succeeded"), 20, "the end")
            time.sleep(1.0)
            crashed = home.proc_exited()
            log = home.log.read_text()
            if not crashed:
                assert home.stop() == 0
        finally:
            home.cleanup()
    tally.jobs += 1
    assert not crashed, f"the daemon crashed: {log[-1500:]}"
    job = home.job("fill")
    assert job is not None and job["state"] == "failed"
    evidence = " ".join(" ".join(a["evidence"]) for a in home.attempts("fill"))
    assert "No space left on device" in job["reason"] + evidence


@pytest.mark.fault
def test_store_disk_full_stops_the_daemon_cleanly_and_loses_nothing(tmp_path: Path, token: str, tally: Tally) -> None:
    with tmpfs(tmp_path / "fs", "8m") as root:
        home = Home(root, token)
        try:
            home.start()
            home.drop("warm.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
            home.wait_state("warm", "succeeded")
            late = home.incoming / ".late.toml.tmp"
            late.write_text('[workload]\nkind = "command"\nargv = ["true"]\n')
            fill(root)
            os.rename(late, home.incoming / "late.toml")
            assert home.proc is not None
            code = home.proc.wait(20)
            log = home.log.read_text()
            assert code == 70, log[-2000:]
            assert f"stopping: cannot write the store {root / 'var' / 'mkd.sqlite3'}" in log
            assert "disk is full" in log
            (root / "filler").unlink()
            home.start()
            home.wait_state("late", "succeeded")
            assert home.stop() == 0
            assert [str(r[0]) for r in query(home, "SELECT job_id FROM jobs ORDER BY seq")] == ["warm", "late"]
            assert not list((root / "var" / "claimed").iterdir())
        finally:
            home.cleanup()
    tally.jobs += 2


# --- the store locked or corrupt, a second daemon -----------------------------------------------


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A store with five finished jobs, made once by a real daemon (its WAL folded in at exit)."""
    home = Home(tmp_path_factory.mktemp("seed"), new_token())
    try:
        home.start()
        for i in range(5):
            home.drop(f"w{i}.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
        for i in range(5):
            home.wait_state(f"w{i}", "succeeded")
        assert home.stop() == 0
    finally:
        assert not home.cleanup()
    assert not (home.root / "var" / "mkd.sqlite3-wal").exists()
    return (home.root / "var" / "mkd.sqlite3").read_bytes()


def seeded(home: Home, store_bytes: bytes) -> Path:
    db = home.root / "var" / "mkd.sqlite3"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(store_bytes)
    return db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def locked(db: Path, exclusive_mode: bool) -> Iterator[None]:
    """Another process holding the store: sqlite3's shell in BEGIN EXCLUSIVE (and, with
    exclusive_mode, locking_mode=EXCLUSIVE, which shuts out readers too)."""
    shell = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert shell.stdin is not None and shell.stdout is not None
    try:
        if exclusive_mode:
            shell.stdin.write("PRAGMA locking_mode=EXCLUSIVE;\n")
        shell.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'lock' || 'ed';\n")
        shell.stdin.flush()
        while (line := shell.stdout.readline()) and line.strip() != "locked":
            pass
        assert line, "the sqlite3 shell did not take the lock"
        yield
    finally:
        with contextlib.suppress(BrokenPipeError):
            shell.stdin.write("ROLLBACK;\n.quit\n")
            shell.stdin.close()
        try:
            shell.wait(10)
        except subprocess.TimeoutExpired:
            shell.kill()
            shell.wait()
        shell.stdout.close()


@pytest.mark.fault
def test_store_locked_exclusively_at_start_is_refused(home: Home, store_bytes: bytes) -> None:
    db = seeded(home, store_bytes)
    before = digest(db)
    with locked(db, exclusive_mode=True):
        home.start(ready=False)
        assert home.proc is not None
        code = home.proc.wait(20)
    log = home.log.read_text().splitlines()[-1]
    assert code != 0 and str(db) in log and "locked" in log, log
    assert digest(db) == before, "the store is left as it was"


@pytest.mark.fault
def test_store_write_locked_stops_the_daemon_at_its_first_write(home: Home, store_bytes: bytes, tally: Tally) -> None:
    db = seeded(home, store_bytes)
    home.start()  # the lock is taken while the daemon runs
    with locked(db, exclusive_mode=False):
        home.drop("late.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
        assert home.proc is not None
        code = home.proc.wait(20)
    log = home.log.read_text()
    assert code == 70 and f"stopping: cannot write the store {db}: database is locked" in log, log[-2000:]
    home.start()
    home.wait_state("late", "succeeded")
    assert home.stop() == 0
    assert len(query(home, "SELECT 1 FROM jobs WHERE name = 'late'")) == 1
    tally.jobs += 1


@pytest.mark.fault
@pytest.mark.parametrize(
    "exclusive_mode",
    [
        pytest.param(
            False,
            id="write-lock",
        ),
        pytest.param(
            True,
            id="exclusive-mode",
        ),
    ],
)
def test_store_locked_at_start_says_so_and_exits(home: Home, store_bytes: bytes, exclusive_mode: bool) -> None:
    db = seeded(home, store_bytes)
    with locked(db, exclusive_mode=exclusive_mode):
        home.start(ready=False)
        assert home.proc is not None
        try:
            code: int | None = home.proc.wait(8)  # a store probe at start would answer within busy_timeout
        except subprocess.TimeoutExpired:
            code = None
    text = home.log.read_text().splitlines()[-1]
    assert code is not None and code != 0, "the daemon must not run on a store it cannot write"
    assert str(db) in text and "locked" in text and "another process" in text, text
    assert "move it away" not in text, text


def corrupt(db: Path, how: str) -> None:
    raw = bytearray(db.read_bytes())
    rng = random.Random(how)
    if how == "header":
        raw[0:100] = rng.randbytes(100)
    elif how == "page":
        raw[8192:12288] = rng.randbytes(4096)
    elif how == "truncated":
        raw = raw[: len(raw) // 2 + 100]
    else:
        raw = bytearray(rng.randbytes(len(raw)))
    db.write_bytes(bytes(raw))


@pytest.mark.fault
@pytest.mark.parametrize("how", ["header", "page", "truncated", "garbage"])
def test_corrupt_store_is_refused_and_left_as_it_was(home: Home, store_bytes: bytes, how: str) -> None:
    db = seeded(home, store_bytes)
    corrupt(db, how)
    before = digest(db)
    files = sorted(p.name for p in db.parent.glob("mkd.sqlite3*"))
    home.start(ready=False)
    assert home.proc is not None
    code = home.proc.wait(20)
    log = home.log.read_text()
    message = log[log.rfind("mkd: cannot open the store") :]
    assert code != 0, log[-2000:]
    assert f"cannot open the store {db}" in message, log[-2000:]
    assert "move it away" in message and "restore a backup" in message and "never resets it" in message
    assert digest(db) == before, "never silently reset"
    assert sorted(p.name for p in db.parent.glob("mkd.sqlite3*")) == files, "no new store beside it"


@pytest.mark.fault
def test_status_on_a_corrupt_store_says_so(home: Home, store_bytes: bytes) -> None:
    db = seeded(home, store_bytes)
    corrupt(db, "garbage")
    done = home.mkd("status")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and f"cannot open the store {db}" in done.stderr, done.stderr[-1500:]


@pytest.mark.fault
def test_a_second_daemon_on_the_same_home_refuses_to_start(home: Home, tally: Tally) -> None:
    home.start()
    first = home.proc
    assert first is not None
    second = subprocess.run(
        [sys.executable, "-m", "mkd", "--config", str(home.config), "run"],
        cwd=home.root,
        env=home.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lock = home.root / "var" / "mkd.lock"
    assert second.returncode == 1
    assert f"another mkd is running on {home.root / 'var'} (lock {lock})" in second.stderr
    assert lock.read_text().strip() == str(first.pid), "the lock still names the first daemon"
    home.drop("after.toml", '[workload]\nkind = "command"\nargv = ["true"]\n')
    home.wait_state("after", "succeeded")
    assert first.poll() is None and home.stop() == 0
    tally.jobs += 1


# --- a run that ignores SIGTERM ------------------------------------------------------------------

IGNORES_TERM = mk(
    "stubborn",
    env='FAKE_MK_FAIL = "ignore_sigterm"\nFAKE_MK_ITER_SECONDS = "0.1"',
    stages='[[stages]]\nkind = "train"\nmax_samples = 1000000000\n',
)


@pytest.mark.fault
@pytest.mark.parametrize("daemon_killed", [False, True], ids=["daemon-up", "daemon-killed-during-grace"])
def test_cancel_of_a_run_ignoring_sigterm_kills_it_after_the_grace(
    home: Home, tally: Tally, daemon_killed: bool
) -> None:
    """stop_grace = 1 s: SIGTERM is ignored, SIGKILL follows after the grace (the shim does it,
    so it happens even while the daemon is down), and nothing is left."""
    home.start()
    home.drop("stubborn.toml", IGNORES_TERM)
    home.wait_state("stubborn", "running")
    wait_for(lambda: (home.attempts("stubborn")[0]["progress"].get("iteration") or 0) >= 1, 15, "progress")
    pgid = json.loads((Path(home.attempts("stubborn")[0]["dir"]) / "child.json").read_text())["pgid"]
    asked = time.time()
    assert home.mkd("cancel", "stubborn").returncode == 0
    if daemon_killed:
        wait_for(lambda: home.attempts("stubborn")[0]["state"] == "stopping", 10, "the stop to be sent")
        home.kill()
        tally.random_kills += 1
        wait_for(lambda: not run_groups().get("stubborn"), 10, "the shim to kill the run while mkd is down")
        home.start()
    home.wait_state("stubborn", "cancelled", timeout=20)
    attempt = home.attempts("stubborn")[0]
    ended = json.loads((Path(attempt["dir"]) / "exit.json").read_text())["ended_at"]
    assert attempt["outcome"] == "stopped" and attempt["signal"] == signal.SIGKILL, attempt
    assert 1.0 <= ended - asked < 1.0 + 3.0, f"SIGKILL {ended - asked:.2f} s after the cancel, grace 1 s"
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid and _alive(int(p))]
    assert home.stop() == 0
    assert not leftover_processes(home)
    tally.jobs += 1
