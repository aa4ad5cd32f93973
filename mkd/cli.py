"""The `mkd` command line: a thin layer over the daemon, the store and the job files.

Everything the CLI changes goes through a file drop (incoming/ for jobs, control/ for
cancel and shutdown), so a script can do the same without the CLI, and the daemon stays
the store's only writer.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from mkd.fsutil import atomic_write
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

    return submit_file(args.file, args.name, args.timeout, config, layout)


def cmd_status(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client import status_view

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
            return status_view.show_job(store, args.job, as_json=args.json)
        return status_view.show_table(store, as_json=args.json, show_all=args.all)


def cmd_cancel(args: argparse.Namespace, layout: Layout) -> int:
    layout.control.mkdir(parents=True, exist_ok=True)
    atomic_write(layout.control / f"{args.job}.cancel", f"requested at {time.time():.3f}\n")
    print(f"cancel requested for {args.job} (control file jobs/control/{args.job}.cancel)")
    return 0


def cmd_shutdown(args: argparse.Namespace, layout: Layout) -> int:
    layout.control.mkdir(parents=True, exist_ok=True)
    name = "shutdown-stop-runs" if args.stop_runs else "shutdown"
    atomic_write(layout.control / name, "")
    what = "stop every run, then exit" if args.stop_runs else "exit, leaving runs running"
    print(f"asked mkd to {what}")
    return 0


def cmd_report(args: argparse.Namespace, layout: Layout) -> int:
    store = _open_store(layout)
    job = store.find_job(args.job) if store else None
    if job is None:
        print(f"mkd: no job {args.job!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    path = layout.runs_dir / job.job_id / "report.md"
    if path.exists():
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    print(f"mkd: {job.job_id} has no report yet ({path})", file=sys.stderr)
    return EXIT_NOT_FOUND


def cmd_logs(args: argparse.Namespace, layout: Layout) -> int:
    from mkd.client import status_view

    store = _open_store(layout)
    if store is None:
        print(f"mkd: no job {args.job!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    with _closing(store):
        return status_view.show_logs(store, args.job, follow=args.follow, attempt=args.attempt)


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
        print(format_gpus_table(sampler.sample(), holders), end="")
    return 0


def cmd_explain(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.explain import explain_main

    return explain_main(args.rest, store_path=layout.db)


def cmd_doctor(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.doctor import run_doctor

    return run_doctor(config, layout, mimickit_dir=args.mimickit_dir)


def cmd_install_service(args: argparse.Namespace, config: DaemonConfig, layout: Layout) -> int:
    from mkd.client.install_service import main as install_main

    status: int = install_main(args.rest)
    return status


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mkd",
        description="Run MimicKit training jobs under supervision: drop a TOML job file into jobs/incoming "
        "(or `mkd submit FILE`), and mkd validates, schedules, recovers and reports it.",
    )
    parser.add_argument(
        "--config",
        help="daemon config file (default: $MKD_CONFIG, else /etc/mkd/mkd.toml if present, else the embedded defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Command | LayoutCommand, help: str, *, layout_only: bool = False
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        cmd.set_defaults(**{"layout_func" if layout_only else "func": func})
        # also accepted after the command: `mkd run --config FILE`
        cmd.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return cmd

    add("run", cmd_run, "run the daemon in the foreground (SIGTERM: exit, runs keep going; twice: at once)")
    cmd = add(
        "submit",
        cmd_submit,
        "check a job file as the daemon does, drop it atomically into jobs/incoming, then wait for the daemon's "
        "verdict: the job id (exit 0), or the .error text (exit 1); exit 4 if none came in time",
    )
    cmd.add_argument("file")
    cmd.add_argument("--name", help="file name in incoming (default: [job] name or the file's name)")
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
    )
    cmd.add_argument("files", nargs="+")
    cmd = add("status", cmd_status, "table of jobs (or one job with its timeline)", layout_only=True)
    cmd.add_argument("job", nargs="?")
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.add_argument("--all", action="store_true", help="every finished job too, not only the latest 20")
    cmd = add("logs", cmd_logs, "print a job's console log (latest attempt)", layout_only=True)
    cmd.add_argument("job")
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing as the run writes")
    cmd.add_argument("--attempt", type=int, help="attempt number (default: the latest)")
    cmd = add("cancel", cmd_cancel, "cancel a job (drops jobs/control/JOB.cancel)", layout_only=True)
    cmd.add_argument("job")
    cmd = add("shutdown", cmd_shutdown, "ask the daemon to exit (runs keep going unless --stop-runs)", layout_only=True)
    cmd.add_argument("--stop-runs", action="store_true", help="stop every run gracefully first")
    cmd = add("report", cmd_report, "print a job's report.md (the runbook's checklist)", layout_only=True)
    cmd.add_argument("job")
    add("gpus", cmd_gpus, "GPUs as NVML sees them, and which job holds each", layout_only=True)
    cmd = add("doctor", cmd_doctor, "the runbook's precheck: torch/CUDA, newton/warp versions, MimicKit, GPUs")
    cmd.add_argument("--mimickit-dir", help="MimicKit checkout to check (default: the config's)")
    cmd = add("explain", cmd_explain, "classify a MimicKit console log: class, evidence, remedy")
    cmd.add_argument("rest", nargs=argparse.REMAINDER, help="LOGFILE [--json]")
    cmd = add("install-service", cmd_install_service, "install (or --uninstall) the systemd unit and directories")
    cmd.add_argument("rest", nargs=argparse.REMAINDER, help="[--prefix P] [--dry-run] [--uninstall]")
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
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
