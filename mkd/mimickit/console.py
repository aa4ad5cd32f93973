"""Incremental parser for MimicKit's console: the per-iteration tables and the test-mode result.

MimicKit (rank 0) prints one ASCII table per iteration::

    ------------------------------------------
    |            Iteration |               5 |
    |              Samples |          786432 |
    ...
    ------------------------------------------

Keys are right-aligned in a column as wide as the longest key and the border is
`22 + longest key` dashes, so both differ between methods (AMP/ASE/ADD add columns): the keys
are read from the table itself. The console also carries `\\r` progress lines, other ranks'
`[rankN]:` warnings and tracebacks, possibly in the middle of a table; those lines are skipped.
Chunks may split lines anywhere, so a partial line waits in a buffer for its end.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mkd.mimickit.logtxt import Value, parse_value
from mkd.mimickit.results import TestResult, parse_test_result

_LINE_END = re.compile(r"\r\n|\r|\n")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
_BORDER = re.compile(r"^-{10,}\s*$")
_ROW = re.compile(r"^\|\s*(\S(?:.*\S)?)\s*\|\s*(\S+)\s*\|\s*$")
_RESULT_LINE = re.compile(r"^(?:Mean Return|Mean Episode Length|Episodes):", re.IGNORECASE)


@dataclass(frozen=True)
class IterationRow:
    """One completed console table, keyed by the table's own key column."""

    values: dict[str, Value]

    @property
    def iteration(self) -> int:
        """The table's `Iteration` (raises KeyError on a table without one; the parser never emits such)."""
        return int(self.values["Iteration"])

    @property
    def samples(self) -> int | None:
        value = self.get("Samples")
        return int(value) if value is not None and math.isfinite(value) else None

    @property
    def wall_time_h(self) -> float | None:
        """Hours since training started (3 significant digits on the console)."""
        return self.get("Wall_Time")

    def get(self, key: str) -> float | None:
        """`key` as a float (`nan` kept), or None when absent or not a number."""
        value = self.values.get(key)
        if isinstance(value, int | float):
            return float(value)
        return None


class ConsoleParser:
    """Feed it console text as it arrives; it returns each table once the table is complete."""

    def __init__(self) -> None:
        self.last: IterationRow | None = None
        self.test_result: TestResult | None = None
        self.lines_seen = 0
        self._partial = ""
        self._open = False  # inside a table: a border was seen and the closing one was not
        self._rows: dict[str, Value] = {}
        self._result_lines: list[str] = []
        self.new_lines: list[str] = []  # the complete lines the last feed() brought

    def feed(self, chunk: str) -> list[IterationRow]:
        """Consume `chunk`; return the tables it completed, oldest first."""
        pieces = _LINE_END.split(self._partial + chunk)
        self._partial = pieces.pop()
        self.new_lines = pieces
        return self._consume(pieces)

    def close(self) -> list[IterationRow]:
        """The stream ended: treat a last unterminated line as complete."""
        rest, self._partial = self._partial, ""
        return self._consume([rest] if rest else [])

    def _consume(self, lines: list[str]) -> list[IterationRow]:
        done: list[IterationRow] = []
        for line in lines:
            self.lines_seen += 1
            if line.startswith("[rank"):
                line = _RANK_PREFIX.sub("", line, count=1)
            row = self._line(line)
            if row is not None:
                done.append(row)
                self.last = row
        return done

    def _line(self, line: str) -> IterationRow | None:
        # The first character picks the one pattern that can match: hundreds of lines a second
        # with 20 runs, and most are table rows.
        first = line[:1]
        if first == "-":
            return self._border() if _BORDER.match(line) else None
        match = _ROW.match(line) if first == "|" and self._open else None
        if match:
            key, text = match.group(1), match.group(2)
            if key in self._rows:  # a new table began without its border: keep the newer one
                self._rows = {}
            self._rows[key] = parse_value(text)
        elif first and first in "MmEe" and _RESULT_LINE.match(line):
            self._result_lines = [*self._result_lines[-2:], line]
            self.test_result = parse_test_result("\n".join(self._result_lines)) or self.test_result
        return None

    def _border(self) -> IterationRow | None:
        if not self._open or not self._rows:
            self._open = True  # an opening border, or the closing one of an empty table
            return None
        rows, self._rows, self._open = self._rows, {}, False
        if "Iteration" not in rows:
            return None
        try:
            int(rows["Iteration"])
        except (TypeError, ValueError):
            return None
        return IterationRow(rows)
