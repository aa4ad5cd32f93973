"""Every CLI form written in README.md and in every `--help`, run as a subprocess against a real daemon.

The forms are parsed out of the texts themselves (backticked `mkd ...` in README.md, the
`examples:` lines of each command's help), so a newly documented form is covered without
editing this file. Placeholders become real things: FILE a fresh job file, JOB a job in the
state its verb needs, LOGFILE a real MimicKit console log. A second test makes sure every
option a help text lists appears in at least one documented form.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mkd.cli import build_parser
from mkd.client.completion import commands
from tests.harness import FAKE_MIMICKIT, REPO, Home, mimickit_job, new_token, wait_for

README = REPO / "README.md"
README_FORM = re.compile(r"`(?:\.venv/bin/)?(mkd (?:--version|[a-z][a-z-]*)[^`]*)`")
HELP_FORM = re.compile(r"^\s+(mkd \S.*)$")
OPTION = re.compile(r"^\s+(?:-\w(?: \S+)?, )?(--[a-z][a-z-]*)")
# the README's demo names its job; any documented job name stands for JOB
JOB_NAMES = {"JOB", "demo-no-gpu"}
LOGFILE = REPO / "tests" / "fixtures" / "mimickit" / "cpu_fail_bad_arg_file.stdout.txt"
QUICK_STAGES = '[[stages]]\nname = "train"\nkind = "train"\nmax_samples = 1024\n'
QUICK = mimickit_job(stages=QUICK_STAGES)
WAITS_FOR_GPU = mimickit_job(devices='["cuda:0"]')


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return commands(build_parser())


def help_texts() -> dict[str, str]:
    os.environ.setdefault("COLUMNS", "200")
    texts = {"": build_parser().format_help()}
    texts.update({name: sub.format_help() for name, sub in subcommands().items()})
    return texts


def readme_forms() -> list[str]:
    return [m.group(1).strip() for m in README_FORM.finditer(README.read_text(encoding="utf-8"))]


def help_forms() -> list[str]:
    found = []
    for text in help_texts().values():
        if "examples:" not in text:
            continue
        found += [
            m.group(1).strip() for line in text.split("examples:", 1)[1].splitlines() if (m := HELP_FORM.match(line))
        ]
    return found


def all_forms() -> list[str]:
    seen: dict[str, None] = {}
    for form in readme_forms() + help_forms() + ["mkd --help"] + [f"mkd {c} --help" for c in subcommands()]:
        seen.setdefault(form, None)
    return list(seen)


def verb_of(argv: list[str]) -> str:
    return next((a for a in argv[1:] if not a.startswith("-")), argv[1] if len(argv) > 1 else "")


def test_the_texts_document_forms() -> None:
    """The parsers this file relies on still find what they should (a silent zero would pass everything)."""
    readme = readme_forms()
    assert "mkd install-service --dry-run" in readme and "mkd retry JOB --set num_envs=8" in readme
    assert len(help_forms()) > 30
    assert {verb_of(shlex.split(f)) for f in all_forms()} >= set(subcommands())


def test_every_option_in_every_help_has_a_documented_form() -> None:
    forms = [shlex.split(f) for f in all_forms()]
    missing = []
    for name, text in help_texts().items():
        if not name:
            continue
        options = {m.group(1) for line in text.splitlines() if (m := OPTION.match(line))} - {"--help"}
        used = {a.split("=")[0] for f in forms if verb_of(f) == name for a in f}
        short = {a for f in forms if verb_of(f) == name for a in f if re.fullmatch(r"-\w", a)}
        for option in sorted(options):
            flags = [o for a in subcommands()[name]._actions if option in a.option_strings for o in a.option_strings]
            if not set(flags) & (used | short):
                missing.append(f"mkd {name} {option}")
    assert not missing, f"options no README line nor help example shows: {missing}"


class Forms:
    """Turns a documented form into a command line, with a job in the state its verb needs."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.n = 0
        self.lock = threading.Lock()
        self.done = "done"

    def fresh(self, prefix: str) -> str:
        with self.lock:
            self.n += 1
            return f"{prefix}{self.n:02d}"

    def job_for(self, verb: str) -> str:
        home = self.home
        if verb in ("cancel", "pause", "priority", "resume"):
            name = self.fresh("waits")
            home.drop(f"{name}.toml", WAITS_FOR_GPU)
            wait_for(lambda: "GPU" in str((home.job(name) or {}).get("reason")), 20, f"{name} to wait for a GPU")
            if verb == "resume":
                assert home.mkd("pause", name).returncode == 0
                home.wait_state(name, "held")
            return name
        if verb == "retry":
            name = self.fresh("flaky")
            once = home.root / f"{name}.once"
            env = f'FAKE_MK_FAIL = "missing_motion"\nFAKE_MK_FAIL_ONCE_FILE = "{once}"'
            home.drop(f"{name}.toml", mimickit_job(env=env, stages=QUICK_STAGES))
            home.wait_state(name, "failed", timeout=30)
            return name
        return self.done

    def argv(self, form: str) -> list[str]:
        words = shlex.split(form)
        verb = verb_of(words)
        out = [sys.executable, "-m", "mkd", "--config", str(self.home.config)]
        for word in words[1:]:
            if word in JOB_NAMES:
                word = self.job_for(verb)
            elif word == "FILE":
                path = self.home.root / "files" / f"{self.fresh('form')}.toml"
                path.parent.mkdir(exist_ok=True)
                path.write_text(QUICK)
                word = str(path)
            elif word == "FILE.png":
                word = str(self.home.root / f"{self.fresh('plot')}.png")
            elif word == "LOGFILE":
                word = str(LOGFILE)
            elif word == "NAME":
                word = self.fresh("named")
            elif word == "STAGE":
                word = "train"
            elif word == "DIR":
                word = str(self.home.root / "root")
            elif word == "MIMICKIT_DIR":
                word = str(FAKE_MIMICKIT)
            elif word == "PYTHON":
                word = sys.executable
            out.append(word)
        if verb == "install-service":  # never the host: into a folder, or only said (--prefix / --dry-run)
            if "--prefix" not in out:
                out += ["--prefix", str(self.home.root / "root")]
            if out[out.index("--prefix") + 1] == "/" and "--dry-run" not in out:
                out.append("--dry-run")
        return out


def _run(home: Home, argv: list[str], verb: str, words: list[str]) -> tuple[int, str]:
    if verb == "status" and "--watch" in words:
        proc = subprocess.Popen(argv, cwd=home.root, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        text = out.decode()
        return (proc.returncode if text.count("mkd status, every few seconds") >= 2 else 99), text
    done = subprocess.run(argv, cwd=home.root, env=home.env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(900)
def test_every_documented_form_runs_against_a_real_daemon(home: Home, tmp_path_factory: pytest.TempPathFactory) -> None:
    forms = all_forms()
    home.start()
    home.drop("done.toml", QUICK)
    home.wait_state("done", "succeeded", timeout=60)
    maker = Forms(home)
    failures: list[str] = []
    last = [f for f in forms if verb_of(shlex.split(f)) == "shutdown" and "--help" not in f]
    daemons = [f for f in forms if verb_of(shlex.split(f)) == "run" and "--help" not in f]
    others = [f for f in forms if f not in last and f not in daemons]

    def one(form: str) -> str | None:
        words = shlex.split(form)
        verb = verb_of(words)
        started = time.monotonic()
        code, output = _run(home, maker.argv(form), verb, words)
        print(f"{time.monotonic() - started:5.1f} s  exit {code}  {form}")
        allowed = (0, 1) if verb == "doctor" else (0,)  # doctor's verdict depends on the host
        if code not in allowed or "Traceback" in output:
            return f"{form!r} -> exit {code}:\n{output[-1500:]}"
        return None

    # three at a time: each form gets jobs of its own, and none of them touches another's
    with ThreadPoolExecutor(max_workers=3) as pool:
        failures += [f for f in pool.map(one, others) if f]
    for form in daemons:
        failures += _run_daemon_form(form, tmp_path_factory.mktemp("run"))
    for form in last:
        problem = one(form)
        if problem:
            failures.append(problem)
        assert home.proc is not None
        assert home.proc.wait(30) == 0, f"{form} did not stop the daemon"
        home.stop()  # forgets its metrics.port, so start() waits for the next daemon's
        home.start()
    ran = len(others) + len(daemons) + len(last)
    assert ran == len(forms)
    assert not failures, "\n\n".join(failures)
    home.stop()


def _run_daemon_form(form: str, root: Path) -> list[str]:
    other = Home(root, new_token())
    argv = [sys.executable, "-m", "mkd", "--config", str(other.config), *shlex.split(form)[1:]]
    proc = subprocess.Popen(argv, cwd=other.root, env=other.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (other.root / "var" / "metrics.port").exists() or proc.poll() is not None, 30, form)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return [] if proc.returncode == 0 else [f"{form!r} -> exit {proc.returncode}:\n{out.decode()[-1500:]}"]
