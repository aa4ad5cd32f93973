"""Parse MimicKit's `log.txt`: a header row, then one row per output iteration.

Every field is left-justified to 25 characters and rows end with a bare `\\r`, so the file
looks like one line to most tools. A row may be half written when we read it (MimicKit
flushes after each row, but we can race the write), so a trailing unterminated row is dropped.
"""

from __future__ import annotations

import re

Value = float | int | str

_INT = re.compile(r"[+-]?\d+")
_ROW_END = re.compile(r"\r\n|\r|\n")


def parse_value(text: str) -> Value:
    """An int for integer text, a float for anything `float()` takes (`nan`, `1e-05`), else the text."""
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_log_txt(text: str) -> list[dict[str, Value]]:
    """Rows of `log.txt` as dicts keyed by the header's column names, in file order."""
    pieces = _ROW_END.split(text)
    if pieces and pieces[-1] != "":
        pieces = pieces[:-1]  # no row terminator yet: the last row may be cut anywhere
    rows = [piece.split() for piece in pieces if piece.strip()]
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    return [
        {key: parse_value(field) for key, field in zip(header, fields, strict=True)}
        for fields in body
        if len(fields) == len(header)
    ]
