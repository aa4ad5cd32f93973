"""The classifier on the real MimicKit outputs, plus the synthesized class D texts and the exit rules."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mkd.memory import Plan
from mkd.mimickit.classify import (
    ADDRESS_SPACE_REMEDY,
    CAUSE_ORDER,
    MIMICKIT_CHECKS,
    PERMANENT,
    REMEDIES,
    SIGNATURES,
    ExitInfo,
    FailureClass,
    MimicKitCheck,
    Signature,
    classify,
    row_has_nan,
    scan_live,
    split_lines,
)
from mkd.mimickit.console import ConsoleParser
from mkd.policy import DEFAULT_STEPS, Observation, decide
from mkd.spec import Retry

F = FailureClass
FIXTURES = Path(__file__).parent / "fixtures" / "mimickit"
RC1 = ExitInfo(1, None)
RC0 = ExitInfo(0, None)
TERM = ExitInfo(None, signal.SIGTERM)
KILL = ExitInfo(None, signal.SIGKILL)
INT = ExitInfo(None, signal.SIGINT)


def read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8", errors="replace")


# file, how it ended (mimickit.md §5-§6 and the fixtures' EXIT_CODE lines), multi-device, class
FAILURES = [
    ("cpu_fail_agent_missing_key.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_bad_arg_file.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_bad_env_config.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_missing_motion.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_num_envs_not_int.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_visualize_without_value.stdout.txt", RC1, False, F.CONFIG_ERROR),
    ("cpu_fail_default_device_cuda0.stdout.txt", RC1, False, F.ENV_MISMATCH),
    ("cpu_fail_newton180_dof_passive_damping.stdout.txt", RC1, False, F.ENV_MISMATCH),
    ("cpu_fail_ulimit_v_1000000KB.stdout.txt", RC1, False, F.ENV_MISMATCH),  # its remedy: the address space
    ("gpu_h100_1gpu_fail_cuda_oom_hog_gpu0_at_start_nenv4096.stdout.txt", RC1, False, F.CUDA_OOM),
    ("gpu_h100_1gpu_fail_cuda_oom_hog_after_first_iteration_nenv4096.stdout.txt", RC1, False, F.CUDA_OOM),
    ("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", KILL, True, F.STARTUP_MULTI_DEVICE),
    ("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", None, True, F.STARTUP_MULTI_DEVICE),
    ("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", KILL, False, F.STARTUP_MULTI_DEVICE),
    ("cpu_2proc_master_port_in_use_second_run.stdout.txt", ExitInfo(124, None), True, F.PORT_IN_USE),
    ("cpu_2proc_master_port_in_use_second_run.stdout.txt", None, True, F.PORT_IN_USE),
    ("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt", TERM, False, F.NAN_DIVERGENCE),
    ("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt", None, False, F.NAN_DIVERGENCE),
    ("cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", TERM, False, F.KILLED),
    ("cpu_1proc_sigTERM_PYTHONUNBUFFERED1.stdout.txt", ExitInfo(143, None), False, F.KILLED),
    ("cpu_2proc_sigTERM_root_only.stdout.txt", TERM, True, F.KILLED),
    ("cpu_2proc_sigTERM_process_group.stdout.txt", ExitInfo(-15, None), True, F.KILLED),
    ("gpu_h100_2gpu_sigTERM_process_group.stdout.txt", ExitInfo(143, None), True, F.KILLED),
    ("cpu_1proc_sigINT_default_disposition.stdout.txt", INT, False, F.KILLED),
    ("cpu_2proc_sigINT_process_group_default_disposition.stdout.txt", ExitInfo(-2, None), True, F.KILLED),
    ("gpu_h100_2gpu_kill9_root.stdout.txt", KILL, True, F.KILLED),
    ("gpu_h100_1gpu_train_nenv2048_timeout55s.stdout.txt", ExitInfo(124, None), False, F.TIMEOUT),
]


@pytest.mark.parametrize(("name", "exit_info", "multi", "expected"), FAILURES)
def test_real_failures(name: str, exit_info: ExitInfo | None, multi: bool, expected: FailureClass) -> None:
    text = read(name)
    found = classify(text, exit_info, multi_device=multi)
    assert found is not None
    assert found.failure is expected
    assert found.evidence, "a classification always shows its evidence"
    lines = set(split_lines(text))
    assert all(line in lines for line in found.evidence), "evidence lines are verbatim log lines"
    specific = {s.remedy for s in SIGNATURES if s.failure is expected and s.remedy and s.pattern.search(text)}
    assert found.remedy == (specific.pop() if len(specific) == 1 else REMEDIES[expected])


def test_evidence_names_the_cause() -> None:
    found = classify(read("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt"), KILL)
    assert found is not None
    assert "Process Process-1:" in found.evidence
    assert "RuntimeError: Failed to allocate 34406400 bytes on device 'cuda:1'" in found.evidence
    assert not found.permanent
    config = classify(read("cpu_fail_agent_missing_key.stdout.txt"), RC1)
    assert config is not None and config.evidence == ("KeyError: 'discount'",) and config.permanent
    orphan = classify(read("cpu_2proc_sigTERM_root_only.stdout.txt"), TERM)
    assert orphan is not None and any("Connection closed by peer" in line for line in orphan.evidence)


SUCCESSES = [
    ("cpu_train_nenv16_quick.stdout.txt", "train"),
    ("cpu_2proc_train_nenv8.stdout.txt", "train"),
    ("cpu_agent_unknown_key.stdout.txt", "train"),
    ("cpu_typo_num_env_silently_ignored.stdout.txt", "train"),
    ("cpu_arg_file_with_cli_overrides.stdout.txt", "train"),
    ("cpu_resume_with_model_file_new_outdir.stdout.txt", "train"),
    ("cpu_train_into_existing_outdir.stdout.txt", "train"),
    ("gpu_h100_2gpu_train_nenv4096_default_nccl.stdout.txt", "long_run"),
    ("cpu_test_mode_nenv4.stdout.txt", "test"),
    ("gpu_h100_1gpu_test_nenv256.stdout.txt", "test"),
]


@pytest.mark.parametrize(("name", "stage"), SUCCESSES)
def test_real_successes_are_not_failures(name: str, stage: str) -> None:
    text = read(name)
    assert classify(text, RC0, stage_kind=stage) is None
    assert classify(text, None, stage_kind=stage) is None, "a healthy running attempt shows nothing"


@pytest.mark.parametrize(
    "name", [name for name, _ in SUCCESSES] + ["cpu_2proc_master_port_in_use_first_run_tail_after.stdout.txt"]
)
def test_scan_live_never_fires_on_healthy_runs(name: str) -> None:
    lines = split_lines(read(name))
    for start in range(0, len(lines), 50):
        assert scan_live(lines[start : start + 50]) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt", F.STARTUP_MULTI_DEVICE),
        ("cpu_2proc_master_port_in_use_second_run.stdout.txt", F.PORT_IN_USE),
        ("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt", F.NAN_DIVERGENCE),
    ],
)
def test_scan_live_fires_on_hangs(name: str, expected: FailureClass) -> None:
    lines = split_lines(read(name))
    verdicts = [scan_live(lines[start : start + 40]) for start in range(0, len(lines), 40)]
    fired = [verdict for verdict in verdicts if verdict is not None]
    assert fired and fired[0].failure is expected


# The runbook's class D texts were never provoked for real; these follow NCCL's and torch's formats.
CLASS_D = [
    "gpu-host:4242:4259 [0] include/alloc.h:125 NCCL WARN Cuda failure 2 'out of memory'",
    "gpu-host:4242:4259 [0] NCCL INFO comm 0x55d0c8a0e2b0 rank 0 nranks 2 cudaDev 0 busId 6000 - Abort COMPLETE",
]


def test_class_d_synthesized() -> None:
    text = read("cpu_2proc_train_nenv8.stdout.txt") + "\n".join(CLASS_D) + "\n"
    live = scan_live(CLASS_D[1:])
    assert live is not None and live.failure is F.NCCL_ABORT_HANG
    running = classify(text, None, multi_device=True)
    assert running is not None and running.failure is F.NCCL_ABORT_HANG
    stalled = classify(text, TERM, multi_device=True, stop_reason=F.STALL)
    assert stalled is not None and stalled.failure is F.NCCL_ABORT_HANG, "the abort explains the stall"
    assert stalled.evidence == tuple(CLASS_D)


@pytest.mark.parametrize(
    ("line", "expected", "permanent"),
    [
        ("AttributeError: module 'warp.config' has no attribute 'verbose'", F.ENV_MISMATCH, True),
        ("RuntimeError: Distributed package doesn't have NCCL built in", F.ENV_MISMATCH, True),
        ("AssertionError: Unsupported agent: PPOX", F.CONFIG_ERROR, True),
        ("AssertionError: Unsupported mode: evaluate", F.CONFIG_ERROR, True),
        ("AssertionError: Unsupported logger: foo", F.CONFIG_ERROR, True),
        ("FileNotFoundError: [Errno 2] No such file or directory: '<RUNS>/x/nope.pt'", F.CONFIG_ERROR, True),
        ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", F.CUDA_OOM, False),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", F.CUDA_OOM, False),
        ('pyglet.display.xlib.NoSuchDisplayException: Cannot connect to "None"', F.VISUALIZE_GL, True),
        ("0:1(10): error: GLSL 1.50 is not supported. Supported versions are: 1.10", F.VISUALIZE_GL, False),
        ("[rank0]: KeyError: 'discount'", F.CONFIG_ERROR, True),
    ],
)
def test_single_signatures(line: str, expected: FailureClass, permanent: bool) -> None:
    found = classify(f"Setting seed: 1\nTraceback (most recent call last):\n{line}\n", RC1)
    assert found is not None
    assert (found.failure, found.permanent) == (expected, permanent)
    assert found.evidence == (line,)


def test_multi_device_start_up_oom_is_class_a_but_a_mid_run_one_is_not() -> None:
    oom = "Warp CUDA error 2: out of memory (in function wp_alloc_device_async, x)\n"
    start_up = classify(f"Building deepmimic env\n{oom}", RC1, multi_device=True)
    assert start_up is not None and start_up.failure is F.STARTUP_MULTI_DEVICE
    single = classify(f"Building deepmimic env\n{oom}", RC1)
    assert single is not None and single.failure is F.CUDA_OOM
    table = read("cpu_train_nenv16_quick.stdout.txt")
    mid_run = classify(table + oom, RC1, multi_device=True)
    assert mid_run is not None and mid_run.failure is F.CUDA_OOM
    resumed = classify(oom, RC1, multi_device=True, had_progress=True)
    assert resumed is not None and resumed.failure is F.CUDA_OOM


def test_nccl_init_failure_in_a_child_is_class_a() -> None:
    text = (
        "Process Process-1:\nTraceback (most recent call last):\n"
        "torch.distributed.DistBackendError: NCCL error in: NCCLUtils.cpp:77, unhandled cuda error\n"
        "ncclUnhandledCudaError: Call to CUDA function failed.\n"
    )
    found = classify(text, KILL)
    assert found is not None and found.failure is F.STARTUP_MULTI_DEVICE


def test_exit_rules() -> None:
    train = read("cpu_train_nenv16_quick.stdout.txt")
    missing = classify(train, RC0, outputs_missing=True)
    assert missing is not None and missing.failure is F.WARMUP_OUTPUTS_MISSING
    long_run = classify(train, RC1, stage_kind="long_run")
    assert long_run is not None and long_run.failure is F.LONG_RUN_EXITED
    assert len(long_run.evidence) == 20
    warmup = classify(train, RC1, stage_kind="warmup")
    assert warmup is not None and warmup.failure is F.UNKNOWN
    no_progress = classify("Setting seed: 1\n", RC1, stage_kind="long_run")
    assert no_progress is not None and no_progress.failure is F.UNKNOWN
    progressed = classify("Setting seed: 1\n", RC1, stage_kind="long_run", had_progress=True)
    assert progressed is not None and progressed.failure is F.LONG_RUN_EXITED
    no_result = classify(train, RC0, stage_kind="test")
    assert no_result is not None and no_result.failure is F.UNKNOWN
    for shell_code in (137, 143, 130, -9):
        killed = classify(train, ExitInfo(shell_code, None))
        assert killed is not None and killed.failure is F.KILLED


def test_stop_reasons() -> None:
    train = read("cpu_train_nenv16_quick.stdout.txt")
    for reason in (F.STALL, F.TIMEOUT, F.CANCELLED):
        found = classify(train, TERM, stop_reason=reason)
        assert found is not None and found.failure is reason
    class_a = read("gpu_h100_2gpu_fail_rank1_cuda_oom_hog_gpu1_root_hangs.stdout.txt")
    cancelled = classify(class_a, KILL, stop_reason=F.CANCELLED)
    assert cancelled is not None and cancelled.failure is F.CANCELLED and cancelled.permanent
    stalled = classify(class_a, KILL, stop_reason=F.STALL)
    assert stalled is not None and stalled.failure is F.STARTUP_MULTI_DEVICE
    with pytest.raises(ValueError, match="stop_reason"):
        classify(train, TERM, stop_reason=F.CUDA_OOM)
    with pytest.raises(ValueError, match="stage kind"):
        classify(train, TERM, stage_kind="eval")


def test_row_has_nan() -> None:
    parser = ConsoleParser()
    rows = parser.feed(read("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt"))
    assert [row_has_nan(row) for row in rows] == [True, True]
    healthy = parser.feed(read("cpu_train_nenv16_quick.stdout.txt"))
    assert not any(row_has_nan(row) for row in healthy)


def test_the_signature_table_is_complete() -> None:
    assert all(signature.source for signature in SIGNATURES)
    assert set(REMEDIES) == set(FailureClass)
    assert len(set(CAUSE_ORDER)) == len(CAUSE_ORDER)
    synthesized = {s.failure for s in SIGNATURES if s.source.startswith("synthesized")}
    assert F.NCCL_ABORT_HANG in synthesized
    assert all(member.value == member.name.lower() for member in FailureClass)


@pytest.mark.parametrize("signature", SIGNATURES, ids=lambda s: s.pattern.pattern[:40])
def test_every_match_of_a_signature_holds_one_of_its_needles(signature: Signature) -> None:
    """The needles are a pre-filter: a chunk without any of them is never searched with the regex,
    so a match lacking every needle would be a failure mkd never sees."""

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=st.from_regex(signature.pattern))
    def check(text: str) -> None:
        for line in split_lines(text):
            if signature.pattern.search(line):
                assert any(needle in line.lower() for needle in signature.needles), (line, signature.needles)

    check()


def test_a_signature_line_amid_a_progress_table_is_still_found() -> None:
    table = "\n".join(f"| Train_Return | {i}.5 |" for i in range(40))
    hits = scan_live([*table.splitlines(), "NCCL WARN Cuda failure 2 'out of memory'", *table.splitlines()])
    assert hits is not None and hits.failure is FailureClass.NCCL_ABORT_HANG


# -- MimicKit's own config checks, real outputs (CPU, MimicKit f8d0d70; tests/fixtures/mimickit/README.md)
CONFIG_ERRORS = [
    ("cpu_fail_agent_net_unsupported", "AssertionError: Unsupported net: fc_9layers_1024units", "model.actor_net"),
    (
        "cpu_fail_agent_optimizer_unsupported",
        "AssertionError: Unsupported optimizer type: Adamax",
        "actor_optimizer.type",
    ),
    ("cpu_fail_env_name_unsupported", "AssertionError: Unsupported env: deepmimic_typo", "env_name"),
    ("cpu_fail_engine_name_unsupported", "Unsupported engine: newtonn", "engine_name"),
    (
        "cpu_fail_sim_freq_not_multiple",
        "AssertionError: Simulation frequency must be a multiple of the control frequency",
        "sim_freq",
    ),
    (
        "cpu_2proc_fail_devices_unsupported",
        "AssertionError: Unsupported multiprocessing device tpu",
        "devices",
    ),
    ("cpu_fail_empty_arg_file", "TypeError: argument of type 'NoneType' is not iterable", "arg_file is empty"),
    ("cpu_fail_empty_env_config", "TypeError: argument of type 'NoneType' is not iterable", "env, engine or agent"),
    ("cpu_fail_empty_agent_config", "TypeError: 'NoneType' object is not subscriptable", "agent config is empty"),
    (
        "cpu_fail_no_checkout_run_py",
        "<VENV>/bin/python: can't open file '<EMPTY>/mimickit/run.py': [Errno 2] No such file or directory",
        "`mimickit_dir`",
    ),
]


@pytest.mark.parametrize(("name", "evidence", "fix"), CONFIG_ERRORS)
def test_mimickit_config_checks_are_permanent_config_errors(name: str, evidence: str, fix: str) -> None:
    text = read(f"{name}.stdout.txt")
    rc = 2 if "no_checkout" in name else 1
    assert text.rstrip().endswith(f"EXIT_CODE={rc}"), "the real run's exit status"
    found = classify(text, ExitInfo(rc, None), multi_device="2proc" in name)
    assert found is not None
    assert (found.failure, found.permanent) == (F.CONFIG_ERROR, True)
    assert evidence in found.evidence
    assert fix in found.remedy and found.remedy.startswith("Not retried")
    live = scan_live(split_lines(text))
    if "2proc" in name:  # the child's traceback: its root would wait for it forever, so it is killed at once
        assert live is not None and live.failure is F.CONFIG_ERROR
    else:
        assert live is None, "an error that exits by itself is not killed early"


def test_the_missing_checkout_remedy_points_at_mimickit_dir_and_doctor() -> None:
    found = classify(read("cpu_fail_no_checkout_run_py.stdout.txt"), ExitInfo(2, None))
    assert found is not None and "`mkd doctor`" in found.remedy and "`mimickit_dir`" in found.remedy


@pytest.mark.parametrize(
    ("check", "text"),
    [(check, text) for check in MIMICKIT_CHECKS for text in check.texts],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_mimickit_check_text_is_a_config_error(check: MimicKitCheck, text: str) -> None:
    """Each text read in MimicKit's source, in the form MimicKit prints it (a value after the
    fixed start), with and without torch's rank prefix."""
    start = "Env 3 Obj 0 DoF 5: " if check.anywhere else ""
    if check.printed:
        lines = [f"{text}foo", "Traceback (most recent call last):", "AssertionError: None"]
    else:
        lines = ["Traceback (most recent call last):", f"{check.exception}: {start}{text}foo"]
    for prefix in ("", "[rank0]: "):
        found = classify("\n".join(prefix + line for line in lines) + "\n", RC1, multi_device=bool(prefix))
        assert found is not None and found.failure is F.CONFIG_ERROR and found.permanent, (prefix, text)
        assert found.evidence == (prefix + lines[0 if check.printed else 1],)
        assert check.fix in found.remedy
    assert check.where and not check.where.startswith("mimickit/"), "paths are under mimickit/, said once"
    signature = next(s for s in SIGNATURES if s.needles and text.lower() in s.needles)
    assert signature.source.startswith(f"MimicKit source: mimickit/{check.where}")


def test_a_printed_check_text_in_a_traceback_source_line_is_not_the_evidence() -> None:
    """Python shows the failing line of source, which holds the same text, indented."""
    text = read("cpu_fail_engine_name_unsupported.stdout.txt")
    found = classify(text, RC1)
    assert found is not None and found.evidence == ("Unsupported engine: newtonn",)


def effective_row(failure: FailureClass) -> tuple[str, ...]:
    """What mkd.policy.decide does for a class by default: a permanent class gives up."""
    if failure in PERMANENT:
        return ("give_up",)
    return DEFAULT_STEPS[failure.value]


# the words a remedy must use for each step of its policy row
STEP_WORDS = {
    "retry": "runs it again unchanged",
    "step_down": "lower num_envs",
    "single_device": "single device",
    "nccl_preset": "NCCL preset",
    "new_port": "new free master_port",
    "mesa": "MESA_GL_VERSION_OVERRIDE",
}


def remedy_texts() -> list[tuple[FailureClass, str, bool]]:
    texts = [(failure, text, False) for failure, text in REMEDIES.items()]
    texts += [(s.failure, s.remedy, bool(s.permanent)) for s in SIGNATURES if s.remedy is not None]
    return texts


@pytest.mark.parametrize(
    ("failure", "remedy", "permanent"), remedy_texts(), ids=lambda v: v[:40] if isinstance(v, str) else ""
)
def test_every_remedy_says_what_the_policy_does(failure: FailureClass, remedy: str, permanent: bool) -> None:
    """A signature marked permanent is not retried whatever its class's row says (decide sees permanent)."""
    defaults = Retry()
    row = ("give_up",) if permanent else effective_row(failure)
    if row == ("give_up",):
        assert remedy.startswith("Not retried"), remedy
        rest = remedy.removeprefix("Not retried")
        assert "retr" not in rest.lower() and "again unchanged" not in rest, "a class that gives up promises no retry"
        return
    assert "not retried" not in remedy.lower()
    for step in row:
        assert STEP_WORDS[step] in remedy, (step, remedy)
    if any(step in ("retry", "new_port") for step in row):  # repeated until the attempts run out
        assert f"up to {defaults.max_attempts} attempts" in remedy
        assert f"{defaults.max_no_progress} in a row make no progress" in remedy
        assert "once" not in remedy
    if "once" in remedy:
        assert row == ("mesa",), "only the Mesa step is taken a single time"


def test_permanence_follows_the_policy_row() -> None:
    assert set(DEFAULT_STEPS) | {F.CANCELLED.value} == {member.value for member in FailureClass}
    for failure in FailureClass:
        if failure is F.CANCELLED:  # a cancel ends the job; the policy is never asked
            assert failure in PERMANENT
            continue
        assert (DEFAULT_STEPS[failure.value] == ("give_up",)) == (failure in PERMANENT), failure
    nan = classify(read("cpu_train_nenv4_stock_agent_nan_divergence_then_sigterm.stdout.txt"), None)
    assert nan is not None and nan.permanent


def test_decide_never_retries_a_class_whose_remedy_says_not_retried() -> None:
    rng = random.Random(1)
    for failure, remedy, permanent in remedy_texts():
        obs = Observation(stage_kind="train", failure=failure.value, permanent=permanent or failure in PERMANENT)
        decision = decide(obs, Plan(num_envs=128), Retry(), attempts_in_stage=1, no_progress_streak=1, rng=rng)
        assert (decision.action == "fail") == remedy.startswith("Not retried"), (failure, decision)


# -- a rank that lost its root or a peer (mimickit.md §6.1, §6.3)
def test_a_lingering_rank_alone_is_peer_lost() -> None:
    """The H100 log of rank 1 after its root was SIGKILLed: only its TCPStore warnings, no exit."""
    text = read("gpu_h100_2gpu_kill9_root.stdout.txt")
    found = classify(text, None, multi_device=True)
    assert found is not None and found.failure is F.PEER_LOST and not found.permanent
    assert any("Broken pipe" in line and line.startswith("[rank1]:") for line in found.evidence)
    assert any("TCPStore server has shut down too early" in line for line in found.evidence)
    assert "kills the whole process group" in found.remedy


def test_the_root_killed_by_a_signal_is_the_cause_not_its_orphans() -> None:
    text = read("gpu_h100_2gpu_kill9_root.stdout.txt")
    killed = classify(text, KILL, multi_device=True)
    assert killed is not None and killed.failure is F.KILLED
    assert any("Broken pipe" in line for line in killed.evidence), "the orphan's lines are kept as evidence"
    stalled = classify(text, TERM, multi_device=True, stop_reason=F.STALL)
    assert stalled is not None and stalled.failure is F.STALL


def test_only_a_root_that_lost_a_peer_names_peer_lost() -> None:
    gloo = read("cpu_2proc_sigTERM_root_only.stdout.txt")  # rank 1's gloo error after the root's SIGTERM
    child = classify(gloo, RC1, multi_device=True)
    assert child is not None and child.failure is F.UNKNOWN, "rank 1's error only says the root was gone"
    real = read("cpu_2proc_fail_rank1_sigkill.stdout.txt")  # rank 1 SIGKILLed: the root's all-reduce failed
    found = classify(real, RC1, multi_device=True)
    assert found is not None and (found.failure, found.permanent) == (F.PEER_LOST, False)
    (line,) = found.evidence
    assert line.startswith("[rank0]: RuntimeError: [") and "Connection closed by peer [127.0.0.1]:58797" in line
    assert classify(real, None, multi_device=True) == found, "a bare log says the same"


def test_peer_lost_lines_do_not_hide_a_real_cause() -> None:
    orphan = "[rank1]:[W1125 21:00:55.44 ProcessGroupNCCL.cpp:1826] (maybe TCPStore server has shut down too early)"
    oom = "RuntimeError: Failed to allocate 34406400 bytes on device 'cuda:0'"
    found = classify(f"{read('cpu_train_nenv16_quick.stdout.txt')}{oom}\n{orphan}\n", RC1, multi_device=True)
    assert found is not None and found.failure is F.CUDA_OOM


# -- an address-space limit (mimickit.md §6 ulimit row): one process, or only a spawned rank
def test_an_address_space_limit_says_which_limit_to_raise_and_is_not_retried() -> None:
    found = classify(read("cpu_fail_ulimit_v_1000000KB.stdout.txt"), RC1)
    assert found is not None and found.failure is F.ENV_MISMATCH and found.permanent
    assert found.remedy == ADDRESS_SPACE_REMEDY and "ulimit -v" in found.remedy
    assert any("failed to map segment from shared object" in line for line in found.evidence)


@pytest.mark.parametrize(
    ("multi", "child_first", "expected", "permanent"),
    [
        (True, True, F.STARTUP_MULTI_DEVICE, False),  # only rank 1 hit the limit: the ladder goes on
        (True, False, F.ENV_MISMATCH, True),  # the root hit it before any rank started: the same limit again
        (False, True, F.ENV_MISMATCH, True),  # one process: nothing to step down to
    ],
)
def test_where_the_address_space_ran_out_decides_the_class(
    multi: bool, child_first: bool, expected: FailureClass, permanent: bool
) -> None:
    limit = [
        "Traceback (most recent call last):",
        "OSError: /venv/lib/python3.11/site-packages/warp/bin/warp.so: failed to map segment from shared object",
        "RuntimeError: Failed to load the shared library '/venv/lib/python3.11/site-packages/warp/bin/warp.so'",
    ]
    child = ["Process Process-1:"]
    text = "\n".join(["Building deepmimic env", *(child + limit if child_first else limit + child)]) + "\n"
    found = classify(text, ExitInfo(None, 15), multi_device=multi, stage_kind="train")
    assert found is not None and found.failure is expected and found.permanent is permanent
