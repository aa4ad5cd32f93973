"""Derived agent configs: dotted overrides of the stock keys, unknown keys refused, atomic writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from mkd.mimickit.agent_overrides import OverrideError, apply_overrides, known_keys
from tests.fake_mimickit import AGENT_YAML, FAKE_DIR, fake_command, fake_env

# The runbook's high-util profile, as overrides of the stock DeepMimic PPO agent.
HIGH_UTIL: dict[str, object] = {
    "model.actor_net": "fc_3layers_1024units",
    "model.critic_net": "fc_3layers_1024units",
    "update_epochs": 40,
    "batch_size": 2,
}


def test_known_keys_are_dotted_leaves_in_file_order() -> None:
    keys = known_keys(AGENT_YAML)
    assert keys[:3] == ["agent_name", "model.actor_net", "model.actor_init_output_scale"]
    for key in ("optimizer.type", "optimizer.learning_rate", "discount", "steps_per_iter", "iters_per_output"):
        assert key in keys
    assert "model" not in keys


def test_apply_overrides(tmp_path: Path) -> None:
    dest = apply_overrides(AGENT_YAML, {**HIGH_UTIL, "optimizer.learning_rate": 1e-4}, tmp_path / "a" / "agent.yaml")
    assert dest == tmp_path / "a" / "agent.yaml"
    derived = yaml.safe_load(dest.read_text())
    base = yaml.safe_load(AGENT_YAML.read_text())
    assert derived["model"]["actor_net"] == "fc_3layers_1024units"
    assert derived["update_epochs"] == 40 and derived["batch_size"] == 2
    assert derived["optimizer"] == {"type": "SGD", "learning_rate": 1e-4}
    assert derived["discount"] == base["discount"]
    assert list(derived) == list(base), "key order is kept"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["agent.yaml"], "no temp file left"


def test_a_section_may_be_overridden_key_by_key(tmp_path: Path) -> None:
    dest = apply_overrides(AGENT_YAML, {"optimizer": {"learning_rate": 2e-5}}, tmp_path / "agent.yaml")
    assert yaml.safe_load(dest.read_text())["optimizer"] == {"type": "SGD", "learning_rate": 2e-5}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer.learnin_rate": 1e-4}, "no 'learnin_rate' in optimizer.*did you mean 'learning_rate'"),
        ({"discont": 0.9}, "known there: agent_name, model, optimizer, discount.*did you mean 'discount'"),
        ({"model.actor": "x"}, "unknown agent config key 'model.actor'"),
        ({"model": "fc"}, "is a section"),
        ({"discount.x": 1}, "'discount' is a value, not a section"),
        ({"discount": {"x": 1}}, "is a value in the base config"),
        ({"optimizer": {"tpye": "Adam"}}, "did you mean 'type'"),
    ],
)
def test_unknown_or_misshapen_keys(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    dest = tmp_path / "agent.yaml"
    with pytest.raises(OverrideError, match=message):
        apply_overrides(AGENT_YAML, overrides, dest)
    assert not dest.exists()


def test_bad_base(tmp_path: Path) -> None:
    with pytest.raises(OverrideError, match="cannot read"):
        known_keys(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(OverrideError, match="not a mapping"):
        known_keys(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(OverrideError, match="not valid YAML"):
        known_keys(tmp_path / "bad.yaml")


def test_an_existing_dest_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "agent.yaml"
    dest.write_text("old: 1\n")
    apply_overrides(AGENT_YAML, {"discount": 0.95}, dest)
    assert yaml.safe_load(dest.read_text())["discount"] == 0.95


def test_the_fake_mimickit_trains_with_a_derived_config(tmp_path: Path) -> None:
    agent = apply_overrides(AGENT_YAML, {**HIGH_UTIL, "iters_per_output": 2}, tmp_path / "agent.yaml")
    out_dir = tmp_path / "out"
    command = fake_command(
        "--agent_config", str(agent), "--num_envs", "2", "--max_samples", "420", "--out_dir", str(out_dir)
    )
    done = subprocess.run(command, cwd=FAKE_DIR, env=fake_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = (out_dir / "log.txt").read_bytes().count(b"\r") - 1
    assert rows == 4, "iterations 0, 2, 4 and the last (6: 7 x 2 envs x 32 steps >= 420) are output iterations"
    assert yaml.safe_load((out_dir / "agent_config.yaml").read_text())["update_epochs"] == 40
