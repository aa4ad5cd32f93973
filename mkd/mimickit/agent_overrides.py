"""Derive an agent config from a base agent YAML plus a job's overrides, refusing unknown keys.

MimicKit silently ignores agent keys it does not know (an extra `bogus_key: 123` trained
normally), so a misspelled override would change nothing and nobody would notice. Every
override path must therefore already exist in the base YAML.
"""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load/safe_dump used


class OverrideError(ValueError):
    """An override names a key the base agent config does not have, or the base is unusable."""


def known_keys(base_yaml: Path) -> list[str]:
    """Every leaf of the base agent config as a dotted path (`optimizer.learning_rate`), in file order."""
    return _leaves(_load(base_yaml), "")


def apply_overrides(base_yaml: Path, overrides: Mapping[str, object], dest: Path) -> Path:
    """Write base + overrides to `dest` atomically and return `dest`; OverrideError on unknown keys."""
    config = _load(base_yaml)
    for key, value in overrides.items():
        _set(config, key, value)
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    _atomic_write(dest, text)
    return dest


MAX_AGENT_YAML = 1 << 20


def _load(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise OverrideError(f"cannot read base agent config {str(path)!r}: {exc}") from exc
    except OSError as exc:
        raise OverrideError(f"cannot read base agent config {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or flood the reader
        raise OverrideError(f"cannot read base agent config {path}: not a regular file")
    if st.st_size > MAX_AGENT_YAML:
        raise OverrideError(f"cannot read base agent config {path}: over {MAX_AGENT_YAML} bytes")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OverrideError(f"cannot read base agent config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise OverrideError(f"base agent config {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise OverrideError(f"base agent config {path} is not a mapping of keys to values")
    return loaded


def _leaves(node: Mapping[str, Any], prefix: str) -> list[str]:
    keys: list[str] = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys.extend(_leaves(value, path + ".") if isinstance(value, dict) and value else [path])
    return keys


def _set(config: dict[str, Any], dotted: str, value: object) -> None:
    parts = dotted.split(".")
    node = config
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth]) or "the top level"
        if part not in node:
            raise OverrideError(_unknown_message(dotted, part, here, list(node)))
        if depth == len(parts) - 1:
            break
        child = node[part]
        if not isinstance(child, dict):
            raise OverrideError(
                f"agent config key {dotted!r}: {'.'.join(parts[: depth + 1])!r} is a value, not a section"
            )
        node = child
    last = parts[-1]
    if isinstance(node[last], dict):
        if not isinstance(value, dict):
            example = f"{dotted}.{next(iter(node[last]), 'key')}"
            raise OverrideError(f"agent config key {dotted!r} is a section; override its keys, e.g. {example}")
        for sub_key, sub_value in value.items():
            _set(config, f"{dotted}.{sub_key}", sub_value)
        return
    if isinstance(value, dict):
        raise OverrideError(f"agent config key {dotted!r} is a value in the base config, not a section")
    node[last] = value


def _unknown_message(dotted: str, part: str, where: str, known: list[str]) -> str:
    message = f"unknown agent config key {dotted!r}: no {part!r} in {where} (known there: {', '.join(known)})"
    close = difflib.get_close_matches(part, known, n=1)
    return message + (f"; did you mean {close[0]!r}?" if close else "")


def _atomic_write(dest: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old file or the whole new one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def check_overrides(base_yaml: Path, overrides: Mapping[str, object]) -> dict[str, str]:
    """The problem of each override key the base YAML lacks (empty when all exist); writes nothing."""
    config = _load(base_yaml)
    problems: dict[str, str] = {}
    for key, value in overrides.items():
        try:
            _set(config, key, value)
        except OverrideError as error:
            problems[key] = str(error)
    return problems
