"""`mkd install-service` into a temporary root: files, modes, the rendered unit and config."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from mkd.client.install_service import (
    CONFIG,
    INCOMING_DIR,
    STATE_DIR,
    UNIT,
    InstallError,
    config_template,
    install_service,
    main,
    render_config,
    render_unit,
    uninstall_service,
    unit_template,
)

PYTHON = "/opt/mkd/venv/bin/python"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unit_lines(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_install_into_a_prefix(tmp_path: Path) -> None:
    actions = install_service(tmp_path, python=PYTHON)

    unit = (tmp_path / UNIT).read_text()
    assert _unit_lines(unit, "ExecStart") == [f"{PYTHON} -m mkd --config /etc/mkd/mkd.toml run"]
    assert _unit_lines(unit, "User") == ["mkd"]
    assert _unit_lines(unit, "Group") == ["mkd-submit"]
    assert _unit_lines(unit, "KillMode") == ["process"]
    assert _mode(tmp_path / UNIT) == 0o644

    config = tomllib.loads((tmp_path / CONFIG).read_text())
    assert config["paths"] == {
        "state_dir": "/var/lib/mkd",
        "jobs_dir": "/var/lib/mkd/jobs",
        "runs_dir": "/var/lib/mkd/runs",
    }
    assert "intake" not in config  # no host group to name outside "/"
    assert _mode(tmp_path / CONFIG) == 0o644

    assert _mode(tmp_path / STATE_DIR) == 0o750
    assert _mode(tmp_path / STATE_DIR / "jobs") == 0o750
    assert _mode(tmp_path / INCOMING_DIR) == 0o2770

    assert any(a.startswith("skip accounts") for a in actions)
    assert any(a.startswith("skip systemctl daemon-reload") for a in actions)
    assert not any(a.startswith("run ") for a in actions)


def test_install_is_idempotent_and_keeps_an_edited_config(tmp_path: Path) -> None:
    install_service(tmp_path, python=PYTHON)
    (tmp_path / CONFIG).write_text('log_level = "debug"\n')
    (tmp_path / INCOMING_DIR).chmod(0o700)

    actions = install_service(tmp_path, python=PYTHON)

    assert (tmp_path / CONFIG).read_text() == 'log_level = "debug"\n'
    assert f"keep {tmp_path / CONFIG} (exists)" in actions
    assert f"unchanged {tmp_path / UNIT}" in actions
    assert _mode(tmp_path / INCOMING_DIR) == 0o2770


def test_a_new_interpreter_rewrites_the_unit(tmp_path: Path) -> None:
    install_service(tmp_path, python=PYTHON)
    install_service(tmp_path, python="/usr/local/mkd venv/bin/python3")
    unit = (tmp_path / UNIT).read_text()
    assert _unit_lines(unit, "ExecStart") == ["'/usr/local/mkd venv/bin/python3' -m mkd --config /etc/mkd/mkd.toml run"]


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    actions = install_service(tmp_path, python=PYTHON, dry_run=True)
    assert list(tmp_path.iterdir()) == []
    assert f"write {tmp_path / UNIT} (mode 0644)" in actions
    assert f"directory {tmp_path / INCOMING_DIR} (mode 2770)" in actions


def test_dry_run_on_this_host_plans_accounts_and_reload() -> None:
    actions = install_service(Path("/"), python=PYTHON, user="mkd-test-nobody", group="mkd-test-nogroup", dry_run=True)
    assert "run groupadd --system mkd-test-nogroup" in actions
    assert any(a.startswith("run useradd --system --gid mkd-test-nogroup") for a in actions)
    assert "directory /var/lib/mkd/jobs/incoming (mode 2770 owner mkd-test-nobody:mkd-test-nogroup)" in actions


def test_uninstall_removes_the_unit_and_keeps_state(tmp_path: Path) -> None:
    install_service(tmp_path, python=PYTHON)
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/mkd.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/etc/systemd/system/mkd.service")

    uninstall_service(tmp_path)

    assert not (tmp_path / UNIT).exists()
    assert not wants.is_symlink()
    assert (tmp_path / CONFIG).exists()
    assert (tmp_path / INCOMING_DIR).is_dir()


def test_render_unit_replaces_exactly_the_identity_and_command() -> None:
    template = unit_template()
    unit = render_unit(template, python="/x/python", user="u", group="g")
    changed = [(old, new) for old, new in zip(template.splitlines(), unit.splitlines(), strict=True) if old != new]
    assert [new for _, new in changed] == [
        "ExecStart=/x/python -m mkd --config /etc/mkd/mkd.toml run",
        "User=u",
        "Group=g",
    ]
    with pytest.raises(InstallError, match="absolute"):
        render_unit(template, python="python3", user="u", group="g")


def test_render_config_names_the_submit_group() -> None:
    config = tomllib.loads(render_config(config_template(), submit_gid=1234))
    assert config["intake"] == {"allowed_gids": [1234]}
    assert config["paths"]["state_dir"] == "/var/lib/mkd"


def test_render_config_fails_loudly_when_the_template_moved_on() -> None:
    with pytest.raises(InstallError, match="no line matching"):
        render_config("# nothing here\n", submit_gid=None)


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--prefix", str(tmp_path), "--dry-run"]) == 0
    assert f"would: write {tmp_path / UNIT}" in capsys.readouterr().out
    assert main(["--prefix", str(tmp_path), "--python", PYTHON]) == 0
    assert (tmp_path / UNIT).exists()
    assert main(["--prefix", str(tmp_path), "--uninstall"]) == 0
    assert not (tmp_path / UNIT).exists()
    assert main(["--prefix", str(tmp_path), "--python", "relative/python"]) == 1
    assert "absolute" in capsys.readouterr().err
