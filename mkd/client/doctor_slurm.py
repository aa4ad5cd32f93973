"""`mkd doctor` for `[executor] kind = "slurm"`: the commands mkd calls, accounting, the partition.

mkd drives Slurm through sbatch, squeue, sacct and scancel only; without accounting
(slurmdbd) sacct cannot say how a job ended, and a partition that does not exist refuses
every submission. Nothing is checked when the executor is local.
"""

from __future__ import annotations

import shutil
import subprocess

from mkd.client.doctor import Check
from mkd.config import DaemonConfig

COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo")
TIMEOUT = 20.0


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return -1, str(error)
    return done.returncode, (done.stdout + done.stderr).strip()


def slurm_checks(config: DaemonConfig) -> list[Check]:
    executor = config.executor
    if executor.kind != "slurm":
        return []
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        return [
            Check(
                "fail",
                f"Slurm commands not found: {', '.join(missing)}",
                "install Slurm's client tools on mkd's host (Debian: slurm-client)",
            )
        ]
    checks = [Check("ok", f"Slurm commands found: {', '.join(COMMANDS)}"), _accounting_check()]
    return checks + _partition_checks(executor.partition or "", executor.gres)


def _accounting_check() -> Check:
    code, out = _run(["sacct", "-n", "-X", "--starttime", "now", "-o", "JobID"])
    if code == 0:
        return Check("ok", "Slurm accounting answers (sacct)")
    return Check(
        "fail",
        f"Slurm accounting is off or unreachable: {out.splitlines()[-1] if out else code}",
        "mkd reads how a job ended from sacct: run slurmdbd, AccountingStorageType=accounting_storage/slurmdbd",
    )


def _partition_checks(partition: str, wanted_gres: str) -> list[Check]:
    """The partition exists, is up, has nodes, and offers the GRES mkd asks for."""
    code, out = _run(["scontrol", "show", "partition", "-o", partition])
    if code != 0:
        why = out.splitlines()[-1] if out else f"scontrol exited {code}"
        return [
            Check(
                "fail",
                f"partition {partition!r} does not exist: {why}",
                "set [executor] partition to one `sinfo -s` lists",
            )
        ]
    code, out = _run(["sinfo", "-h", "-p", partition, "-o", "%P|%a|%D|%G"])
    rows = [line for line in out.splitlines() if line.count("|") == 3] if code == 0 else []
    if not rows:
        return [Check("warn", f"partition {partition!r} exists but sinfo shows no node in it")]
    name, avail, nodes, gres = rows[0].split("|")
    level = "ok" if avail == "up" else "warn"
    checks = [
        Check(
            level,
            f"partition {name.rstrip('*')}: {avail}, {nodes} node(s), GRES {gres or '-'}",
            "" if level == "ok" else "the partition is not up: jobs will wait",
        )
    ]
    if wanted_gres not in gres:
        checks.append(
            Check(
                "warn",
                f"no node of the partition offers GRES {wanted_gres!r} ({gres or 'none'})",
                "set [executor] gres to the GPU GRES name of your cluster (gres.conf)",
            )
        )
    return checks
