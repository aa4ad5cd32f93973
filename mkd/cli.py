"""The `mkd` command line: a thin layer over the daemon, the store and the job files.

Everything the CLI changes goes through a file drop (incoming/ for jobs, control/ for
cancel, pause, resume, retry, priority, clean and shutdown: see mkd.control_requests), so a
script can do the same without the CLI, and the daemon stays the store's only writer.
Exit statuses: 0 done, 1 refused/failed, 2 usage, 3 no such job, 4 no daemon holds the lock,
5 `wait` timed out, 6 `plot` without matplotlib.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from mkd.layout import Layout, layout_from_text
from mkd.store import Store, StoreError

if TYPE_CHECKING:
    from mkd.config import DaemonConfig

# Imports: `mkd status` and the other commands that need only the layout (LayoutCommand)
# load argparse, sqlite3, the store and mkd.layout, not pydantic (mkd.config, mkd.jobfile),
# which was most of a `mkd status`; see quick_layout. Modules only one command needs are
# imported in that command.

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3


HOST_CONFIG = Path("/etc/mkd/mkd.toml")
EMBEDDED_CONFIG = Path(__file__).with_name("defaults") / "mkd.toml"  # default_config_text()'s file


def config_path(path: str | None) -> str | None:
    """The config file to read: `path`, else $MKD_CONFIG, else /etc/mkd/mkd.toml of a host
    install; None: the embedded defaults, based in the current directory."""
    return path or os.environ.get("MKD_CONFIG") or (str(HOST_CONFIG) if HOST_CONFIG.is_file() else None)


def load_config(path: str | None) -> tuple[DaemonConfig, Layout]:
    """The config at `path`, else $MKD_CONFIG, else /etc/mkd/mkd.toml of a host install,
    else the embedded defaults based in the current directory."""
    from mkd.config import DaemonConfig, default_config_text
    from mkd.jobfile import load_text

    path = config_path(path)
    if path:
        file = Path(path)
        config = load_text(DaemonConfig, file.read_text(encoding="utf-8"), file.name)
        return config, Layout(config, file.resolve().parent)
    config = load_text(DaemonConfig, default_config_text(), "mkd.toml (embedded defaults)")
    return config, Layout(config, Path.cwd())


def quick_layout(path: str | None) -> Layout | None:
    """The Layout that load_config(path) gives, read without validating the config with
    pydantic when mkd.layout can vouch for every key in it; None otherwise (then
    load_config reads it again and reports what is wrong, if anything)."""
    try:
        path = config_path(path)
        if path:
            file = Path(path)
            return layout_from_text(file.read_text(encoding="utf-8"), file.resolve().parent)
        return layout_from_text(EMBEDDED_CONFIG.read_text(encoding="utf-8"), Path.cwd())
    except Exception:  # unreadable, not UTF-8, ...: load_config says so
        return None


def _open_store(layout: Layout) -> Store | None:
    if not layout.db.exists():
        return None
    return Store.open(layout.db, readonly=True)


# --- commands ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    import faulthandler

    from mkd import logsetup
    from mkd.daemon import AlreadyRunning, Daemon

    faulthandler.enable()  # a watchdog SIGABRT leaves the loop's traceback in the journal
    logsetup.configure(config.log_level, sys.stderr)  # sd-daemon priorities when stderr is journald's
    path = config_path(getattr(args, "config", None))
    from mkd.executors import build_executor

    daemon = Daemon(
        config,
        layout,
        reload=(lambda: load_config(path)[0]) if path else None,
        executor=build_executor(config.executor),
    )
    try:
        daemon.open()
    except (AlreadyRunning, StoreError) as error:
        print(f"mkd: {error}", file=sys.stderr)
        return 1
    return daemon.run()


def cmd_validate(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.submit import validate_files

    return validate_files(args.files, config, layout)


def cmd_submit(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.submit import submit_file

    name = args.name[: -len(".toml")] if args.name and args.name.endswith(".toml") else args.name  # not x.toml.toml
    since = time.time()
    done = submit_file(args.file, name, args.timeout, config, layout)
    if done != 0 or not args.wait:
        return done
    return _follow_submitted(layout, name or _submitted_name(args.file), since)


def _submitted_name(file: str) -> str:
    """The name a submitted file is dropped under when --name is not given: its [job] name, or its stem."""
    from mkd.jobfile import JobFileError, load_job_file

    try:
        return load_job_file(Path(file)).job.name or Path(file).stem
    except (JobFileError, OSError):
        return Path(file).stem


def _follow_submitted(layout: Layout, name: str, since: float) -> int:
    """submit --wait: the daemon's job id for the file, then `mkd wait` on it."""
    from mkd.client.waiting import wait_jobs

    job_id = _submitted_job(layout, name, since)
    if job_id is None:
        error = layout.rejected / f"{name}.toml.error"
        if error.exists():
            sys.stderr.write(f"mkd: rejected ({error}):\n" + error.read_text(encoding="utf-8", errors="replace"))
        else:
            print(f"mkd: the daemon has not taken {name}.toml yet (is it running? `mkd status`)", file=sys.stderr)
        return EXIT_INVALID
    print(f"job {job_id}")
    return wait_jobs(layout, [job_id])


def _submitted_job(layout: Layout, name: str, since: float, timeout: float = 30.0) -> str | None:
    """The id the daemon gave the file just submitted as `name`, or None (rejected, or not taken in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = _open_store(layout)
        if store is not None:
            with _closing(store):
                job = store.find_job(name)
                if job is not None and job.submitted_at >= since - 1.0:
                    return job.job_id
        if (layout.rejected / f"{name}.toml.error").exists():
            return None
        time.sleep(0.1)
    return None


def cmd_status(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client import status_view

    if args.watch:
        from mkd.client.watch_view import watch_status

        return watch_status(layout, show_all=args.all, interval=args.interval, job=args.job)
    store = _open_store(layout)
    if args.job and (store is None or store.find_job(args.job) is None):
        from mkd.client.rejected import show_rejected

        rejected = show_rejected(layout, args.job, as_json=args.json)
        if rejected is not None:
            if store is not None:
                store.close()
            return rejected
    if store is None:
        print("no jobs yet" if not args.json else "[]")
        return 0
    with _closing(store):
        if args.job:
            code = status_view.show_job(store, args.job, as_json=args.json, rejected=layout.rejected)
        else:
            code = status_view.show_table(store, as_json=args.json, show_all=args.all)
    _banner_if_down(layout)
    return code


def _banner_if_down(layout: Layout) -> None:
    from mkd.client.daemon_lock import lock_holder, not_running_banner

    if lock_holder(layout) is None:
        print(f"mkd: {not_running_banner(layout)}", file=sys.stderr)


def _known_job(layout: Layout, name: str) -> bool:
    """Whether the store has a job `name` (by id or name); says so when it has not."""
    store = _open_store(layout)
    job = None
    if store is not None:
        with _closing(store):
            job = store.find_job(name)
    if job is None:
        from mkd.client.status_view import no_job

        no_job(name, layout.rejected)
        return False
    return True


def _ask(layout: Layout, verb: str, job: str | None, body: dict[str, object] | None = None) -> int:
    from mkd.client.asking import ask, say

    if job is not None and not _known_job(layout, job):
        return EXIT_NOT_FOUND
    return say(ask(layout, verb, job, body))


def cmd_cancel(args: argparse.Namespace, layout: Layout) -> int:
    return _ask(layout, "cancel", args.job)


def cmd_pause(args: argparse.Namespace, layout: Layout) -> int:
    return _ask(layout, "pause", args.job)


def cmd_resume(args: argparse.Namespace, layout: Layout) -> int:
    return _ask(layout, "resume", args.job)


def cmd_priority(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.control_requests import RequestError, check_priority

    try:
        value = check_priority(args.priority, "mkd priority")
    except RequestError as error:
        print(f"mkd: {error}", file=sys.stderr)
        return EXIT_USAGE
    return _ask(layout, "priority", args.job, {"priority": value})


def cmd_retry(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.control_requests import RequestError, parse_change

    try:
        changes = dict(parse_change(text) for text in args.set or [])
    except RequestError as error:
        print(f"mkd: {error}", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, object] = {}
    if args.from_stage is not None:
        body["from_stage"] = args.from_stage
    if changes:
        body["set"] = changes
    code = _ask(layout, "retry", args.job, body)
    if code == 0 and args.wait:
        from mkd.client.waiting import wait_jobs

        return wait_jobs(layout, [args.job])
    return code


def cmd_clean(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.control_requests import RequestError, parse_request, render

    body: dict[str, object] = {"older_than": args.older_than, "states": [s for s in args.state.split(",") if s]}
    try:
        request = parse_request("clean", render(body))
    except RequestError as error:
        print(f"mkd: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        store = _open_store(layout)
        if store is None:
            print("no jobs yet")
            return 0
        with _closing(store):
            from mkd.states import JobState

            cutoff = time.time() - float(request.body["older_than_seconds"])
            states = {JobState(s) for s in request.body["states"]}
            doomed = [j for j in store.jobs(states) if j.finished_at is not None and j.finished_at <= cutoff]
        for job in doomed:
            print(f"would remove {job.job_id} ({job.state.value})")
        print(f"{len(doomed)} job(s) would be removed")
        return 0
    return _ask(layout, "clean", None, body)


def cmd_wait(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client.waiting import wait_jobs

    timeout = None
    if args.timeout:
        from mkd.quantities import parse_duration

        timeout = parse_duration(args.timeout).total_seconds()
    return wait_jobs(layout, args.jobs, timeout=timeout)


def cmd_shutdown(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client.asking import EXIT_NO_DAEMON, ask, say

    answer = ask(layout, "shutdown-stop-runs" if args.stop_runs else "shutdown", None)
    if answer.code == EXIT_NO_DAEMON:  # already down: what was asked holds; say so, drop nothing
        print(f"mkd: {answer.message}", file=sys.stderr)
        return 0
    return say(answer)


def cmd_report(args: argparse.Namespace, layout: Layout) -> int:
    store = _open_store(layout)
    job = None
    if store is not None:
        with _closing(store):
            job = store.find_job(args.job)
    if job is None:
        from mkd.client.status_view import no_job

        return no_job(args.job, layout.rejected)
    path = layout.runs_dir / job.job_id / ("status.json" if args.json else "report.md")
    if path.exists():
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    print(f"mkd: {job.job_id} has no report yet ({path})", file=sys.stderr)
    return EXIT_NOT_FOUND


def cmd_logs(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client.logs_view import show_logs

    since = None
    if args.since:
        from mkd.quantities import parse_duration

        try:
            since = parse_duration(args.since).total_seconds()
        except (ValueError, TypeError) as error:
            print(f"mkd: --since {args.since!r}: {error}", file=sys.stderr)
            return EXIT_USAGE
    store = _open_store(layout)
    if store is None:
        print(f"mkd: no job {args.job!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    with _closing(store):
        return show_logs(
            store,
            args.job,
            follow=args.follow,
            attempt=args.attempt,
            all_attempts=args.all_attempts,
            lines=args.lines,
            since_seconds=since,
            as_json=args.json,
        )


def cmd_gpus(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.gpus import GpuSampler, format_gpus_table

    holders: dict[str, str] = {}
    store = _open_store(layout)
    if store is not None:
        with _closing(store):
            for attempt in store.attempts(live_only=True):
                for uuid in attempt.params.gpu_uuids:
                    holders[uuid] = attempt.job_id
    with GpuSampler() as sampler:
        reading = sampler.sample()
    if args.json:
        import dataclasses
        import json

        data = dataclasses.asdict(reading)
        for gpu in data["gpus"]:
            gpu["job"] = holders.get(gpu.get("uuid", ""))
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(format_gpus_table(reading, holders), end="")
    return 0


def cmd_plot(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client.plot import plot_main

    return plot_main(layout, args.job, args.output)


def cmd_completion(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client.completion import job_names, script

    if args.shell == "jobs":
        print("\n".join(job_names(layout)))
        return 0
    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def cmd_explain(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.explain import run

    return run(args, store_path=layout.db)


def cmd_doctor(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.doctor import run_doctor

    return run_doctor(config, layout, mimickit_dir=args.mimickit_dir)


def cmd_install_service(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.install_service import run

    return run(args)


class _closing:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


# --- parser ----------------------------------------------------------------------------

Command: TypeAlias = "Callable[[argparse.Namespace, DaemonConfig, Layout], int]"
LayoutCommand: TypeAlias = Callable[[argparse.Namespace, Layout], int]  # needs only where the files are


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs every other command nothing)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, help="print mkd's version")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("mkd")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        print(f"mkd {found}")
        parser.exit()


AddCommand = Callable[..., argparse.ArgumentParser]  # build_parser's add(name, func, help, examples, ...)


class _Unbuilt:
    """Stands for a subcommand's parser that this run does not need (see build_parser's `only`)."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        return None


def _command_in(argv: list[str]) -> str | None:
    """The command `argv` names, when nothing before it needs the whole parser (--help, --version)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif word.startswith("--config="):
            continue
        elif word.startswith("-"):
            return None
        else:
            return word
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, just that subcommand's (22 subparsers cost `mkd status` tens of ms)."""
    parser = argparse.ArgumentParser(
        prog="mkd",
        description="Run MimicKit training jobs under supervision: drop a TOML job file into jobs/incoming "
        "(or `mkd submit FILE`), and mkd validates, schedules, recovers and reports it.",
    )
    parser.add_argument(
        "--config",
        help="daemon config file (default: $MKD_CONFIG, else /etc/mkd/mkd.toml if present, else the embedded defaults)",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        func: Command | LayoutCommand,
        help: str,
        examples: tuple[str, ...],
        *,
        layout_only: bool = False,
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return cast(argparse.ArgumentParser, _Unbuilt())
        # every example here is run by tests/test_cli_forms.py
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        cmd = sub.add_parser(
            name, help=help, description=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        cmd.set_defaults(**{"layout_func" if layout_only else "func": func})
        # also accepted after the command: `mkd run --config FILE`
        cmd.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return cmd

    _job_file_commands(add)
    _job_commands(add)
    _job_change_commands(add)
    _queue_commands(add)
    _result_commands(add)
    _host_commands(add)
    return parser


def _job_file_commands(add: AddCommand) -> None:
    """The daemon itself and what checks and drops job files."""
    add(
        "run",
        cmd_run,
        "run the daemon in the foreground (SIGTERM: exit, runs keep going; twice: at once)",
        ("mkd run",),
    )
    cmd = add(
        "submit",
        cmd_submit,
        "check a job file as the daemon does, drop it atomically into jobs/incoming, then wait for the daemon's "
        "verdict: the job id (exit 0), or the .error text (exit 1); exit 4 if none came in time",
        ("mkd submit FILE", "mkd submit FILE --name NAME", "mkd submit FILE --wait", "mkd submit FILE --timeout 30"),
    )
    cmd.add_argument("file", metavar="FILE")
    cmd.add_argument("--name", help="job name / file name in incoming (default: [job] name or the file's name)")
    cmd.add_argument("--wait", action="store_true", help="then follow the job to its end, as `mkd wait` does")
    cmd.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the daemon's verdict (0: do not wait)",
    )
    cmd = add(
        "validate",
        cmd_validate,
        "check job files as the daemon would take them from jobs/incoming (schema, owner, allowed roots, file name, "
        "live name clash, the files a job names); print every problem with its line; exit 1 if any",
        ("mkd validate FILE",),
    )
    cmd.add_argument("files", nargs="+", metavar="FILE")


def _job_commands(add: AddCommand) -> None:
    """What a person looks at: status and logs."""
    cmd = add(
        "status",
        cmd_status,
        "table of jobs, with why each waiting job waits (or one job with its timeline)",
        (
            "mkd status",
            "mkd status JOB",
            "mkd status --json",
            "mkd status JOB --json",
            "mkd status --all",
            "mkd status --watch --interval 1",
        ),
        layout_only=True,
    )
    cmd.add_argument("job", nargs="?", metavar="JOB")
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.add_argument("--all", action="store_true", help="every finished job too, not only the latest 20")
    cmd.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    cmd.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch's period (default 2)")
    cmd = add(
        "logs",
        cmd_logs,
        "print a job's console log (latest attempt; -f follows from the tail)",
        (
            "mkd logs JOB",
            "mkd logs -f JOB",
            "mkd logs -n 50 JOB",
            "mkd logs --since 10m JOB",
            "mkd logs --attempt 1 JOB",
            "mkd logs --all-attempts JOB",
            "mkd logs --json JOB",
        ),
        layout_only=True,
    )
    cmd.add_argument("job", metavar="JOB")
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing as the run writes (from the tail)")
    cmd.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N lines (of each attempt shown)")
    cmd.add_argument("--since", metavar="DURATION", help="the attempts alive in the last DURATION (10m, 2h)")
    cmd.add_argument("--attempt", type=int, metavar="K", help="attempt number K (default: the latest)")
    cmd.add_argument("--all-attempts", action="store_true", help="every attempt, each under a header")
    cmd.add_argument("--json", action="store_true", help="the logs' metadata (paths, sizes, attempts), not their text")


def _job_change_commands(add: AddCommand) -> None:
    """What a person changes about one job: cancel, pause and resume, retry, priority."""
    for verb, help in (
        ("cancel", "cancel a job (jobs/control/JOB.cancel)"),
        ("pause", "hold a queued job; stop a running one, to resume from its last model.pt (JOB.pause)"),
        ("resume", "queue a held job again (JOB.resume)"),
    ):
        func = {"cancel": cmd_cancel, "pause": cmd_pause, "resume": cmd_resume}[verb]
        cmd = add(verb, func, help, (f"mkd {verb} JOB",), layout_only=True)
        cmd.add_argument("job", metavar="JOB")
    cmd = add(
        "retry",
        cmd_retry,
        "a new attempt of a failed or cancelled job, with changes if given (JOB.retry)",
        ("mkd retry JOB", "mkd retry JOB --from-stage STAGE", "mkd retry JOB --set num_envs=8", "mkd retry JOB --wait"),
        layout_only=True,
    )
    cmd.add_argument("job", metavar="JOB")
    cmd.add_argument(
        "--from-stage", metavar="STAGE", help="stage name or number to start from (default: where it ended)"
    )
    cmd.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change the next attempt: num_envs, max_samples, test_episodes, nccl_preset or model_file (repeatable)",
    )
    cmd.add_argument("--wait", action="store_true", help="then follow the job to its end")
    cmd = add(
        "priority",
        cmd_priority,
        "change a live job's priority; higher starts first (JOB.priority)",
        ("mkd priority JOB 5",),
        layout_only=True,
    )
    cmd.add_argument("job", metavar="JOB")
    cmd.add_argument("priority", metavar="N", help="a whole number from -1000 to 1000")


def _queue_commands(add: AddCommand) -> None:
    """The queue as a whole: wait for jobs to end, forget finished ones, stop the daemon."""
    cmd = add(
        "wait",
        cmd_wait,
        "block until each job ends; exit 0 only if all succeeded",
        ("mkd wait JOB", "mkd wait JOB --timeout 10m"),
        layout_only=True,
    )
    cmd.add_argument("jobs", nargs="+", metavar="JOB")
    cmd.add_argument("--timeout", metavar="DURATION", help="give up after DURATION (exit 5)")
    cmd = add(
        "clean",
        cmd_clean,
        "forget finished jobs: their store rows, runs/JOB and mirror file (jobs/control/clean)",
        ("mkd clean", "mkd clean --older-than 7d --state failed,cancelled", "mkd clean --dry-run"),
        layout_only=True,
    )
    cmd.add_argument("--older-than", default="7d", metavar="DURATION", help="finished at least this long ago (7d)")
    cmd.add_argument("--state", default="succeeded,failed,cancelled", help="which finished states (comma-separated)")
    cmd.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    cmd = add(
        "shutdown",
        cmd_shutdown,
        "ask the daemon to exit (runs keep going unless --stop-runs)",
        ("mkd shutdown", "mkd shutdown --stop-runs"),
        layout_only=True,
    )
    cmd.add_argument("--stop-runs", action="store_true", help="stop every run gracefully first")


def _result_commands(add: AddCommand) -> None:
    """What a job left: its report, its training plotted, a console log explained."""
    cmd = add(
        "report",
        cmd_report,
        "print a job's report.md (the runbook's checklist)",
        ("mkd report JOB", "mkd report JOB --json"),
        layout_only=True,
    )
    cmd.add_argument("job", metavar="JOB")
    cmd.add_argument("--json", action="store_true", help="runs/JOB/status.json instead")
    cmd = add(
        "plot",
        cmd_plot,
        "draw return, losses and samples/s against samples, across attempts (needs mkd[plot])",
        ("mkd plot JOB", "mkd plot JOB -o FILE.png"),
        layout_only=True,
    )
    cmd.add_argument("job", metavar="JOB")
    cmd.add_argument("-o", "--output", metavar="FILE.png", help="where to write the PNG (default: runs/JOB/plot.png)")
    cmd = add(
        "explain",
        cmd_explain,
        "classify a MimicKit console log: class, evidence, remedy",
        ("mkd explain LOGFILE", "mkd explain LOGFILE --json", "mkd explain --json LOGFILE"),
    )
    if not isinstance(cmd, _Unbuilt):  # importing explain compiles MimicKit's signatures: only for explain
        from mkd.client.explain import add_arguments as explain_arguments

        explain_arguments(cmd)


def _host_commands(add: AddCommand) -> None:
    """The host: its GPUs, the runbook's precheck, shell completion, the service install."""
    cmd = add(
        "gpus",
        cmd_gpus,
        "GPUs as NVML sees them, and which job holds each",
        ("mkd gpus", "mkd gpus --json"),
        layout_only=True,
    )
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd = add(
        "doctor",
        cmd_doctor,
        "the runbook's precheck: torch/CUDA, newton/warp versions, MimicKit, GPUs",
        ("mkd doctor", "mkd doctor --mimickit-dir MIMICKIT_DIR"),
    )
    cmd.add_argument("--mimickit-dir", help="MimicKit checkout to check (default: the config's)")
    cmd = add(
        "completion",
        cmd_completion,
        'print a shell completion script: eval "$(mkd completion bash)"',
        ("mkd completion bash", "mkd completion zsh"),
        layout_only=True,
    )
    cmd.add_argument("shell", choices=("bash", "zsh", "jobs"), help="jobs: the job names the scripts complete")
    cmd = add(
        "install-service",
        cmd_install_service,
        "install (or --uninstall) the systemd unit and directories",
        (
            "mkd install-service --dry-run",
            "mkd install-service --prefix /",
            "mkd install-service --uninstall",
            "mkd install-service --prefix DIR --python PYTHON --user mkd --group mkd-submit",
        ),
    )
    if not isinstance(cmd, _Unbuilt):
        from mkd.client.install_service import add_arguments as install_service_arguments

        install_service_arguments(cmd)


def _load_config(path: str | None) -> tuple[DaemonConfig, Layout] | int:
    """load_config(path), or the exit status once the reason it cannot be used is printed."""
    from mkd.jobfile import JobFileError  # load_config imports it anyway

    try:
        return load_config(path)
    except JobFileError as error:
        sys.stderr.write("mkd: invalid config:\n" + error.render())
        return EXIT_USAGE
    except OSError as error:
        print(f"mkd: cannot read the config: {error}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    wanted = _command_in(words)
    parser = build_parser(wanted)
    if wanted is not None and parser._subparsers is not None:
        known = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        if wanted not in known.choices:  # a typo: the whole parser says which commands there are
            parser = build_parser()
    args = parser.parse_args(words)
    layout_func: LayoutCommand | None = getattr(args, "layout_func", None)
    config: DaemonConfig | None = None
    layout = quick_layout(args.config) if layout_func is not None else None
    if layout is None:
        loaded = _load_config(args.config)
        if isinstance(loaded, int):
            return loaded
        config, layout = loaded
    try:
        if layout_func is not None:
            return layout_func(args, layout)
        func: Command = args.func
        assert config is not None
        return func(args, config, layout)
    except StoreError as error:
        print(f"mkd: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:
        print(
            f"mkd: cannot open the store {layout.db}: {error}. If the file is damaged, move it away "
            "(mkd starts a new one) or restore a backup.",
            file=sys.stderr,
        )
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
