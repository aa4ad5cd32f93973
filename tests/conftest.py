"""Shared fixtures: a daemon home per test, and a check that no run outlives its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Home, kill_leaked, new_token


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A daemon home; the test fails if any process of its runs is left at the end."""
    h = Home(tmp_path, new_token())
    yield h
    leaked = h.cleanup()
    assert not leaked, f"processes left behind by the test's runs: {leaked}"


@pytest.fixture
def token() -> Iterator[str]:
    """A token for processes a test starts itself; fails the test if any is left."""
    value = new_token()
    yield value
    leaked = kill_leaked(value)
    assert not leaked, f"processes left behind: {leaked}"
