"""The runbook's procedures end to end with the fake MimicKit: fast path, warm-up promotion,
probe ladder, sweep; report.md checked field by field."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import pytest

from mkd.stages import probe_begin, probe_cost, probe_record
from tests.harness import Home, mimickit_job


def head(num_envs: int, env: str = "", devices: str = '["cpu"]') -> str:
    return mimickit_job(devices=devices, num_envs=num_envs, env=env)


def checklist(report: str) -> dict[str, str]:
    items = {}
    for line in report.split("## Attempts")[0].splitlines():
        if line.startswith("- "):
            key, _, value = line[2:].partition(": ")
            if key in items:
                continue
            sub_key, sep, rest = value.partition(": ")
            if sep and key in {"train", "test", "visualize", "warmup", "longrun", "probe", "sweep"}:
                items[f"{key}: {sub_key}"] = rest
            else:
                items[key] = value
    return items


def test_fast_path_train_test_visualize(home: Home) -> None:
    home.start(env={"DISPLAY": ":99"})
    stages = """
[[stages]]
name = "train"
kind = "train"
max_samples = 2560

[[stages]]
name = "test"
kind = "test"
num_envs = 1
test_episodes = 10
model_from = "train"

[[stages]]
name = "visualize"
kind = "visualize"
model_from = "train"
"""
    home.drop("e2e.toml", head(16, "") + stages)
    home.wait_state("e2e", "succeeded", timeout=40)
    items = checklist(home.report("e2e"))
    runs = home.root / "runs" / "e2e" / "attempts"
    train_out = runs / "01-train" / "out"
    assert items["state"] == "succeeded (stage visualize passed)"
    assert items["train: command"].endswith(
        "mimickit/run.py --arg_file args/deepmimic_humanoid_ppo_args.txt --engine_config "
        "data/engines/newton_engine.yaml --mode train --visualize false --devices cpu --num_envs 16 "
        f"--max_samples 2560 --out_dir {train_out}"
    )
    assert items["train: devices"] == "cpu" and items["train: num_envs"] == "16"
    assert items["train: output"] == str(train_out)
    assert items["train: model.pt"] == "yes" and items["train: log.txt"] == "yes"
    assert (
        f"--mode test --visualize false --devices cpu --num_envs 1 --test_episodes 10 --model_file {train_out}/model.pt"
        in (items["test: command"])
    )
    assert re.fullmatch(r"-?\d+\.\d+", items["test: Mean Return"]) and items["test: Episodes"] != "-"
    assert "--visualize true" in items["visualize: command"] and "--test_episodes 1" in items["visualize: command"]
    assert items["visualize: exit"].startswith("returncode 0")
    assert items["visualize: Mean Return"] != "not printed"
    assert items["fallback"] == "none" and items["NCCL preset applied"] == "no"


def test_warmup_promotes_to_long_run_with_the_passing_num_envs(home: Home) -> None:
    home.start()
    stages = """
[[stages]]
name = "warmup"
kind = "warmup"
max_samples = 7680

[[stages]]
name = "longrun"
kind = "long_run"
max_samples = 12800
"""
    once = home.root / "oom-once"
    env = f'FAKE_MK_FAIL = "oom_above=60"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
    text = head(80, env) + "ladder = [80, 40, 20]\n" + stages
    home.drop("wl.toml", text)
    home.wait_state("wl", "succeeded", timeout=40)
    attempts = home.attempts("wl")
    assert [(a["stage_label"], a["params"]["num_envs"], a["failure_class"]) for a in attempts] == [
        ("warmup", 80, "cuda_oom"),
        ("warmup", 40, None),
        ("longrun", 40, None),
    ]
    items = checklist(home.report("wl"))
    assert items["warmup: promoted num_envs"] == "40"
    assert items["longrun: num_envs"] == "40"
    assert "--num_envs 40" in items["longrun: command"] and "--max_samples 12800" in items["longrun: command"]
    assert items["warmup: model.pt"] == "yes" and items["longrun: log.txt"] == "yes"
    assert items["longrun: alive"] == "no"
    assert items["fallback"] == "warmup attempt 1: cuda_oom: step num_envs down from 80 to 40"
    # the promotion keeps the job running: its timeline still says the long run started, and how
    assert "running: attempt 3 (longrun) started, num_envs=40" in home.timeline("wl")


@pytest.mark.parametrize(
    ("ladder", "threshold"),
    [
        ([320, 256, 192, 160, 128, 96, 64], 100),  # the runbook's ladder
        ([320, 256, 192, 160, 128, 96, 64], 1000),  # everything passes
        ([320, 256, 192, 160, 128, 96, 64], 64),  # only the last rung
        ([64, 32], 40),
        ([512, 384, 256], 10),  # nothing passes on two processes -> the ladder on one, then fail
    ],
)
def test_probe_ladder_finds_the_largest_passing_num_envs(home: Home, ladder: list[int], threshold: int) -> None:
    home.start()
    stage = f"""
[[stages]]
name = "probe"
kind = "probe"
ladder = {ladder}
point_max_samples = 100000
"""
    devices = '["cpu"]' if threshold > 10 else '["cpu", "cpu"]'
    home.drop("p.toml", head(8, f'FAKE_MK_FAIL = "oom_above={threshold}"', devices) + stage)
    passing = [n for n in ladder if n <= threshold]
    final = home.wait_state("p", "succeeded", "failed", timeout=60)
    probes = [a["params"]["num_envs"] for a in home.attempts("p")]
    if passing:
        assert final == "succeeded"
        assert len(probes) <= probe_cost(len(ladder)) == math.ceil(math.log2(len(ladder) + 1))
        assert probes[-1] == max(passing) or max(passing) in probes
        items = checklist(home.report("p"))
        assert items["probe: chosen num_envs"] == str(max(passing))
        assert items["probe: probes"] == str(len(probes))
        assert float(items["probe: GPU-seconds probing"]) > 0
    else:
        assert final == "failed"
        assert len(probes) == 2 * probe_cost(len(ladder)), "the ladder again on one device, then give up"
        assert [a["params"]["processes"] for a in home.attempts("p")] == [2, 2, 1, 1]


def test_probe_stops_as_soon_as_it_passes(home: Home) -> None:
    home.start()
    stage = '[[stages]]\nkind = "probe"\nladder = [64]\npoint_max_samples = 100000000\n'
    home.drop("fast.toml", head(8, "") + stage)
    home.wait_state("fast", "succeeded", timeout=30)
    (attempt,) = home.attempts("fast")
    assert attempt["stop_reason"] == "probe_passed"
    assert attempt["progress"]["iteration"] < 20, "stopped after its pass condition, not at max_samples"


def test_sweep_writes_summary_and_picks_the_best_point(home: Home) -> None:
    home.start()
    stage = """
[[stages]]
kind = "sweep"
point_max_samples = 15360
points = [{ num_envs = 16 }, { num_envs = 48 }, { num_envs = 32 }, { num_envs = 96 }]

[[stages]]
name = "after"
kind = "train"
max_samples = 3072
"""
    home.drop("sw.toml", head(8, 'FAKE_MK_FAIL = "oom_above=64"') + stage)
    home.wait_state("sw", "succeeded", timeout=60)
    text = (home.root / "runs" / "sw" / "summary.tsv").read_text()
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    assert [r["num_envs"] for r in rows] == ["16", "48", "32", "96"]
    assert [r["passed"] for r in rows] == ["pass", "pass", "pass", "fail"]
    assert rows[3]["failure"] == "cuda_oom"
    best = max((r for r in rows if r["passed"] == "pass"), key=lambda r: float(r["samples_per_second"]))
    assert best["num_envs"] == "48", "the fake's samples/s grows with num_envs"
    after = home.attempts("sw")[-1]
    assert after["stage_label"] == "after" and after["params"]["num_envs"] == 48


def test_probe_bisection_cost() -> None:
    for rungs in range(1, 20):
        ladder = list(range(rungs * 10, 0, -10))
        for threshold in range(0, rungs * 10 + 11, 5):
            probe, tried = probe_begin(ladder), 0
            num = probe.rungs[(probe.lo + probe.hi) // 2]
            while True:
                tried += 1
                step = probe_record(probe, num, num <= threshold)
                probe = step.probe
                if step.next_num_envs is None:
                    break
                num = step.next_num_envs
            passing = [n for n in ladder if n <= threshold]
            assert step.found == (max(passing) if passing else None)
            assert tried <= probe_cost(rungs)


def test_sweep_tsv_is_plain(tmp_path: Path) -> None:
    from mkd.memory import SweepRow
    from mkd.stages import sweep_best, sweep_tsv

    rows = (
        SweepRow(1, 8, {}, 10.0, None, True, None),
        SweepRow(2, 16, {}, None, None, False, "cuda_oom"),
    )
    assert sweep_tsv(rows).splitlines()[2] == "2\t16\t-\t-\t-\tfail\tcuda_oom"
    assert sweep_best(rows) == rows[0]
