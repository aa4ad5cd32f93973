"""Slurm: drop -> the Slurm job's run started, p50 and p99, against Slurm's own submit -> running.

On the one-node test cluster (tests/slurm/cluster.py, batch_sched_delay=0). Both figures end at
child.json's started_at (the shim on the node writes it right after starting the run), so the
shim's start counts in both; Slurm's own is a plain `sbatch --parsable` of the same batch
script mkd writes, timed from just before the sbatch call. mkd's share is the difference of the
p50s, and the note splits mkd's drops: drop -> sbatch answered (slurm_submit.json) -> started.
Needs root and the Slurm packages (as tests/test_slurm.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from mkd.engine import LaunchSpec
from mkd.executors.base import LaunchRequest
from mkd.executors.slurm import SlurmExecutor, SlurmSettings
from mkd.fsutil import read_json
from tests.bench.common import Row, bench_home, drop_at, percentile, query, running
from tests.harness import wait_for
from tests.slurm.cluster import Cluster, missing_binaries

STARTS = 20
JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'


def started_at(attempt_dir: Path) -> float | None:
    data = read_json(attempt_dir / "child.json")
    return float(str(data["started_at"])) if isinstance(data, dict) else None


def slurm_alone(cluster: Cluster, root: Path) -> list[float]:
    """sbatch of mkd's batch script for a `true` run -> child.json, in ms: Slurm's (and the shim's) share."""
    executor = SlurmExecutor(SlurmSettings(cluster.partition))
    latencies = []
    for i in range(STARTS):
        folder = root / f"raw{i:03d}"
        spec = LaunchSpec(["true"], {"PATH": "/usr/bin:/bin"}, str(root), folder / "console.log", 5.0, 0, 0)
        request = LaunchRequest(f"raw{i}", 1, "1-command", folder, spec, 0)
        at = time.time()
        ref = executor.launch(request)
        assert ref.slurm_job_id, (folder / "slurm_submit.json").read_text()
        started = wait_for(lambda f=folder: started_at(f), 30, "child.json", every=0.005)
        latencies.append((started - at) * 1000)
        time.sleep(0.3)
    return latencies


def through_mkd(cluster: Cluster, root: Path) -> tuple[list[float], list[float]]:
    root.mkdir(parents=True, exist_ok=True)
    home = bench_home(root, extra=f'[executor]\nkind = "slurm"\npartition = "{cluster.partition}"\n')
    home.env.update(cluster.env)
    latencies, to_submit = [], []
    with running(home):
        for i in range(STARTS):
            name = f"run{i:03d}"
            at = drop_at(home, f"{name}.toml", JOB)
            rows = wait_for(lambda n=name: query(home, "SELECT dir FROM attempts WHERE job_id = ?", (n,)), 10, "row")
            folder = Path(str(rows[0][0]))
            started = wait_for(lambda f=folder: started_at(f), 30, "child.json", every=0.005)
            latencies.append((started - at) * 1000)
            to_submit.append(((folder / "slurm_submit.json").stat().st_mtime - at) * 1000)
            wait_for(lambda n=name: home.state(n) in ("succeeded", "failed"), 30, "the job to end")
            time.sleep(0.3)
    return latencies, to_submit


def drop_to_slurm_running(root: Path) -> list[Row]:
    if missing_binaries():
        return [Row("drop -> Slurm job running (skipped: no Slurm)", float("nan"), "ms", None, "")]
    base = Path(tempfile.mkdtemp(prefix="mkd-slurm-bench-"))
    cluster = Cluster(base / "cluster").start()
    os.environ.update(cluster.env)  # sbatch in this process (Slurm alone) finds the cluster
    try:
        alone = slurm_alone(cluster, base / "raw")
        total, submit = through_mkd(cluster, base / "mkd")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    share = percentile(total, 50) - percentile(alone, 50)
    note = f"{STARTS} drops of a command job; drop -> sbatch answered p50 {percentile(submit, 50):.0f} ms"
    return [
        Row("drop -> Slurm job running, p50", percentile(total, 50), "ms", None, note),
        Row("drop -> Slurm job running, p99", percentile(total, 99), "ms", None),
        Row("Slurm alone: sbatch -> running, p50", percentile(alone, 50), "ms", None, "the same script, sbatch'd"),
        Row("Slurm alone: sbatch -> running, p99", percentile(alone, 99), "ms", None),
        Row("mkd's share (p50 difference)", share, "ms", 200, "target: at most 0.2 s on top of Slurm's own"),
    ]


def run() -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="mkd-bench-slurm-"))
    try:
        return drop_to_slurm_running(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
