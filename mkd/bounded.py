"""Pydantic field types that check a mkd.limits range and say it in the error.

`Annotated[int, within(limits.NUM_ENVS)]` is an int between 1 and 2**20;
`Annotated[timedelta, duration(limits.TIMEOUT), DURATION_TEXT]` a duration written with its
unit ("90s") between 1s and 30d; `size(...)` with SIZE_TEXT a size ("8GiB"); `many(...)` a
list's length. The range is checked before pydantic's own parsing as well, so `1e30` or
"99999999999h" get the range, not "exceeded maximum size" or an overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import AfterValidator, PlainSerializer, ValidatorFunctionWrapHandler, WrapValidator

from mkd.quantities import Between, TooLarge, format_duration, format_size, parse_duration, parse_size


class Within:
    """The wrap validator of a bounded field; `between` and `parse` are read by tests/test_layout.py."""

    def __init__(self, between: Between, parse: Callable[[Any], Any] | None = None) -> None:
        self.between = between
        self.parse = parse

    def __call__(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if self.parse is not None:
            try:
                value = self.parse(value)
            except TooLarge:
                raise ValueError(self.between.message(value)) from None
        elif _number(value) and not self.between.contains(value):
            raise ValueError(self.between.message(value))
        return self.between(handler(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Count:
    """The after validator of a bounded list: its length within `between`."""

    def __init__(self, between: Between) -> None:
        self.between = between

    def __call__(self, value: list[Any]) -> list[Any]:
        if not self.between.contains(len(value)):
            low, high = self.between.low, self.between.high
            raise ValueError(f"must have between {low} and {high} items (got {len(value)})")
        return value


def within(between: Between) -> WrapValidator:
    return WrapValidator(Within(between))


def duration(between: Between) -> WrapValidator:
    return WrapValidator(Within(between, parse_duration))


def size(between: Between) -> WrapValidator:
    return WrapValidator(Within(between, parse_size))


DURATION_TEXT = PlainSerializer(format_duration, return_type=str)
SIZE_TEXT = PlainSerializer(format_size, return_type=str)


def many(between: Between) -> AfterValidator:
    """For Annotated[list[X], many(...)]: the list's length within `between`."""
    return AfterValidator(Count(between))
