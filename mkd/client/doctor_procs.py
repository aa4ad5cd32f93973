"""`mkd doctor`: which mechanism will contain a run's processes, and how to get the stronger one.

A run's escapees (setsid, setpgid, a double fork) die with it either way while its shim
lives; a cgroup of its own also holds them after the shim is gone and kills them in one
atomic write, so doctor says which one this host gives and, for the /proc walk, why.
"""

from __future__ import annotations

from mkd import cgroup
from mkd.client.doctor import Check


def procs_checks() -> list[Check]:
    mode = cgroup.mode_from_env()
    where = cgroup.locate(mode)
    if where.parent:
        return [Check("ok", f"process containment: a cgroup per attempt, under {where.parent} (stop = cgroup.kill)")]
    fix = f"unset {cgroup.MODE_VAR}" if mode == "proc" else where.fix
    return [
        Check(
            "warn",
            f"process containment: /proc walk (no cgroup: {where.why}); escapees are found by ancestry,"
            " process group, session and MKD_RUN_ID",
            fix,
        )
    ]
