"""The files a MimicKit job names, checked when the job file is taken.

MimicKit stops with `FileNotFoundError` on a missing arg file, engine or env config, or on the
motion file its env config names (mimickit.md §6). Found at intake, the job is rejected with the
line to fix instead of costing an attempt. Only when the job's checkout is there (mimickit/run.py):
a missing checkout is `mkd doctor`'s to report, and a run would fail on it at once.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mkd.jobfile import Problem
from mkd.spec import JobSpec, MimicKitWorkload
from mkd.tomlpos import KeyIndex

MOTION_KEY = re.compile(r"^\s*motion_file:\s*\"?([^\"#\s]+)", re.MULTILINE)
READ_CAP = 1 << 20  # an arg file or env config larger than this is not read (nor is a FIFO)
NAMED_FILES = ("arg_file", "engine_config", "env_config")


def checkout_problems(spec: JobSpec, text: str, default_mimickit_dir: Path) -> list[Problem]:
    """A problem for each file the job names that the checkout lacks, at its key's line."""
    workload = spec.workload
    if not isinstance(workload, MimicKitWorkload):
        return []
    root_text = workload.mimickit_dir or str(default_mimickit_dir)
    if "\0" in root_text or not (Path(root_text) / "mimickit" / "run.py").is_file():
        return []
    root = Path(root_text)
    index = KeyIndex(text)
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        line, column = index.locate(("workload", key)) or (None, None)
        problems.append(Problem(line, column, f"workload.{key}", message))

    for key in NAMED_FILES:
        value = getattr(workload, key)
        if value is not None and _file(root, value) is None:
            problem(
                key,
                f"{value!r} is not a file in the MimicKit checkout {root}; MimicKit would stop with "
                "FileNotFoundError (paths are relative to the checkout)",
            )
    env_key, env_value = ("env_config", workload.env_config)
    if env_value is None and workload.arg_file is not None:
        env_key, env_value = "arg_file", _arg_from_file(_file(root, workload.arg_file), "--env_config")
    env_yaml = _file(root, env_value) if env_value is not None else None
    if env_yaml is not None:
        match = MOTION_KEY.search(_read(env_yaml))
        motion = match.group(1) if match else None
        if motion is not None and "\0" not in motion and not (root / motion).exists():
            problem(
                env_key,
                f"the env config {env_value} names motion_file {motion}, which is not in the checkout "
                f"{root}; add the motion file or choose another env config",
            )
    return problems


def _file(root: Path, value: str) -> Path | None:
    """`value` (relative to the checkout unless absolute) when it is a regular file, else None."""
    if not value or "\0" in value:
        return None
    path = Path(value) if Path(value).is_absolute() else root / value
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(READ_CAP).decode("utf-8", "replace")
    except OSError:
        return ""


def _arg_from_file(arg_file: Path | None, flag: str) -> str | None:
    """The value of `flag` in a MimicKit arg file ("--key value" tokens, # comments)."""
    if arg_file is None:
        return None
    lines = [line.split("#", 1)[0] for line in _read(arg_file).splitlines()]
    try:
        tokens = shlex.split("\n".join(lines))
    except ValueError:
        return None
    for i, token in enumerate(tokens[:-1]):
        if token == flag:
            return tokens[i + 1]
    return None
