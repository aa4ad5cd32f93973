"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Light to import (no pathlib, no typing at run time): the per-attempt shim imports it on
its way to starting a run, where every millisecond of start-up counts.
"""

from __future__ import annotations

import contextlib
import json
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy treats the name the same)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it.

    durable=False skips the fsync: for files whose loss in a power cut costs nothing (they
    describe processes that do not survive it, or are rewritten soon), where an fsync behind
    other writes can take tens of milliseconds."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], value: Any, mode: int = 0o644, *, durable: bool = True) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n", mode, durable=durable)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON in `path`, or None when it is absent or unreadable (a write not yet done)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-N.suffix` when that is taken."""
    candidate = folder / name
    stem, dot, suffix = name.partition(".")
    n = 2
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / f"{stem}-{n}{dot}{suffix}"
        n += 1
    return candidate


def read_tail(path: str | os.PathLike[str], max_bytes: int) -> str:
    """The last `max_bytes` of a text file (a console log), decoded leniently; "" when unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - max_bytes))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
