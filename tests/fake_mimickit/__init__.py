"""A fake MimicKit for tests: `FAKE_DIR` is its work tree (run it with that as the cwd).

`fake_command(...)` is a command line for it and `fake_env(...)` an environment with fast
timings; see `mimickit/run.py` for the FAKE_MK_FAIL modes and what is copied from real runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAKE_DIR = Path(__file__).resolve().parent
RUN_PY = "mimickit/run.py"
ARG_FILE = "args/deepmimic_humanoid_ppo_args.txt"
AGENT_YAML = FAKE_DIR / "data" / "agents" / "deepmimic_humanoid_ppo_agent.yaml"


def fake_command(*extra: str) -> list[str]:
    """`python mimickit/run.py EXTRA... --arg_file ... --visualize false --devices cpu`.

    EXTRA comes first, and MimicKit keeps a key's first occurrence, so EXTRA's keys (say
    `--devices cuda:0 cuda:1`) win over these defaults and over the arg file.
    """
    return [sys.executable, RUN_PY, *extra, "--arg_file", ARG_FILE, "--visualize", "false", "--devices", "cpu"]


def fake_env(fail: str = "", **extra: str) -> dict[str, str]:
    """The current environment, unbuffered (as mkd runs MimicKit), fast, with FAKE_MK_FAIL=fail."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FAKE_MK_")}
    env.update(PYTHONUNBUFFERED="1", FAKE_MK_ITER_SECONDS="0.01", FAKE_MK_STARTUP_SECONDS="0", FAKE_MK_FAIL=fail)
    env.update(extra)
    return env
