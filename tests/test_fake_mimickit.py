"""The fake MimicKit behaves like the real one: same formats, texts, exit codes and processes.

Its console goes through the same parser and classifier as the real captures, so the fake and
the real outputs are held to one standard. Every run gets its own session; the fixture kills
each session at the end and fails the test if a process of it is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mkd.client.explain import infer_multi_device
from mkd.failures import FailureClass
from mkd.mimickit.classify import Classification, ExitInfo, classify, row_has_nan, scan_live, split_lines
from mkd.mimickit.console import ConsoleParser, IterationRow
from mkd.mimickit.logtxt import parse_log_txt
from mkd.mimickit.results import TestResult, check_train_artifacts
from tests.fake_mimickit import FAKE_DIR, fake_command, fake_env

F = FailureClass
FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"
KILL = ExitInfo(None, signal.SIGKILL)
TERM = ExitInfo(None, signal.SIGTERM)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


class Run:
    """One fake MimicKit process group, its console file and out_dir."""

    def __init__(self, proc: subprocess.Popen[bytes], console: Path, out_dir: Path) -> None:
        self.proc = proc
        self.console = console
        self.out_dir = out_dir

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the root leads its own group

    def text(self) -> str:
        return self.console.read_bytes().decode("utf-8", errors="replace")

    def rows(self) -> list[IterationRow]:
        parser = ConsoleParser()
        return parser.feed(self.text()) + parser.close()

    def last_line(self) -> str:
        return [line for line in split_lines(self.text()) if line.strip()][-1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def wait_text(self, needle: str) -> None:
        wait_for(lambda: needle in self.text(), f"{needle!r} in the console")

    def wait_rows(self, count: int) -> None:
        wait_for(lambda: len(self.rows()) >= count, f"{count} iteration tables")

    def wait_live(self) -> Classification:
        """Poll the console as a supervisor would, until scan_live says "kill now"."""
        found: list[Classification] = []

        def fired() -> bool:
            verdict = scan_live(split_lines(self.text()))
            found.extend([verdict] if verdict else [])
            return bool(found)

        wait_for(fired, "scan_live to fire")
        return found[0]

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(10)
        wait_for(lambda: not group_members(self.pgid), f"process group {self.pgid} to be gone")


Launch = Callable[..., Run]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    runs: list[Run] = []

    def start(*extra: str, fail: str = "", env: dict[str, str] | None = None) -> Run:
        console = tmp_path / f"console-{len(runs)}.log"
        out_dir = tmp_path / f"out-{len(runs)}"
        command = fake_command(*extra, "--out_dir", str(out_dir))
        with console.open("wb") as handle:
            proc = subprocess.Popen(
                command,
                cwd=FAKE_DIR,
                env=fake_env(fail, **(env or {})),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = Run(proc, console, out_dir)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_group()


def finished(run: Run) -> int:
    """Exit status of a run expected to end by itself; its whole group must be gone too."""
    code = run.wait()
    wait_for(lambda: not group_members(run.pgid), "the run's children to exit with it")
    return code


def real_last_line(name: str) -> str:
    text = (FIXTURES / name).read_text(encoding="utf-8", errors="replace")
    return [
        line for line in split_lines(text) if line.strip() and not line.startswith(("EXIT_CODE", "real", "user", "sys"))
    ][-1]


# --- normal runs -----------------------------------------------------------------------------


def test_train_one_device(launch: Launch) -> None:
    run = launch("--num_envs", "4", "--max_samples", "640", "--rand_seed", "1")
    assert finished(run) == 0
    rows = run.rows()
    assert [row.iteration for row in rows] == [0, 1, 2, 3, 4]
    assert [row.samples for row in rows] == [128, 256, 384, 512, 640], "num_envs x 32 steps per iteration"
    text = run.text()
    assert "Setting seed: 1\n" in text
    assert "Building 1/4 envs\rBuilding 2/4 envs\rBuilding 3/4 envs\rBuilding 4/4 envs\r\n\n" in text
    assert f"Logging data to {run.out_dir}/log.txt\n" in text
    assert "-" * 42 + "\n|            Iteration |               0 |\n" in text
    log = parse_log_txt(run.out_dir.joinpath("log.txt").read_bytes().decode())
    assert [row["Iteration"] for row in log] == [0, 4], "iteration 0, then every 100th and the last"
    assert log[-1]["Samples"] == 640
    assert check_train_artifacts(run.out_dir) == {"model.pt": True, "log.txt": True}
    assert {p.name for p in run.out_dir.iterdir()} >= {"engine_config.yaml", "env_config.yaml", "agent_config.yaml"}
    assert classify(text, ExitInfo(0, None)) is None
    assert not infer_multi_device(text)


def test_train_two_devices(launch: Launch) -> None:
    port = free_port()
    run = launch("--devices", "cpu", "cpu", "--master_port", str(port), "--num_envs", "2", "--max_samples", "512")
    run.wait_rows(1)
    assert len(group_members(run.pgid)) >= 3, "root, its spawn child and the resource tracker"
    assert finished(run) == 0
    text = run.text()
    assert text.count(f"Using master port: {port}\n") == 2
    assert text.count("Setting seed:") == 2
    assert [row.samples for row in run.rows()] == [128, 256, 384, 512], "num_envs x 32 x processes"
    assert infer_multi_device(text)
    assert classify(text, ExitInfo(0, None), multi_device=True) is None


def test_seeds_differ_by_41_per_rank(launch: Launch) -> None:
    run = launch("--devices", "cuda:0", "cuda:1", "--master_port", str(free_port()), "--rand_seed", "1",
                 "--max_samples", "64")  # fmt: skip
    assert finished(run) == 0
    text = run.text()
    assert "Setting seed: 1\n" in text and "Setting seed: 42\n" in text  # as seen on the GPU machine
    assert "destroy_process_group() was not called" in text, "NCCL runs end with torch's warning"


def test_test_mode(launch: Launch, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    run = launch("--mode", "test", "--num_envs", "4", "--test_episodes", "10", "--model_file", str(model))
    assert finished(run) == 0
    parser = ConsoleParser()
    assert parser.feed(run.text()) == []
    assert f"Loaded model parameters from {model}\n" in run.text()
    result = parser.test_result
    assert isinstance(result, TestResult)
    assert result.episodes == 12, "every env finishes ceil(10 / 4) episodes"
    assert classify(run.text(), ExitInfo(0, None), stage_kind="test") is None


# --- the command line ------------------------------------------------------------------------

ARG_ERRORS = [
    (("--num_envs", "four"), "ValueError: invalid literal for int() with base 10: 'four'", "cpu_fail_num_envs_not_int"),
    (("--visualize",), "IndexError: list index out of range", "cpu_fail_visualize_without_value"),
    (("--arg_file", "args/does_not_exist.txt"), None, "cpu_fail_bad_arg_file"),
    (("--env_config", "data/envs/nope_env.yaml"), None, "cpu_fail_bad_env_config"),
    (("--mode", "evaluate"), "AssertionError: Unsupported mode: evaluate", None),
    (("--logger", "foo"), "AssertionError: Unsupported logger: foo", None),
]


@pytest.mark.parametrize(("extra", "last_line", "real"), ARG_ERRORS)
def test_argument_errors(launch: Launch, extra: tuple[str, ...], last_line: str | None, real: str | None) -> None:
    run = launch(*extra)
    assert finished(run) == 1
    if real is not None:
        assert run.last_line() == real_last_line(f"{real}.stdout.txt"), "the same text as the real run"
    if last_line is not None:
        assert run.last_line() == last_line
    found = classify(run.text(), ExitInfo(1, None))
    assert found is not None and found.failure is F.CONFIG_ERROR and found.permanent


def test_keys_first_occurrence_wins_and_typos_are_ignored(launch: Launch) -> None:
    typo = launch("--num_env", "8", "--max_samples", "32")
    twice = launch("--num_envs", "2", "--num_envs", "8", "--max_samples", "64")
    assert finished(typo) == 0 and finished(twice) == 0
    assert "Building 1/1 envs" in typo.text(), "seen: --num_env 8 built 1/1 envs"
    assert "Building 2/2 envs" in twice.text() and "Building 8/8" not in twice.text()


# --- failures that end the run ---------------------------------------------------------------

OOM_AT_START = "gpu_h100_1gpu_fail_cuda_oom_hog_gpu0_at_start_nenv4096"
OOM_MID_RUN = "gpu_h100_1gpu_fail_cuda_oom_hog_after_first_iteration_nenv4096"
EXITING = [
    ("oom_above=2048", ("--devices", "cuda:0", "--num_envs", "4096"), F.CUDA_OOM, OOM_AT_START),
    ("cublas_oom", (), F.CUDA_OOM, None),
    ("graph_oom_at=2", (), F.CUDA_OOM, OOM_MID_RUN),
    ("env_mismatch", (), F.ENV_MISMATCH, "cpu_fail_newton180_dof_passive_damping"),
    ("missing_motion", (), F.CONFIG_ERROR, "cpu_fail_missing_motion"),
    ("glsl", ("--visualize", "true"), F.VISUALIZE_GL, None),
    ("no_display", ("--visualize", "true"), F.VISUALIZE_GL, None),
]  # fmt: skip


@pytest.mark.parametrize(("fail", "extra", "expected", "real"), EXITING)
def test_failures_that_exit(launch: Launch, fail: str, extra: tuple[str, ...], expected: F, real: str | None) -> None:
    run = launch(*extra, fail=fail)
    assert finished(run) == 1
    if real is not None:
        assert run.last_line() == real_last_line(f"{real}.stdout.txt"), "the same text as the real run"
    found = classify(run.text(), ExitInfo(1, None))
    assert found is not None and found.failure is expected


def test_glsl_passes_with_the_mesa_override(launch: Launch) -> None:
    run = launch("--visualize", "true", "--max_samples", "32", fail="glsl", env={"MESA_GLSL_VERSION_OVERRIDE": "330"})
    assert finished(run) == 0


def test_crash_of_a_long_run(launch: Launch) -> None:
    run = launch(fail="crash_at=2")
    assert finished(run) == 1
    assert len(run.rows()) == 2
    found = classify(run.text(), ExitInfo(1, None), stage_kind="long_run")
    assert found is not None and found.failure is F.LONG_RUN_EXITED


def test_nan_keeps_running_with_nan_tables(launch: Launch) -> None:
    run = launch("--num_envs", "1", "--max_samples", "128", fail="nan_at=1")
    assert finished(run) == 0
    assert [row_has_nan(row) for row in run.rows()] == [False, True, True, True]
    found = classify(run.text(), ExitInfo(0, None))
    assert found is not None and found.failure is F.NAN_DIVERGENCE
    log = parse_log_txt(run.out_dir.joinpath("log.txt").read_bytes().decode())
    assert str(log[-1]["Actor_Loss"]) == "nan"


def test_fail_once(launch: Launch, tmp_path: Path) -> None:
    once = {"FAKE_MK_FAIL_ONCE_FILE": str(tmp_path / "failed-once")}
    first = launch("--max_samples", "64", fail="crash_at=0", env=once)
    assert finished(first) == 1
    second = launch("--max_samples", "64", fail="crash_at=0", env=once)
    assert finished(second) == 0


def test_unknown_fail_mode_is_refused(launch: Launch) -> None:
    run = launch(fail="oom_abvoe=3")
    assert finished(run) == 2
    assert "unknown FAKE_MK_FAIL mode 'oom_abvoe'" in run.text()


# --- hangs: the supervisor must notice and kill ----------------------------------------------


def test_class_a_child_dies_root_hangs(launch: Launch) -> None:
    run = launch("--devices", "cuda:0", "cuda:1", "--master_port", str(free_port()), "--num_envs", "4096",
                 fail="oom_above=2048")  # fmt: skip
    live = run.wait_live()
    assert live.failure is F.STARTUP_MULTI_DEVICE
    run.wait_text("Building PPO agent")
    assert run.alive(), "the root waits for its dead child forever"
    assert real_last_line("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt") == "Building PPO agent"
    assert "RuntimeError: Failed to allocate 34406400 bytes on device 'cuda:1'\n" in run.text()
    run.kill_group()
    found = classify(run.text(), KILL, multi_device=True)
    assert found is not None and found.failure is F.STARTUP_MULTI_DEVICE


def test_nccl_init_failure_root_hangs(launch: Launch) -> None:
    run = launch("--devices", "cuda:0", "cuda:1", "--master_port", str(free_port()), fail="nccl_init")
    assert run.wait_live().failure is F.STARTUP_MULTI_DEVICE
    run.wait_text("Building PPO agent")
    assert run.alive()
    run.kill_group()
    found = classify(run.text(), KILL, multi_device=True, stop_reason=F.STALL)
    assert found is not None and found.failure is F.STARTUP_MULTI_DEVICE


def test_nccl_abort_stays_alive_and_silent(launch: Launch) -> None:
    run = launch("--devices", "cuda:0", "cuda:1", "--master_port", str(free_port()), fail="nccl_abort_at=2")
    assert run.wait_live().failure is F.NCCL_ABORT_HANG
    assert run.alive()
    assert len(run.rows()) == 2
    run.kill_group()
    found = classify(run.text(), KILL, multi_device=True, stop_reason=F.STALL)
    assert found is not None and found.failure is F.NCCL_ABORT_HANG


def test_port_in_use_fault(launch: Launch) -> None:
    run = launch("--devices", "cpu", "cpu", "--master_port", str(free_port()), fail="port_in_use")
    assert run.wait_live().failure is F.PORT_IN_USE
    wait_for(lambda: run.text().count("Setting seed:") == 1, "rank 1 to get past its start-up")
    assert run.alive(), "seen: the run never exits"
    run.kill_group()


def test_two_runs_on_one_port_collide(launch: Launch) -> None:
    port = str(free_port())
    first = launch("--devices", "cpu", "cpu", "--master_port", port, fail="hang")
    first.wait_rows(1)
    second = launch("--devices", "cpu", "cpu", "--master_port", port)
    assert second.wait_live().failure is F.PORT_IN_USE
    assert second.alive()
    tables = len(first.rows())
    first.wait_rows(tables + 2)  # the first run trains on, as seen


def test_a_multi_process_root_that_raises_hangs(launch: Launch) -> None:
    run = launch("--devices", "cpu", "cpu", "--master_port", str(free_port()), fail="crash_at=1")
    run.wait_live()
    run.wait_text("[rank0]: RuntimeError: fake MimicKit: injected crash at iteration 1")
    assert run.alive(), "seen with SIGINT to the root: it then waits for its children"


def test_hang_ignores_max_samples(launch: Launch) -> None:
    run = launch("--max_samples", "32", fail="hang")
    run.wait_rows(4)
    assert run.alive()


def test_stall_goes_silent(launch: Launch) -> None:
    run = launch(fail="stall_at=2")
    run.wait_rows(2)
    size = run.console.stat().st_size
    time.sleep(0.3)  # at 0.01 s per iteration a live run would print ~30 more tables meanwhile
    assert run.console.stat().st_size == size and run.alive()
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == -signal.SIGTERM
    found = classify(run.text(), TERM, stop_reason=F.STALL)
    assert found is not None and found.failure is F.STALL


# --- signals and the process group -----------------------------------------------------------


def test_sigterm_kills_at_once_without_a_traceback(launch: Launch) -> None:
    run = launch(fail="hang")
    run.wait_rows(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(5) == -signal.SIGTERM
    assert "Traceback" not in run.text()
    found = classify(run.text(), TERM)
    assert found is not None and found.failure is F.KILLED


def test_ignore_sigterm(launch: Launch) -> None:
    run = launch(fail="hang,ignore_sigterm")
    run.wait_rows(1)
    run.proc.send_signal(signal.SIGTERM)
    tables = len(run.rows())
    run.wait_rows(tables + 3)
    assert run.alive()


def test_children_exit_when_the_root_dies(launch: Launch) -> None:
    run = launch("--devices", "cpu", "cpu", "--master_port", str(free_port()), fail="hang")
    run.wait_rows(1)
    os.kill(run.pgid, signal.SIGKILL)
    run.wait()
    wait_for(lambda: not group_members(run.pgid), "rank 1 to notice and exit, as gloo's rank 1 did")
    assert "Process Process-1:" in run.text() and "Connection closed by peer" in run.text()
    found = classify(run.text(), KILL, multi_device=True)
    assert found is not None and found.failure is F.KILLED


def test_linger_outlives_the_root(launch: Launch) -> None:
    run = launch("--devices", "cuda:0", "cuda:1", "--master_port", str(free_port()), fail="hang,linger")
    run.wait_rows(1)
    os.kill(run.pgid, signal.SIGKILL)
    run.wait()
    run.wait_text("[rank1]:[W")
    assert group_members(run.pgid), "rank 1 lives on in the root's process group"
    assert 'Failed to check the "should dump" flag on TCPStore' in run.text()
    run.wait_text("Broken pipe")
    lingering = classify(run.text(), None, multi_device=True)  # what `mkd explain` sees in a bare log
    real = classify((FIXTURES / "gpu_h100_2gpu_kill9_root.stdout.txt").read_text(), None, multi_device=True)
    assert lingering is not None and real is not None
    assert lingering.failure is real.failure is F.PEER_LOST
    assert any(line.startswith("[rank1]:") and line.endswith("Broken pipe") for line in lingering.evidence)
    killed = classify(run.text(), KILL, multi_device=True)
    assert killed is not None and killed.failure is F.KILLED, "with the root's SIGKILL known, that is the cause"


# --- MimicKit's own config checks (real outputs: cpu_fail_* from MimicKit f8d0d70 on CPU) ---------

FAKE_DATA = FAKE_DIR / "data"


def derived(tmp_path: Path, base: Path, old: str, new: str) -> str:
    """A copy of one of the fake checkout's YAMLs with one line changed, as a job's override would."""
    text = base.read_text()
    assert old in text
    path = tmp_path / f"derived-{base.name}"
    path.write_text(text.replace(old, new))
    return str(path)


def empty(tmp_path: Path) -> str:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return str(path)


AGENT = FAKE_DATA / "agents" / "deepmimic_humanoid_ppo_agent.yaml"
ENV = FAKE_DATA / "envs" / "deepmimic_humanoid_env.yaml"
ENGINE = FAKE_DATA / "engines" / "newton_engine.yaml"
CONFIG_CHECKS: list[tuple[str, Callable[[Path], tuple[str, ...]]]] = [
    (
        "cpu_fail_agent_net_unsupported",
        lambda t: ("--agent_config", derived(t, AGENT, 'actor_net: "fc_2', 'actor_net: "fc_9layers_1024units" #')),
    ),
    (
        "cpu_fail_agent_optimizer_unsupported",
        lambda t: ("--agent_config", derived(t, AGENT, 'type: "SGD"', 'type: "Adamax"')),
    ),
    ("cpu_fail_env_name_unsupported", lambda t: ("--env_config", derived(t, ENV, '"deepmimic"', '"deepmimic_typo"'))),
    ("cpu_fail_engine_name_unsupported", lambda t: ("--engine_config", derived(t, ENGINE, '"newton"', '"newtonn"'))),
    (
        "cpu_fail_sim_freq_not_multiple",
        lambda t: ("--engine_config", derived(t, ENGINE, "sim_freq: 240", "sim_freq: 100")),
    ),
    ("cpu_fail_empty_env_config", lambda t: ("--env_config", empty(t))),
    ("cpu_fail_empty_agent_config", lambda t: ("--agent_config", empty(t))),
    ("cpu_fail_empty_arg_file", lambda t: ("--arg_file", "args/empty_args.txt")),
    ("cpu_2proc_fail_devices_unsupported", lambda t: ("--devices", "tpu", "tpu")),
]


@pytest.mark.parametrize(("real", "args"), CONFIG_CHECKS, ids=[name for name, _ in CONFIG_CHECKS])
def test_mimickit_config_checks(
    launch: Launch, tmp_path: Path, real: str, args: Callable[[Path], tuple[str, ...]]
) -> None:
    run = launch(*args(tmp_path), "--max_samples", "64")
    assert finished(run) == 1
    assert run.last_line() == real_last_line(f"{real}.stdout.txt"), "the same text as the real run"
    real_found = classify((FIXTURES / f"{real}.stdout.txt").read_text(), ExitInfo(1, None))
    found = classify(run.text(), ExitInfo(1, None), multi_device="2proc" in real)
    assert found is not None and real_found is not None
    assert (found.failure, found.evidence, found.remedy) == (real_found.failure, real_found.evidence, real_found.remedy)


def test_peer_dies_the_root_raises_gloos_error(launch: Launch) -> None:
    run = launch("--devices", "cpu", "cpu", "--master_port", str(free_port()), fail="peer_dies_at=2")
    assert finished(run) == 1
    real = classify((FIXTURES / "cpu_2proc_fail_rank1_sigkill.stdout.txt").read_text(), ExitInfo(1, None))
    found = classify(run.text(), ExitInfo(1, None), multi_device=True)
    assert found is not None and real is not None
    assert found.failure is real.failure is F.PEER_LOST
    (line,) = found.evidence
    assert line.startswith("[rank0]: RuntimeError: [") and "] Connection closed by peer [127.0.0.1]:" in line
    assert real.evidence[0].startswith("[rank0]: RuntimeError: [") and "Connection closed by peer" in real.evidence[0]
