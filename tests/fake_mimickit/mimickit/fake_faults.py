"""Which failures to inject, from the environment: FAKE_MK_FAIL and FAKE_MK_FAIL_ONCE_FILE.

FAKE_MK_FAIL is a comma-separated list of modes, some with `=N` (see run.py's docstring).
With FAKE_MK_FAIL_ONCE_FILE=<path>, only the first run fails: it creates the file, and every
later run that finds the file injects nothing (for retry tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# mode -> whether it takes "=N"
MODES: dict[str, bool] = {
    "oom_above": True,
    "cublas_oom": False,
    "graph_oom_at": True,
    "nccl_init": False,
    "nccl_abort_at": True,
    "port_in_use": False,
    "glsl": False,
    "no_display": False,
    "crash_at": True,
    "hang": False,
    "stall_at": True,
    "nan_at": True,
    "linger": False,
    "peer_dies_at": True,
    "ignore_sigterm": False,
    "env_mismatch": False,
    "missing_motion": False,
}


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Faults:
    modes: dict[str, int | None] = field(default_factory=dict)

    def has(self, mode: str) -> bool:
        return mode in self.modes

    def at(self, mode: str, iteration: int) -> bool:
        """The mode fires exactly at this iteration."""
        return self.modes.get(mode, -1) == iteration

    def reached(self, mode: str, iteration: int) -> bool:
        """The mode fires at this iteration and every later one."""
        value = self.modes.get(mode)
        return value is not None and iteration >= value

    def value(self, mode: str) -> int | None:
        return self.modes.get(mode)


def parse_faults(spec: str) -> Faults:
    modes: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, number = item.partition("=")
        if name not in MODES:
            raise FaultSpecError(f"unknown FAKE_MK_FAIL mode {name!r}; known: {', '.join(MODES)}")
        if MODES[name] != bool(number):
            raise FaultSpecError(f"FAKE_MK_FAIL mode {name!r} {'needs' if MODES[name] else 'takes no'} =N")
        modes[name] = int(number) if number else None
    return Faults(modes)


def faults_from_env(environ: dict[str, str] | os._Environ[str]) -> Faults:
    faults = parse_faults(environ.get("FAKE_MK_FAIL", ""))
    once = environ.get("FAKE_MK_FAIL_ONCE_FILE")
    if faults.modes and once:
        try:
            with open(once, "x"):
                pass
        except FileExistsError:
            return Faults()
    return faults
