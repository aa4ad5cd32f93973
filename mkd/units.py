"""Durations and sizes as pydantic types, for the job file and the daemon config.

The parsing is in mkd.quantities (no pydantic there); its functions are also importable
from here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from mkd.quantities import format_duration, parse_duration, parse_size

__all__ = ["ByteSize", "Duration", "format_duration", "parse_duration", "parse_size"]

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
