"""The post-mortem bundle kept before mkd kills a stuck or stalled run.

Once the run is killed its state is gone, so the evidence a person needs (the log tail,
the GPUs as nvidia-smi would show them, the process tree) is written first, into
ATTEMPT_DIR/postmortem/.
"""

from __future__ import annotations

import time
from pathlib import Path

from mkd.engine import ChildInfo, run_processes
from mkd.fsutil import atomic_write, read_tail
from mkd.gpus import GpuReading, format_gpus_table

TAIL_LINES = 200


def log_tail(console: Path, lines: int = TAIL_LINES) -> str:
    text = read_tail(console, 256 * 1024)
    if not text and not console.exists():
        return "(no console log)\n"
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:]) + "\n"


def process_table(child: ChildInfo | None, attempt_dir: Path) -> str:
    """Every process of the run, escapees in other groups and sessions included (mkd.engine.run_processes)."""
    if child is None:
        return "(the run never started)\n"
    lines = [f"# containment: {child.containment}" + (f" ({child.cgroup})" if child.cgroup else "")]
    lines += [f"{'PID':>8} {'PPID':>8} {'PGID':>8} {'SID':>8} S COMMAND"]
    lines += [f"{s.pid:>8} {s.ppid:>8} {s.pgid:>8} {s.sid:>8} {s.state} {s.comm}" for s in run_processes(attempt_dir)]
    return "\n".join(lines) + "\n"


def gpu_snapshot(reading: GpuReading) -> str:
    text = format_gpus_table(reading, {})
    procs = [f"GPU{g.index} pid {p.pid} {p.used_bytes >> 20} MiB" for g in reading.gpus for p in g.processes]
    return text + ("\n" + "\n".join(procs) + "\n" if procs else "")


def write_bundle(attempt_dir: Path, console: Path, reading: GpuReading, child: ChildInfo | None) -> Path:
    folder = attempt_dir / "postmortem"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "log_tail.txt", log_tail(console))
    atomic_write(folder / "gpus.txt", gpu_snapshot(reading))
    atomic_write(folder / "processes.txt", process_table(child, attempt_dir))
    atomic_write(folder / "taken_at.txt", time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
    return folder
