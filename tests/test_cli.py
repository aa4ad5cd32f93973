"""mkd's command line: `mkd status` and the other commands that need only the layout start
without pydantic, and answer exactly as they do after validating the whole config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkd import cli
from mkd.config import default_config_text
from tests.bench.common import build_history

JOBS = 30
HEAVY = ("pydantic", "mkd.config", "mkd.jobfile", "mkd.spec", "mkd.units", "prometheus_client")
VALID = 'mimickit_dir = "/nonexistent/MimicKit"\n[metrics]\nport = 0\n[intake]\nsettle = "300ms"\n'

STATUS_IMPORTS = """
import contextlib, io, json, sys
from mkd import cli
codes = []
for argv in ({runs}):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(cli.main(["--config", sys.argv[1], *argv]))
print(json.dumps({{"codes": codes, "modules": sorted(sys.modules)}}))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config beside var/mkd.sqlite3 holding JOBS finished jobs (hist00000...)."""
    root = tmp_path_factory.mktemp("home")
    build_history(root / "var" / "mkd.sqlite3", JOBS)
    (root / "mkd.toml").write_text(VALID)
    return root


def test_status_imports_no_pydantic(home: Path) -> None:
    runs = [
        ["status"],
        ["status", "--json"],
        ["status", "--all"],
        ["status", "hist00003"],
        ["status", "hist00003", "--json"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", STATUS_IMPORTS.format(runs=runs), str(home / "mkd.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(done.stdout)
    assert result["codes"] == [0] * len(runs)
    heavy = [m for m in result["modules"] if m.startswith(HEAVY)]
    assert not heavy, f"`mkd status` imported {heavy}"


def test_an_invalid_config_still_goes_through_pydantic(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mkd.toml"
    bad.write_text("[paths]\nstatedir = 'var'\n")
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "--config", str(bad), "status"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == cli.EXIT_USAGE
    assert done.stderr.startswith("mkd: invalid config:\nmkd.toml:2:1: paths.statedir: unknown key 'statedir'.")
    assert "Did you mean 'state_dir'?" in done.stderr


CONFIGS = {
    "valid": VALID,
    "paths": '[paths]\nstate_dir = "var"\nruns_dir = "elsewhere"\n',
    "left to pydantic": VALID + '[nccl_presets]\nmine = { NCCL_P2P_DISABLE = "1" }\n',
    "unknown key": VALID + "tickk = '1s'\n",
    "out of bounds": "max_running = 0\n",
    "bad duration": 'tick = "10"\n',
    "not TOML": "[paths\n",
    "bad preset": '[retry]\napply_nccl_preset_on_failure = "nope"\n',
    "not UTF-8": None,
    "missing": None,
}
COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["status", "--all"],
    ["status", "hist00003"],
    ["status", "hist00003", "--json"],
    ["status", "nosuch"],
    ["logs", "hist00003"],
    ["report", "hist00003"],
    ["cancel", "hist00003"],
    ["shutdown"],
]


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", CONFIGS)
def test_layout_commands_answer_as_with_the_full_config(
    name: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(time, "time", lambda: 2e9)  # the same job ages in both answers
    text = CONFIGS[name]
    config = home / f"{name.replace(' ', '-')}.toml"
    if name == "not UTF-8":
        config.write_bytes(b"mimickit_dir = '\xff'\n")
    elif text is not None:
        config.write_text(text)
    assert (cli.quick_layout(str(config)) is not None) == (name in ("valid", "paths"))
    for argv in COMMANDS:
        full_argv = ["--config", str(config), *argv]
        if name == "not UTF-8":  # load_config's error (a traceback) is the same either way
            with pytest.raises(UnicodeDecodeError):
                cli.main(full_argv)
            continue
        fast = _main(full_argv, capsys)
        with monkeypatch.context() as patch:
            patch.setattr(cli, "quick_layout", lambda path: None)
            slow = _main(full_argv, capsys)
        assert fast == slow, argv
    if name == "valid":
        assert fast[0] == 0 and "hist00029" in _main(["--config", str(config), "status"], capsys)[1]
    if name in ("unknown key", "out of bounds", "bad duration", "not TOML", "bad preset"):
        assert fast[0] == cli.EXIT_USAGE and fast[2].startswith("mkd: invalid config:\n")
    if name == "missing":
        assert fast[0] == cli.EXIT_USAGE and fast[2].startswith("mkd: cannot read the config:")


def test_embedded_defaults_and_mkd_config(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "HOST_CONFIG", tmp_path / "no-host-config.toml")
    monkeypatch.delenv("MKD_CONFIG", raising=False)
    monkeypatch.chdir(home)  # the embedded defaults: var/ of the current directory
    layout = cli.quick_layout(None)
    assert layout is not None and layout.db == home / "var" / "mkd.sqlite3"
    code, out, _ = _main(["status"], capsys)
    assert code == 0 and "hist00029" in out
    monkeypatch.chdir(tmp_path)
    assert _main(["status"], capsys) == (0, "no jobs yet\n", "")
    monkeypatch.setenv("MKD_CONFIG", str(home / "mkd.toml"))
    layout = cli.quick_layout(None)
    assert layout is not None and layout.db == home / "var" / "mkd.sqlite3"


def test_the_embedded_defaults_file_is_default_config_text() -> None:
    assert cli.EMBEDDED_CONFIG.read_text(encoding="utf-8") == default_config_text()
