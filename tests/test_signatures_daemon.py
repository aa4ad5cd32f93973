"""MimicKit's own config errors and mkd's own stops, through a real daemon into the fake MimicKit:
a config error costs one attempt, not three, and `mkd explain` on an attempt's console.log tells
the daemon's story (its class, its evidence, that mkd stopped it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mkd.client.explain import explain_report
from tests.harness import Home, mimickit_job


def job_with(workload_extra: str, *, env: str = "", watch: str = "", arg_file: str | None = None) -> str:
    text = mimickit_job(env=env, watch=watch, stages='[[stages]]\nkind = "train"\nmax_samples = 20480\n')
    if arg_file is not None:
        text = text.replace('arg_file = "args/deepmimic_humanoid_ppo_args.txt"', f'arg_file = "{arg_file}"')
    return text.replace("\n[env]\n", f"{workload_extra}\n\n[env]\n", 1)


def explain(home: Home, console: Path) -> dict[str, object]:
    done = home.mkd("explain", str(console), "--json", check=True)
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_an_unsupported_net_fails_after_one_attempt(home: Home) -> None:
    home.start()
    overrides = (
        'agent_config = "data/agents/deepmimic_humanoid_ppo_agent.yaml"\n'
        '[workload.agent_overrides]\n"model.actor_net" = "fc_9layers_1024units"'
    )
    home.drop("net.toml", job_with(overrides))
    home.wait_state("net", "failed", timeout=30)
    (only,) = home.attempts("net")
    assert only["failure_class"] == "config_error"
    assert "AssertionError: Unsupported net: fc_9layers_1024units" in only["evidence"]
    assert "config_error: retrying cannot fix this" in home.job("net")["reason"]  # type: ignore[index]
    report = explain(home, Path(only["dir"]) / "console.log")
    assert report["failure"] == "config_error" and report["permanent"] is True
    assert "model.actor_net" in str(report["remedy"])
    assert report["recorded_in"] == "the store" and report["stopped_by_mkd"] is False


def test_an_empty_arg_file_fails_after_one_attempt(home: Home) -> None:
    home.start()
    text = job_with("", arg_file="args/empty_args.txt").replace(
        'engine_config = "data/engines/newton_engine.yaml"\n', ""
    )
    home.drop("empty.toml", text)
    home.wait_state("empty", "failed", timeout=30)
    (only,) = home.attempts("empty")
    assert only["failure_class"] == "config_error"
    assert "TypeError: argument of type 'NoneType' is not iterable" in only["evidence"]


def test_no_checkout_at_mimickit_dir_fails_after_one_attempt(home: Home) -> None:
    home.start()
    empty = home.root / "not-a-checkout"
    empty.mkdir()
    home.drop("nock.toml", job_with(f'mimickit_dir = "{empty}"'))
    home.wait_state("nock", "failed", timeout=30)
    (only,) = home.attempts("nock")
    assert only["failure_class"] == "config_error"
    assert any(f"can't open file '{empty}/mimickit/run.py'" in line for line in only["evidence"])
    report = explain(home, Path(only["dir"]) / "console.log")
    assert "`mimickit_dir`" in str(report["remedy"]) and "`mkd doctor`" in str(report["remedy"])


def test_explain_on_a_stalled_attempt_says_mkd_stopped_it(home: Home, tmp_path: Path) -> None:
    home.start()
    once = f'FAKE_MK_FAIL = "stall_at=3"\nFAKE_MK_FAIL_ONCE_FILE = "{home.root / "stalled-once"}"'
    home.drop("stall.toml", job_with("", env=once, watch='stall_timeout = "1s"'))
    home.wait_state("stall", "succeeded", timeout=60)
    first = home.attempts("stall")[0]
    console = Path(first["dir"]) / "console.log"
    exit_record = json.loads((console.parent / "exit.json").read_text())
    assert exit_record["stop_requested"] is True and exit_record["signal"] == 15
    report = explain(home, console)
    assert (report["failure"], report["stop_reason"], report["stopped_by_mkd"]) == ("stall", "stall", True)
    assert report["evidence"] == first["evidence"], "the daemon's evidence, not a guess from the log"
    text = home.mkd("explain", str(console), check=True).stdout
    assert "outside mkd" not in text
    assert "stopped by: mkd (stall)" in text and "sent by mkd" in text
    # without the store: the job's status.json still names the class
    from_status = explain_report(console)
    assert (from_status["failure"], from_status["recorded_in"], from_status["stopped_by_mkd"]) == (
        "stall",
        "status.json",
        True,
    )
    # the attempt folder alone (copied away, no store, no status.json): exit.json says mkd stopped it
    alone = tmp_path / "copy" / "01-train"
    shutil.copytree(console.parent, alone)
    bare = home.mkd("explain", str(alone / "console.log"), "--json", check=True)
    copied = json.loads(bare.stdout)
    assert copied["failure"] is None and copied["verdict"] == "stopped by mkd" and copied["stopped_by_mkd"] is True
    assert "outside mkd" not in str(copied["remedy"])
    assert "post-mortem bundle" in str(copied["remedy"]), "the stall's postmortem/ came along"


def test_a_root_that_lost_its_peer_is_peer_lost_and_run_again(home: Home) -> None:
    home.start()
    once = f'FAKE_MK_FAIL = "peer_dies_at=2"\nFAKE_MK_FAIL_ONCE_FILE = "{home.root / "died-once"}"'
    stages = '[[stages]]\nkind = "train"\nmax_samples = 20480\n'
    home.drop("peer.toml", mimickit_job(devices='["cpu", "cpu"]', env=once, stages=stages))
    home.wait_state("peer", "succeeded", timeout=40)
    first, second = home.attempts("peer")
    assert first["failure_class"] == "peer_lost"
    assert any("Connection closed by peer" in line and line.startswith("[rank0]:") for line in first["evidence"])
    assert second["params"]["num_envs"] == first["params"]["num_envs"], "run again unchanged"
    assert "peer_lost: run again unchanged" in home.timeline("peer")
