"""mkd.layout: the Layout read from a config text without pydantic must be the one DaemonConfig
gives, and the rules that vouch for a key must never accept what DaemonConfig refuses."""

from __future__ import annotations

import json
import sys
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, PlainSerializer, WrapValidator
from pydantic.fields import FieldInfo

from mkd.bounded import Within
from mkd.client.install_service import config_template, render_config
from mkd.config import DaemonConfig, ExecutorConfig, Paths, default_config_text
from mkd.jobfile import JobFileError, load_text
from mkd.layout import DEFAULT_MIMICKIT_DIR, DEFAULT_PATHS, SCHEMA, Layout, Rule, layout_from_text
from mkd.quantities import Between, parse_duration, parse_size
from tests.harness import write_config

BASE = Path("/srv/mkd-home")


def _within(metadata: list[Any], parse: Any) -> Between | None:
    """The range of a mkd.bounded field's metadata (its wrap validator), None if it has none."""
    found = [m for m in metadata if isinstance(m, WrapValidator) and isinstance(m.func, Within)]
    if len(found) != 1 or found[0].func.parse is not parse:
        return None
    between: Between = found[0].func.between
    return between


def _field_matches(rule: Rule, field: FieldInfo) -> bool:
    """Whether `rule` describes this DaemonConfig field exactly: its type, and its mkd.limits range."""
    annotation, metadata = field.annotation, list(field.metadata)
    kind = rule.kind
    if kind == "str":
        return annotation in (str, str | None) and not metadata
    if kind == "bool":
        return annotation is bool and not metadata
    if kind == "int":
        return annotation is int and len(metadata) == 1 and _within(metadata, None) is rule.between
    if kind == "choice":
        return typing.get_origin(annotation) is typing.Literal and typing.get_args(annotation) == rule.choices
    if kind == "ints":
        options = (annotation,) if typing.get_origin(annotation) is list else typing.get_args(annotation)
        lists = [a for a in options if typing.get_origin(a) is list]
        if len(lists) != 1 or metadata:
            return False
        (item,) = typing.get_args(lists[0])
        if typing.get_origin(item) is not typing.Annotated:
            return rule.between is None and item is int
        base, *item_metadata = typing.get_args(item)
        return base is int and _within(item_metadata, None) is rule.between
    if kind == "strs":
        return annotation == list[str] and not metadata
    if kind == "env":
        return annotation == dict[str, str] and not metadata
    if kind == "duration":
        return (
            annotation is timedelta
            and [type(m) for m in metadata] == [WrapValidator, PlainSerializer]
            and _within(metadata, parse_duration) is rule.between
        )
    if kind == "size":
        return (
            annotation is int
            and [type(m) for m in metadata] == [WrapValidator, PlainSerializer]
            and _within(metadata, parse_size) is rule.between
        )
    return False


def _sections() -> list[tuple[str, type[BaseModel], dict[str, Rule]]]:
    """(name, model, rules) for the top level ("") and each [section] of SCHEMA."""
    top = {k: v for k, v in SCHEMA.items() if isinstance(v, Rule)}
    out: list[tuple[str, type[BaseModel], dict[str, Rule]]] = [("", DaemonConfig, top)]
    for name, rules in SCHEMA.items():
        if isinstance(rules, dict):
            model = DaemonConfig.model_fields[name].annotation
            assert isinstance(model, type) and issubclass(model, BaseModel), name
            out.append((name, model, rules))
    return out


def test_every_rule_describes_its_daemon_config_field_exactly() -> None:
    # A new bound or type on a field the rules vouch for must be mirrored in mkd/layout.py.
    wrong = [
        f"{section}.{key}".lstrip(".")
        for section, model, rules in _sections()
        for key, rule in rules.items()
        if not _field_matches(rule, model.model_fields[key])
    ]
    assert not wrong, f"mkd/layout.py SCHEMA differs from DaemonConfig for {wrong}"


def test_validators_only_read_keys_the_rules_leave_to_pydantic() -> None:
    for section, model, rules in _sections():
        decorators = model.__pydantic_decorators__
        for name, decorator in decorators.field_validators.items():
            assert not set(decorator.info.fields) & set(rules), f"{section} validator {name} reads a vouched key"
        assert not decorators.validators and not decorators.root_validators
        expected = {"_preset_names"} if model is DaemonConfig else set()
        if model is ExecutorConfig:  # partition required for slurm: mirrored by layout._executor_complete
            expected = {"_slurm_needs_partition"}
        assert set(decorators.model_validators) == expected, section
    # _preset_names reads these two; neither is vouched for, so a config that sets them goes to pydantic
    assert "nccl_presets" not in SCHEMA
    retry = SCHEMA["retry"]
    assert isinstance(retry, dict) and "apply_nccl_preset_on_failure" not in retry


def test_defaults_are_daemon_configs() -> None:
    assert Paths().model_dump() == DEFAULT_PATHS
    assert DaemonConfig.model_fields["mimickit_dir"].default == DEFAULT_MIMICKIT_DIR


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


PANEL: dict[str, list[Any]] = {
    "str": ["", "x", "/abs/dir", "~/dir", "rel/dir", 1, True, ["x"]],
    "bool": [True, False, 1, "true"],
    "int": [-1, 0, 1, 2, 64, 100, 101, 4096, 4097, 65535, 65536, 2**32 - 2, 2**32 - 1, 2**62, True, 1.0, "5"],
    "choice": ["debug", "info", "warning", "error", "DEBUG", "trace", 1],
    "ints": [[], [0, 1000], [True], ["1"], [1.5], 5, [-1], [2**32 - 2], [2**32 - 1]],
    "strs": [[], ["/data"], [1], "x"],
    "env": [{}, {"A": "1"}, {"A": 1}, {"A": {"B": "c"}}, "A=1"],
    "duration": [
        "1s",
        "100ms",
        "10ms",
        "9ms",
        "1m",
        "61s",
        "1h",
        "1h1s",
        "1d",
        "30d",
        "31d",
        "1h30m",
        "0s",
        " 2m ",
        "",
        "10",
        "1x",
        10,
        True,
        "99999999999d",
    ],
    "size": [
        "1KiB",
        "1023B",
        "4KiB",
        "0B",
        "8GiB",
        "16MiB",
        "16385KiB",
        "1TiB",
        "1025GiB",
        "1 GiB",
        "1.5MB",
        "1Q",
        1024,
        "",
        "99999999999TiB",
    ],
}


def _panel_texts() -> list[str]:
    texts = []
    for section, _, rules in _sections():
        for key, rule in rules.items():
            for value in PANEL[rule.kind]:
                line = f"{key} = {_toml(value)}\n"
                texts.append(f"[{section}]\n{line}" if section else line)
    return texts


FILES = [
    "",
    default_config_text(),
    '[paths]\nstate_dir = "/var/lib/mkd/state"\njobs_dir = "~/jobs"\n',
    'mimickit_dir = "/opt/MimicKit"\n[paths]\nruns_dir = "out/runs"\n',
    'paths = { state_dir = "inline" }\n',
    'paths = "var"\n',
    "[paths]\nstate_dir = 5\n",
    '[paths]\nstate_dir = "a"\nstate_dir_typo = "b"\n',
    'statedir = "x"\n',
    "[paths\n",
    "max_running = 0\n",
    '[metrics]\nport = 0\n[intake]\nsettle = "300ms"\nallowed_gids = [1000]\n',
    '[retry]\nladder = [4096, 2048]\n[paths]\nstate_dir = "s"\n',  # left to pydantic
    '[retry]\napply_nccl_preset_on_failure = "nope"\n',  # invalid: names no preset
    '[nccl_presets]\nmine = { NCCL_P2P_DISABLE = "1" }\n[paths]\nstate_dir = "s"\n',
    '[retry]\non = { A = "retry" }\n',
    "[watch.deeper]\nx = 1\n",
    '"paths.state_dir" = "x"\n',
    '[executor]\nkind = "slurm"\n',  # invalid: no partition
    '[executor]\nkind = "slurm"\npartition = ""\n',
    '[executor]\nkind = "slurm"\npartition = "gpu"\nsbatch_args = ["--mem=8G"]\ntime_limit = "2h"\n',
    '[executor]\nkind = "local"\nnodes = 2\n',  # unknown key
]


def _full(text: str) -> Layout | None:
    try:
        return Layout(load_text(DaemonConfig, text, "mkd.toml"), BASE)
    except JobFileError:
        return None


@pytest.mark.parametrize("text", FILES + _panel_texts())
def test_a_vouched_config_gives_daemon_configs_layout(text: str) -> None:
    quick, full = layout_from_text(text, BASE), _full(text)
    if quick is not None:
        assert full is not None, f"the rules vouched for a config DaemonConfig refuses:\n{text}"
        assert vars(quick) == vars(full)


def test_real_configs_are_vouched_for(tmp_path: Path) -> None:
    texts = {
        "embedded defaults": default_config_text(),
        "tests/harness.py": write_config(tmp_path).read_text(),
        "install-service": render_config(config_template(), submit_gid=1000),
        "bench": f'mimickit_dir = "/x"\nmimickit_python = "{sys.executable}"\n\n\n[metrics]\nport = 0\n',
    }
    for name, text in texts.items():
        quick, full = layout_from_text(text, BASE), _full(text)
        assert quick is not None and full is not None, name
        assert vars(quick) == vars(full), name


def test_what_the_rules_leave_to_pydantic() -> None:
    for text in (
        "[paths\n",  # not TOML
        "statedir = 'x'\n",  # unknown key
        "max_running = 0\n",  # out of bounds
        'tick = "10"\n',  # no unit
        "[retry]\nladder = [1, 2]\n",  # not checked here
        '[nccl_presets]\nmine = { A = "1" }\n',  # not checked here
        "max_running = true\n",  # a bool is not an int here
    ):
        assert layout_from_text(text, BASE) is None, text


def test_layout_of_is_layout_of_a_config() -> None:
    config = load_text(DaemonConfig, 'mimickit_dir = "m"\n[paths]\nstate_dir = "/abs"\njobs_dir = "~/j"\n', "x")
    built = Layout.of(BASE, state_dir="/abs", jobs_dir="~/j", runs_dir="runs", mimickit_dir="m")
    assert vars(built) == vars(Layout(config, BASE))
    assert built.db == Path("/abs/mkd.sqlite3")
