"""`mkd explain LOGFILE`: classify any MimicKit console log, with no job or daemon around it.

A bare log carries no exit status, so it is inferred where the text allows: a traceback at
the very end means exit 1 (KeyboardInterrupt: death by SIGINT), and the wrapper lines seen
in captured logs (`EXIT_CODE=N`, the shell's `Terminated` / `Killed`) are read too. Whether
the run had several devices is inferred from lines only multi-process runs print.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

from mkd.fsutil import read_json
from mkd.mimickit.classify import Classification, ExitInfo, classify, split_lines
from mkd.mimickit.console import ConsoleParser

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """LOGFILE and --json, in either order (defined with the rest of the CLI in mkd.cli)."""
    from mkd.cli import explain_arguments

    explain_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """0 when the log was read (classified or found fine), 2 when it could not be read."""
    try:
        report = explain_report(args.logfile)
    except OSError as exc:
        print(f"mkd explain: cannot read {args.logfile}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def explain_main(argv: list[str]) -> int:
    """CLI entry: 0 when the log was read (classified or found fine), 2 when it could not be read."""
    parser = argparse.ArgumentParser(prog="mkd explain", description="Classify a MimicKit console log.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def explain_file(path: Path, *, multi_device: bool | None = None) -> str:
    """Human text for the log at `path`: class, evidence, remedy, exit status and progress."""
    return format_report(explain_report(path, multi_device=multi_device))


def explain_report(path: Path, *, multi_device: bool | None = None) -> dict[str, Any]:
    """The same as explain_file, as a JSON-ready dict (raises OSError if the file is unreadable)."""
    text = _read(path)
    exit_info, exit_source = _recorded_exit(path) or infer_exit(text)
    multi = infer_multi_device(text) if multi_device is None else multi_device
    found = classify(text, exit_info, multi_device=multi, stage_kind=_stage_kind(text))
    console = ConsoleParser()
    console.feed(text)
    console.close()
    last = console.last
    result = console.test_result
    return {
        "file": str(path),
        **_verdict(found, exit_info),
        "exit": None if exit_info is None else {**vars(exit_info), "inferred_from": exit_source},
        "multi_device": multi,
        "progress": None
        if last is None
        else {"iteration": last.iteration, "samples": last.samples, "wall_time_h": last.wall_time_h},
        "test_result": None if result is None else vars(result),
    }


def _recorded_exit(path: Path) -> tuple[ExitInfo, str] | None:
    """An mkd attempt's console.log has the shim's exit.json beside it: the real exit status."""
    data = read_json(path.with_name("exit.json"))
    if not isinstance(data, dict) or ("returncode" not in data and "signal" not in data):
        return None
    return ExitInfo(data.get("returncode"), data.get("signal")), "exit.json beside the log"


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
    else:
        permanence = "permanent" if report["permanent"] else "retryable"
        out += [f"verdict: {report['failure']} ({permanence})", f"remedy: {report['remedy']}", "evidence:"]
        out += [f"  | {line}" for line in report["evidence"]]
    exit_info = report["exit"]
    if exit_info is None:
        out.append("exit status: unknown (the log does not say)")
    elif exit_info["signal"] is not None:
        out.append(f"exit status: killed by signal {exit_info['signal']} ({exit_info['inferred_from']})")
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


def _verdict(found: Classification | None, exit_info: ExitInfo | None) -> dict[str, Any]:
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
