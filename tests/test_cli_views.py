"""The read verbs against a real daemon: logs' flags, --json everywhere, status --watch and wait on
a terminal (a real pty), plot, completion, --version, status of a rejected file."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import REPO, Home, mimickit_job, wait_for

FIXTURES = REPO / "tests" / "fixtures" / "mimickit"
TRAIN = '[[stages]]\nname = "train"\nkind = "train"\nmax_samples = {max_samples}\n'


def crashes_once(home: Home) -> str:
    """Attempt 1 crashes at iteration 2 (retried by itself), attempt 2 runs to the end."""
    once = home.root / "crashed-once"
    env = f'FAKE_MK_FAIL = "crash_at=2"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
    return mimickit_job(env=env, stages=TRAIN.format(max_samples=2048))


def read_pty(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def on_pty(home: Home, *args: str, seconds: float, env: dict[str, str] | None = None) -> tuple[bytes, int]:
    """Run `mkd ARGS` with a terminal as its stdout for `seconds`, then Ctrl-C (SIGINT)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mkd", "--config", str(home.config), *args],
        cwd=home.root,
        env={**home.env, "COLUMNS": "160", **(env or {})},
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    try:
        out = read_pty(master, seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
        out += read_pty(master, 0.3)
    finally:
        os.close(master)
    return out, code


@pytest.mark.timeout(300)
def test_logs_flags_plot_and_json_of_a_job_with_two_attempts(home: Home, tmp_path: Path) -> None:
    home.start()
    home.drop("twice.toml", crashes_once(home))
    home.wait_state("twice", "succeeded", timeout=60)
    attempts = home.attempts("twice")
    assert len(attempts) == 2 and attempts[0]["failure_class"], home.timeline("twice")
    first = (Path(attempts[0]["dir"]) / "console.log").read_text()
    second = (Path(attempts[1]["dir"]) / "console.log").read_text()
    # default: the latest attempt only
    assert home.mkd("logs", "twice").stdout == second
    every = home.mkd("logs", "--all-attempts", "twice").stdout
    assert every.count("--- attempt ") == 2 and first in every and second in every
    assert home.mkd("logs", "--attempt", "1", "twice").stdout == first
    missing = home.mkd("logs", "--attempt", "9", "twice")
    assert missing.returncode == 3 and "attempts: 1, 2" in missing.stderr
    tail = home.mkd("logs", "-n", "3", "twice").stdout
    assert tail.splitlines() == second.splitlines()[-3:]
    assert home.mkd("logs", "--since", "1h", "twice").stdout.count("--- attempt ") == 2
    meta = json.loads(home.mkd("logs", "--json", "--all-attempts", "twice").stdout)
    assert [a["attempt"] for a in meta["attempts"]] == [1, 2]
    size = (Path(attempts[1]["dir"]) / "console.log").stat().st_size
    assert meta["attempts"][1]["bytes"] == size and meta["attempts"][0]["failure_class"]
    bad = home.mkd("logs", "--since", "soon", "twice")
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr
    # -f on a finished job: the tail (10 lines), then it ends
    follow = home.mkd("logs", "-f", "twice").stdout
    assert follow.splitlines() == second.splitlines()[-10:]
    # --json of the other read verbs
    status = json.loads(home.mkd("report", "twice", "--json").stdout)
    assert status["state"] == "succeeded"
    table = json.loads(home.mkd("status", "--json").stdout)
    assert [row["job"] for row in table] == ["twice"]
    gpus = json.loads(home.mkd("gpus", "--json").stdout)
    assert gpus["available"] is False and gpus["error"]
    console = str(Path(attempts[0]["dir"]) / "console.log")
    before = json.loads(home.mkd("explain", "--json", console).stdout)
    after = json.loads(home.mkd("explain", console, "--json").stdout)
    assert before == after and before["failure"]
    # plot: both attempts stitched, the failure marked
    png = tmp_path / "twice.png"
    done = home.mkd("plot", "twice", "-o", str(png))
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    home.stop()


def test_logs_follow_starts_at_the_tail_and_follows_the_run(home: Home) -> None:
    home.start()
    home.drop("long.toml", mimickit_job(env='FAKE_MK_ITER_SECONDS = "0.05"', stages=TRAIN.format(max_samples=10**8)))
    home.wait_state("long", "running")
    console = wait_for(lambda: home.attempts("long") and Path(home.attempts("long")[0]["dir"]) / "console.log", 10)
    wait_for(lambda: console.exists() and console.read_text().count("\n") > 60, 60, "60 lines of console")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mkd", "--config", str(home.config), "logs", "-f", "long"],
        cwd=home.root,
        env=home.env,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    time.sleep(1.5)
    early = proc.stdout.read() or b""
    head = console.read_text().splitlines()[:5]
    assert early, "nothing printed"
    assert early.decode().splitlines()[0] not in head, "-f dumped the log from its start"
    time.sleep(2.0)
    later = proc.stdout.read() or b""
    assert later, "-f printed nothing new while the run went on"
    home.mkd("cancel", "long", check=True)
    assert proc.wait(30) == 0
    proc.stdout.close()
    home.stop()


def test_watch_and_wait_on_a_terminal(home: Home) -> None:
    home.start()
    home.drop("done.toml", mimickit_job(stages=TRAIN.format(max_samples=1024)))
    home.wait_state("done", "succeeded", timeout=60)
    out, code = on_pty(home, "status", "--watch", "--interval", "0.5", seconds=2.5)
    assert code == 0
    assert out.count(b"\x1b[H\x1b[2J") >= 3, out[:400]  # redrawn in place, frame after frame
    assert b"\x1b[32;1msucceeded" in out  # coloured on a terminal
    plain, _ = on_pty(home, "status", "--watch", seconds=1.5, env={"NO_COLOR": "1"})
    assert b"succeeded" in plain and b"\x1b[32" not in plain
    piped = home.mkd("status").stdout
    assert "\x1b[" not in piped
    home.drop("slow.toml", mimickit_job(env='FAKE_MK_ITER_SECONDS = "0.1"', stages=TRAIN.format(max_samples=40960)))
    home.wait_state("slow", "running")
    bars, code = on_pty(home, "wait", "slow", "done", seconds=60)
    assert code == 0, bars[-500:]
    assert b"[####" in bars and b"\x1b[2F" in bars  # bars, redrawn in place (cursor up two lines)
    assert home.state("slow") == "succeeded"
    home.stop()


def test_status_of_a_rejected_file_points_at_its_error(home: Home) -> None:
    home.start()
    home.drop("broken.toml", "[workload]\nkind = 'mimickit'\nbogus = 1\n")
    wait_for((home.root / "jobs" / "rejected" / "broken.toml.error").exists, 10, "the rejection")
    done = home.mkd("status", "broken")
    assert done.returncode == 3
    assert "the file was rejected" in done.stderr and "broken.toml.error" in done.stderr
    assert "unknown key 'bogus'" in done.stdout  # the .error's text, after where it is
    home.stop()


def test_version_completion_and_plot_without_matplotlib(home: Home) -> None:
    version = home.mkd("--version")
    assert version.returncode == 0 and version.stdout.startswith("mkd ")
    script = home.mkd("completion", "bash").stdout
    home.start()
    home.drop("gpu.toml", mimickit_job(devices='["cuda:0"]'))
    home.wait_state("gpu", "queued")
    bin_dir = Path(sys.executable).parent
    probe = (
        f"{script}\n"
        'COMP_WORDS=(mkd re); COMP_CWORD=1; _mkd; echo "verbs: ${COMPREPLY[*]}"\n'
        'COMP_WORDS=(mkd logs --a); COMP_CWORD=2; _mkd; echo "flags: ${COMPREPLY[*]}"\n'
        'COMP_WORDS=(mkd cancel g); COMP_CWORD=2; _mkd; echo "jobs: ${COMPREPLY[*]}"\n'
    )
    env = {**home.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MKD_CONFIG": str(home.config)}
    done = subprocess.run(["bash", "-c", probe], cwd=home.root, env=env, capture_output=True, text=True, timeout=60)
    assert "verbs: report resume retry" in done.stdout, done.stdout + done.stderr
    assert "flags: --all-attempts --attempt" in done.stdout
    assert "jobs: gpu" in done.stdout
    zsh = home.mkd("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o default -F _mkd mkd" in zsh
    blocked = (
        "import sys; sys.modules['matplotlib'] = None; from mkd import cli; "
        f"sys.exit(cli.main(['--config', {str(home.config)!r}, 'plot', 'gpu']))"
    )
    missing = subprocess.run([sys.executable, "-c", blocked], cwd=home.root, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 6 and "pip install 'mkd[plot]'" in missing.stderr
    home.mkd("cancel", "gpu", check=True)
    home.stop()
