"""Whether a job file is accepted: the one decision `mkd validate`, `mkd submit` and the intake share.

`validate` and `submit` used to check the schema only, so they said ok to files the daemon then
rejected (an owner not allowed, a cwd outside allowed_roots, a name the intake refuses, a live
name clash, a missing arg file). Now all three call `Admission.judge` and print the same text.

The file name is judged too, because it becomes a path and a line of text in mkd's files: a
name with a newline or a right-to-left override misleads whoever reads `.error` files and logs,
and a name near the filesystem's limit (255 bytes) leaves no room for mkd's own names beside it
(`TOKEN__NAME` in claimed/, `NAME.error`). Such a file is set aside under `safe_name`, with its
original name written into the `.error`.

A file is opened without blocking and without following a symbolic link, and read up to the
size limit only, so a FIFO, /dev/zero or a huge file can neither hang nor fill mkd.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from mkd.config import DaemonConfig, Layout
from mkd.jobfile import JobFileError, Problem, load_job_bytes
from mkd.mimickit.agent_check import check_agent_overrides
from mkd.mimickit.checkout_files import checkout_problems
from mkd.spec import JOB_NAME, CommandWorkload, JobSpec
from mkd.store import Store

MAX_NAME_BYTES = 128  # a job name is at most 64; room for "-N", ".error" and atomic_write's temp name


def name_problem(name: str) -> str | None:
    """What is wrong with a file name as a job file's name in incoming (None: nothing)."""
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "the file name is not UTF-8; rename the file"
    for ch in name:
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"the file name holds a control character (U+{ord(ch):04X}, e.g. a newline or tab); rename the file"
        if category in ("Cf", "Co", "Cn", "Cs", "Zl", "Zp"):
            what = unicodedata.name(ch, "an invisible character").lower()
            return f"the file name holds U+{ord(ch):04X} ({what}), which hides or reorders text; rename the file"
    if len(raw) > MAX_NAME_BYTES:
        return f"the file name is {len(raw)} bytes long, over the {MAX_NAME_BYTES}-byte limit; rename the file"
    return None


def display_name(name: str, *, full: bool = False) -> str:
    """The name as it can be printed: itself when it is fine, else escaped (\\n, \\u202e, \\xff)
    and, unless `full`, shortened."""
    if name_problem(name) is None:
        return name
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    shown = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if not full and len(shown) > 100:
        shown = f"{shown[:60]}...{shown[-30:]}"
    return shown


def safe_name(name: str) -> str:
    """A name to keep the file under in rejected/: the name itself when it is fine, else its
    plain ASCII letters with a digest of the original (the .error records the original)."""
    if name_problem(name) is None:
        return name
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    kept = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in stem)
    kept = kept.lstrip(".")[:40] or "file"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return f"{kept}-{digest}.toml"


def daemon_uid(layout: Layout) -> int:
    """The uid the daemon runs as, seen from a CLI process: the owner of its lock, else of its
    state folder, else our own (the default allowed_uids are the daemon's uid and root)."""
    for path in (layout.lock, layout.state_dir):
        try:
            return os.stat(path).st_uid
        except OSError:
            continue
    return os.getuid()


@dataclass(frozen=True)
class Verdict:
    """What `Admission.judge` found: a spec and job name, or the `.error` text."""

    raw: bytes
    spec: JobSpec | None = None
    job_name: str | None = None
    signature: tuple[int, int] | None = None  # (size, mtime_ns) of the file judged
    error: str | None = None
    settles: bool = False  # the problem is in the content, which a writer still writing may fix
    crashed: bool = False  # the check itself raised: counted as intake_errors_total

    @property
    def ok(self) -> bool:
        return self.error is None


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class Admission:
    """The checks, in the order the intake makes them: name, file (type, owner, size), content
    (schema, host: agent config, allowed roots, checkout files), then identity (the job name,
    and no live job of that name)."""

    def __init__(self, config: DaemonConfig, layout: Layout, store: Store | None, *, uid: int | None = None) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.daemon_uid = os.getuid() if uid is None else uid

    @property
    def uids(self) -> set[int]:
        uids = self.config.intake.allowed_uids
        return set(uids) if uids is not None else {self.daemon_uid, 0}

    @property
    def gids(self) -> set[int]:
        return set(self.config.intake.allowed_gids)

    def judge(self, path: Path, name: str, *, copy: bool = False) -> Verdict:
        """The verdict on the file at `path` as the job file `name` in incoming.

        copy=True judges the copy `mkd submit` would write: `path` may be a symbolic link, and the
        owner is the one the copy gets. Raises FileNotFoundError when the file is not there
        (vanished, or never was): there is nothing to set aside.
        """
        shown = display_name(name)
        problem = name_problem(name)
        if problem is not None:
            return Verdict(b"", error=f"{shown}: {problem}\n")
        try:
            raw, signature = self._read(path, shown, copy)
        except _Refused as refused:
            return Verdict(b"", error=f"{shown}: {refused.message}\n")
        except FileNotFoundError:
            raise
        except Exception as error:  # whatever it is, it is this file's verdict
            return _crashed(b"", shown, error)
        return self.judge_bytes(raw, name, signature)

    def read(self, path: Path, name: str) -> bytes:
        """The bytes `judge` would read (same checks, never blocking); raises on a file it refuses."""
        try:
            return self._read(path, display_name(name), copy=False)[0]
        except _Refused as refused:
            raise ValueError(refused.message) from None

    def judge_bytes(self, raw: bytes, name: str, signature: tuple[int, int] | None = None) -> Verdict:
        """The content and identity checks of bytes already read (and whose file passed `judge`)."""
        shown = display_name(name)
        try:
            spec = self._content(raw, name, shown)
        except JobFileError as error:
            return Verdict(raw, signature=signature, error=error.render(), settles=True)
        except Exception as error:
            return _crashed(raw, shown, error, signature)
        try:
            job_name = self._identity(spec, name, shown)
        except _Refused as refused:
            return Verdict(raw, spec=spec, signature=signature, error=f"{shown}: {refused.message}\n")
        except Exception as error:
            return _crashed(raw, shown, error, signature)
        return Verdict(raw, spec=spec, job_name=job_name, signature=signature)

    # --- the steps --------------------------------------------------------------------

    def _read(self, path: Path, shown: str, copy: bool) -> tuple[bytes, tuple[int, int]]:
        """The file's bytes, after the checks that need no parsing (type, owner, size)."""
        cap = self.config.intake.max_file_size
        if not copy:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise _Refused("is a symbolic link; copy the file itself into incoming")
            self._check_stat(st, st.st_uid, st.st_gid, cap)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if copy else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except PermissionError as error:
            raise _Refused(f"mkd cannot read it ({error.strerror}); make it readable (chmod a+r)") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            uid, gid = (os.geteuid(), self._copy_gid()) if copy else (st.st_uid, st.st_gid)
            self._check_stat(st, uid, gid, cap)
            raw = handle.read(cap + 1)
        if len(raw) > cap:
            raise _Refused(f"over the {cap}-byte limit ([intake] max_file_size)")
        return raw, (st.st_size, st.st_mtime_ns)

    def _check_stat(self, st: os.stat_result, uid: int, gid: int, cap: int) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("is not a regular file (FIFO, socket, device or directory)")
        if uid not in self.uids and gid not in self.gids:
            raise _Refused(
                f"owned by uid {uid}, who may not submit jobs; allowed uids "
                f"{sorted(self.uids)}, gids {sorted(self.gids)} ([intake] allowed_uids / allowed_gids)"
            )
        if st.st_size > cap:
            raise _Refused(f"{st.st_size} bytes is over the {cap}-byte limit ([intake] max_file_size)")

    def _copy_gid(self) -> int:
        """The group a file written into incoming gets: the folder's when it is setgid."""
        try:
            st = os.stat(self.layout.incoming)
        except OSError:
            return os.getegid()
        return st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()

    def _content(self, raw: bytes, name: str, shown: str) -> JobSpec:
        """The schema, then the checks that need the host (agent YAML, allowed roots): all problems at once.

        A live job of the same name is refused in _identity; when the file has other problems
        too, that one is listed with them, so one .error tells the whole story.
        """
        spec = load_job_bytes(raw, shown)
        text = raw.decode("utf-8")
        problems: list[Problem] = []
        try:
            check_agent_overrides(spec, text, shown, self.layout.mimickit_dir)
        except JobFileError as error:
            problems.extend(error.problems)
        problems.extend(self._root_problems(spec))
        if not problems:  # the checkout is only looked at once the paths are known to be allowed
            problems.extend(checkout_problems(spec, text, self.layout.mimickit_dir))
        if problems:
            live = self._live(spec.job.name or _stem(name))
            if live is not None:
                problems.append(Problem(None, None, "job.name", live))
            raise JobFileError(shown, problems)
        return spec

    def _identity(self, spec: JobSpec, name: str, shown: str) -> str:
        job_name = spec.job.name or _stem(name)
        if not JOB_NAME.fullmatch(job_name):
            raise _Refused(
                f"the file name {job_name!r} is not a valid job name (1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit); rename the file or set [job] name"
            )
        live = self._live(job_name)
        if live is not None:
            raise _Refused(live)
        return job_name

    def _live(self, job_name: str) -> str | None:
        """The clash message when a live job has this name, else None."""
        live = self.store.live_job_named(job_name) if self.store is not None else None
        if live is None:
            return None
        return (
            f"a job named {job_name!r} is still live ({live}); wait for it to finish, cancel it (mkd cancel), "
            "or give this file another [job] name"
        )

    def _root_problems(self, spec: JobSpec) -> list[Problem]:
        base = self.layout.base
        roots = [(base / os.path.expanduser(r)).resolve() for r in self.config.intake.allowed_roots]
        workload = spec.workload
        where = workload.cwd if isinstance(workload, CommandWorkload) else workload.mimickit_dir
        if not roots or where is None:
            return []
        if "\0" in where:
            return [Problem(None, None, "workload", "a path holds a NUL character")]
        if not any(Path(where).resolve().is_relative_to(r) for r in roots):
            allowed = [str(r) for r in roots]
            return [Problem(None, None, "workload", f"{where!r} is outside the allowed roots {allowed}")]
        return []


def _stem(name: str) -> str:
    return name[: -len(".toml")] if name.endswith(".toml") else name


def _crashed(raw: bytes, shown: str, error: Exception, signature: tuple[int, int] | None = None) -> Verdict:
    text = f"{shown}: mkd could not check this file ({type(error).__name__}: {error})\n"
    return Verdict(raw, signature=signature, error=text, crashed=True)
