"""log.txt parsing on the real files: CR-only rows, 25-character fields, half-written last rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mkd.mimickit.logtxt import parse_log_txt, parse_value
from mkd.mimickit.results import check_train_artifacts

FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"
LOGS = sorted(path.name for path in FIXTURES.glob("*.log.txt"))


def raw(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8")


def test_fixtures_are_there() -> None:
    assert len(LOGS) >= 8


@pytest.mark.parametrize("name", LOGS)
def test_real_log_txt(name: str) -> None:
    text = raw(name)
    assert "\n" not in text and text.endswith("\r")
    rows = parse_log_txt(text)
    assert len(rows) == text.count("\r") - 1
    assert [row["Iteration"] for row in rows] == sorted(row["Iteration"] for row in rows)
    assert rows[0]["Iteration"] == 0
    assert list(rows[0])[:3] == ["Iteration", "Wall_Time", "Samples"]
    assert len(rows[0]) == 19
    assert all(isinstance(row["Samples"], int) for row in rows)


def test_values_as_the_console_shows_them() -> None:
    rows = parse_log_txt(raw("gpu_h100_2gpu_train_nenv4096_default_nccl.log.txt"))
    assert [row["Iteration"] for row in rows] == [0, 9]
    assert rows[-1]["Samples"] == 2621440
    assert rows[0]["Wall_Time"] == pytest.approx(0.001979838046762678)
    assert rows[0]["Exp_Prob"] == 1.0


def test_nan_rows() -> None:
    rows = parse_log_txt(raw("cpu_train_nenv4_stock_agent_nan_divergence.log.txt"))
    value = rows[0]["Actor_Loss"]
    assert isinstance(value, float) and math.isnan(value)


def test_a_half_written_last_row_is_dropped() -> None:
    text = raw("cpu_train_nenv16_quick.log.txt")
    whole = parse_log_txt(text)
    assert parse_log_txt(text[:-40]) == whole[:-1]
    assert parse_log_txt(text[: text.index("\r") - 3]) == []
    assert parse_log_txt(text[: text.index("\r") + 1]) == []


def test_newline_row_ends_are_tolerated() -> None:
    text = raw("cpu_train_nenv16_quick.log.txt")
    assert parse_log_txt(text.replace("\r", "\n")) == parse_log_txt(text)
    assert parse_log_txt(text.replace("\r", "\r\n")) == parse_log_txt(text)
    assert parse_log_txt("") == []


def test_parse_value() -> None:
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)
    assert parse_value("1.0") == 1.0 and isinstance(parse_value("1.0"), float)
    assert parse_value("1.57e-05") == pytest.approx(1.57e-05)
    assert math.isnan(float(parse_value("nan")))
    assert parse_value("PPO") == "PPO"


def test_check_train_artifacts(tmp_path: Path) -> None:
    assert check_train_artifacts(tmp_path) == {"model.pt": False, "log.txt": False}
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "log.txt").write_text("")
    assert check_train_artifacts(tmp_path) == {"model.pt": True, "log.txt": False}
    assert check_train_artifacts(tmp_path / "absent") == {"model.pt": False, "log.txt": False}
