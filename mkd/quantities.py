"""Durations ("90s", "10m", "1h30m") and sizes ("8GiB") as they are written in TOML files.

Job files and the daemon config carry their units in the text, so a reader never has to
guess whether `timeout = 600` meant seconds or minutes.  Plain functions, no pydantic:
mkd.units makes pydantic types of them, and mkd.layout checks a config with them
without importing pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


class TooLarge(ValueError):
    """A duration or size that reads as a number but is past what mkd can hold at all."""


def parse_duration(value: Any) -> timedelta:
    """Parse "90s", "10m", "2h", "1h30m", "500ms"; a timedelta passes through."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f'a duration is a string with a unit, such as "90s", "10m" or "2h" (got {value!r})')
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'cannot read {value!r} as a duration; write it like "90s", "10m", "2h" or "1h30m"')
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise TooLarge(f"{value!r} is too long a duration (at most {timedelta.max.days} days)") from None


def parse_size(value: Any) -> int:
    """Parse "8GiB", "512MiB", "2GB" into bytes."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f'a size is a string with a unit, such as "8GiB" or "512MiB" (got {value!r})')
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f'cannot read {value!r} as a size; write it like "8GiB", "512MiB" or "2GB"')
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not size < 2**63:
        raise TooLarge(f"{value!r} is too large a size")
    return int(size)


def format_size(size: int) -> str:
    """The exact spelling of a size that parse_size reads back ("8GiB", "1536B")."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration, for docs and round trips."""
    seconds = delta.total_seconds()
    if seconds == 0:
        return "0s"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{round(seconds * 1000)}ms"


class Between:
    """An inclusive range of a number, a duration or a size, whose error says the range in the
    field's own units ("must be between 1s and 30d (got 99999h)"): a bound that only says "too
    large" leaves a person guessing what is allowed.

    Plain Python, so mkd.layout can check a config with the same objects that mkd.spec and
    mkd.config give to pydantic (mkd.limits names them)."""

    __slots__ = ("high", "low", "show")

    def __init__(self, low: Any, high: Any, show: Callable[[Any], str] = str) -> None:
        self.low = low
        self.high = high
        self.show = show

    def __repr__(self) -> str:
        return f"Between({self.show(self.low)}, {self.show(self.high)})"

    def contains(self, value: Any) -> bool:
        return bool(self.low <= value <= self.high)

    def message(self, value: Any) -> str:
        return f"must be between {self.show(self.low)} and {self.show(self.high)} (got {self.show(value)})"

    def __call__(self, value: Any) -> Any:
        """The value, or ValueError with the range (pydantic's AfterValidator calls this)."""
        if not self.contains(value):
            raise ValueError(self.message(value))
        return value


def duration_between(low: str, high: str) -> Between:
    return Between(parse_duration(low), parse_duration(high), _show_duration)


def size_between(low: str, high: str) -> Between:
    return Between(parse_size(low), parse_size(high), _show_size)


def _show_duration(value: Any) -> str:
    return format_duration(value) if isinstance(value, timedelta) else str(value)


def _show_size(value: Any) -> str:
    return format_size(value) if isinstance(value, int) else str(value)
