"""Every number, size and duration of a job file and of the daemon config has a range: at
each bound the file is valid; one step past it, the error names the key's line and the range."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkd.config import DaemonConfig
from mkd.jobfile import JobFileError, load_job_bytes, load_text
from mkd.layout import layout_from_text

CMD = '[workload]\nkind = "command"\nargv = ["true"]\n'
MK = '[workload]\nkind = "mimickit"\n'


def _list(item: str, n: int) -> str:
    return "[" + ", ".join([item] * n) + "]"


def _rungs(n: int) -> str:
    return "[" + ", ".join(str(n - i) for i in range(n)) + "]"


# (case id, job file with {} for the value, key path, value at the low end, at the high end,
#  just below the low end (None: nothing below can be written), just above the high end, range text)
JOB_BOUNDS = [
    ("priority", "[job]\npriority = {}\n" + CMD, "job.priority", "-100", "100", "-101", "101", "-100 and 100"),
    ("num_envs", MK + "num_envs = {}\n", "workload.num_envs", "1", "1048576", "0", "1048577", "1 and 1048576"),
    ("num_envs float", MK + "num_envs = {}\n", "workload.num_envs", "1.0", "1048576.0", "0.0", "1e30", "1 and 1048576"),
    ("max_samples", MK + "max_samples = {}\n", "workload.max_samples", "1", "1000000000000", "0",
     "1000000000001", "1 and 1000000000000"),
    ("rand_seed", MK + "rand_seed = {}\n", "workload.rand_seed", "0", "4294967295", "-1", "4294967296",
     "0 and 4294967295"),
    ("devices", MK + "devices = {}\n", "workload.devices", _list('"cpu"', 1), _list('"cpu"', 64), "[]",
     _list('"cpu"', 65), "between 1 and 64 items"),
    ("stage num_envs", MK + '[[stages]]\nkind = "train"\nnum_envs = {}\n', "stages.0.num_envs", "1", "1048576", "0",
     "1048577", "1 and 1048576"),
    ("stage max_samples", MK + '[[stages]]\nkind = "train"\nmax_samples = {}\n', "stages.0.max_samples", "1",
     "1000000000000", "0", "1000000000001", "1 and 1000000000000"),
    ("test_episodes", MK + '[[stages]]\nkind = "test"\ntest_episodes = {}\n', "stages.0.test_episodes", "1",
     "1000000", "0", "1000001", "1 and 1000000"),
    ("stage timeout", MK + '[[stages]]\nkind = "train"\ntimeout = {}\n', "stages.0.timeout", '"1s"', '"30d"',
     '"999ms"', '"30d1s"', "1s and 30d"),
    ("stage timeout huge", MK + '[[stages]]\nkind = "train"\ntimeout = {}\n', "stages.0.timeout", '"1000ms"',
     '"720h"', '"0s"', '"99999999999h"', "1s and 30d"),
    ("ladder rungs", MK + '[[stages]]\nkind = "probe"\nladder = {}\n', "stages.0.ladder", "[1]", _rungs(32), "[]",
     _rungs(33), "between 1 and 32 items"),
    ("ladder rung", MK + '[[stages]]\nkind = "probe"\nladder = [{}]\n', "stages.0.ladder.0", "1", "1048576", "0",
     "1048577", "1 and 1048576"),
    ("sweep points", MK + '[[stages]]\nkind = "sweep"\npoints = {}\n', "stages.0.points", _list("{num_envs = 8}", 1),
     _list("{num_envs = 8}", 256), "[]", _list("{num_envs = 8}", 257), "between 1 and 256 items"),
    ("sweep point", MK + '[[stages]]\nkind = "sweep"\npoints = [{{num_envs = {}}}]\n', "stages.0.points.0.num_envs",
     "1", "1048576", "0", "1048577", "1 and 1048576"),
    ("point_max_samples", MK + '[[stages]]\nkind = "sweep"\npoints = [{{num_envs = 8}}]\npoint_max_samples = {}\n',
     "stages.0.point_max_samples", "1", "1000000000000", "0", "1000000000001", "1 and 1000000000000"),
    ("stages", "stages = {}\n" + MK, "stages", "[]", _list('{kind = "train"}', 64), None,
     _list('{kind = "train"}', 65), "between 0 and 64 items"),
    ("gpus", CMD + "[resources]\ngpus = {}\n", "resources.gpus", "0", "64", "-1", "65", "0 and 64"),
    ("resource devices", CMD + "[resources]\ndevices = {}\n", "resources.devices", "[]", _list('"cuda:0"', 64), None,
     _list('"cuda:0"', 65), "between 0 and 64 items"),
    ("min_free_memory", CMD + "[resources]\nmin_free_memory = {}\n", "resources.min_free_memory", '"0B"', '"1TiB"',
     None, '"1025GiB"', "0B and 1TiB"),
    ("max_attempts", CMD + "[retry]\nmax_attempts = {}\n", "retry.max_attempts", "1", "100", "0", "101", "1 and 100"),
    ("backoff", CMD + "[retry]\nbackoff = {}\n", "retry.backoff", '"0s"', '"1d"', None, '"86401s"', "0s and 1d"),
    ("backoff_max", CMD + "[retry]\nbackoff_max = {}\n", "retry.backoff_max", '"0s"', '"24h"', None, '"1d1ms"',
     "0s and 1d"),
    ("max_no_progress", CMD + "[retry]\nmax_no_progress = {}\n", "retry.max_no_progress", "1", "100", "0", "101",
     "1 and 100"),
    ("retry ladder", CMD + "[retry]\nladder = {}\n", "retry.ladder", "[]", _rungs(32), None, _rungs(33),
     "between 0 and 32 items"),
    ("retry rung", CMD + "[retry]\nladder = [{}]\n", "retry.ladder.0", "1", "1048576", "0", "1048577",
     "1 and 1048576"),
    ("startup_timeout", CMD + "[watch]\nstartup_timeout = {}\n", "watch.startup_timeout", '"1s"', '"30d"', '"999ms"',
     '"31d"', "1s and 30d"),
    ("stall_timeout", CMD + "[watch]\nstall_timeout = {}\n", "watch.stall_timeout", '"1s"', '"720h"', '"0s"',
     '"99999999999h"', "1s and 30d"),
    ("stop_grace", CMD + "[watch]\nstop_grace = {}\n", "watch.stop_grace", '"0s"', '"1h"', None, '"1h1s"',
     "0s and 1h"),
    ("gpu_report_every", CMD + "[watch]\ngpu_report_every = {}\n", "watch.gpu_report_every", '"1s"', '"1d"',
     '"999ms"', '"1d1s"', "1s and 1d"),
    ("gpu_memory_free_wait", CMD + "[watch]\ngpu_memory_free_wait = {}\n", "watch.gpu_memory_free_wait", '"0s"',
     '"60m"', None, '"61m"', "0s and 1h"),
]  # fmt: skip

CONFIG_BOUNDS = [
    ("tick", "tick = {}\n", "tick", '"10ms"', '"1m"', '"9ms"', '"61s"', "10ms and 1m"),
    ("max_running", "max_running = {}\n", "max_running", "1", "4096", "0", "4097", "1 and 4096"),
    ("console_log_max", "console_log_max = {}\n", "console_log_max", '"4KiB"', '"1TiB"', '"4095B"', '"1025GiB"',
     "4KiB and 1TiB"),
    ("console_log_backups", "console_log_backups = {}\n", "console_log_backups", "0", "100", "-1", "101",
     "0 and 100"),
    ("max_file_size", "[intake]\nmax_file_size = {}\n", "intake.max_file_size", '"1KiB"', '"16MiB"', '"1023B"',
     '"16385KiB"', "1KiB and 16MiB"),
    ("settle", "[intake]\nsettle = {}\n", "intake.settle", '"0s"', '"1h"', None, '"3601s"', "0s and 1h"),
    ("allowed_uids", "[intake]\nallowed_uids = [{}]\n", "intake.allowed_uids.0", "0", "4294967294", "-1",
     "4294967295", "0 and 4294967294"),
    ("allowed_gids", "[intake]\nallowed_gids = [{}]\n", "intake.allowed_gids.0", "0", "4294967294", "-1",
     "4294967295", "0 and 4294967294"),
    ("port", "[metrics]\nport = {}\n", "metrics.port", "0", "65535", "-1", "65536", "0 and 65535"),
    ("retention", "[metrics]\nretention = {}\n", "metrics.retention", '"0s"', '"30d"', None, '"31d"', "0s and 30d"),
    ("sample_every", "[gpu]\nsample_every = {}\n", "gpu.sample_every", '"10ms"', '"1h"', '"9ms"', '"61m"',
     "10ms and 1h"),
    ("busy_memory", "[gpu]\nbusy_memory = {}\n", "gpu.busy_memory", '"0B"', '"1TiB"', None, '"1025GiB"',
     "0B and 1TiB"),
    ("memory_freed_below", "[gpu]\nmemory_freed_below = {}\n", "gpu.memory_freed_below", '"0B"', '"1024GiB"', None,
     '"2TiB"', "0B and 1TiB"),
    ("config max_attempts", "[retry]\nmax_attempts = {}\n", "retry.max_attempts", "1", "100", "0", "1000",
     "1 and 100"),
    ("config stall_timeout", "[watch]\nstall_timeout = {}\n", "watch.stall_timeout", '"1s"', '"30d"', '"0s"',
     '"99999999999h"', "1s and 30d"),
]  # fmt: skip


def _line_of(text: str, key: str) -> int:
    """The line the error must point at: the last line that writes the key (or the table holding it)."""
    leaf = [p for p in key.split(".") if not p.isdigit()][-1]
    lines = text.split("\n")
    return max(i + 1 for i, line in enumerate(lines) if line.startswith(f"{leaf} =") or f"{leaf} = " in line)


def _job_problems(text: str) -> list[tuple[str, int | None, str]]:
    try:
        load_job_bytes(text.encode(), "job.toml")
    except JobFileError as error:
        return [(p.path, p.line, p.render("job.toml")) for p in error.problems]
    return []


def _config_problems(text: str) -> list[tuple[str, int | None, str]]:
    try:
        load_text(DaemonConfig, text, "mkd.toml")
    except JobFileError as error:
        return [(p.path, p.line, p.render("mkd.toml")) for p in error.problems]
    return []


def _check(problems_of: object, case: tuple[object, ...]) -> None:
    _, template, key, low, high, below, above, span = case
    assert callable(problems_of) and isinstance(template, str) and isinstance(key, str) and isinstance(span, str)
    for value in (low, high):
        assert problems_of(template.format(value)) == [], f"{key} = {value} is at the bound and must be valid"
    for value in (below, above):
        if value is None:
            continue
        text = template.format(value)
        found = problems_of(text)
        assert [p[0] for p in found] == [key], found
        (path, line, rendered) = found[0]
        assert line == _line_of(text, key), rendered
        assert f"{path}: must " in rendered and "between" in rendered and span in rendered, rendered


@pytest.mark.parametrize("case", JOB_BOUNDS, ids=[c[0] for c in JOB_BOUNDS])
def test_job_file_bounds(case: tuple[object, ...]) -> None:
    _check(_job_problems, case)


@pytest.mark.parametrize("case", CONFIG_BOUNDS, ids=[c[0] for c in CONFIG_BOUNDS])
def test_daemon_config_bounds(case: tuple[object, ...]) -> None:
    _check(_config_problems, case)


@pytest.mark.parametrize("case", CONFIG_BOUNDS, ids=[c[0] for c in CONFIG_BOUNDS])
def test_the_quick_config_reader_has_the_same_bounds(case: tuple[object, ...]) -> None:
    """mkd.layout vouches for a config at the bound and leaves one past it to pydantic (which refuses it)."""
    _, template, _, low, high, below, above, _ = case
    assert isinstance(template, str)
    for value in (low, high):
        assert layout_from_text(template.format(value), Path("/x")) is not None, value
    for value in (below, above):
        if value is not None:
            assert layout_from_text(template.format(value), Path("/x")) is None, value


def test_the_example_of_the_issue() -> None:
    """num_envs = 1e30 passed `mkd validate` and an attempt started with it."""
    (found,) = _job_problems(MK + "num_envs = 1000000000000000000000000000000\n")
    assert found[2] == (
        "job.toml:3:1: workload.num_envs: must be between 1 and 1048576 (got 1000000000000000000000000000000)"
    )


def test_a_range_error_keeps_the_other_problems_and_did_you_mean() -> None:
    found = _job_problems(MK + 'num_envs = 0\nnum_env = 8\n[watch]\nstall_timeout = "40d"\n')
    assert [p[0] for p in found] == ["workload.num_envs", "workload.num_env", "watch.stall_timeout"]
    assert "Did you mean 'num_envs'?" in found[1][2]
    assert found[2][2] == "job.toml:6:1: watch.stall_timeout: must be between 1s and 30d (got 40d)"
