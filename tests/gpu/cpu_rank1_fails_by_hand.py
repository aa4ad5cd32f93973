"""The run of cpu_rank1_fails.py again without mkd: does the root really hang once rank 1 died?

    python tests/gpu/cpu_rank1_fails_by_hand.py ATTEMPT_DIR OUT_DIR [WATCH_S] [AS_LIMIT_MIB]

Starts the exact argv, cwd and environment mkd used (ATTEMPT_DIR/command.json), lowers rank 1's
address-space limit the same way, then watches for WATCH_S (default 120) seconds after rank 1's
"Process Process-1:" line: the root's state, its children's, and whether the console grows.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from cpu_rank1_fails import children, cmdline, stat


def main(argv: list[str]) -> int:
    command = json.loads((Path(argv[1]) / "command.json").read_text())
    out = Path(argv[2]).resolve()
    watch = float(argv[3]) if len(argv) > 3 else 120.0
    limit = (int(argv[4]) if len(argv) > 4 else 1000) << 20
    out.mkdir(parents=True, exist_ok=True)
    argv_run = [a if not a.startswith(str(Path(argv[1]))) else str(out / "out") for a in command["argv"]]
    console = out / "console.log"
    with open(console, "wb") as sink:
        root = subprocess.Popen(argv_run, cwd=command["cwd"], env=command["env"], stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    started = time.time()
    rank1 = None
    while rank1 is None and time.time() - started < 60:
        rank1 = next((c for c in children(root.pid) if "spawn_main" in cmdline(c)), None)
        time.sleep(0.005)
    assert rank1 is not None
    resource.prlimit(rank1, resource.RLIMIT_AS, (limit, limit))
    seen = None
    while seen is None and time.time() - started < 300 and root.poll() is None:
        if "Process Process-1:" in console.read_text(errors="replace"):
            seen = time.time()
        time.sleep(0.05)
    samples = []
    while seen is not None and time.time() - seen < watch and root.poll() is None:
        time.sleep(10)
        samples.append({"t_after_signature": round(time.time() - seen, 1), "console_bytes": console.stat().st_size,
                        "group": {p: stat(p) for p in [root.pid, *children(root.pid)]}})  # fmt: skip
    result = {"signature_after_s": None if seen is None else round(seen - started, 1), "root_rc": root.poll(),
              "watched_s": watch, "samples": samples}  # fmt: skip
    os.killpg(root.pid, 9)
    root.wait()
    (out / "by_hand.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
