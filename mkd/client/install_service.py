"""`mkd install-service`: install mkd as a systemd service on this host (or into a prefix).

What it does, in order, each step idempotent:
  1. the system group ``mkd-submit`` and user ``mkd`` (useradd --system), if missing;
  2. /etc/mkd/mkd.toml from the embedded defaults with host paths filled in, only if absent;
  3. /var/lib/mkd (0750), /var/lib/mkd/jobs (0750), /var/lib/mkd/jobs/incoming (2770:
     members of mkd-submit drop job files there, and the files take its group);
  4. /etc/systemd/system/mkd.service rendered with this interpreter in ExecStart;
  5. `systemctl daemon-reload` when systemd is running as PID 1.
It never enables or starts the unit: that stays a person's `systemctl enable --now mkd`.

With a ``prefix`` other than "/" (tests, image builds) files are written under it and
nothing on the host changes: no accounts, no chown, no systemctl.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

UNIT = Path("etc/systemd/system/mkd.service")
UNIT_WANTS = Path("etc/systemd/system/multi-user.target.wants/mkd.service")
CONFIG = Path("etc/mkd/mkd.toml")
STATE_DIR = Path("var/lib/mkd")
JOBS_DIR = STATE_DIR / "jobs"
INCOMING_DIR = JOBS_DIR / "incoming"
CONTROL_DIR = JOBS_DIR / "control"
RUNS_DIR = STATE_DIR / "runs"

# (path, mode): the daemon creates the rest of its tree itself, under its UMask.
DIRECTORIES = (
    (STATE_DIR, 0o750),
    (JOBS_DIR, 0o750),
    # setgid: a dropped file takes the group mkd-submit, which intake accepts
    # ([intake] allowed_gids) and the daemon (primary group mkd-submit) can read.
    (INCOMING_DIR, 0o2770),
    # the same for control files, so a submitter can `mkd cancel` (jobs/control/JOB.cancel)
    (CONTROL_DIR, 0o2770),
)
# Device groups the runs may need (/dev/dri for the visualize stage); joined if they exist.
GPU_GROUPS = ("video", "render")

SOURCE_ROOT = Path(__file__).resolve().parents[2]


class InstallError(Exception):
    """The install cannot go on; the message says why and what to do."""


def _resource_text(package_path: str, source_path: str) -> str:
    """A file shipped in the package, or else from the source checkout mkd runs from."""
    packaged = resources.files("mkd").joinpath(package_path)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = SOURCE_ROOT / source_path
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise InstallError(f"neither mkd/{package_path} (package data) nor {checkout} (checkout) exists")


def unit_template() -> str:
    return _resource_text("defaults/mkd.service", "deploy/systemd/mkd.service")


def config_template() -> str:
    return _resource_text("defaults/mkd.toml", "etc/mkd.toml")


def render_unit(template: str, *, python: str, user: str, group: str) -> str:
    """The unit with ExecStart= running ``python`` and the given User=/Group=."""
    if not os.path.isabs(python):
        raise InstallError(f"the interpreter must be an absolute path, not {python!r}")
    # --config before the subcommand: it is an option of `mkd`, not of `mkd run`.
    exec_start = f"ExecStart={shlex.quote(python)} -m mkd --config /{CONFIG} run"
    replacements = {"ExecStart": exec_start, "User": f"User={user}", "Group": f"Group={group}"}
    lines = template.splitlines()
    for key, line in replacements.items():
        hits = [i for i, text in enumerate(lines) if text.startswith(f"{key}=")]
        if len(hits) != 1:
            raise InstallError(f"the unit template has {len(hits)} {key}= lines, expected 1")
        lines[hits[0]] = line
    return "\n".join(lines) + "\n"


def render_config(template: str, *, submit_gid: int | None) -> str:
    """The default config with the host layout under /var/lib/mkd (and the submit group)."""
    state = f"/{STATE_DIR}"
    settings: dict[str, dict[str, str | list[int]]] = {
        "paths": {"state_dir": state, "jobs_dir": f"/{JOBS_DIR}", "runs_dir": f"/{RUNS_DIR}"},
        "intake": {} if submit_gid is None else {"allowed_gids": [submit_gid]},
    }
    text = template
    for table, keys in settings.items():
        if not keys:
            continue
        text = _uncomment(text, rf"# \[{table}\]", f"[{table}]")
        for key, value in keys.items():
            literal = f'"{value}"' if isinstance(value, str) else repr(value)
            text = _uncomment(text, rf"# {key} = [^#\n]*", f"{key} = {literal}  ")
    parsed = tomllib.loads(text)
    for table, keys in settings.items():
        for key, value in keys.items():
            if parsed.get(table, {}).get(key) != value:
                raise InstallError(f"could not set [{table}] {key} in the config template; set it by hand")
    return text


def _uncomment(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(rf"^{pattern}", replacement, text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise InstallError(f"the config template has no line matching {pattern!r}")
    return new


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1."""
    return Path("/run/systemd/system").is_dir()


class _Plan:
    """Collects actions; performs them unless dry_run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.actions: list[str] = []

    @contextmanager
    def step(self, action: str) -> Iterator[bool]:
        self.actions.append(action)
        yield not self.dry_run

    def note(self, action: str) -> None:
        self.actions.append(action)

    def run(self, argv: list[str]) -> None:
        with self.step("run " + shlex.join(argv)) as doing:
            if doing:
                subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def _ensure_accounts(plan: _Plan, user: str, group: str) -> None:
    try:
        grp.getgrnam(group)
    except KeyError:
        plan.run(["groupadd", "--system", group])
    try:
        pwd.getpwnam(user)
    except KeyError:
        extra = [g for g in GPU_GROUPS if _group_exists(g)]
        argv = ["useradd", "--system", "--gid", group, "--home-dir", f"/{STATE_DIR}", "--no-create-home"]
        argv += ["--shell", "/usr/sbin/nologin", "--comment", "mkd daemon"]
        argv += ["--groups", ",".join(extra)] if extra else []
        plan.run([*argv, user])


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _write_file(plan: _Plan, path: Path, shown: str, text: str, mode: int) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        plan.note(f"unchanged {shown}")
        return
    with plan.step(f"write {shown} (mode {mode:04o})") as doing:
        if doing:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(mode)
            os.replace(tmp, path)


def _make_dir(plan: _Plan, path: Path, shown: str, mode: int, owner: tuple[str, str] | None) -> None:
    whose = f" owner {owner[0]}:{owner[1]}" if owner else ""
    with plan.step(f"directory {shown} (mode {mode:04o}{whose})") as doing:
        if doing:
            path.mkdir(parents=True, exist_ok=True)
            if owner is not None:
                shutil.chown(path, owner[0], owner[1])
            path.chmod(mode)  # after chown, which clears the setgid bit


def install_service(
    prefix: Path = Path("/"),
    *,
    python: str = sys.executable,
    user: str = "mkd",
    group: str = "mkd-submit",
    dry_run: bool = False,
    systemd: bool = True,
) -> list[str]:
    """Install the unit, config, accounts and directories; return the actions done (or planned)."""
    on_host = prefix.resolve() == Path("/")
    as_root = os.geteuid() == 0
    plan = _Plan(dry_run)
    if on_host and not as_root and not dry_run:
        raise InstallError("installing on this host needs root (or use --prefix, or --dry-run)")
    if on_host:
        _ensure_accounts(plan, user, group)
    else:
        plan.note(f"skip accounts and ownership ({user}, {group}): prefix {prefix} is not /")

    config = prefix / CONFIG
    if config.exists():
        plan.note(f"keep {config} (exists)")
    else:
        gid = _gid(group) if on_host else None
        _write_file(plan, config, str(config), render_config(config_template(), submit_gid=gid), 0o644)

    for relative, mode in DIRECTORIES:
        _make_dir(plan, prefix / relative, str(prefix / relative), mode, (user, group) if on_host else None)

    unit = render_unit(unit_template(), python=python, user=user, group=group)
    _write_file(plan, prefix / UNIT, str(prefix / UNIT), unit, 0o644)
    _daemon_reload(plan, on_host and systemd)
    return plan.actions


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None  # dry run before groupadd: the real run will know


def _daemon_reload(plan: _Plan, wanted: bool) -> None:
    if wanted and systemd_running():
        plan.run(["systemctl", "daemon-reload"])
    else:
        plan.note("skip systemctl daemon-reload (systemd is not PID 1 here, or not asked)")


def uninstall_service(
    prefix: Path = Path("/"),
    *,
    dry_run: bool = False,
    systemd: bool = True,
) -> list[str]:
    """Remove the unit (disabling it first); keep the config, the state and the accounts.

    A running daemon is not stopped and runs keep running: `mkd shutdown --stop-runs`
    first to stop everything.
    """
    on_host = prefix.resolve() == Path("/")
    plan = _Plan(dry_run)
    if on_host and systemd and systemd_running():
        plan.run(["systemctl", "disable", "mkd.service"])
    for relative in (UNIT_WANTS, UNIT):
        path = prefix / relative
        if path.exists() or path.is_symlink():
            with plan.step(f"remove {path}") as doing:
                if doing:
                    path.unlink()
    _daemon_reload(plan, on_host and systemd)
    plan.note(f"keep {prefix / CONFIG}, {prefix / STATE_DIR} (jobs, runs, store) and the accounts")
    return plan.actions


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """The options, for `mkd install-service`'s own subparser (mkd.cli; a REMAINDER positional there
    used to take none of them) and for this module's standalone parser (main)."""
    cmd.add_argument("--prefix", type=Path, default=Path("/"), help="install under this root (default /)")
    cmd.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    cmd.add_argument("--uninstall", action="store_true", help="remove the unit; keep config and state")
    cmd.add_argument("--python", default=sys.executable, help="interpreter for ExecStart (default: this one)")
    cmd.add_argument("--user", default="mkd", help="the daemon's system user (default mkd)")
    cmd.add_argument("--group", default="mkd-submit", help="the group that may submit jobs (default mkd-submit)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.uninstall:
            actions = uninstall_service(args.prefix, dry_run=args.dry_run)
        else:
            actions = install_service(
                args.prefix, python=args.python, user=args.user, group=args.group, dry_run=args.dry_run
            )
    except (InstallError, OSError, subprocess.CalledProcessError) as exc:
        print(f"mkd install-service: {exc}", file=sys.stderr)
        return 1
    for action in actions:
        print(("would: " if args.dry_run else "") + action)
    if not args.uninstall and not args.dry_run:
        print("next: systemctl enable --now mkd; add people to the submit group: usermod -aG", args.group, "NAME")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mkd install-service",
        description="Install (or remove) mkd as a systemd service: unit, config, user, state directory.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
