"""Classify a MimicKit attempt from its exit status and console log into one failure class.

Every log signature lives in `SIGNATURES`, each with its class and where its text came from:
a section of the team's MimicKit notes (mimickit.md, real runs) or "synthesized" for the
runbook's class D texts and NCCL init errors, which were never provoked for real. The classes
follow the runbook's Fallback Ladder (A-D) plus the failures the real runs showed.

`classify` decides for an attempt that ended (or is still running); `scan_live` answers a
narrower question for a running one: do these new lines mean "kill it now", because the real
thing would otherwise hang forever (class A's dead child, class D's abort, a port in use)?
"""

from __future__ import annotations

import math
import re
import signal as signals
from collections.abc import Sequence
from dataclasses import dataclass

from mkd.failures import FailureClass
from mkd.mimickit.console import ConsoleParser, IterationRow
from mkd.mimickit.results import parse_test_result


@dataclass(frozen=True)
class Classification:
    failure: FailureClass
    evidence: tuple[str, ...]  # the log lines that decided it, verbatim
    remedy: str  # one sentence: what the runbook / policy does about it
    permanent: bool  # retrying cannot fix it


@dataclass(frozen=True)
class ExitInfo:
    """How the root process ended: returncode None with a signal = killed; both None = running."""

    returncode: int | None
    signal: int | None


@dataclass(frozen=True)
class Signature:
    failure: FailureClass
    pattern: re.Pattern[str]
    source: str  # where the text was seen, or "synthesized: ..." with what it was written from
    live: bool = False  # in a running attempt it means "kill now": the real thing would hang
    permanent: bool | None = None  # overrides the class's default
    # Lower-case texts every match contains (one of them): a cheap `in` test on a whole chunk
    # of console output before any regex; tests check them against generated matches.
    needles: tuple[str, ...] = ()


def _sig(
    failure: FailureClass,
    pattern: str,
    source: str,
    *,
    live: bool = False,
    permanent: bool | None = None,
    needles: tuple[str, ...],
) -> Signature:
    # ASCII: console texts are ASCII, and a needle must hold for every match (Unicode case folding
    # would let "ſhader" match "shader").
    return Signature(failure, re.compile(pattern, re.ASCII), source, live=live, permanent=permanent, needles=needles)


_F = FailureClass
_EXC = r"^(?:\[rank\d+\]:\s*)?"  # an exception line, perhaps with torch's rank prefix (mimickit.md §2)

SIGNATURES: tuple[Signature, ...] = (
    # -- runbook class D: stuck after an NCCL abort. Never provoked for real; the texts are the
    #    runbook's ("Abort COMPLETE", "Cuda failure 2 'out of memory'") in NCCL's WARN/INFO format.
    _sig(_F.NCCL_ABORT_HANG, r"Abort COMPLETE", "synthesized: runbook class D", live=True, needles=("abort complete",)),
    _sig(
        _F.NCCL_ABORT_HANG,
        r"NCCL WARN Cuda failure \d+ 'out of memory'",
        "synthesized: runbook class D",
        live=True,
        needles=("nccl warn cuda failure ",),
    ),
    # -- CUDA out of memory: three texts seen on H100 (mimickit.md §6.3), plus torch's own allocator.
    _sig(
        _F.CUDA_OOM,
        r"Failed to allocate \d+ bytes on device",
        "seen: §6.3 row 1, Warp alloc at env build",
        needles=("failed to allocate ",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Warp CUDA error 2: out of memory",
        "seen: §6.3 rows 1 and 3, Warp's native stderr line",
        needles=("warp cuda error 2: out of memory",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"CUBLAS_STATUS_ALLOC_FAILED",
        "seen: §6.3 row 2, first actor forward",
        needles=("cublas_status_alloc_failed",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Graph launch error: .*out of memory",
        "seen: §6.3 row 3, mid-run CUDA graph launch",
        needles=("graph launch error: ",),
    ),
    _sig(
        _F.CUDA_OOM,
        r"CUDA out of memory|OutOfMemoryError",
        "not seen: torch's allocator text (§6.3 note)",
        needles=("cuda out of memory", "outofmemoryerror"),
    ),
    _sig(
        _F.CUDA_OOM,
        r"Cuda failure (?:\d+ )?'out of memory'",
        "synthesized: NCCL's last-error line in torch reports",
        needles=("cuda failure ",),
    ),
    # -- runbook class A: a start-up failure of a multi-device run. A spawn child's traceback
    #    starts with "Process Process-N:" and the root then waits for it forever (§6.2, §6.3 class A).
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"^Process (?:\w+)?Process-\d+:",
        "seen: §6.2 and §6.3 class A, rank 1",
        live=True,
        needles=("process-",),
    ),
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"DistBackendError",
        "synthesized: torch DistBackendError on NCCL init",
        needles=("distbackenderror",),
    ),
    _sig(
        _F.STARTUP_MULTI_DEVICE,
        r"nccl(?:UnhandledCuda|System|Internal|Remote)Error",
        "synthesized: NCCL",
        needles=("ncclunhandledcudaerror", "ncclsystemerror", "ncclinternalerror", "ncclremoteerror"),
    ),
    # -- master_port taken: rank 0 fails, rank 1 joins the other run's store, never exits (§6.2).
    _sig(
        _F.PORT_IN_USE,
        r"EADDRINUSE|address already in use",
        "seen: §6.2 master_port already in use",
        live=True,
        needles=("eaddrinuse", "address already in use"),
    ),
    # -- the GL viewer: headless machine (seen, §1 `visualize`), WSL/Mesa shaders (runbook Stage 3).
    _sig(
        _F.VISUALIZE_GL,
        r"NoSuchDisplayException",
        "seen: §6 no --visualize false",
        permanent=True,
        needles=("nosuchdisplayexception",),
    ),
    # seen on the H100 machine (no libGL there): pyglet's ImportError, re-raised by Newton's viewer
    _sig(
        _F.VISUALIZE_GL,
        r'Library "GL" not found',
        "seen: H100, tests/fixtures/gpu_h100",
        permanent=True,
        needles=('library "gl" not found',),
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"OpenGLRenderer requires pyglet",
        "seen: H100, tests/fixtures/gpu_h100",
        permanent=True,
        needles=("openglrenderer requires pyglet",),
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"GLSL 1\.50 is not supported",
        "runbook Stage 3 (not run here)",
        needles=("glsl 1.50 is not supported",),
    ),
    _sig(
        _F.VISUALIZE_GL,
        r"(?i:shader ?(?:compil\w*|link\w*) (?:fail|error))|ShaderException",
        "synthesized",
        needles=("shader",),
    ),
    # -- NaN divergence: a loss or return printed as nan in a console table (§6 NaN row).
    _sig(
        _F.NAN_DIVERGENCE,
        r"^\|\s*\w*(?i:loss|return)\w*\s*\|\s*nan\s*\|",
        "seen: §6 NaN divergence",
        live=True,
        needles=("nan",),
    ),
    # -- wrong package versions or builds (§5.1 version failures, §6.2, §6).
    _sig(
        _F.ENV_MISMATCH,
        r"'AttributeNamespace' object has no attribute",
        "seen: §5.1 newton 1.8.0",
        needles=("'attributenamespace' object has no attribute",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"module 'warp\.config' has no attribute",
        "seen: §5.1 newton 1.0.0 + warp 1.19.0",
        needles=("module 'warp.config' has no attribute",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"doesn't have NCCL built in",
        "seen: §6.2 rank 1 on a CPU-only torch",
        needles=("doesn't have nccl built in",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"Torch not compiled with CUDA enabled",
        "seen: §6 default --devices cuda:0 on CPU",
        needles=("torch not compiled with cuda enabled",),
    ),
    _sig(
        _F.ENV_MISMATCH,
        r"Failed to load the shared library .*warp",
        "seen: §6 ulimit -v 1 GB at Warp init",
        needles=("failed to load the shared library ",),
    ),
    # -- permanent configuration errors: plain tracebacks with rc 1 (§1, §6).
    _sig(
        _F.CONFIG_ERROR,
        _EXC + r"FileNotFoundError: \[Errno 2\]",
        "seen: §6 arg file / env config / motion / model",
        needles=("filenotfounderror: [errno 2]",),
    ),
    _sig(_F.CONFIG_ERROR, _EXC + r"KeyError: ", "seen: §6 agent yaml without a key", needles=("keyerror: ",)),
    _sig(
        _F.CONFIG_ERROR,
        r"AssertionError: Unsupported (?:agent|mode|logger)",
        "seen: §6 bad agent_name/mode/logger",
        needles=("assertionerror: unsupported ",),
    ),
    _sig(
        _F.CONFIG_ERROR,
        r"ValueError: invalid literal for int\(\)",
        "seen: §6 --num_envs four",
        needles=("valueerror: invalid literal for int()",),
    ),
    _sig(
        _F.CONFIG_ERROR,
        _EXC + r"IndexError: list index out of range",
        "seen: §6 bare --visualize",
        needles=("indexerror: list index out of range",),
    ),
    # -- ended by a signal: evidence only, never a cause on its own (§6.1).
    _sig(
        _F.KILLED,
        _EXC + r"KeyboardInterrupt\s*$",
        "seen: §6.1 SIGINT at default disposition",
        needles=("keyboardinterrupt",),
    ),
    _sig(
        _F.KILLED,
        r"TCPStore server has shut down too early|Connection closed by peer",
        "seen: §6.1 orphan rank",
        needles=("tcpstore server has shut down too early", "connection closed by peer"),
    ),
    # -- a multi-process root's own traceback: it then hangs joining its children (§6.1 SIGINT to root).
    _sig(
        _F.UNKNOWN,
        r"^\[rank0\]: Traceback \(most recent call last\)",
        "seen: §6.1 root-only SIGINT",
        live=True,
        needles=("[rank0]: traceback (most recent call last)",),
    ),
)

# When several classes match, the first one here names the cause (most specific first).
CAUSE_ORDER: tuple[FailureClass, ...] = (
    _F.NCCL_ABORT_HANG,
    _F.ENV_MISMATCH,
    _F.CONFIG_ERROR,
    _F.PORT_IN_USE,
    _F.VISUALIZE_GL,
    _F.CUDA_OOM,
    _F.STARTUP_MULTI_DEVICE,
    _F.NAN_DIVERGENCE,
)

REMEDIES: dict[FailureClass, str] = {
    _F.STARTUP_MULTI_DEVICE: "Kill the process group, apply the NCCL profile and walk the num_envs probe ladder "
    "down; if every scale fails, fall back to a single device (runbook class A).",
    _F.WARMUP_OUTPUTS_MISSING: "Check the console tail and that out_dir is writable, then re-run the warm-up "
    "with a lower num_envs (runbook class B).",
    _F.LONG_RUN_EXITED: "Re-run the long run from the same configs with one change: a lower num_envs or fewer "
    "devices (runbook class C).",
    _F.NCCL_ABORT_HANG: "Kill the process group without waiting for it to exit, mark this scale failed and go "
    "on to the next probe scale (runbook class D).",
    _F.CUDA_OOM: "Lower num_envs, after checking that no other process holds memory on that GPU.",
    _F.PORT_IN_USE: "Kill the process group and restart with another free --master_port.",
    _F.VISUALIZE_GL: "Retry with MESA_GL_VERSION_OVERRIDE=3.3 and MESA_GLSL_VERSION_OVERRIDE=330, or run "
    "headless with --visualize false.",
    _F.NAN_DIVERGENCE: "Stop the run: it diverged and will not recover; retry with more envs or a lower learning rate.",
    _F.ENV_MISMATCH: "Fix the Python environment (newton 1.0.0 with warp-lang 1.12.1, a CUDA build of torch); "
    "retrying as is cannot help.",
    _F.CONFIG_ERROR: "Fix the job's arguments or config files; retrying as is cannot help.",
    _F.STALL: "Kill the process group and retry; no new iteration came within the stall timeout.",
    _F.TIMEOUT: "Kill the process group; the stage ran past its time limit.",
    _F.CANCELLED: "Nothing to do: the attempt was cancelled on request.",
    _F.KILLED: "Retry; something outside mkd (e.g. the kernel's OOM killer) killed the run, check dmesg.",
    _F.LOST: "Retry; the shim died without recording how the run ended (mkd killed what was left of its group).",
    _F.SLURM_NODE_FAIL: "Resubmit: Slurm lost the node (NODE_FAIL, BOOT_FAIL); a long run resumes from its "
    "last model.pt.",
    _F.SLURM_PREEMPTED: "Resubmit: a job of higher priority preempted it; a long run resumes from its last model.pt.",
    _F.SLURM_TIMEOUT: "Resubmit (a long run resumes from its last model.pt), or raise [executor] time_limit: "
    "the job reached its Slurm time limit.",
    _F.SLURM_OOM: 'Lower num_envs, or ask for more memory (sbatch_args = ["--mem=..."]): Slurm killed the job at '
    "its host memory limit.",
    _F.SLURM_SUBMIT_REFUSED: "Run `mkd doctor` and check [executor] partition, account and qos: sbatch refused "
    "the job.",
    _F.UNKNOWN: "Read the evidence; retry once before treating it as permanent.",
}

PERMANENT: frozenset[FailureClass] = frozenset({_F.CONFIG_ERROR, _F.ENV_MISMATCH, _F.CANCELLED})
STAGE_KINDS: tuple[str, ...] = ("train", "warmup", "long_run", "test", "visualize", "probe")
_TRAINING_STAGES = frozenset({"train", "warmup", "long_run", "probe"})
_STOP_REASONS = frozenset({_F.STALL, _F.TIMEOUT, _F.CANCELLED})
# Shells and `timeout` report death by signal N as 128 + N (mimickit.md §0: 143 SIGTERM, 137 SIGKILL).
_SHELL_SIGNALS = frozenset(
    {signals.SIGHUP, signals.SIGINT, signals.SIGQUIT, signals.SIGABRT, signals.SIGKILL, signals.SIGTERM}
)
_TIMEOUT_RC = 124  # the runbook wraps probes in `timeout`, which exits 124 when its limit hits
_MAX_EVIDENCE = 8
# Classes whose evidence is the log's tail (where it stopped), not signature matches.
_TAIL_EVIDENCE = frozenset({_F.UNKNOWN, _F.LONG_RUN_EXITED})
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class _Hit:
    index: int
    line: str
    signature: Signature


def row_has_nan(row: IterationRow) -> bool:
    """Whether a console table shows a loss or a return as NaN (MimicKit keeps running regardless)."""
    for key in row.values:
        value = row.get(key)
        if value is not None and math.isnan(value) and ("loss" in key.lower() or "return" in key.lower()):
            return True
    return False


def split_lines(text: str) -> list[str]:
    """Console text as lines; `\\r` ends a line too (progress lines and log.txt rows use it)."""
    return _LINE_END.split(text)


def scan_live(new_lines: list[str]) -> Classification | None:
    """For an attempt still running: a provisional class if these lines mean "kill it now", else None.

    Classify the whole log again after the kill; that answer is the final one.
    """
    hits = _hits(new_lines)
    if not any(hit.signature.live for hit in hits):
        return None
    cause = _cause(hits, multi_device=True, startup_end=len(new_lines))
    if cause is not None:
        return cause
    return _make(_F.UNKNOWN, [hit.line for hit in hits if hit.signature.live])


def classify(
    log_text: str,
    exit: ExitInfo | None,
    *,
    multi_device: bool = False,
    stage_kind: str = "train",
    outputs_missing: bool = False,
    had_progress: bool = False,
    stop_reason: FailureClass | None = None,
) -> Classification | None:
    """The failure class of an attempt, or None when nothing looks wrong.

    `stop_reason` is STALL, TIMEOUT or CANCELLED when mkd itself stopped the attempt. A failure
    signature in the log (class A or D, a port in use, NaN, a root's config error...) still wins
    over STALL and TIMEOUT, since it says why the run stopped making progress; CANCELLED always
    wins. Exit statuses -N and 128+N (a shell's way) mean death by signal N.
    """
    if stage_kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {stage_kind!r}; expected one of {', '.join(STAGE_KINDS)}")
    if stop_reason is not None and stop_reason not in _STOP_REASONS:
        raise ValueError(f"stop_reason must be stall, timeout or cancelled, not {stop_reason}")
    lines = split_lines(log_text)
    hits = _hits(lines)
    startup_end = 0 if had_progress else _first_table_end(lines)
    cause = _cause(hits, multi_device=multi_device, startup_end=startup_end)
    state, code = _decode(exit)
    if state == "running":
        return cause
    if stop_reason is _F.CANCELLED:
        return _make(_F.CANCELLED, _tail(lines, 5))
    if state == "exit" and code == 0:
        if cause is not None and cause.failure is _F.NAN_DIVERGENCE:
            return cause
        return _clean_exit(lines, stage_kind, outputs_missing)
    if cause is not None:
        return cause
    if state == "signal" or code == _TIMEOUT_RC:
        return _ended_by_signal(lines, hits, stop_reason, code if state == "signal" else None)
    if stop_reason is not None:
        return _make(stop_reason, _tail(lines, 5))
    if stage_kind == "long_run" and (had_progress or startup_end < len(lines)):
        return _make(_F.LONG_RUN_EXITED, _tail(lines, 20))
    return _make(_F.UNKNOWN, _tail(lines, 20))


def _ended_by_signal(
    lines: list[str], hits: list[_Hit], stop_reason: FailureClass | None, signum: int | None
) -> Classification:
    if stop_reason is not None:
        return _make(stop_reason, _tail(lines, 5))
    if signum is None:  # exit status 124: the `timeout` wrapper of a runbook command
        return _make(_F.TIMEOUT, _tail(lines, 5))
    killed = [hit.line for hit in hits if hit.signature.failure is _F.KILLED]
    return _make(_F.KILLED, killed or _tail(lines, 5))


def _clean_exit(lines: list[str], stage_kind: str, outputs_missing: bool) -> Classification | None:
    if outputs_missing and stage_kind in _TRAINING_STAGES:
        return _make(_F.WARMUP_OUTPUTS_MISSING, _tail(lines, 5))
    if stage_kind in ("test", "visualize") and parse_test_result("\n".join(lines[-200:])) is None:
        return _make(_F.UNKNOWN, _tail(lines, 5))  # exit 0, but the pass condition's line never came
    return None


def _decode(exit: ExitInfo | None) -> tuple[str, int | None]:
    """("running", None), ("signal", N) or ("exit", rc); -N and 128+N mean death by signal N."""
    if exit is None or (exit.returncode is None and exit.signal is None):
        return "running", None
    if exit.signal is not None:
        return "signal", exit.signal
    rc = exit.returncode
    assert rc is not None
    if rc < 0:
        return "signal", -rc
    if rc - 128 in _SHELL_SIGNALS:
        return "signal", rc - 128
    return "exit", rc


_NEEDLES = tuple(sorted({needle for signature in SIGNATURES for needle in signature.needles}))


def _hits(lines: Sequence[str]) -> list[_Hit]:
    """Signature matches, line by line; only the signatures whose needle is in the text are tried
    (nearly every chunk of a console is a progress table that holds none)."""
    lowered = "\n".join(lines).lower()
    present = {needle for needle in _NEEDLES if needle in lowered}
    if not present:
        return []
    candidates = [sig for sig in SIGNATURES if not present.isdisjoint(sig.needles)]
    hits = []
    for index, line in enumerate(lines):
        low = line.lower()
        for signature in candidates:
            if any(needle in low for needle in signature.needles) and signature.pattern.search(line):
                hits.append(_Hit(index, line, signature))
    return hits


def _first_table_end(lines: Sequence[str]) -> int:
    """Index of the line that completes the first console table; len(lines) if there is none."""
    parser = ConsoleParser()
    for index, line in enumerate(lines):
        if parser.feed(line + "\n"):
            return index
    return len(lines)


def _cause(hits: list[_Hit], *, multi_device: bool, startup_end: int) -> Classification | None:
    """The most specific class among the hits, with class A decided by position and device count."""
    by_class: dict[FailureClass, list[_Hit]] = {}
    for hit in hits:
        by_class.setdefault(hit.signature.failure, []).append(hit)
    children = [hit for hit in by_class.get(_F.STARTUP_MULTI_DEVICE, []) if hit.index < startup_end]
    for failure in CAUSE_ORDER:
        found = by_class.get(failure, [])
        if failure is _F.STARTUP_MULTI_DEVICE:
            found = children
        if not found:
            continue
        if failure is _F.CUDA_OOM and (multi_device or children) and found[0].index < startup_end:
            return _make(_F.STARTUP_MULTI_DEVICE, [hit.line for hit in sorted(children + found, key=_index)])
        permanent = any(hit.signature.permanent for hit in found) or None
        return _make(failure, [hit.line for hit in found], permanent)
    return None


def _index(hit: _Hit) -> int:
    return hit.index


def _make(failure: FailureClass, lines: Sequence[str], permanent: bool | None = None) -> Classification:
    """Evidence keeps each distinct line once, in log order: at most 8 matched lines, or a whole tail."""
    distinct = tuple(dict.fromkeys(line for line in lines if line.strip()))
    evidence = distinct if failure in _TAIL_EVIDENCE else distinct[:_MAX_EVIDENCE]
    return Classification(
        failure=failure,
        evidence=evidence,
        remedy=REMEDIES[failure],
        permanent=failure in PERMANENT if permanent is None else permanent,
    )


def _tail(lines: Sequence[str], count: int) -> list[str]:
    return [line for line in lines if line.strip()][-count:]
