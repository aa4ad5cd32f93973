"""Durations and sizes as pydantic types, for the job file and the daemon config.

The parsing is in mkd.quantities (no pydantic there); its functions are also importable
from here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from mkd.quantities import format_duration, format_size, parse_duration, parse_size

__all__ = ["ByteSize", "Duration", "format_duration", "format_size", "parse_duration", "parse_size"]

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
# Serialized as text that parse_size reads back: a job's spec is stored as JSON and validated again
# (an int there failed validation, and a job with min_free_memory crashed the daemon's loop).
ByteSize = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]
