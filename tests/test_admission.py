"""`mkd validate`, `mkd submit` and the intake give one verdict on each file (mkd.admission):
validate and submit used to say ok to files the daemon then rejected.

The CLI runs in-process here (mkd.cli.main, the same code as the `mkd` command) against a
real Intake and Store over real folders, so thousands of checks fit in seconds; the tests at
the end run `mkd submit` against a real daemon.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mkd.cli import load_config, main
from mkd.client.submit import submit_file, validate_files
from mkd.intake import Intake
from mkd.store import Store
from tests.harness import FAKE_MIMICKIT, Home
from tests.test_fuzz_jobfiles import FUZZ, SCHEMA_LEVEL, TOML_LEVEL

JOB = '[workload]\nkind = "command"\nargv = ["true"]\n'
AGREEMENT_FILES = 500
ROOT = os.geteuid() == 0


def cli(*args: str) -> tuple[int, str]:
    """`mkd ARGS` in this process: (exit status, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


class Bench:
    """A daemon home without the daemon: its config file, a real Intake and Store, and the CLI."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.files = root / "src"
        self.files.mkdir()
        self.allowed = root / "allowed"
        self.allowed.mkdir()
        self.config_file = root / "mkd.toml"
        self.config_file.write_text(
            f'mimickit_dir = "{FAKE_MIMICKIT}"\n{extra}\n[intake]\nsettle = "0s"\n'
            f'allowed_roots = ["{self.allowed}", "{FAKE_MIMICKIT}"]\n'
        )
        self.config, self.layout = load_config(str(self.config_file))
        self.layout.create()
        self.store = Store.open(self.layout.db)
        self.intake = Intake(self.config, self.layout, self.store)
        self.now = 0.0

    def validate(self, path: Path) -> tuple[bool, str]:
        code, out = cli("--config", str(self.config_file), "validate", str(path))
        assert code in (0, 1), out
        return code == 0, out

    def submit(self, path: Path) -> tuple[bool, str]:
        """`mkd submit --timeout 0`: its own check, then the drop (no daemon to wait for)."""
        code, out = cli("--config", str(self.config_file), "submit", str(path), "--timeout", "0")
        assert code in (0, 1), out
        return code == 0, out

    def quick(self, path: Path) -> tuple[tuple[bool, str], tuple[bool, str]]:
        """validate and `submit --timeout 0` through the functions the two commands call, without
        building the argument parser at each call (most of an in-process `mkd validate`)."""
        verdicts = []
        for run in (
            lambda: validate_files([str(path)], self.config, self.layout),
            lambda: submit_file(str(path), None, 0, self.config, self.layout),
        ):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = run()
            assert code in (0, 1), out.getvalue()
            verdicts.append((code == 0, out.getvalue()))
        return verdicts[0], verdicts[1]

    def take(self) -> tuple[list[str], list[str]]:
        """Scan until incoming is empty: (accepted job ids, rejected file names)."""
        accepted, rejected = [], []
        for _ in range(3):
            result = self.intake.scan(self.now)
            self.now += 1.0
            accepted += result.accepted
            rejected += result.rejected
        return accepted, rejected

    def error(self, name: str) -> str:
        return (self.layout.rejected / f"{name}.error").read_text()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    found = Bench(tmp_path)
    yield found
    found.store.close()


@dataclass
class Case:
    name: str
    text: str
    problem: str
    setup: str = ""  # what to do first: "clash" queues a live job of the same name


def _cases(bench: Bench) -> list[Case]:
    mk = '[workload]\nkind = "mimickit"\n'
    cases = [
        Case("cwd-outside.toml", JOB + 'cwd = "/etc"\n', "is outside the allowed roots"),
        Case("mk-outside.toml", mk + 'mimickit_dir = "/usr"\n', "'/usr' is outside the allowed roots"),
        Case("new\nline.toml", JOB, "control character (U+000A"),
        Case("rtl\u202elmot.toml", JOB, "U+202E (right-to-left override)"),
        Case("x" * 130 + ".toml", JOB, "over the 128-byte limit"),
        Case("not a job name.toml", JOB, "is not a valid job name"),
        Case("clash.toml", '[job]\nname = "taken"\n' + JOB, "a job named 'taken' is still live", setup="clash"),
        Case(
            "agent.toml",
            mk + 'agent_config = "data/agents/missing.yaml"\nagent_overrides = { learning_rate = 1 }\n',
            "agent_config",
        ),
        Case("args.toml", mk + 'arg_file = "args/missing.txt"\n', "'args/missing.txt' is not a file in the MimicKit"),
        Case("envs.toml", mk + "num_envs = 1e30\n", "must be between 1 and 1048576"),
    ]
    return cases


def _drop_source(bench: Bench, case: Case) -> Path:
    path = bench.files / case.name
    path.write_text(case.text)
    return path


def test_validate_submit_and_the_intake_refuse_the_same_files_with_the_same_text(bench: Bench) -> None:
    for case in _cases(bench):
        if case.setup == "clash":
            (bench.layout.incoming / "first.toml").write_text('[job]\nname = "taken"\n' + JOB)
            assert bench.take()[0] == ["taken"]
        source = _drop_source(bench, case)
        ok, said = bench.validate(source)
        assert not ok and case.problem in said, (case.name, said)
        submitted, submit_said = bench.submit(source)
        assert not submitted and submit_said == said, (case.name, submit_said)
        assert not [p for p in bench.layout.incoming.iterdir() if not p.name.startswith(".")], "submit dropped it"
        shutil.copy(source, bench.layout.incoming / case.name)
        accepted, rejected = bench.take()
        assert (accepted, rejected) == ([], [case.name]), case.name
        (error,) = [p.read_text() for p in bench.layout.rejected.glob("*.error")]
        assert error.endswith(said), (case.name, said, error)  # a renamed file's .error says so first
        for leftover in bench.layout.rejected.iterdir():
            leftover.unlink()


@pytest.mark.skipif(not ROOT, reason="chown to another uid needs root")
def test_an_owner_not_allowed_is_refused_by_validate_as_by_the_intake(bench: Bench) -> None:
    source = bench.files / "stranger.toml"
    source.write_text(JOB)
    os.chown(source, 4242, 4242)
    ok, said = bench.validate(source)
    assert not ok and "owned by uid 4242, who may not submit jobs" in said
    shutil.move(source, bench.layout.incoming / "stranger.toml")  # keeps the owner
    assert bench.take() == ([], ["stranger.toml"])
    assert bench.error("stranger.toml") == said
    # submit writes its own copy, owned by the submitter: that one is allowed
    source.write_text(JOB)
    os.chown(source, 4242, 4242)
    assert bench.submit(source)[0]


def test_validate_refuses_a_fifo_without_blocking(bench: Bench) -> None:
    fifo = bench.files / "fifo.toml"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "--config", str(bench.config_file), "validate", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "fifo.toml: is not a regular file" in done.stdout
    code, said = cli("--config", str(bench.config_file), "submit", str(fifo), "--timeout", "0")
    assert code == 1 and "is not a regular file" in said


# --- the fuzz corpus: one verdict per file ---------------------------------------------------


@pytest.fixture(scope="module")
def corpus_bench() -> Iterator[Bench]:
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="mkd-agree-", dir=shm if shm.is_dir() else None))
    found = Bench(root)
    yield found
    found.store.close()
    shutil.rmtree(root, ignore_errors=True)


AGREED: dict[str, int] = {}


@pytest.mark.timeout(240)
@settings(FUZZ, max_examples=AGREEMENT_FILES, phases=[Phase.generate])
@given(raw=st.one_of(SCHEMA_LEVEL, SCHEMA_LEVEL, TOML_LEVEL))
def test_validate_submit_and_the_intake_agree_on_the_fuzz_corpus(corpus_bench: Bench, raw: bytes) -> None:
    bench = corpus_bench
    n = sum(AGREED.values())
    name = f"c{n:05d}.toml"
    source = bench.files / name
    source.write_bytes(raw)
    (valid, said), (submitted, submit_said) = bench.quick(source)
    assert submitted == valid, (said, submit_said)
    if not submitted:
        assert submit_said == said
        (bench.layout.incoming / name).write_bytes(raw)
    accepted, rejected = bench.take()
    assert len(accepted) + len(rejected) == 1, (accepted, rejected)
    assert bool(accepted) == valid, f"validate said {said!r}, the intake {'accepted' if accepted else 'rejected'}"
    if rejected:
        assert rejected == [name]
        assert bench.error(name) == said, "validate prints the .error the intake writes"
    AGREED["accepted" if accepted else "rejected"] = AGREED.get("accepted" if accepted else "rejected", 0) + 1
    source.unlink()


def test_the_agreement_ran_on_enough_files_of_both_kinds() -> None:
    if not AGREED:
        pytest.skip("run with the agreement test above")
    print(f"\nagreement: {AGREED}")
    assert sum(AGREED.values()) >= AGREEMENT_FILES * 0.9, AGREED
    # floors: most generated files have a problem somewhere (seen: 40 of 700 accepted)
    assert AGREED.get("accepted", 0) >= 15 and AGREED.get("rejected", 0) >= 200, AGREED


# --- mkd submit against a real daemon ----------------------------------------------------------


def test_submit_prints_the_job_id_or_the_error_of_the_daemon(home: Home, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    original = home.config.read_text()
    daemon_config = original.replace("[intake]\n", f'[intake]\nallowed_roots = ["{allowed}"]\n')
    assert daemon_config != original
    cli_config = home.root / "cli.toml"
    cli_config.write_text(original)  # the same folders, no allowed_roots: as before a reload
    home.config.write_text(daemon_config)
    home.start()
    good = tmp_path / "good.toml"
    good.write_text(JOB)
    done = home.mkd("submit", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "queued as job good" in done.stdout
    outside = tmp_path / "outside.toml"
    outside.write_text(JOB + 'cwd = "/etc"\n')
    assert home.mkd("validate", str(outside)).returncode == 1
    done = subprocess.run(
        [sys.executable, "-m", "mkd", "--config", str(cli_config), "submit", str(outside)],
        cwd=home.root,
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "outside.toml: workload: '/etc' is outside the allowed roots" in done.stdout
    assert "rejected; see" in done.stderr
    status = home.mkd("status", "outside")
    assert status.returncode == 3  # no such job: the file was rejected
    assert "outside.toml.error" in status.stdout and "'/etc' is outside the allowed roots" in status.stdout
    home.wait_state("good", "succeeded")

    assert home.proc is not None
    home.proc.send_signal(signal.SIGSTOP)  # a daemon that holds the lock but does not answer
    try:
        late = tmp_path / "late.toml"
        late.write_text(JOB)
        done = home.mkd("submit", str(late), "--timeout", "1")
        assert done.returncode == 4 and "no verdict from the daemon within 1 s" in done.stderr
    finally:
        home.proc.send_signal(signal.SIGCONT)
    home.wait_state("late", "succeeded")
    assert home.stop() == 0


def test_submit_without_a_daemon_says_so_and_leaves_the_file_queued(home: Home, tmp_path: Path) -> None:
    job = tmp_path / "later.toml"
    job.write_text(JOB)
    done = home.mkd("submit", str(job))
    assert done.returncode == 0
    assert "no daemon is running" in done.stderr
    assert (home.incoming / "later.toml").read_text() == JOB
    home.start()
    home.wait_state("later", "succeeded")
    assert not (home.incoming / "later.toml").exists()
    assert home.stop() == 0
