"""`mkd doctor`: the runbook's precheck, with what to fix for each problem.

torch and CUDA, newton and warp (against the versions MimicKit's Newton engine is known
to run with), the MimicKit checkout and the motion files its env configs name, free
memory per GPU, the NCCL variables, and a display for visualize stages. The Python
checks run in MimicKit's interpreter, which need not be mkd's.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mkd.config import RUNBOOK_NCCL, DaemonConfig, Layout
from mkd.gpus import GpuSampler
from mkd.mimickit.checkout_files import MOTION_KEY
from mkd.workload import display_available

# Seen in real runs (mimickit.md section 5.1): newton 1.8.0 and warp-lang 1.19.0 fail.
KNOWN_GOOD = {"newton": "1.0.0", "warp": "1.12.1"}
PROBE = r"""
import json, importlib
out = {}
for name in ("torch", "newton", "warp"):
    try:
        mod = importlib.import_module(name)
        out[name] = {"version": getattr(mod, "__version__", "?")}
    except Exception as error:
        out[name] = {"error": f"{type(error).__name__}: {error}"}
if "version" in out["torch"]:
    import torch
    out["torch"]["cuda"] = torch.cuda.is_available()
    out["torch"]["devices"] = torch.cuda.device_count()
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Check:
    level: str  # ok, warn, fail
    what: str
    fix: str = ""

    def render(self) -> str:
        tail = f"\n       fix: {self.fix}" if self.fix else ""
        return f"[{self.level:>4}] {self.what}{tail}"


def python_checks(python: str, cwd: Path) -> list[Check]:
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=cwd)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as error:
        return [Check("fail", f"cannot run {python}: {error}", "set mimickit_python in mkd.toml")]
    checks = []
    torch = found["torch"]
    if "error" in torch:
        checks.append(Check("fail", f"torch does not import: {torch['error']}", f"install torch for {python}"))
    else:
        level = "ok" if torch.get("cuda") else "warn"
        checks.append(
            Check(
                level,
                f"torch {torch['version']}, CUDA available: {torch.get('cuda')}, devices: {torch.get('devices')}",
                "" if level == "ok" else "GPU jobs need CUDA torch",
            )
        )
    for name, good in KNOWN_GOOD.items():
        info = found[name]
        if "error" in info:
            checks.append(Check("fail", f"{name} does not import: {info['error']}", f"pip install {name}=={good}"))
        elif info["version"] != good:
            checks.append(
                Check(
                    "warn",
                    f"{name} {info['version']}; MimicKit's Newton engine runs with {good}",
                    f"pip install {'warp-lang' if name == 'warp' else name}=={good}",
                )
            )
        else:
            checks.append(Check("ok", f"{name} {info['version']}"))
    return checks


def mimickit_checks(root: Path) -> list[Check]:
    if not (root / "mimickit" / "run.py").is_file():
        return [
            Check(
                "fail",
                f"no MimicKit checkout at {root} (mimickit/run.py missing)",
                "set mimickit_dir in mkd.toml or --mimickit-dir",
            )
        ]
    checks = [Check("ok", f"MimicKit checkout at {root}")]
    for env_yaml in sorted((root / "data" / "envs").glob("*.yaml")):
        match = MOTION_KEY.search(env_yaml.read_text(encoding="utf-8", errors="replace"))
        if match and not (root / match.group(1)).exists():
            checks.append(
                Check(
                    "warn",
                    f"{env_yaml.name}: motion file {match.group(1)} is missing",
                    "jobs using this env config fail with FileNotFoundError; add the motion file",
                )
            )
    return checks


def gpu_checks(config: DaemonConfig) -> list[Check]:
    with GpuSampler() as sampler:
        reading = sampler.sample()
    if not reading.available:
        return [Check("warn", f"no GPU metrics: {reading.error}", "GPU jobs cannot be scheduled without NVML")]
    checks = []
    for gpu in reading.gpus:
        free = (gpu.memory_free_bytes or 0) >> 20
        total = (gpu.memory_total_bytes or 0) >> 20
        busy = (gpu.memory_used_bytes or 0) > config.gpu.busy_memory
        checks.append(
            Check(
                "warn" if busy else "ok",
                f"GPU{gpu.index} {gpu.name}: {free} of {total} MiB free",
                "another process holds memory: dual-device NCCL init may fail" if busy else "",
            )
        )
    return checks


def env_checks(config: DaemonConfig) -> list[Check]:
    checks = []
    preset = config.nccl_presets.get("runbook", {})
    if preset != RUNBOOK_NCCL:
        checks.append(Check("warn", "the 'runbook' NCCL preset differs from the runbook's profile"))
    set_here = {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_NCCL_"))}
    checks.append(
        Check(
            "ok",
            f"NCCL variables in mkd's environment: {set_here or 'none'} (presets: {', '.join(config.nccl_presets)})",
        )
    )
    ok, why = display_available(dict(os.environ))
    checks.append(
        Check(
            "ok" if ok else "warn",
            f"display for visualize stages: {why}",
            "" if ok else "apt install xvfb (visualize stages are skipped otherwise)",
        )
    )
    return checks


def slurm_checks(config: DaemonConfig) -> list[Check]:
    from mkd.client.doctor_slurm import slurm_checks as checks  # its own module: see mkd.client.doctor_slurm

    return checks(config)


def run_doctor(config: DaemonConfig, layout: Layout, *, mimickit_dir: str | None = None) -> int:
    from mkd.client.doctor_display import display_checks  # it imports Check from here
    from mkd.client.doctor_procs import procs_checks  # here: it imports Check from this module

    root = Path(mimickit_dir) if mimickit_dir else layout.mimickit_dir
    checks = [
        *mimickit_checks(root),
        *python_checks(config.mimickit_python, root if root.is_dir() else Path.cwd()),
        *gpu_checks(config),
        *env_checks(config),
        *procs_checks(),
        *slurm_checks(config),
        *display_checks(config),
    ]
    for check in checks:
        print(check.render())
    failed = sum(c.level == "fail" for c in checks)
    print(f"{failed} problem(s) to fix" if failed else "all checks passed (warnings aside)")
    return 1 if failed else 0
