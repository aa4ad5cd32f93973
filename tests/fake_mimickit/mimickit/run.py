"""Fake MimicKit `run.py` for mkd's tests: the real one's command line, console, files, exit codes
and process behaviour, in milliseconds, standard library only. Run from `tests/fake_mimickit/`
as `python mimickit/run.py --key values ...`; relative config paths resolve from the cwd.

Copied from real observations (the team's MimicKit notes, mimickit.md):
* argument parsing (§1): every key accepted, first occurrence wins, command line before
  --arg_file, booleans true only for true/True/1/T/t, bare boolean -> IndexError,
  `--num_envs four` -> ValueError; missing arg/config/motion/model files -> FileNotFoundError.
* processes (§2): one spawn child per extra device in the root's process group (plus
  multiprocessing's resource tracker); every rank prints `Using master port: N` (>1 device)
  and `Setting seed: N` (seed + 41 x rank); rank 0 hosts the store on master_port (a real
  listening socket, so two runs on one port collide); rank 0's tracebacks get `[rank0]: `.
* console and files (§3): start-up lines with `\\r` progress, one table per iteration, log.txt
  and model.pt at output iterations, config copies, samples = num_envs x steps_per_iter x
  processes, stop at max_samples; test mode's `Loaded model parameters from`, `Mean Return`,
  `Mean Episode Length`, `Episodes`; test mode without --test_episodes never ends.
* no signal handlers (§6.1): SIGTERM kills at once (rc -15 / 143); SIGINT -> KeyboardInterrupt.
  A root whose child died before the first collective waits forever (§6.3 class A); a root
  that raised in a multi-process run hangs joining its children (§6.1, SIGINT to the root);
  children exit when the root dies (gloo, §6.1) unless `linger` (NCCL on GPU, §6.1 / §6.3).
* failure texts: oom_above (§6.3 row 1), cublas_oom (row 2), graph_oom_at (row 3),
  port_in_use (§6.2), env_mismatch (§5.1), missing_motion (§6), no_display (§6), peer_dies_at
  (rank 1 killed mid-run: the root's gloo error, tests/fixtures/mimickit/cpu_2proc_fail_rank1_sigkill);
  MimicKit's config checks (fake_configs.py: Unsupported env/engine/agent/net/optimizer type, an
  empty config or arg file), from the configs it is given.
Synthesized (never seen for real): nccl_init (torch's DistBackendError format), nccl_abort_at
(the runbook's class D texts), glsl (the runbook quotes only "GLSL 1.50 is not supported"),
crash_at's message, and all numbers in the tables.

FAKE_MK_FAIL (comma-separated): oom_above=N, cublas_oom, graph_oom_at=I, nccl_init,
nccl_abort_at=I, port_in_use, glsl, no_display, crash_at=I, hang, stall_at=I, nan_at=I,
linger, peer_dies_at=I, ignore_sigterm, env_mismatch, missing_motion. FAKE_MK_FAIL_ONCE_FILE=<path>: fail
only if <path> does not exist yet (and create it). Speed: FAKE_MK_ITER_SECONDS (0.05),
FAKE_MK_STARTUP_SECONDS (0.1).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
from typing import Any

from fake_args import ArgTable, load_args
from fake_faults import Faults, FaultSpecError, faults_from_env
from fake_rank import Rank, run_rank


def worker(rank: int, devices: list[str], port: int, args: ArgTable, faults: Faults) -> None:
    run_rank(Rank(rank, devices, port, args, faults))


def main(argv: list[str]) -> None:
    try:
        faults = faults_from_env(os.environ)
    except FaultSpecError as exc:
        print(f"fake MimicKit: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    args = load_args(argv[1:])
    devices = args.parse_strs("devices", ["cuda:0"])
    port = args.parse_int("master_port", random.randint(6000, 6999))
    children: list[Any] = []
    if len(devices) > 1:
        context = multiprocessing.get_context("spawn")
        for rank in range(1, len(devices)):
            # torch.multiprocessing names its children "Process-N" (a spawn context would say "SpawnProcess-N")
            child = context.Process(target=worker, args=(rank, devices, port, args, faults), name=f"Process-{rank}")
            child.start()
            children.append(child)
    if faults.has("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after the spawn: the children keep the default
    run_rank(Rank(0, devices, port, args, faults))
    for child in children:
        child.join()


if __name__ == "__main__":
    main(sys.argv)
