"""Job files: every problem at once, each with its line, key path and a hint."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mkd.config import DaemonConfig, default_config_text
from mkd.jobfile import JobFileError, load_job_bytes, load_text
from mkd.spec import CommandWorkload, JobSpec, MimicKitWorkload
from mkd.units import format_size, parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent

BAD = b"""[job]
name = "bad job"
priority = "high"

[workload]
kind = "mimickit"
num_env = 8
devices = ["cuda:0", "gpu1"]

[[stages]]
kind = "train"
timeout = "10 minutes"

[[stages]]
kind = "test"

[retry]
ladder = [64, 128]
backof = "5s"
"""


def problems(raw: bytes) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(JobFileError) as caught:
        load_job_bytes(raw, "bad.toml")
    return {p.path: (p.line, p.message) for p in caught.value.problems}


def test_every_problem_is_reported_with_its_line() -> None:
    found = problems(BAD)
    assert found["job.name"][0] == 2
    assert found["job.priority"][0] == 3 and "'high'" in found["job.priority"][1]
    assert (
        found["workload.num_env"]
        == (
            7,
            found["workload.num_env"][1],
        )
        and "Did you mean 'num_envs'?" in found["workload.num_env"][1]
    )
    assert "argv" not in found["workload.num_env"][1], "allowed keys are those of the mimickit workload only"
    assert found["workload.devices"][0] == 8 and "gpu1" in found["workload.devices"][1]
    assert found["stages.0.timeout"][0] == 12 and '"10m"' in found["stages.0.timeout"][1]
    assert found["stages.1"][0] == 14 and "test_episodes" in found["stages.1"][1]
    assert found["retry.ladder"][0] == 18 and "largest to smallest" in found["retry.ladder"][1]
    assert found["retry.backof"][0] == 19 and "Did you mean 'backoff'?" in found["retry.backof"][1]
    assert len(found) == 8


def test_toml_syntax_error_names_line() -> None:
    found = problems(b'[workload]\nkind = "command"\nargv = ["a",\nb = 2\n')
    ((line, message),) = found.values()
    assert line == 4 and message.startswith("not valid TOML")


def test_not_utf8_names_line() -> None:
    found = problems(b'[workload]\nkind = "command"\nargv = ["\xff"]\n')
    ((line, message),) = found.values()
    assert line == 3 and "UTF-8" in message


def test_deep_nesting_is_refused() -> None:
    deep = b"x = " + b"[" * 40 + b"]" * 40 + b"\n"
    found = problems(deep)
    assert "nested" in next(iter(found.values()))[1]


def test_missing_required_key_points_at_its_table() -> None:
    found = problems(b'[job]\nname = "x"\n\n[workload]\nkind = "command"\n')
    assert found["workload.argv"] == (4, "required key is missing; add it")


def test_valid_job_and_defaults() -> None:
    spec = load_job_bytes(
        b'[workload]\nkind = "mimickit"\nnum_envs = 512\ndevices = ["cuda:0", "cuda:1"]\n'
        b'[[stages]]\nkind = "train"\nmax_samples = 131072\ntimeout = "1h30m"\n',
        "ok.toml",
    )
    assert isinstance(spec.workload, MimicKitWorkload)
    assert spec.gpu_count() == 2
    assert spec.stages[0].timeout == timedelta(hours=1, minutes=30)
    assert spec.stages[0].checks == ("exit_zero", "model_pt", "log_txt")
    assert spec.watch.stall_timeout == timedelta(minutes=5)


def test_command_job_needs_no_gpu() -> None:
    spec = load_job_bytes(b'[workload]\nkind = "command"\nargv = ["true"]\n', "c.toml")
    assert isinstance(spec.workload, CommandWorkload)
    assert spec.gpu_count() == 0
    assert [s.kind for s in spec.effective_stages] == ["command"]


def test_mixed_cpu_and_cuda_devices_are_refused() -> None:
    found = problems(b'[workload]\nkind = "mimickit"\ndevices = ["cpu", "cuda:0"]\n')
    assert "gloo and NCCL" in found["workload.devices"][1]


def test_units() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_size("8GiB") == 8 * 2**30
    for bad in ("90", "ten s", "", "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("example", sorted((REPO / "jobs" / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    spec = load_job_bytes(example.read_bytes(), example.name)
    assert isinstance(spec, JobSpec)


def test_embedded_defaults_equal_the_model_defaults() -> None:
    config = load_text(DaemonConfig, default_config_text(), "mkd.toml")
    assert config == DaemonConfig()
    assert config.nccl_presets["runbook"] == {
        "NCCL_P2P_DISABLE": "1",
        "NCCL_IB_DISABLE": "1",
        "NCCL_CUMEM_ENABLE": "0",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    assert (REPO / "etc" / "mkd.toml").read_text() == default_config_text()


def test_every_config_key_is_listed_in_etc_mkd_toml() -> None:
    text = default_config_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                out += keys(sub, f"{name}.")
            else:
                out.append(name)
        return out

    missing = [k for k in keys(DaemonConfig) if f"# {k} =" not in text and f"[{k}]" not in text]
    assert not missing, f"etc/mkd.toml does not list {missing}"


def test_mkd_validate_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(BAD)
    good = tmp_path / "good.toml"
    good.write_text('[workload]\nkind = "command"\nargv = ["true"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "validate", str(good), str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 1
    assert f"{good}: ok" in done.stdout
    assert "bad.toml:7:1: workload.num_env: unknown key 'num_env'. Did you mean 'num_envs'?" in done.stdout


@given(st.integers(0, 2**53))
def test_a_size_is_written_as_text_that_reads_back_exactly(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_a_stored_spec_validates_again() -> None:
    """The daemon stores a job's spec as JSON and validates it again at each start: a size came back
    as an int, which the size type refuses, and a job with min_free_memory crashed the loop."""
    text = (
        '[workload]\nkind = "command"\nargv = ["true"]\n[resources]\nmin_free_memory = "1536MiB"\n'
        '[watch]\nstall_timeout = "90s"\n'
    )
    spec = load_job_bytes(text.encode(), "j.toml")
    stored = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert stored["resources"]["min_free_memory"] == "1536MiB"
    assert JobSpec.model_validate(stored) == spec
