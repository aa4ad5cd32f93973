"""The console table and log.txt, in MimicKit's exact formats (mimickit.md §3.1 and §3.2, seen).

Console: keys right-aligned to the longest key, values right-aligned in 15 characters, floats
as `%8.3g`, a border of `22 + longest key` dashes. log.txt: every field `{:<25}`, rows ended
by a bare `\\r`, values as Python `str()`, flushed per row. The numbers themselves are made up.
"""

from __future__ import annotations

import math
import random

COLUMNS = (
    "Iteration",
    "Wall_Time",
    "Samples",
    "Test_Return",
    "Test_Episode_Length",
    "Test_Episodes",
    "Train_Return",
    "Train_Episode_Length",
    "Train_Episodes",
    "Critic_Loss",
    "Actor_Loss",
    "Clip_Frac",
    "Imp_Ratio",
    "Action_Bound_Loss",
    "Adv_Mean",
    "Adv_Std",
    "Obs_Norm_Mean",
    "Obs_Norm_Std",
    "Exp_Prob",
)
# What turned nan in the real divergence (§6 NaN row, cpu_train_nenv4_stock_agent_nan_divergence).
NAN_COLUMNS = (
    "Test_Return",
    "Critic_Loss",
    "Actor_Loss",
    "Imp_Ratio",
    "Action_Bound_Loss",
    "Adv_Mean",
    "Adv_Std",
    "Obs_Norm_Mean",
    "Obs_Norm_Std",
)

Row = dict[str, int | float]


def format_value(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:8.3g}"  # MimicKit's "%8.3g"


def format_table(row: Row) -> str:
    width = max(len(key) for key in row)
    border = "-" * (22 + width)
    body = [f"| {key:>{width}} | {format_value(value).strip():>15} |" for key, value in row.items()]
    return "\n".join([border, *body, border])


def log_row(values: list[object]) -> str:
    return "".join(f"{value!s:<25}" for value in values) + "\r"


class Metrics:
    """Plausible, deterministic numbers; Test_* values repeat between evaluations, like the real ones."""

    def __init__(self, seed: int, eval_episodes: int, samples_per_iter: int) -> None:
        self._rng = random.Random(seed)
        self._eval_episodes = eval_episodes
        self._samples_per_iter = samples_per_iter
        self._test = (5.84, 16.4)

    def row(self, iteration: int, wall_time_h: float, samples: int, evaluate: bool, nan: bool) -> Row:
        rng = self._rng
        if evaluate:
            self._test = (5.8 + 0.05 * iteration + rng.uniform(-0.1, 0.1), 16.4 + rng.uniform(-0.5, 0.5))
        row: Row = {
            "Iteration": iteration,
            "Wall_Time": wall_time_h,
            "Samples": samples,
            "Test_Return": self._test[0],
            "Test_Episode_Length": self._test[1],
            "Test_Episodes": self._eval_episodes,
            "Train_Return": 5.4 + 0.04 * iteration + rng.uniform(-0.1, 0.1),
            "Train_Episode_Length": 16.1 + rng.uniform(-0.5, 0.5),
            "Train_Episodes": max(1, self._samples_per_iter // 16),
            "Critic_Loss": rng.uniform(0.05, 2.5),
            "Actor_Loss": rng.uniform(-0.01, 0.01),
            "Clip_Frac": rng.uniform(0.02, 0.08),
            "Imp_Ratio": rng.uniform(0.99, 1.01),
            "Action_Bound_Loss": 0.0,
            "Adv_Mean": rng.uniform(-0.1, 1.8),
            "Adv_Std": rng.uniform(0.6, 1.2),
            "Obs_Norm_Mean": 0.346,
            "Obs_Norm_Std": 0.148,
            "Exp_Prob": 1.0,
        }
        if nan:
            row.update({key: math.nan for key in NAN_COLUMNS})
            row.update({"Test_Episode_Length": 300.0, "Train_Return": 0.0, "Train_Episodes": 0})
        return row


class LogTxt:
    """log.txt, truncated at train start, one flushed row per output iteration."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "w")  # noqa: SIM115 (open for the whole run, like the real logger)
        self._header = False

    def write(self, row: Row) -> None:
        if not self._header:
            self._file.write(log_row(list(row)))
            self._header = True
        self._file.write(log_row(list(row.values())))
        self._file.flush()
