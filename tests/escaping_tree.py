"""A run whose processes try to outlive it (tests/test_escapees.py runs it as a job's program).

`python escaping_tree.py FOLDER [options]`: the root forks a child, and the child forks
escapees that leave the root's process group each its own way:

- setsid: a new session (and group) of its own;
- setpgid: a new process group in the same session;
- double fork: a grandchild whose parent exits at once, so it is reparented (to the
  shim, a subreaper; to PID 1 without one), in a new session too;
- forker: a new session, then forks a new sleeping child every 20 ms until killed;
- renamed: a new session and a new comm name ("kworker/u8:2"), so no name matches it;
- clean env: a new session, then exec's sleep with an empty environment (no MKD_RUN_ID,
  no test token).

Every process writes FOLDER/PID (its start time in clock ticks) once it is in place, so a
test knows exactly which processes to look for. Options: --stubborn (every process
ignores SIGTERM: only SIGKILL ends them), --release FILE (the root exits 0 once FILE
exists; without it the root waits to be killed), --orphan (the child exits once the
escapees are started, so the escapees' parents are gone).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import time

PR_SET_NAME = 15
ESCAPEES = ("setsid", "setpgid", "double_fork", "forker", "renamed", "clean_env")
EXPECTED = 2 + len(ESCAPEES)  # root + child + one per escapee (the forker's children come on top)
MAX_FORKS = 500  # the forker's bound, so a broken kill cannot fill the machine


def start_ticks() -> int:
    with open("/proc/self/stat", "rb") as handle:
        raw = handle.read()
    return int(raw[raw.rfind(b")") + 2 :].split()[19])


def record(folder: str) -> None:
    tmp = os.path.join(folder, f".{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(str(start_ticks()))
    os.rename(tmp, os.path.join(folder, str(os.getpid())))


def linger(stubborn: bool) -> None:
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


def in_child(body: object) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()  # type: ignore[operator]
        finally:
            os._exit(0)
    return pid


def escapee(kind: str, folder: str, stubborn: bool) -> None:
    if kind == "setsid":
        os.setsid()
    elif kind == "setpgid":
        os.setpgid(0, 0)
    elif kind == "double_fork":
        if os.fork() != 0:
            os._exit(0)  # the middle one: its child is orphaned at once
        os.setsid()
    elif kind == "forker":
        os.setsid()
        if stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record(folder)
        for _ in range(MAX_FORKS):
            if os.fork() == 0:
                record(folder)
                linger(stubborn)
            time.sleep(0.02)
        linger(stubborn)
    elif kind == "renamed":
        os.setsid()
        ctypes.CDLL(None).prctl(PR_SET_NAME, b"kworker/u8:2", 0, 0, 0)
    elif kind == "clean_env":
        os.setsid()
        record(folder)
        os.execve("/bin/sleep", ["sleep", "600"], {})
    record(folder)
    linger(stubborn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--release")
    parser.add_argument("--orphan", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    record(args.folder)

    def child() -> None:
        record(args.folder)
        for kind in ESCAPEES:
            in_child(lambda kind=kind: escapee(kind, args.folder, args.stubborn))
        if args.orphan:
            return
        linger(args.stubborn)

    in_child(child)
    if args.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("escaping tree started", flush=True)
    while not (args.release and os.path.exists(args.release)):
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
    print("root released, exiting", flush=True)


if __name__ == "__main__":
    main()
