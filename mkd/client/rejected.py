"""`mkd status NAME` for a file the intake rejected: where its `.error` is, and what it says.

A rejected file never becomes a job, so the store knows nothing of it; without this, `mkd
status bad` answered "no job 'bad'" while jobs/rejected/bad.toml.error said why.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from mkd.layout import Layout


def find_error(layout: Layout, name: str) -> Path | None:
    """The newest .error of a file NAME or NAME.toml (or NAME-N.toml, as a second one is kept)."""
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    pattern = re.compile(re.escape(stem) + r"(-\d+)?\.toml\.error")
    try:
        entries = os.listdir(layout.rejected)
    except OSError:
        return None
    found = [layout.rejected / e for e in entries if pattern.fullmatch(e)]
    if not found:  # kept under a safe name: its .error's first line gives the file's own name
        own = (f"(its own name: {stem}.toml)", f"(its own name: {name})")
        found = [
            layout.rejected / e for e in entries if e.endswith(".error") and _first_line_has(layout.rejected / e, own)
        ]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime_ns if p.exists() else 0)


def _first_line_has(path: Path, needles: tuple[str, ...]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(4096)
    except OSError:
        return False
    return any(first.rstrip("\n").endswith(n) for n in needles)


def show_rejected(layout: Layout, name: str, *, as_json: bool) -> int | None:
    """Print where NAME's .error is and its text (exit 3: no such job); None when no rejected file has that name."""
    error = find_error(layout, name)
    if error is None:
        return None
    try:
        text = error.read_text(encoding="utf-8", errors="replace")
    except OSError as failure:
        text = f"(cannot read it: {failure.strerror})\n"
    if as_json:
        print(json.dumps({"job": name, "state": "rejected", "error_file": str(error), "error": text}, indent=2))
    else:
        print(f"{name}: rejected at intake, never queued; the reasons are in {error}:")
        print("".join(f"  {line}\n" for line in text.splitlines()), end="")
    print(f"mkd: no job {name!r}: the file was rejected; {error}", file=sys.stderr)
    return 3
