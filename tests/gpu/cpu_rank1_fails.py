"""A real 2-process CPU MimicKit run under mkd where rank 1 fails after it started (issue 19, CPU part).

    python tests/gpu/cpu_rank1_fails.py MIMICKIT_DIR MIMICKIT_PYTHON OUT_DIR [AS_LIMIT_MIB]

MIMICKIT_DIR is a MimicKit work tree prepared with the team's recipe (synthesized motion and the
quick configs); nothing here downloads or builds it. A daemon (this checkout's mkd) runs one job,
`devices = ["cpu", "cpu"]`. As soon as the root has spawned rank 1, its address-space limit is
lowered to AS_LIMIT_MIB (default 1000: mimickit.md section 6 saw a 1 GB `ulimit -v` fail at Warp
init, 1.5 GB run): a memory limit that only one rank hits, as a cgroup or a full host would do.
Rank 1 then dies during start-up and the root waits for it (section 6.2). What mkd did is left in
OUT_DIR/home (runs/, the store) and summarized in OUT_DIR/summary.json.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

JOB = """[job]
name = "cpu2-rank1-fails"

[workload]
kind = "mimickit"
engine_config = "data/engines/newton_engine.yaml"
env_config = "data/envs/deepmimic_humanoid_synth_short_env.yaml"
agent_config = "data/agents/deepmimic_humanoid_ppo_agent_quick.yaml"
devices = ["cpu", "cpu"]
num_envs = 8
rand_seed = 1

[watch]
startup_timeout = "240s"
stop_grace = "10s"

[retry]
max_attempts = 1

[[stages]]
name = "train"
kind = "train"
max_samples = 4096
"""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stat(pid: int) -> str:
    """State and command of a process, as ps would show them (Z: a zombie nobody reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
    return f"{state} {cmdline(pid)[:80]}"


def main(argv: list[str]) -> int:
    mk, python, out = Path(argv[1]).resolve(), argv[2], Path(argv[3]).resolve()
    limit = int(argv[4]) if len(argv) > 4 else 1000
    home = out / "home"
    (home / "jobs" / "incoming").mkdir(parents=True, exist_ok=True)
    config = home / "mkd.toml"
    config.write_text(f'mimickit_dir = "{mk}"\nmimickit_python = "{python}"\n\n[metrics]\nport = 0\n')
    log = open(out / "daemon.log", "wb")  # noqa: SIM115 - the daemon's log for its whole life
    daemon = subprocess.Popen([sys.executable, "-m", "mkd", "--config", str(config), "run"], cwd=home, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    summary: dict[str, object] = {"as_limit_mib": limit}
    try:
        while not (home / "var" / "metrics.port").exists():
            time.sleep(0.1)
        (home / "jobs" / "incoming" / ".j.tmp").write_text(JOB)
        os.rename(home / "jobs" / "incoming" / ".j.tmp", home / "jobs" / "incoming" / "cpu2-rank1-fails.toml")
        started = time.time()
        child_json = None
        while child_json is None and time.time() - started < 60:
            child_json = next(iter(home.glob("runs/*/attempts/*/child.json")), None)
            time.sleep(0.01)
        assert child_json is not None, "no attempt started"
        attempt = child_json.parent
        root = int(json.loads(child_json.read_text())["pid"])
        rank1 = None
        while rank1 is None and time.time() - started < 60:
            rank1 = next((c for c in children(root) if "spawn_main" in cmdline(c)), None)
            time.sleep(0.005)
        assert rank1 is not None, "rank 1 never appeared"
        limit_bytes = limit << 20
        resource.prlimit(rank1, resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        summary.update(root=root, rank1=rank1, rank1_limited_at=time.time(), root_started_at=started)
        console = attempt / "console.log"
        while not (attempt / "exit.json").exists() and time.time() - started < 600:
            text = console.read_text(errors="replace") if console.exists() else ""
            if "signature_at" not in summary and "Process Process-1:" in text:
                summary["signature_at"] = time.time()  # polled every 50 ms
                summary["group_at_signature"] = {p: stat(p) for p in [root, *children(root)]}
            time.sleep(0.05)
        summary["exit"] = json.loads((attempt / "exit.json").read_text()) if (attempt / "exit.json").exists() else None
        time.sleep(3)
        status = subprocess.run([sys.executable, "-m", "mkd", "--config", str(config), "status", "cpu2-rank1-fails"],
                                capture_output=True, text=True, cwd=home)  # fmt: skip
        summary["status"] = status.stdout
        summary["attempt_dir"] = str(attempt)
    finally:
        daemon.terminate()
        daemon.wait(30)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
