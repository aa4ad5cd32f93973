"""`mkd validate` and `mkd submit`: the daemon's own verdict (mkd.admission), before and after.

validate judges each FILE as the intake would if FILE were moved into jobs/incoming. submit
judges the copy it would write, writes it, then waits (bounded) for the daemon to take it: it
prints the job id, or the `.error` text with exit 1. With no daemon running it says so and
leaves the file in incoming, where the next `mkd run` takes it.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from mkd.admission import Admission, daemon_uid
from mkd.config import DaemonConfig, Layout
from mkd.mirror import FOLDERS
from mkd.store import Store

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_NO_VERDICT = 4


def admission_for(config: DaemonConfig, layout: Layout) -> tuple[Admission, Store | None]:
    """The daemon's Admission as seen from the CLI: its store (read-only, for live names) and uid."""
    store: Store | None = None
    if layout.db.exists():
        try:
            store = Store.open(layout.db, readonly=True)
        except Exception as error:  # a store this user may not read: no live-name check, say so
            print(f"mkd: cannot read the store ({error}); live job names are not checked", file=sys.stderr)
    return Admission(config, layout, store, uid=daemon_uid(layout)), store


def validate_files(files: list[str], config: DaemonConfig, layout: Layout) -> int:
    admission, store = admission_for(config, layout)
    status = EXIT_OK
    try:
        for file in files:
            path = Path(file)
            try:
                verdict = admission.judge(path, path.name)
            except FileNotFoundError:
                print(f"{file}: cannot read: No such file or directory")
                status = EXIT_INVALID
                continue
            if verdict.ok:
                print(f"{file}: ok")
            else:
                sys.stdout.write(verdict.error or "")
                status = EXIT_INVALID
    finally:
        if store is not None:
            store.close()
    return status


def daemon_running(layout: Layout) -> bool:
    """Whether a daemon holds the lock of this state folder (it holds it exclusively while it runs)."""
    try:
        fd = os.open(layout.lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def submit_file(file: str, name: str | None, timeout: float, config: DaemonConfig, layout: Layout) -> int:
    source = Path(file)
    judged_as = f"{name}.toml" if name else (source.name if source.name.endswith(".toml") else f"{source.stem}.toml")
    admission, store = admission_for(config, layout)
    try:
        try:
            verdict = admission.judge(source, judged_as, copy=True)
        except FileNotFoundError:
            print(f"mkd: cannot read {file}: No such file or directory", file=sys.stderr)
            return EXIT_INVALID
    finally:
        if store is not None:
            store.close()
    if not verdict.ok or verdict.spec is None:
        sys.stdout.write(verdict.error or "")
        return EXIT_INVALID
    stem = name or verdict.spec.job.name or judged_as[: -len(".toml")]
    layout.incoming.mkdir(parents=True, exist_ok=True)
    target = layout.incoming / f"{stem}.toml"
    if target.exists():
        print(f"mkd: {target} is already waiting in incoming; pick another --name", file=sys.stderr)
        return EXIT_INVALID
    inode = _drop(target, verdict.raw)
    print(f"submitted {source} as {target}")
    if timeout <= 0:
        return EXIT_OK
    if not daemon_running(layout):
        print(
            f"mkd: no daemon is running (none holds {layout.lock}); the file waits in {target} "
            "and is taken when mkd starts",
            file=sys.stderr,
        )
        return EXIT_OK
    return wait_for_verdict(target, inode, layout, timeout)


def _drop(target: Path, raw: bytes) -> tuple[int, int]:
    """Write `raw` as a dotfile beside `target` and rename it in; the file's (dev, inode), which
    the daemon's renames keep (taken before the rename: the daemon may take the file at once)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
            st = os.fstat(handle.fileno())
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return st.st_dev, st.st_ino


def wait_for_verdict(target: Path, inode: tuple[int, int], layout: Layout, timeout: float) -> int:
    """Follow the file (by inode: a rename keeps it) until it is queued or rejected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        here = _inode(target)
        if here is None or here != inode:  # taken (or already replaced by another drop)
            found = _find_rejected(layout, inode)
            if found is not None:
                sys.stdout.write(found.read_text(encoding="utf-8", errors="replace"))
                print(f"mkd: rejected; see {found}", file=sys.stderr)
                return EXIT_INVALID
            job_id = _find_queued(layout, inode)
            if job_id is not None:
                print(f"queued as job {job_id} (mkd status {job_id})")
                return EXIT_OK
        time.sleep(0.05)
    print(
        f"mkd: no verdict from the daemon within {timeout:g} s; {target.name} is "
        f"{'still in incoming' if target.exists() else 'being taken'} (see `mkd status`)",
        file=sys.stderr,
    )
    return EXIT_NO_VERDICT


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _find_rejected(layout: Layout, inode: tuple[int, int]) -> Path | None:
    """The .error beside our file in rejected/ (found by inode; its name may differ)."""
    try:
        entries = os.listdir(layout.rejected)
    except OSError:
        return None
    for entry in entries:
        if entry.endswith(".toml") and _inode(layout.rejected / entry) == inode:
            error = layout.rejected / f"{entry}.error"
            if error.exists():
                return error
    return None


def _find_queued(layout: Layout, inode: tuple[int, int]) -> str | None:
    """The job id of our file once the intake mirrored it (jobs/STATE/JOB_ID.toml, the same inode)."""
    for folder in FOLDERS:
        directory = layout.jobs_dir / folder
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".toml") and _inode(directory / entry) == inode:
                return entry[: -len(".toml")]
    return None
