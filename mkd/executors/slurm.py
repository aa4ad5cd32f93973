"""The Slurm executor: each attempt is one batch job whose program is mkd's own shim.

So exit.json, the process-group kill and console rotation are what they are on one box:
the batch script execs `python -S -P -m mkd.shim ATTEMPT_DIR` on the node, the shim reads
launch.json (the run's argv and environment) from the attempt's folder on the shared
filesystem and writes child.json and exit.json back into it. Slurm chooses the node and the
GPUs; the shim hands Slurm's CUDA_VISIBLE_DEVICES and SLURM_* variables to the run.

Only the commands every Slurm site has are used (`sbatch --parsable`, `squeue -h -o`,
`sacct --parsable2 -n -X`, `scancel`): their formats are stable across versions, which a
client library bound to one Slurm version (pyslurm) is not. The queue is read by one squeue
for all of mkd's jobs, in a background thread, so a controller that does not answer (a
slurmctld restart) never blocks the daemon's loop.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mkd.engine import shim_env, write_launch
from mkd.executors.base import LaunchRequest, RunRef, RunStatus
from mkd.exits import ExitRecord
from mkd.exits import read_exit as exit_record
from mkd.failures import FailureClass
from mkd.fsutil import atomic_write, atomic_write_json, read_json

if TYPE_CHECKING:
    from mkd.config import ExecutorConfig

log = logging.getLogger("mkd.slurm")

QUEUE_REFRESH_SECONDS = 0.5  # squeue for all of mkd's jobs at most this often (sooner once an exit.json appears)
COMMAND_TIMEOUT = 20.0  # sbatch, scancel; squeue/sacct run off the loop
QUERY_TIMEOUT = 15.0
TRUST_EXIT_JSON_AFTER = 60.0  # the controller has not answered this long and the shim wrote exit.json: done
# Slurm's end states that are not the program's own doing, and the failure class of each.
SLURM_FAILURES: dict[str, FailureClass] = {
    "NODE_FAIL": FailureClass.SLURM_NODE_FAIL,
    "BOOT_FAIL": FailureClass.SLURM_NODE_FAIL,
    "PREEMPTED": FailureClass.SLURM_PREEMPTED,
    "TIMEOUT": FailureClass.SLURM_TIMEOUT,
    "DEADLINE": FailureClass.SLURM_TIMEOUT,
    "OUT_OF_MEMORY": FailureClass.SLURM_OOM,
}
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "REVOKED", *SLURM_FAILURES})
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# What the run takes from the batch job's environment on the node (Slurm's GPU choice, job id).
INHERIT_ENV = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "SLURM_*", "SLURMD_NODENAME")
SUBMIT_FILE = "slurm_submit.json"  # the job id (or sbatch's refusal), written before the store records it
NODE_FILE = "slurm_node.json"  # what the batch script saw on the node: SLURM_JOB_GPUS, the node's name

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class SlurmSettings:
    """The [executor] table's Slurm keys (mkd.config.ExecutorConfig), as the executor needs them."""

    partition: str
    account: str | None = None
    qos: str | None = None
    time_limit: timedelta = timedelta(0)  # 0: the partition's default
    sbatch_args: tuple[str, ...] = ()
    gres: str = "gpu"


@dataclass(frozen=True)
class QueueRow:
    state: str
    reason: str
    node: str


def slurm_time(limit: timedelta) -> str:
    """A duration as sbatch's --time (D-HH:MM:SS); Slurm keeps minutes, so it rounds up."""
    seconds = max(60, int(-(-limit.total_seconds() // 60)) * 60)
    days, rest = divmod(seconds, 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:00"


def job_name(request: LaunchRequest) -> str:
    """What squeue and sacct show: the job and the attempt (`mkd:JOB:03-2-train`)."""
    return f"mkd:{request.job_id}:{request.attempt_dir.name}"


def batch_script(python: str, attempt_dir: Path) -> str:
    """The batch job: record what Slurm gave it, then become the shim (same argv as on one box)."""
    quoted = shlex.quote(str(attempt_dir))
    node = shlex.quote(str(attempt_dir / NODE_FILE))
    return (
        "#!/bin/sh\n"
        "# mkd: one attempt. The shim runs the program from launch.json in this folder.\n"
        f'printf \'{{"job_gpus": "%s", "node": "%s", "job_id": "%s"}}\\n\' '
        f'"${{SLURM_JOB_GPUS:-}}" "${{SLURMD_NODENAME:-}}" "${{SLURM_JOB_ID:-}}" > {node}.tmp && mv {node}.tmp {node}\n'
        f"PYTHONPATH={shlex.quote(shim_env({})['PYTHONPATH'])}${{PYTHONPATH:+:$PYTHONPATH}} exec {shlex.quote(python)} "
        f"-S -P -m mkd.shim {quoted}\n"
    )


def sbatch_argv(settings: SlurmSettings, request: LaunchRequest, script: Path) -> list[str]:
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name(request)}",
        "--nodes=1",
        "--ntasks=1",
        f"--output={request.spec.console}",
        "--open-mode=append",  # the shim rotates the console by copy-truncate
        "--export=NIL",  # the run's environment is launch.json's; the batch step gets Slurm's own only
        "--no-requeue",  # mkd's policy decides about a retry, as a new job (a new attempt)
        f"--chdir={request.attempt_dir}",
        f"--comment={request.attempt_dir}",
    ]
    if request.gpu_count > 0:
        argv.append(f"--gres={settings.gres}:{request.gpu_count}")
    if settings.partition:
        argv.append(f"--partition={settings.partition}")
    if settings.account:
        argv.append(f"--account={settings.account}")
    if settings.qos:
        argv.append(f"--qos={settings.qos}")
    if settings.time_limit.total_seconds() > 0:
        argv.append(f"--time={slurm_time(settings.time_limit)}")
    return [*argv, *settings.sbatch_args, str(script)]


def parse_queue(text: str) -> dict[str, QueueRow]:
    """`squeue -h -o %i|%T|%r|%N` -> job id -> its row."""
    rows: dict[str, QueueRow] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            rows[parts[0]] = QueueRow(parts[1].upper(), parts[2], parts[3])
    return rows


def parse_sacct(text: str) -> dict[str, tuple[str, str, str]]:
    """`sacct --parsable2 -n -X -o JobID,State,ExitCode,NodeList` -> job id -> (state, exit code, node).

    sacct writes "CANCELLED by 0" for a cancel: the state is its first word."""
    found: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            found[parts[0]] = (parts[1].split(" ")[0].rstrip("+").upper(), parts[2], parts[3])
    return found


def pending_text(reason: str) -> str:
    """Slurm's reason code as mkd status shows it: `Slurm says Resources`."""
    reason = reason.strip().strip("()")
    if not reason or reason == "None":
        return "Slurm has not started it yet"
    return f"Slurm says {reason}"


def end_record(state: str, exit_code: str, recorded: ExitRecord | None, stop_sent: bool, job_id: str) -> ExitRecord:
    """How an ended Slurm job ended: a Slurm-level failure has its own class; otherwise the shim's
    exit.json is exact, and without one (cancelled before or while it started) Slurm's state says."""
    failure = SLURM_FAILURES.get(state)
    if failure is not None:
        evidence = (f"Slurm job {job_id} ended {state} (exit code {exit_code or '-'})",)
        base = recorded or ExitRecord(None, None, stop_sent, 0, None)
        return ExitRecord(
            base.returncode,
            base.signal,
            base.stop_requested and stop_sent,
            base.lingering_workers,
            base.spawn_error,
            executor_failure=failure.value,
            executor_evidence=evidence,
        )
    if recorded is not None:
        return recorded
    if state == "CANCELLED" or stop_sent:
        return ExitRecord(None, int(signal.SIGKILL), stop_sent, 0, None)
    code, _, sig = (exit_code or "").partition(":")
    if state == "COMPLETED":  # the batch script ended without the shim writing exit.json
        return ExitRecord(None, None, False, 0, None, lost=True)
    try:
        return ExitRecord(int(code), int(sig) or None, False, 0, None)
    except ValueError:
        return ExitRecord(None, None, False, 0, None, lost=True)


class SlurmExecutor:
    kind = "slurm"
    places_gpus = False

    def __init__(
        self,
        settings: SlurmSettings,
        *,
        python: str = sys.executable,
        run: Runner = subprocess.run,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.python = python
        self.run = run
        self.clock = clock
        self._tracked: set[str] = set()
        self._stops: dict[str, int] = {}
        self._queue: dict[str, QueueRow] = {}
        self._queue_at = -1e9  # when the snapshot in _queue was taken (its squeue started)
        self._queue_ok_at = -1e9  # the last time squeue answered
        self._queue_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._want_refresh = False
        self._sacct: dict[str, tuple[str, str, str]] = {}
        self._node: dict[str, tuple[tuple[str, ...], str]] = {}

    # --- launching ------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> RunRef:
        folder = request.attempt_dir
        folder.mkdir(parents=True, exist_ok=True)
        spec = request.spec
        write_launch(folder, spec, inherit_env=list(INHERIT_ENV))
        script = folder / "slurm.sh"
        atomic_write(script, batch_script(self.python, folder), mode=0o700)
        argv = sbatch_argv(self.settings, request, script)
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=folder)
            out, err, code = done.stdout, done.stderr, done.returncode
        except (OSError, subprocess.TimeoutExpired) as error:
            out, err, code = "", f"{type(error).__name__}: {error}", -1
        job_id = out.strip().split(";")[0] if code == 0 else ""
        if not job_id.isdigit():
            why = (err.strip() or out.strip() or f"sbatch exited {code}").splitlines()[-1]
            atomic_write_json(folder / SUBMIT_FILE, {"refused": why, "argv": argv})
            log.error("sbatch refused attempt %s: %s", folder, why)
            return RunRef(kind=self.kind)
        atomic_write_json(folder / SUBMIT_FILE, {"job_id": job_id, "argv": argv})
        self._tracked.add(job_id)
        self._want_refresh = True
        return RunRef(kind=self.kind, slurm_job_id=job_id)

    # --- watching -------------------------------------------------------------------------

    def tick(self) -> None:
        """Start one squeue for all of mkd's jobs when due; the loop never waits for it."""
        if not self._tracked:
            return
        now = self.clock()
        due = self._want_refresh or now - self._queue_at >= QUEUE_REFRESH_SECONDS
        if due and (self._worker is None or not self._worker.is_alive()):
            self._want_refresh = False
            ids = sorted(self._tracked)
            self._worker = threading.Thread(target=self._refresh, args=(ids, now), name="mkd-squeue", daemon=True)
            self._worker.start()

    def _refresh(self, ids: list[str], started: float) -> None:
        argv = ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r|%N"]
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("squeue did not answer: %s", error)
            return
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            log.warning("squeue failed: %s", done.stderr.strip())
            return
        rows = parse_queue(done.stdout) if done.returncode == 0 else {}
        with self._queue_lock:
            self._queue = {**{i: QueueRow("GONE", "", "") for i in ids}, **rows}
            self._queue_at = started
            self._queue_ok_at = started

    def poll(self, ref: RunRef, attempt_dir: Path) -> RunStatus:
        job_id = ref.slurm_job_id
        if not job_id:
            return RunStatus(exit=self._refused(attempt_dir))
        self._tracked.add(job_id)
        recorded = exit_record(attempt_dir)
        with self._queue_lock:
            row = self._queue.get(job_id)
            queue_at, ok_at = self._queue_at, self._queue_ok_at
        granted, node = self._granted(job_id, attempt_dir)
        if recorded is not None and (row is None or row.state not in ENDED):
            if self.clock() - ok_at > TRUST_EXIT_JSON_AFTER and ok_at > -1e9:
                return self._ended(job_id, "COMPLETED", "", recorded, granted, node)
            self._want_refresh = self._want_refresh or (row is not None and queue_at < self.clock() - 0.05)
        if row is None:
            return RunStatus(pending_reason=None, granted_gpus=granted, node=node)
        if row.state in PENDING:
            return RunStatus(pending_reason=pending_text(row.reason))
        if row.state in ENDED or row.state == "GONE":
            found = self._accounting(job_id)
            if found is None and row.state == "GONE":
                if recorded is not None:
                    return self._ended(job_id, "COMPLETED", "", recorded, granted, node)
                return self._ended(job_id, "LOST", "", None, granted, node)
            state, code, acct_node = found or (row.state, "", row.node)
            return self._ended(job_id, state, code, recorded, granted, node or acct_node or None)
        return RunStatus(granted_gpus=granted, node=node or row.node or None)

    def _ended(
        self,
        job_id: str,
        state: str,
        code: str,
        recorded: ExitRecord | None,
        granted: tuple[str, ...] | None,
        node: str | None,
    ) -> RunStatus:
        if state == "LOST":
            exit = ExitRecord(None, None, False, 0, None, lost=True)
        else:
            exit = end_record(state, code, recorded, self._stops.get(job_id, 0) > 0, job_id)
        self._forget(job_id)
        return RunStatus(exit=exit, granted_gpus=granted, node=node)

    def _forget(self, job_id: str) -> None:
        self._tracked.discard(job_id)
        self._stops.pop(job_id, None)
        self._sacct.pop(job_id, None)
        self._node.pop(job_id, None)

    def _accounting(self, job_id: str) -> tuple[str, str, str] | None:
        """The job's end as slurmdbd recorded it (state, exit code, node), or None (none yet, or no accounting)."""
        if job_id in self._sacct:
            return self._sacct[job_id]
        argv = ["sacct", "--parsable2", "-n", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList"]
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = parse_sacct(done.stdout).get(job_id) if done.returncode == 0 else None
        if found is not None and found[0] in ENDED:
            self._sacct[job_id] = found
            return found
        return None

    def _granted(self, job_id: str, attempt_dir: Path) -> tuple[tuple[str, ...] | None, str | None]:
        """The GPUs Slurm gave the job (SLURM_JOB_GPUS on the node) and the node, once the job started."""
        if job_id not in self._node:
            data = read_json(attempt_dir / NODE_FILE)
            if not isinstance(data, dict):
                return None, None
            gpus = tuple(g for g in str(data.get("job_gpus") or "").split(",") if g)
            self._node[job_id] = (gpus, str(data.get("node") or ""))
        granted, node = self._node[job_id]
        return granted, node or None

    def _refused(self, attempt_dir: Path) -> ExitRecord:
        data = read_json(attempt_dir / SUBMIT_FILE)
        why = data.get("refused") if isinstance(data, dict) else None
        return ExitRecord(
            None,
            None,
            False,
            0,
            None,
            executor_failure=FailureClass.SLURM_SUBMIT_REFUSED.value,
            executor_evidence=(f"sbatch refused the job: {why or 'no job id recorded'}",),
        )

    # --- stopping -------------------------------------------------------------------------

    def stop(self, ref: RunRef, attempt_dir: Path, *, kill_now: bool = False) -> None:
        """SIGTERM to the shim (it stops the run's group, SIGKILL after the grace, and writes exit.json);
        kill_now: a second SIGTERM (the shim kills at once); after that, or for a pending job, scancel."""
        job_id = ref.slurm_job_id
        if not job_id:
            return
        sent = self._stops.get(job_id, 0)
        self._stops[job_id] = sent + 1
        with self._queue_lock:
            row = self._queue.get(job_id)
        started = (attempt_dir / "shim.json").exists() or (row is not None and row.state not in PENDING)
        if not started or (kill_now and sent > 0):
            self._scancel([job_id])
            return
        self._scancel(["--batch", "--signal=TERM", job_id])
        if kill_now:
            self._scancel(["--batch", "--signal=TERM", job_id])

    def _scancel(self, args: Sequence[str]) -> None:
        try:
            done = self.run(["scancel", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("scancel %s: %s", " ".join(args), error)
            return
        if done.returncode != 0:
            log.warning("scancel %s: %s", " ".join(args), done.stderr.strip())
        self._want_refresh = True

    # --- restart --------------------------------------------------------------------------

    def adopt(self, ref: RunRef | None, attempt_dir: Path) -> RunRef | None:
        """The recorded job id; killed before the store recorded it: the id sbatch's answer left in the folder.
        Never a second submission."""
        if ref is not None and ref.slurm_job_id:
            self._tracked.add(ref.slurm_job_id)
            return ref
        data = read_json(attempt_dir / SUBMIT_FILE)
        if isinstance(data, dict) and str(data.get("job_id", "")).isdigit():
            job_id = str(data["job_id"])
            self._tracked.add(job_id)
            return RunRef(kind=self.kind, slurm_job_id=job_id)
        found = self._find_by_comment(attempt_dir)
        if found is not None:
            self._tracked.add(found)
            return RunRef(kind=self.kind, slurm_job_id=found)
        if isinstance(data, dict) and data.get("refused"):
            return RunRef(kind=self.kind)
        return None

    def _find_by_comment(self, attempt_dir: Path) -> str | None:
        """sbatch answered but the daemon died before writing its answer: the job names its folder."""
        argv = ["squeue", "-h", "--me", "-o", "%i|%k"]
        try:
            done = self.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in done.stdout.splitlines():
            job_id, _, comment = line.partition("|")
            if comment.strip() == str(attempt_dir) and job_id.strip().isdigit():
                return job_id.strip()
        return None

    def process_group(self, attempt_dir: Path) -> int | None:
        return None  # the run is on a node: its GPU memory is that node's exporter's to attribute

    def kill_leftovers(self, ref: RunRef, attempt_dir: Path) -> int:
        """A lost attempt: cancel its job, so Slurm's cgroup takes whatever is left on the node."""
        if ref.slurm_job_id:
            self._scancel([ref.slurm_job_id])
        return 0

    def close(self) -> None:
        """Forget the jobs; they keep running and the next daemon re-adopts them by id."""
        self._tracked.clear()
        if self._worker is not None:
            self._worker.join(timeout=QUERY_TIMEOUT)


def settings_from(config: ExecutorConfig) -> SlurmSettings:
    """SlurmSettings from the daemon config's [executor] table."""
    return SlurmSettings(
        partition=str(config.partition or ""),
        account=config.account,
        qos=config.qos,
        time_limit=config.time_limit,
        sbatch_args=tuple(config.sbatch_args),
        gres=config.gres,
    )
