"""Where a daemon's files are (Layout), and that layout read from a config text without pydantic.

`mkd status` and the other commands that only read the store or drop a control file need
nothing of the config but its [paths], and validating the config with pydantic
(mkd.config.DaemonConfig) cost more than the rest of such a command (~200 ms of imports).
layout_from_text() gives the Layout that DaemonConfig gives, for a config whose every key
it can check here; its rules accept only values that DaemonConfig accepts too.  Anything
else (a key it does not check, such as [nccl_presets], a value it cannot vouch for, a text
that is not TOML) gives None, and the caller validates the full way, which reports any
error as before.  So a command sees the same layout or the same error either way.
tests/test_layout.py keeps the rules in step with DaemonConfig.

Light to import: os, pathlib, tomllib and mkd.limits (the ranges, as plain objects).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from mkd import limits
from mkd.quantities import Between

# DaemonConfig's defaults for the keys a Layout is made of (tests/test_layout.py checks them).
DEFAULT_PATHS: dict[str, str] = {"state_dir": "var", "jobs_dir": "jobs", "runs_dir": "runs"}
DEFAULT_MIMICKIT_DIR = "."


class PathSettings(Protocol):
    @property
    def state_dir(self) -> str: ...

    @property
    def jobs_dir(self) -> str: ...

    @property
    def runs_dir(self) -> str: ...


class LayoutSettings(Protocol):
    """What a Layout is made from: a DaemonConfig, as far as Layout is concerned."""

    @property
    def paths(self) -> PathSettings: ...

    @property
    def mimickit_dir(self) -> str: ...


class Layout:
    """Absolute paths derived from a config and a base directory."""

    def __init__(self, config: LayoutSettings, base: Path) -> None:
        paths = config.paths
        self._place(base, paths.state_dir, paths.jobs_dir, paths.runs_dir, config.mimickit_dir)

    @classmethod
    def of(cls, base: Path, *, state_dir: str, jobs_dir: str, runs_dir: str, mimickit_dir: str) -> Layout:
        """The Layout of a config with these values."""
        layout = cls.__new__(cls)
        layout._place(base, state_dir, jobs_dir, runs_dir, mimickit_dir)
        return layout

    def _place(self, base: Path, state_dir: str, jobs_dir: str, runs_dir: str, mimickit_dir: str) -> None:
        def resolve(p: str) -> Path:
            path = Path(os.path.expanduser(p))
            return path if path.is_absolute() else (base / path)

        self.base = base
        self.state_dir = resolve(state_dir)
        self.jobs_dir = resolve(jobs_dir)
        self.runs_dir = resolve(runs_dir)
        self.mimickit_dir = resolve(mimickit_dir)
        self.incoming = self.jobs_dir / "incoming"
        self.rejected = self.jobs_dir / "rejected"
        self.control = self.jobs_dir / "control"
        self.claimed = self.state_dir / "claimed"
        self.db = self.state_dir / "mkd.sqlite3"
        self.lock = self.state_dir / "mkd.lock"

    def create(self) -> None:
        for path in (self.state_dir, self.incoming, self.rejected, self.control, self.claimed, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)


# --- the config, checked without pydantic -------------------------------------------------

_INT64 = 2**63


class Rule:
    """The values of one config key that this module vouches for: a subset of what the
    key's DaemonConfig field accepts (a TOML value of exactly the field's type, within the
    same mkd.limits range), never more."""

    __slots__ = ("between", "choices", "kind")

    def __init__(self, kind: str, between: Between | None = None, choices: tuple[str, ...] = ()) -> None:
        self.kind = kind  # str, bool, int, choice, ints, strs, env, duration, size
        self.between = between  # int, ints (each), duration, size
        self.choices = choices

    def __repr__(self) -> str:
        return f"Rule({self.kind!r}, {self.between!r}, {self.choices!r})"

    def _in_range(self, value: Any) -> bool:
        return self.between is None or self.between.contains(value)

    def accepts(self, value: object) -> bool:
        kind = self.kind
        if kind == "str":
            return type(value) is str
        if kind == "bool":
            return type(value) is bool
        if kind == "int":
            return _int(value) and self._in_range(value)
        if kind == "choice":
            return type(value) is str and value in self.choices
        if kind == "ints":
            return type(value) is list and all(_int(v) and self._in_range(v) for v in value)
        if kind == "strs":
            return type(value) is list and all(type(v) is str for v in value)
        if kind == "env":
            return type(value) is dict and all(type(v) is str for v in value.values())
        if kind in ("duration", "size"):
            if type(value) is not str:
                return False
            from mkd.quantities import parse_duration, parse_size

            try:
                parsed = parse_duration(value) if kind == "duration" else parse_size(value)
            except ValueError:
                return False
            return self._in_range(parsed)
        raise ValueError(f"no such rule kind {kind!r}")


def _int(value: object) -> TypeGuard[int]:
    """A TOML integer (not a bool) that fits pydantic's int."""
    return type(value) is int and -_INT64 <= value < _INT64


_STR, _BOOL = Rule("str"), Rule("bool")


def _duration(between: Between) -> Rule:
    return Rule("duration", between)


def _size(between: Between) -> Rule:
    return Rule("size", between)


# Every key checked here, as DaemonConfig nests them.  Left out, so a config that sets them
# is validated the full way: [nccl_presets] and retry's ladder, on and
# apply_nccl_preset_on_failure (validators that look at several keys, or at lists).
SCHEMA: dict[str, Rule | dict[str, Rule]] = {
    "paths": {"state_dir": _STR, "jobs_dir": _STR, "runs_dir": _STR},
    "mimickit_dir": _STR,
    "mimickit_python": _STR,
    "log_level": Rule("choice", choices=("debug", "info", "warning", "error")),
    "tick": _duration(limits.TICK),
    "max_running": Rule("int", limits.MAX_RUNNING),
    "intake": {
        "max_file_size": _size(limits.MAX_FILE_SIZE),
        "settle": _duration(limits.SETTLE),
        "allowed_uids": Rule("ints", limits.ID),
        "allowed_gids": Rule("ints", limits.ID),
        "allowed_roots": Rule("strs"),
    },
    "metrics": {
        "enabled": _BOOL,
        "host": _STR,
        "port": Rule("int", limits.PORT),
        "retention": _duration(limits.RETENTION),
        "hpc_job_mapping_dir": _STR,
    },
    "gpu": {
        "sample_every": _duration(limits.SAMPLE_EVERY),
        "busy_memory": _size(limits.GPU_MEMORY),
        "memory_freed_below": _size(limits.GPU_MEMORY),
    },
    "base_env": Rule("env"),
    "retry": {
        "max_attempts": Rule("int", limits.MAX_ATTEMPTS),
        "backoff": _duration(limits.BACKOFF),
        "backoff_max": _duration(limits.BACKOFF),
        "single_device_fallback": _BOOL,
        "max_no_progress": Rule("int", limits.MAX_NO_PROGRESS),
    },
    "watch": {
        "startup_timeout": _duration(limits.TIMEOUT),
        "stall_timeout": _duration(limits.TIMEOUT),
        "stop_grace": _duration(limits.STOP_GRACE),
        "gpu_report_every": _duration(limits.GPU_REPORT_EVERY),
        "gpu_memory_free_wait": _duration(limits.GPU_MEMORY_FREE_WAIT),
    },
    "console_log_max": _size(limits.CONSOLE_LOG_MAX),
    "console_log_backups": Rule("int", limits.CONSOLE_LOG_BACKUPS),
    "executor": {
        "kind": Rule("choice", choices=("local", "slurm")),
        "partition": _STR,
        "account": _STR,
        "qos": _STR,
        "time_limit": _duration(limits.SLURM_TIME_LIMIT),
        "sbatch_args": Rule("strs"),
        "gres": _STR,
    },
}


def _vouched(table: dict[str, Any], schema: dict[str, Rule] | dict[str, Rule | dict[str, Rule]]) -> bool:
    for key, value in table.items():
        rule = schema.get(key)
        if rule is None:
            return False
        if isinstance(rule, dict):
            if type(value) is not dict or not _vouched(value, rule):
                return False
        elif not rule.accepts(value):
            return False
    return True


def _executor_complete(table: dict[str, Any]) -> bool:
    """ExecutorConfig's one check across keys: kind = "slurm" needs a partition."""
    return table.get("kind") != "slurm" or bool(table.get("partition"))


def layout_from_text(text: str, base: Path) -> Layout | None:
    """Layout(DaemonConfig from `text`, base) when every key in `text` passes SCHEMA; None
    when this cannot tell (the config may still be valid: validate it the full way)."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    if not _vouched(data, SCHEMA) or not _executor_complete(data.get("executor", {})):
        return None
    paths = {**DEFAULT_PATHS, **data.get("paths", {})}
    return Layout.of(
        base,
        state_dir=paths["state_dir"],
        jobs_dir=paths["jobs_dir"],
        runs_dir=paths["runs_dir"],
        mimickit_dir=data.get("mimickit_dir", DEFAULT_MIMICKIT_DIR),
    )
