"""Intake with real files: completeness, hostile input, exactly-once claims, recovery."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from mkd.config import DaemonConfig, IntakeConfig, Layout
from mkd.intake import Intake, is_candidate
from mkd.store import Store
from tests.harness import FAKE_MIMICKIT

JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'


@pytest.fixture
def intake(tmp_path: Path) -> Intake:
    config = DaemonConfig(intake=IntakeConfig(settle="300ms", max_file_size="1KiB"))  # type: ignore[arg-type]
    layout = Layout(config, tmp_path)
    layout.create()
    return Intake(config, layout, Store.open(layout.db))


def jobs(intake: Intake) -> list[str]:
    return [j.job_id for j in intake.store.jobs()]


def error_of(intake: Intake, name: str) -> str:
    return (intake.layout.rejected / f"{name}.error").read_text()


def test_candidates() -> None:
    assert is_candidate("a.toml")
    for name in (".a.toml", "a.toml.tmp", "a.toml~", "a.toml.swp", ".a.toml.swp", "a.txt", "a.toml.part"):
        assert not is_candidate(name), name


def test_valid_file_is_queued_once_and_mirrored(intake: Intake) -> None:
    (intake.layout.incoming / "one.toml").write_text(JOB)
    result = intake.scan(0.0)
    assert result.accepted == ["one"]
    assert jobs(intake) == ["one"]
    assert (intake.layout.jobs_dir / "queued" / "one.toml").read_text() == JOB
    assert not list(intake.layout.incoming.iterdir())
    assert not list(intake.layout.claimed.iterdir())
    assert intake.scan(1.0).accepted == []


def test_ignored_files_stay(intake: Intake) -> None:
    for name in (".x.toml", "x.toml.tmp", "x.toml~", "x.toml.swp", "notes.txt"):
        (intake.layout.incoming / name).write_text(JOB)
    result = intake.scan(0.0)
    assert (result.accepted, result.rejected) == ([], [])
    assert len(list(intake.layout.incoming.iterdir())) == 5


def test_partial_write_waits_for_settle_then_is_rejected(intake: Intake) -> None:
    path = intake.layout.incoming / "slow.toml"
    path.write_text('[workload]\nkind = "command"\nargv = ["tr')  # a writer mid-way
    assert intake.scan(0.0).pending == ["slow.toml"]
    assert intake.scan(0.2).pending == ["slow.toml"], "not rejected before the settle time"
    path.write_text(JOB)  # the writer finished
    assert intake.scan(0.25).accepted == ["slow"]


def test_invalid_file_is_rejected_after_settle_with_error(intake: Intake) -> None:
    (intake.layout.incoming / "bad.toml").write_text('[workload]\nkind = "command"\nargv = []\nnum_env = 1\n')
    assert intake.scan(0.0).pending == ["bad.toml"]
    assert intake.scan(0.5).rejected == ["bad.toml"]
    error = error_of(intake, "bad.toml")
    assert "bad.toml:3:1: workload.argv" in error
    assert "bad.toml:4:1: workload.num_env: unknown key 'num_env'" in error
    assert (intake.layout.rejected / "bad.toml").exists()
    assert intake.store.counters()["rejected_files_total"] == 1


def test_duplicate_live_name_is_rejected(intake: Intake) -> None:
    (intake.layout.incoming / "a.toml").write_text('[job]\nname = "same"\n' + JOB)
    intake.scan(0.0)
    (intake.layout.incoming / "b.toml").write_text('[job]\nname = "same"\n' + JOB)
    assert intake.scan(0.1).rejected == ["b.toml"]
    assert "a job named 'same' is still live" in error_of(intake, "b.toml")


def test_reused_name_of_a_finished_job_gets_a_new_id(intake: Intake) -> None:
    from mkd.states import JobState

    (intake.layout.incoming / "a.toml").write_text(JOB)
    intake.scan(0.0)
    intake.store.set_job_state("a", JobState.CANCELLED, "test", 1.0)
    (intake.layout.incoming / "a.toml").write_text(JOB)
    assert intake.scan(0.1).accepted == ["a.2"]


def test_hostile_files(intake: Intake, tmp_path: Path) -> None:
    incoming = intake.layout.incoming
    target = tmp_path / "elsewhere.toml"
    target.write_text(JOB)
    os.symlink(target, incoming / "link.toml")
    os.mkfifo(incoming / "fifo.toml")
    (incoming / "dir.toml").mkdir()
    (incoming / "big.toml").write_text(JOB + "#" * 2000)
    (incoming / "badname!.toml").write_text(JOB)
    (incoming / "other.toml").write_text(JOB)
    os.chown(incoming / "other.toml", 4242, 4242)
    (incoming / "good.toml").write_text(JOB)
    result = intake.scan(0.0)
    assert result.accepted == ["good"], "a hostile file never blocks the next one"
    assert sorted(result.rejected) == ["badname!.toml", "big.toml", "dir.toml", "fifo.toml", "link.toml", "other.toml"]
    assert "symbolic link" in error_of(intake, "link.toml")
    assert "not a regular file" in error_of(intake, "fifo.toml")
    assert "over the 1024-byte limit" in error_of(intake, "big.toml")
    assert "uid 4242" in error_of(intake, "other.toml")
    assert target.read_text() == JOB, "the link's target is untouched"
    assert stat.S_ISFIFO(os.lstat(intake.layout.rejected / "fifo.toml").st_mode)
    assert "not a valid job name" in error_of(intake, "badname!.toml")


def test_workdir_outside_allowed_roots(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    config = DaemonConfig(intake=IntakeConfig(settle="0s", allowed_roots=[str(allowed)]))  # type: ignore[arg-type]
    layout = Layout(config, tmp_path)
    layout.create()
    intake = Intake(config, layout, Store.open(layout.db))
    (layout.incoming / "out.toml").write_text(JOB + 'cwd = "/etc"\n')
    (layout.incoming / "in.toml").write_text(JOB + f'cwd = "{allowed}/x"\n')
    intake.scan(0.0)
    result = intake.scan(1.0)
    assert jobs(intake) == ["in"]
    assert result.rejected == ["out.toml"]
    assert "outside the allowed roots" in (layout.rejected / "out.toml.error").read_text()


def test_recover_claim_recorded_but_not_mirrored(intake: Intake) -> None:
    """Killed after the store insert, before the move: the claimed file is mirrored, not queued twice."""
    (intake.layout.incoming / "x.toml").write_text(JOB)
    intake.scan(0.0)
    mirrored = intake.layout.jobs_dir / "queued" / "x.toml"
    token = intake.store.get_job("x").claim_token  # type: ignore[union-attr]
    os.rename(mirrored, intake.layout.claimed / f"{token}__x.toml")
    result = intake.recover_claims()
    assert result.accepted == [] and jobs(intake) == ["x"]
    assert mirrored.exists() and not list(intake.layout.claimed.iterdir())


def test_recover_claim_not_recorded(intake: Intake) -> None:
    """Killed after the rename, before the insert: the claimed file is queued at the next start."""
    (intake.layout.claimed / "abc-1-0__y.toml").write_text(JOB)
    assert intake.recover_claims().accepted == ["y"]
    assert jobs(intake) == ["y"]


def test_unknown_agent_override_is_rejected_with_line_and_known_keys(tmp_path: Path) -> None:
    from tests.harness import FAKE_MIMICKIT

    config = DaemonConfig(mimickit_dir=str(FAKE_MIMICKIT), intake=IntakeConfig(settle="0s"))  # type: ignore[arg-type]
    layout = Layout(config, tmp_path)
    layout.create()
    intake = Intake(config, layout, Store.open(layout.db))
    head = (
        '[workload]\nkind = "mimickit"\nagent_config = "data/agents/deepmimic_humanoid_ppo_agent.yaml"\n'
        "[workload.agent_overrides]\n"
    )
    (layout.incoming / "ok.toml").write_text(head + 'update_epochs = 40\n"model.actor_net" = "fc_3layers_1024units"\n')
    (layout.incoming / "bad.toml").write_text(head + "update_epoch = 40\nactor_epochs = 5\n")
    intake.scan(0.0)
    intake.scan(1.0)
    assert jobs(intake) == ["ok"]
    error = (layout.rejected / "bad.toml.error").read_text()
    assert "bad.toml:5:1: workload.agent_overrides.update_epoch:" in error and "update_epochs" in error
    assert "bad.toml:6:1: workload.agent_overrides.actor_epochs:" in error


def test_files_a_mimickit_job_names_must_be_in_the_checkout(intake: Intake, tmp_path: Path) -> None:
    """A missing arg file, env config, or the motion file of the env config: rejected at intake with
    the line to fix, instead of an attempt that dies on FileNotFoundError."""
    checkout = tmp_path / "mk"
    shutil.copytree(FAKE_MIMICKIT, checkout)
    (checkout / "data" / "envs" / "nomotion_env.yaml").write_text('motion_file: "data/motions/gone.pkl"\n')
    head = f'[workload]\nkind = "mimickit"\nmimickit_dir = "{checkout}"\n'
    files = {
        "args.toml": head + 'arg_file = "args/missing.txt"\n',
        "env.toml": head + 'env_config = "data/envs/nomotion_env.yaml"\n',
        "fine.toml": head + 'arg_file = "args/deepmimic_humanoid_ppo_args.txt"\n',
    }
    for name, text in files.items():
        (intake.layout.incoming / name).write_text(text)
    intake.scan(0.0)
    assert intake.scan(0.5).rejected == ["args.toml", "env.toml"]
    assert "args.toml:4:1: workload.arg_file: 'args/missing.txt' is not a file in the MimicKit checkout" in (
        error_of(intake, "args.toml")
    )
    assert "env.toml:4:1: workload.env_config: the env config data/envs/nomotion_env.yaml names motion_file" in (
        error_of(intake, "env.toml")
    )
    assert jobs(intake) == ["fine"]
    # the env config that the arg file names is followed too
    (checkout / "args" / "deepmimic_humanoid_ppo_args.txt").write_text("--env_config data/envs/nomotion_env.yaml\n")
    (intake.layout.incoming / "viaargs.toml").write_text(files["fine.toml"])
    intake.scan(1.0)
    assert intake.scan(1.5).rejected == ["viaargs.toml"]
    assert "viaargs.toml:4:1: workload.arg_file: the env config data/envs/nomotion_env.yaml names" in (
        error_of(intake, "viaargs.toml")
    )
