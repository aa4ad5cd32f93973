"""`mkd explain LOGFILE`: classify any MimicKit console log, with no job or daemon around it.

A bare log carries no exit status, so it is inferred where the text allows: a traceback at
the very end means exit 1 (KeyboardInterrupt: death by SIGINT), and the wrapper lines seen
in captured logs (`EXIT_CODE=N`, the shell's `Terminated` / `Killed`) are read too. Whether
the run had several devices is inferred from lines only multi-process runs print.

The console.log of an mkd attempt is not bare: the shim's exit.json beside it has the real exit
status and whether mkd asked the run to stop, and the daemon recorded its verdict (class, evidence,
stop reason) in the store and in the job's status.json. Explain then tells the daemon's story:
a run that mkd stopped for a stall is a stall, not "something outside mkd killed it".
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mkd.failures import FailureClass
from mkd.fsutil import read_json
from mkd.mimickit.classify import PERMANENT, REMEDIES, Classification, ExitInfo, classify, split_lines
from mkd.mimickit.console import ConsoleParser
from mkd.store import Store, StoreError

_HEAD_BYTES = 1 << 20  # multi-device markers are printed at start-up
_TAIL_BYTES = 16 << 20  # the end decides the exit status and the class

_WRAPPER_EXIT = re.compile(r"^EXIT_CODE=(-?\d+)\s*$")
_SHELL_NOTICE = {"Terminated": signal.SIGTERM, "Killed": signal.SIGKILL}
_TIME_OUTPUT = re.compile(r"^(?:real|user|sys)\t\d+m[\d.]+s$")
_RANK = re.compile(r"^\[rank\d+\]:\s?")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\b(?::.*)?$")
# MimicKit's own start-up and progress lines: after these, a traceback is no longer "at the end".
_PROGRESS = re.compile(
    r"^(?:Char \d+ properties|\t|Building |Loading |Loaded |Initializing |Module |\||-{10,}"
    r"|Setting seed|Using master port|Warp |Total parameter)"
)
_MULTI = re.compile(r"^(?:Using master port:|\[rank[1-9]\d*\]:|Process (?:\w+)?Process-\d+:)", re.MULTILINE)


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """`mkd explain`'s arguments: LOGFILE and --json, in either order."""
    cmd.add_argument("logfile", metavar="LOGFILE", type=Path, help="a MimicKit console log (stdout+stderr)")
    cmd.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace, *, store_path: Path | None = None) -> int:
    """0 when the log was read (classified or found fine), 2 when it could not be read.

    `store_path`: the daemon's store, where the verdict on an mkd attempt's log is recorded.
    """
    try:
        report = explain_report(args.logfile, store_path=store_path)
    except OSError as exc:
        print(f"mkd explain: cannot read {args.logfile}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def explain_main(argv: list[str], *, store_path: Path | None = None) -> int:
    """CLI entry: 0 when the log was read (classified or found fine), 2 when it could not be read."""
    parser = argparse.ArgumentParser(prog="mkd explain", description="Classify a MimicKit console log.")
    add_arguments(parser)
    return run(parser.parse_args(argv), store_path=store_path)


def explain_file(path: Path, *, multi_device: bool | None = None, store_path: Path | None = None) -> str:
    """Human text for the log at `path`: class, evidence, remedy, exit status and progress."""
    return format_report(explain_report(path, multi_device=multi_device, store_path=store_path))


def explain_report(path: Path, *, multi_device: bool | None = None, store_path: Path | None = None) -> dict[str, Any]:
    """The same as explain_file, as a JSON-ready dict (raises OSError if the file is unreadable)."""
    text = _read(path)
    shim = _shim_exit(path)
    exit_info, exit_source = (shim.exit, "exit.json beside the log") if shim else infer_exit(text)
    record = daemon_record(path, store_path)
    multi = infer_multi_device(text) if multi_device is None else multi_device
    stop = _stop(shim, record, (path.parent / "postmortem").is_dir())
    found = classify(
        text, exit_info, multi_device=multi, stage_kind=_stage_kind(text), stop_reason=_classify_stop_reason(stop)
    )
    console = ConsoleParser()
    console.feed(text)
    console.close()
    last = console.last
    result = console.test_result
    return {
        "file": str(path),
        **_verdict(found, exit_info, record, stop),
        "stopped_by_mkd": stop is not None,
        "stop_reason": None if stop is None else stop.reason,
        "recorded_in": None if record is None else record.source,
        "exit": None if exit_info is None else {**vars(exit_info), "inferred_from": exit_source},
        "multi_device": multi,
        "progress": None
        if last is None
        else {"iteration": last.iteration, "samples": last.samples, "wall_time_h": last.wall_time_h},
        "test_result": None if result is None else vars(result),
    }


@dataclass(frozen=True)
class ShimExit:
    """exit.json, written by the attempt's shim: how the root ended and whether mkd asked it to stop."""

    exit: ExitInfo
    stop_requested: bool


@dataclass(frozen=True)
class DaemonRecord:
    """The daemon's verdict on one attempt, from the store or the job's status.json."""

    source: str  # "the store" or "status.json"
    ended: bool
    failure: str | None  # a FailureClass value, None for a pass
    evidence: tuple[str, ...]
    stop_reason: str | None  # why mkd stopped it (the store only)
    outcome: str | None  # succeeded, failed, stopped, killed, lost, ...


@dataclass(frozen=True)
class _Stop:
    reason: str | None  # None: mkd asked it to stop, the reason is not at hand
    evidence: tuple[str, ...]
    postmortem: bool = False  # mkd kept ATTEMPT_DIR/postmortem/ before stopping it


def _shim_exit(path: Path) -> ShimExit | None:
    """An mkd attempt's console.log has the shim's exit.json beside it: the real exit status."""
    data = read_json(path.with_name("exit.json"))
    if not isinstance(data, dict) or ("returncode" not in data and "signal" not in data):
        return None
    return ShimExit(ExitInfo(data.get("returncode"), data.get("signal")), bool(data.get("stop_requested")))


def daemon_record(path: Path, store_path: Path | None = None) -> DaemonRecord | None:
    """What the daemon recorded about the attempt whose console.log is `path`: the store first
    (class, evidence, stop reason), else runs/JOB/status.json (class and outcome); None for a log
    that is no mkd attempt's (attempts live in runs/JOB/attempts/NN-STAGE/)."""
    attempt_dir = path.resolve().parent
    return _from_store(attempt_dir, store_path) or _from_status_json(attempt_dir)


def _from_store(attempt_dir: Path, store_path: Path | None) -> DaemonRecord | None:
    if store_path is None or not store_path.is_file():
        return None
    try:
        store = Store.open(store_path, readonly=True)
    except (StoreError, sqlite3.Error, OSError):
        return None
    try:
        attempts = store.attempts(attempt_dir.parent.parent.name)  # runs/JOB/attempts/NN-STAGE
        match = next((a for a in attempts if _same_dir(a.dir, attempt_dir)), None)
        if match is None and (attempt_dir / "exit.json").exists():  # an attempt folder elsewhere: every attempt
            match = next((a for a in store.attempts() if _same_dir(a.dir, attempt_dir)), None)
    except sqlite3.Error:
        return None
    finally:
        store.close()
    if match is None:
        return None
    return DaemonRecord(
        "the store",
        match.state == "ended",
        match.failure_class,
        tuple(match.evidence),
        match.stop_reason,
        match.outcome,
    )


def _from_status_json(attempt_dir: Path) -> DaemonRecord | None:
    status = read_json(attempt_dir.parent.parent / "status.json")
    attempts = status.get("attempts") if isinstance(status, dict) else None
    for entry in attempts if isinstance(attempts, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("dir"), str) and _same_dir(entry["dir"], attempt_dir):
            failure = entry.get("failure_class")
            return DaemonRecord(
                "status.json",
                entry.get("state") == "ended",
                failure if isinstance(failure, str) else None,
                (),
                None,
                entry.get("outcome"),
            )
    return None


def _same_dir(recorded: str, attempt_dir: Path) -> bool:
    try:
        return Path(recorded).resolve() == attempt_dir
    except OSError:
        return False


def _stop(shim: ShimExit | None, record: DaemonRecord | None, postmortem: bool) -> _Stop | None:
    """Whether mkd itself stopped the run, and why, from every record there is."""
    if record is not None and record.stop_reason:
        return _Stop(record.stop_reason, record.evidence, postmortem)
    if record is not None and record.outcome == "stopped":  # status.json: the class is the reason
        return _Stop(record.failure, record.evidence, postmortem)
    if shim is not None and shim.stop_requested:
        return _Stop(None, (), postmortem)
    return None


_CLASSIFY_STOPS = frozenset({FailureClass.STALL, FailureClass.TIMEOUT, FailureClass.CANCELLED})


def _classify_stop_reason(stop: _Stop | None) -> FailureClass | None:
    if stop is None or stop.reason not in {member.value for member in _CLASSIFY_STOPS}:
        return None
    return FailureClass(stop.reason)


def infer_exit(text: str) -> tuple[ExitInfo | None, str]:
    """The exit status the log's end implies, and why; (None, reason) when it does not say."""
    lines = [line for line in split_lines(text) if line.strip() and not _TIME_OUTPUT.match(line)]
    if not lines:
        return None, "the log is empty"
    wrapper = _WRAPPER_EXIT.match(lines[-1])
    if wrapper:
        code = int(wrapper.group(1))
        info = ExitInfo(None, -code) if code < 0 else ExitInfo(code, None)
        return info, "an EXIT_CODE= line appended by the capturing script"
    if lines[-1].strip() in _SHELL_NOTICE:
        return ExitInfo(None, _SHELL_NOTICE[lines[-1].strip()]), f"the shell's {lines[-1].strip()!r} notice"
    exception = _final_exception(lines)
    if exception is None:
        return None, "the log does not end with a traceback or an exit marker"
    if exception.startswith("KeyboardInterrupt"):
        return ExitInfo(None, signal.SIGINT), "the log ends with a KeyboardInterrupt traceback"
    return ExitInfo(1, None), "the log ends with a traceback"


def infer_multi_device(text: str) -> bool:
    """Lines only a multi-process run prints: the master port, other ranks' output, a spawn child's traceback."""
    return _MULTI.search(text) is not None or text.count("Setting seed:") > 1


def format_report(report: dict[str, Any]) -> str:
    """Plain text for people, one fact per line."""
    out = [f"log: {report['file']}"]
    if report["failure"] is None:
        out.append(f"verdict: {report['verdict']}")
        if report["remedy"]:
            out.append(f"remedy: {report['remedy']}")
    else:
        permanence = "permanent" if report["permanent"] else "retryable"
        out += [f"verdict: {report['failure']} ({permanence})", f"remedy: {report['remedy']}"]
    if report["evidence"]:
        out.append("evidence:")
        out += [f"  | {line}" for line in report["evidence"]]
    if report["stopped_by_mkd"]:
        why = report["stop_reason"] or "reason not recorded beside the log"
        out.append(f"stopped by: mkd ({why})")
    if report["recorded_in"]:
        out.append(f"verdict recorded by the daemon in: {report['recorded_in']}")
    exit_info = report["exit"]
    if exit_info is None:
        out.append("exit status: unknown (the log does not say)")
    elif exit_info["signal"] is not None:
        sender = ", sent by mkd" if report["stopped_by_mkd"] else ""
        out.append(f"exit status: killed by signal {exit_info['signal']} ({exit_info['inferred_from']}{sender})")
    else:
        out.append(f"exit status: {exit_info['returncode']} ({exit_info['inferred_from']})")
    out.append(f"multi-device: {'yes' if report['multi_device'] else 'no'}")
    progress = report["progress"]
    if progress is None:
        out.append("progress: no iteration table")
    else:
        out.append(
            f"progress: iteration {progress['iteration']}, samples {progress['samples']}, "
            f"wall time {progress['wall_time_h']} h"
        )
    result = report["test_result"]
    if result is not None:
        out.append(
            f"test result: Mean Return {result['mean_return']}, Mean Episode Length "
            f"{result['mean_episode_length']}, Episodes {result['episodes']}"
        )
    return "\n".join(out)


def _verdict(
    found: Classification | None, exit_info: ExitInfo | None, record: DaemonRecord | None, stop: _Stop | None
) -> dict[str, Any]:
    """The daemon's verdict where it recorded one for this attempt, else the log's own."""
    if record is not None and record.ended:
        return _recorded_verdict(found, record)
    if stop is not None and (found is None or found.failure is FailureClass.KILLED):
        # mkd sent the signal itself: never "something outside mkd killed it"
        why = (
            " It kept a post-mortem bundle (postmortem/) first, as it does for a stall, a timeout or a "
            "kill-now signature, not for a cancel."
            if stop.postmortem
            else ""
        )
        return {
            "failure": None,
            "verdict": "stopped by mkd",
            "permanent": None,
            "remedy": "mkd stopped this run itself (exit.json says stop_requested); `mkd status JOB` and "
            f"`mkd report JOB` say why.{why}",
            "evidence": list(stop.evidence),
        }
    if found is None:
        ok = exit_info is not None and exit_info.returncode == 0
        verdict = "ok" if ok else "no failure signature found"
        return {"failure": None, "verdict": verdict, "permanent": None, "remedy": None, "evidence": []}
    return {
        "failure": found.failure.value,
        "verdict": found.failure.value,
        "permanent": found.permanent,
        "remedy": found.remedy,
        "evidence": list(found.evidence),
    }


def _recorded_verdict(found: Classification | None, record: DaemonRecord) -> dict[str, Any]:
    if record.failure is None:
        return {"failure": None, "verdict": "ok", "permanent": None, "remedy": None, "evidence": []}
    same = found is not None and found.failure.value == record.failure
    known = record.failure in {member.value for member in FailureClass}
    if same and found is not None:
        remedy, permanent = found.remedy, found.permanent
    elif known:
        failure = FailureClass(record.failure)
        remedy, permanent = REMEDIES[failure], failure in PERMANENT
    else:
        remedy, permanent = None, None
    evidence = list(record.evidence) or (list(found.evidence) if same and found is not None else [])
    return {
        "failure": record.failure,
        "verdict": record.failure,
        "permanent": permanent,
        "remedy": remedy,
        "evidence": evidence,
    }


def _final_exception(lines: list[str]) -> str | None:
    """The exception line of a traceback that ends the log (its message may run on a few lines)."""
    tracebacks = [i for i, line in enumerate(lines) if "Traceback (most recent call last):" in line]
    if not tracebacks:
        return None
    for index in range(tracebacks[-1] + 1, len(lines)):
        line = _RANK.sub("", lines[index], count=1)
        if _EXCEPTION.match(line):
            after = lines[index + 1 :]
            if len(after) <= 4 and not any(_PROGRESS.match(rest) for rest in after):
                return line
            return None
    return None


def _stage_kind(text: str) -> str:
    test_mode = "Loaded model parameters from" in text and "Logging data to" not in text
    return "test" if test_mode or "Mean Return:" in text else "train"


def _read(path: Path) -> str:
    """The log as text; of a huge log, its first MiB and last 16 MiB."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        if size <= _HEAD_BYTES + _TAIL_BYTES:
            data = handle.read()
        else:
            head = handle.read(_HEAD_BYTES)
            handle.seek(size - _TAIL_BYTES)
            data = head + b"\n" + handle.read()
    return data.decode("utf-8", errors="replace")
