"""The console parser on real MimicKit output (tests/fixtures/mimickit) and on awkward chunking."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mkd.mimickit.console import ConsoleParser, IterationRow
from mkd.mimickit.results import TestResult, parse_test_result

FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8", errors="replace")


def parse_all(text: str) -> tuple[ConsoleParser, list[IterationRow]]:
    parser = ConsoleParser()
    rows = parser.feed(text) + parser.close()
    return parser, rows


# file, number of complete tables, last iteration, last Samples (mimickit.md §5, §6)
TRAIN_RUNS = [
    ("cpu_train_nenv16_quick.stdout.txt", 4, 3, 2048),
    ("cpu_2proc_train_nenv8.stdout.txt", 4, 3, 2048),
    ("cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", 10, 9, 2560),
    ("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt", 2, 1, 256),
    ("cpu_typo_num_env_silently_ignored.stdout.txt", 2, 1, 64),
    ("gpu_h100_2gpu_train_nenv4096_default_nccl.stdout.txt", 10, 9, 2621440),
    ("gpu_h100_1gpu_train_nenv2048_timeout55s.stdout.txt", 5, 4, 327680),
    ("gpu_h100_1gpu_fail_cuda_oom_hog_after_first_iteration_nenv4096.stdout.txt", 2, 1, 262144),
    ("gpu_h100_2gpu_kill9_root.stdout.txt", 1, 0, 65536),
]


@pytest.mark.parametrize(("name", "tables", "last_iteration", "last_samples"), TRAIN_RUNS)
def test_real_train_output(name: str, tables: int, last_iteration: int, last_samples: int) -> None:
    parser, rows = parse_all(read(name))
    assert len(rows) == tables
    assert [row.iteration for row in rows] == list(range(last_iteration - tables + 1, last_iteration + 1))
    assert parser.last is not None
    assert parser.last.iteration == last_iteration
    assert parser.last.samples == last_samples
    assert parser.test_result is None


@pytest.mark.parametrize("name", [run[0] for run in TRAIN_RUNS])
def test_any_chunking_gives_the_same_tables(name: str) -> None:
    text = read(name)
    whole = parse_all(text)[1]
    rng = random.Random(name)
    parser, rows, at = ConsoleParser(), [], 0
    while at < len(text):
        step = rng.choice((1, 2, 7, 64, 300, 4096))
        rows += parser.feed(text[at : at + step])
        at += step
    rows += parser.close()
    assert list(map(repr, rows)) == list(map(repr, whole))  # repr: nan != nan


def test_values_are_typed_and_read_from_the_table() -> None:
    rows = parse_all(read("gpu_h100_2gpu_train_nenv4096_default_nccl.stdout.txt"))[1]
    first = rows[0]
    assert list(first.values)[:3] == ["Iteration", "Wall_Time", "Samples"]
    assert len(first.values) == 19
    assert first.values["Samples"] == 262144 and isinstance(first.values["Samples"], int)
    assert first.wall_time_h == pytest.approx(0.00198)
    assert first.get("Exp_Prob") == 1.0
    assert first.get("No_Such_Key") is None


def test_nan_values() -> None:
    rows = parse_all(read("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt"))[1]
    actor_loss = rows[0].get("Actor_Loss")
    assert actor_loss is not None and math.isnan(actor_loss)
    assert rows[1].get("Train_Return") == 0


def test_lines_seen_counts_carriage_return_progress_lines() -> None:
    parser, _ = parse_all("Building 1/4 envs\rBuilding 2/4 envs\rBuilding 3/4 envs\rBuilding 4/4 envs\r\n\nx")
    assert parser.lines_seen == 6  # four progress lines, an empty one, and "x" once the stream closed


def test_other_ranks_lines_inside_a_table_are_skipped() -> None:
    table = read("cpu_train_nenv16_quick.stdout.txt")
    start = table.index("|              Samples")
    noisy = (
        table[:start]
        + "[rank1]:[W1125 21:00:55.442740591 TCPStore.cpp:106] [c10d] sendBytes failed: Broken pipe\n"
        + "frame #0: c10::Error::Error(c10::SourceLocation) + 0x9d\n"
        + table[start:]
    )
    assert list(map(repr, parse_all(noisy)[1])) == list(map(repr, parse_all(table)[1]))


def test_keys_come_from_the_table_so_other_methods_parse() -> None:
    keys = {"Iteration": "7", "Samples": "4096", "Disc_Reward_Weighted_Mean": "0.123", "Disc_Loss": "nan"}
    width = max(map(len, keys))
    border = "-" * (22 + width)
    body = "".join(f"| {key:>{width}} | {value:>15} |\n" for key, value in keys.items())
    rows = parse_all(f"{border}\n{body}{border}\n")[1]
    assert len(rows) == 1
    assert rows[0].iteration == 7
    assert rows[0].samples == 4096
    assert rows[0].get("Disc_Reward_Weighted_Mean") == pytest.approx(0.123)


def test_a_table_cut_by_a_crash_is_not_emitted() -> None:
    text = read("cpu_train_nenv16_quick.stdout.txt")
    cut = text[: text.rindex("|          Critic_Loss")] + "Traceback (most recent call last):\n"
    parser, rows = parse_all(cut)
    assert [row.iteration for row in rows] == [0, 1, 2]
    assert parser.last is not None and parser.last.iteration == 2


def test_test_mode_result_from_real_runs() -> None:
    cpu, _ = parse_all(read("cpu_test_mode_nenv4.stdout.txt"))
    assert cpu.test_result == TestResult(5.330404281616211, 15.5, 4)
    gpu, _ = parse_all(read("gpu_h100_1gpu_test_nenv256.stdout.txt"))
    assert gpu.test_result == TestResult(6.262083530426025, 17.4296875, 256)


def test_test_result_split_across_chunks() -> None:
    parser = ConsoleParser()
    for piece in ("Mean Ret", "urn: 4.6156\nMean Episode Len", "gth: 12.5\nEpis", "odes: 10\n"):
        parser.feed(piece)
    assert parser.test_result == TestResult(4.6156, 12.5, 10)


def test_parse_test_result_takes_the_last_block_and_tolerates_missing_lines() -> None:
    assert parse_test_result("nothing here") is None
    assert parse_test_result("Mean Return: 1.5\n") == TestResult(1.5, None, None)
    text = "Mean Return: 1.0\nEpisodes: 3\n[rank0]: Mean Return: 2.0\nTest_Episodes: 9\nEpisodes: 4\n"
    assert parse_test_result(text) == TestResult(2.0, None, 4)
