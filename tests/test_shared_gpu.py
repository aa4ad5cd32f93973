"""A CUDA OOM retry on a GPU that another user's process holds (issue 16 point 1), through a real
daemon on the fake NVML: the retry starts within the backoff + 1 s, not after the 60 s bound.

Seen on a shared H200: a stranger held 137 GB, and every retry after a real CUDA OOM waited the
whole `gpu_memory_free_wait` for memory that was never mkd's. The fake NVML plays one H200 whose
process list `DriverProcessTable` keeps as the driver would: the stranger always, each attempt's
root while it lives. GPU samples are 5 s apart (mkd's default), so the daemon's last reading
still lists the dead root when the backoff ends: mkd must not wait for it either.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.bench.bench_shared_gpu import FOREIGN_MIB, DriverProcessTable, foreign_holder, shared_gpu_env
from tests.harness import Home, mimickit_job

BACKOFF_S = 2.0


def exit_at(attempt: dict[str, object]) -> float:
    return float(json.loads((Path(str(attempt["dir"])) / "exit.json").read_text())["root_exit_at"])


def started_at(attempt: dict[str, object]) -> float:
    return float(json.loads((Path(str(attempt["dir"])) / "child.json").read_text())["started_at"])


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~80 s: each attempt lives 6 s so that NVML's 5 s samples see it
def test_cuda_oom_retry_on_a_gpu_a_stranger_holds_starts_within_backoff_plus_1s(home: Home) -> None:
    config = home.config.read_text().replace('sample_every = "200ms"', 'sample_every = "5s"\nbusy_memory = "200GiB"')
    home.config.write_text(config, encoding="utf-8")
    state = home.root / "nvml.state"
    holder = foreign_holder()
    try:
        with DriverProcessTable(state, home.root / "runs", holder.pid, FOREIGN_MIB) as table:
            home.start(env=shared_gpu_env(state))
            fail = f'FAKE_MK_FAIL = "graph_oom_at=3"\nFAKE_MK_FAIL_ONCE_FILE = "{home.root / "oom-once"}"'
            job = mimickit_job(
                devices='["cuda:0"]',
                num_envs=1024,
                env=f'{fail}\nFAKE_MK_ITER_SECONDS = "2"',  # 6 s alive: NVML's 5 s samples see the root
                backoff=f"{BACKOFF_S:g}s",
                retry=f'backoff_max = "{BACKOFF_S:g}s"\nladder = [1024, 512]',
                stages='[[stages]]\nkind = "train"\nmax_samples = 163840\n',
            )
            home.drop("shared.toml", job)
            home.wait_state("shared", "succeeded", timeout=90)
            first, second = home.attempts("shared")
            timeline = home.timeline("shared")
            home.stop()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert first["failure_class"] == "cuda_oom" and second["params"]["num_envs"] == 512
    root = json.loads((Path(first["dir"]) / "child.json").read_text())["pid"]
    assert root in table.listed, "the dead attempt's root was on the GPU's process list"
    assert first["params"]["gpu_indices"] == second["params"]["gpu_indices"] == [0], "the retry is on the same GPU"
    delay = started_at(second) - exit_at(first)
    backoff = float(re.findall(r"next attempt in ([0-9.]+) s", timeline)[0])
    assert delay < BACKOFF_S + 1.0, f"retry started {delay:.2f} s after the OOM (backoff {backoff} s)\n{timeline}"
    assert "waiting for" not in timeline, timeline
