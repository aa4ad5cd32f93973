"""Test-mode results and the train stage's artifacts: what the runbook's pass conditions look at.

Test mode prints (rank 0 only, not aggregated over ranks)::

    Mean Return: 6.262083530426025
    Mean Episode Length: 17.4296875
    Episodes: 256

and a train stage passes only if `model.pt` and `log.txt` exist in out_dir.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# torch prefixes rank 0's lines with "[rank0]: " once a process group exists; accept it.
_PREFIX = r"^(?:\[rank\d+\]:\s*)?"
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf))"
_MEAN_RETURN = re.compile(_PREFIX + r"Mean Return:\s*" + _NUMBER + r"\s*$", re.MULTILINE | re.IGNORECASE)
_MEAN_LENGTH = re.compile(_PREFIX + r"Mean Episode Length:\s*" + _NUMBER + r"\s*$", re.MULTILINE | re.IGNORECASE)
_EPISODES = re.compile(_PREFIX + r"Episodes:\s*(\d+)\s*$", re.MULTILINE)

TRAIN_ARTIFACTS = ("model.pt", "log.txt")


@dataclass(frozen=True)
class TestResult:
    """One test-mode evaluation; the length and count are None if their lines never came."""

    __test__ = False  # not a pytest test class, despite the name

    mean_return: float
    mean_episode_length: float | None
    episodes: int | None


def parse_test_result(text: str) -> TestResult | None:
    """The last `Mean Return` block in `text`, or None when test mode printed no result (yet)."""
    returns = list(_MEAN_RETURN.finditer(text))
    if not returns:
        return None
    last = returns[-1]
    rest = text[last.end() :]
    length = _MEAN_LENGTH.search(rest)
    episodes = _EPISODES.search(rest)
    return TestResult(
        mean_return=float(last.group(1)),
        mean_episode_length=float(length.group(1)) if length else None,
        episodes=int(episodes.group(1)) if episodes else None,
    )


def check_train_artifacts(out_dir: Path) -> dict[str, bool]:
    """For each artifact a train stage must leave: does it exist with at least one byte?"""
    found: dict[str, bool] = {}
    for name in TRAIN_ARTIFACTS:
        path = out_dir / name
        try:
            found[name] = path.is_file() and path.stat().st_size > 0
        except OSError:
            found[name] = False
    return found
