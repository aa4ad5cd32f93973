"""Taking job files from `jobs/incoming` into the store, exactly once.

A scan of the directory is the truth (inotify only wakes the loop earlier), so a missed
event or a filesystem without inotify never loses a file. A valid file is claimed by an
atomic rename into `<state_dir>/claimed/<token>__NAME.toml`, then recorded in the store
with that token in one transaction, then moved to the mirror folder of its state. If mkd
is killed between any two of those steps, `recover_claims` finishes the job at the next
start: a claimed file whose token is in the store was queued; one whose token is not
is validated again. So a dropped file is always in exactly one place.

Submission rule for scripts: write the file elsewhere (or as a dotfile / `*.tmp` in
incoming) and rename it to `NAME.toml`. A file written in place is taken as soon as it
is a valid job; an invalid one is rejected only after it stayed unchanged for
`intake.settle`, so a slow writer is not rejected halfway.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mkd.config import DaemonConfig, Layout
from mkd.fsutil import atomic_write, free_name
from mkd.jobfile import JobFileError, Problem, load_job_bytes
from mkd.mimickit.agent_check import check_agent_overrides
from mkd.mimickit.checkout_files import checkout_problems
from mkd.mirror import place_job_file
from mkd.spec import JOB_NAME, CommandWorkload, JobSpec
from mkd.states import JobState
from mkd.store import Store

log = logging.getLogger("mkd.intake")
IGNORED_SUFFIXES = (".tmp", ".swp", ".swx", ".part", "~")
_counter = itertools.count()


def is_candidate(name: str) -> bool:
    """Files the intake considers: NAME.toml, never dotfiles or editor and partial files."""
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return name.endswith(".toml")


class Rejection(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class IntakeResult:
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


class Intake:
    def __init__(
        self,
        config: DaemonConfig,
        layout: Layout,
        store: Store,
        *,
        wall: Callable[[], float] = time.time,
        on_accepted: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        self.store = store
        self.wall = wall
        self.on_accepted = on_accepted
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    @property
    def _uids(self) -> set[int]:
        uids = self.config.intake.allowed_uids
        return set(uids) if uids is not None else {os.getuid(), 0}

    @property
    def _gids(self) -> set[int]:
        return set(self.config.intake.allowed_gids)

    # --- scanning ---------------------------------------------------------------------

    def scan(self, now_mono: float) -> IntakeResult:
        result = IntakeResult()
        try:
            names = sorted(os.listdir(self.layout.incoming))
        except FileNotFoundError:
            self.layout.incoming.mkdir(parents=True, exist_ok=True)
            return result
        for name in names:
            if is_candidate(name):
                self._take(name, now_mono, result)
        live = set(names)
        for gone in [n for n in self._seen if n not in live]:
            del self._seen[gone]
        return result

    def _take(self, name: str, now_mono: float, result: IntakeResult) -> None:
        path = self.layout.incoming / name
        try:
            raw, signature = self._read_checked(path)
            spec = self._load(raw, name, signature, now_mono)
        except Rejection as rejection:
            self._reject_from(path, name, rejection.reason)
            result.rejected.append(name)
            return
        except _Pending:
            result.pending.append(name)
            return
        except FileNotFoundError:
            return
        except Exception as error:  # one strange file must never stop the intake: reject it, count it
            log.exception("intake: %s could not be checked", name)
            self.store.bump("intake_errors_total")
            self._reject_from(path, name, f"{name}: mkd could not check this file ({type(error).__name__}: {error})")
            result.rejected.append(name)
            return
        token = f"{time.time_ns():x}-{os.getpid()}-{next(_counter)}"
        claimed = self.layout.claimed / f"{token}__{name}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return
        self._seen.pop(name, None)
        self._record_claimed(claimed, result, first_spec=(spec, raw))

    def recover_claims(self) -> IntakeResult:
        """Finish what a killed daemon left between claiming a file and mirroring it."""
        result = IntakeResult()
        for claimed in sorted(self.layout.claimed.iterdir()):
            if "__" in claimed.name and not claimed.name.startswith("."):
                self._record_claimed(claimed, result, first_spec=None)
        return result

    # --- the steps --------------------------------------------------------------------

    def _record_claimed(self, claimed: Path, result: IntakeResult, first_spec: tuple[JobSpec, bytes] | None) -> None:
        token, _, name = claimed.name.partition("__")
        job_id = self.store.has_claim(token)
        if job_id is None:
            try:
                raw = claimed.read_bytes()
                spec = first_spec[0] if first_spec and first_spec[1] == raw else self._validate(raw, name)
                job_id = self._insert(spec, raw, name, token)
            except JobFileError as error:
                self._reject_from(claimed, name, error.render())
                result.rejected.append(name)
                return
            except Rejection as rejection:
                self._reject_from(claimed, name, rejection.reason)
                result.rejected.append(name)
                return
            except Exception as error:  # as in _take: a file that breaks the check is rejected, never fatal
                log.exception("intake: %s could not be checked", name)
                self.store.bump("intake_errors_total")
                self._reject_from(
                    claimed, name, f"{name}: mkd could not check this file ({type(error).__name__}: {error})"
                )
                result.rejected.append(name)
                return
            result.accepted.append(job_id)
            log.info("job %s: queued from %s", job_id, name)
            if self.on_accepted is not None:
                self.on_accepted(job_id)
        job = self.store.get_job(job_id)
        state = job.state if job else JobState.QUEUED
        place_job_file(self.layout, job_id, state, claimed)

    def _insert(self, spec: JobSpec, raw: bytes, filename: str, token: str) -> str:
        name = spec.job.name or filename[: -len(".toml")]
        if not JOB_NAME.fullmatch(name):
            raise Rejection(
                f"{filename}: the file name {name!r} is not a valid job name (1-64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit); rename the file or set [job] name"
            )
        live = self.store.live_job_named(name)
        if live is not None:
            raise Rejection(f"{filename}: {_still_live(name, live)}")
        job_id = self.store.job_id_for(name)
        self.store.insert_job(
            job_id=job_id,
            name=name,
            priority=spec.job.priority,
            source_file=filename,
            source_text=raw.decode("utf-8"),
            spec=spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
            claim_token=token,
            now=self.wall(),
        )
        return job_id

    def _read_checked(self, path: Path) -> tuple[bytes, tuple[int, int]]:
        """The file's bytes, after the checks that need no parsing (type, owner, size)."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise Rejection(f"{path.name}: is a symbolic link; copy the file itself into incoming")
        if not stat.S_ISREG(st.st_mode):
            raise Rejection(f"{path.name}: is not a regular file (FIFO, socket, device or directory)")
        if st.st_uid not in self._uids and st.st_gid not in self._gids:
            raise Rejection(
                f"{path.name}: owned by uid {st.st_uid}, who may not submit jobs; allowed uids "
                f"{sorted(self._uids)}, gids {sorted(self._gids)} ([intake] allowed_uids / allowed_gids)"
            )
        cap = self.config.intake.max_file_size
        if st.st_size > cap:
            raise Rejection(f"{path.name}: {st.st_size} bytes is over the {cap}-byte limit ([intake] max_file_size)")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise Rejection(f"{path.name}: is not a regular file")
            raw = handle.read(cap + 1)
        if len(raw) > cap:
            raise Rejection(f"{path.name}: over the {cap}-byte limit ([intake] max_file_size)")
        return raw, (st.st_size, st.st_mtime_ns)

    def _load(self, raw: bytes, name: str, signature: tuple[int, int], now_mono: float) -> JobSpec:
        """Validate; an invalid file waits until unchanged for `settle` before it is rejected."""
        try:
            return self._validate(raw, name)
        except JobFileError as error:
            seen = self._seen.get(name)
            if seen is None or seen[0] != signature:
                self._seen[name] = (signature, now_mono)
                raise _Pending() from None
            if now_mono - seen[1] < self.config.intake.settle.total_seconds():
                raise _Pending() from None
            raise Rejection(error.render()) from None

    def _validate(self, raw: bytes, name: str) -> JobSpec:
        """The schema, then the checks that need the host (agent YAML, allowed roots): all problems at once.

        A live job of the same name is refused later, at insert; when the file has other problems
        too, that one is listed with them, so one .error tells the whole story.
        """
        spec = load_job_bytes(raw, name)
        problems: list[Problem] = []
        try:
            check_agent_overrides(spec, raw.decode("utf-8"), name, self.layout.mimickit_dir)
        except JobFileError as error:
            problems.extend(error.problems)
        problems.extend(self._root_problems(spec))
        if not problems:  # the checkout is only looked at once the paths are known to be allowed
            problems.extend(checkout_problems(spec, raw.decode("utf-8"), self.layout.mimickit_dir))
        if problems:
            job_name = spec.job.name or name[: -len(".toml")]
            live = self.store.live_job_named(job_name)
            if live is not None:
                problems.append(Problem(None, None, "job.name", _still_live(job_name, live)))
            raise JobFileError(name, problems)
        return spec

    def _root_problems(self, spec: JobSpec) -> list[Problem]:
        roots = [Path(r).resolve() for r in self.config.intake.allowed_roots]
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

    def _reject_from(self, path: Path, name: str, reason: str) -> None:
        """Write NAME.error, then move the file beside it (a crash between repeats both)."""
        target = free_name(self.layout.rejected, name)
        text = reason if reason.endswith("\n") else reason + "\n"
        atomic_write(target.with_name(target.name + ".error"), text)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        self.store.bump("rejected_files_total")
        log.warning("rejected %s: %s", name, text.strip().splitlines()[0])


def _still_live(name: str, live: str) -> str:
    return (
        f"a job named {name!r} is still live ({live}); wait for it to finish, cancel it (mkd cancel), "
        "or give this file another [job] name"
    )


class _Pending(Exception):
    """Not valid yet, but maybe still being written."""
