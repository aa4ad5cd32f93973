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

Whether a file is accepted is mkd.admission's decision (the same for `mkd validate` and
`mkd submit`). Whatever goes wrong while taking one file (its name, its type, reading it,
checking it, claiming it, writing its `.error`) sets that one file aside in `jobs/rejected/`
under a safe name and the loop goes on: one file must never stop the daemon, which under
systemd would restart into the same file and die again.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mkd.admission import Admission, Verdict, display_name, safe_name
from mkd.config import DaemonConfig, Layout
from mkd.fsutil import atomic_write, free_name
from mkd.mirror import place_job_file
from mkd.states import JobState
from mkd.store import Store, StoreError

log = logging.getLogger("mkd.intake")
IGNORED_SUFFIXES = (".tmp", ".swp", ".swx", ".part", "~")
_counter = itertools.count()


def is_candidate(name: str) -> bool:
    """Files the intake considers: NAME.toml, never dotfiles or editor and partial files."""
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return name.endswith(".toml")


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
        self.layout = layout
        self.store = store
        self.wall = wall
        self.on_accepted = on_accepted
        self.admission = Admission(config, layout, store)
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._stuck: dict[str, tuple[int, int]] = {}  # files that could not even be moved aside: (dev, ino)

    @property
    def config(self) -> DaemonConfig:
        return self.admission.config

    @config.setter
    def config(self, config: DaemonConfig) -> None:  # a reloaded config (the daemon sets it)
        self.admission.config = config

    # --- scanning ---------------------------------------------------------------------

    def scan(self, now_mono: float) -> IntakeResult:
        result = IntakeResult()
        try:
            names = sorted(os.listdir(self.layout.incoming))
        except FileNotFoundError:
            self.layout.incoming.mkdir(parents=True, exist_ok=True)
            return result
        except OSError as error:  # unreadable incoming: say so, try again next tick
            log.error("intake: cannot list %s: %s", self.layout.incoming, error)
            return result
        for name in names:
            if is_candidate(name) and not self._still_stuck(name):
                self._take(name, now_mono, result)
        live = set(names)
        for gone in [n for n in self._seen if n not in live]:
            del self._seen[gone]
        for gone in [n for n in self._stuck if n not in live]:
            del self._stuck[gone]
        return result

    def _take(self, name: str, now_mono: float, result: IntakeResult) -> None:
        path = self.layout.incoming / name
        try:
            self._take_one(path, name, now_mono, result)
        except StoreError:
            raise  # the store cannot be written: the daemon stops; the file is taken again at the next start
        except Exception as error:  # one strange file must never stop the intake: set it aside, count it
            log.exception("intake: %s could not be taken", display_name(name))
            self._count("intake_errors_total")
            shown = display_name(name)
            reason = f"{shown}: mkd could not take this file ({type(error).__name__}: {error})\n"
            self._reject_from(path, name, reason, result)

    def _take_one(self, path: Path, name: str, now_mono: float, result: IntakeResult) -> None:
        try:
            verdict = self.admission.judge(path, name)
        except FileNotFoundError:
            return  # gone between the listing and the look: nothing to take
        if not verdict.ok:
            if verdict.crashed:
                log.error("intake: %s", (verdict.error or "").strip())
                self._count("intake_errors_total")
            if verdict.settles and not self._settled(name, verdict, now_mono):
                result.pending.append(name)
                return
            self._reject_from(path, name, verdict.error or "", result)
            return
        token = f"{time.time_ns():x}-{os.getpid()}-{next(_counter)}"
        claimed = self.layout.claimed / f"{token}__{name}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return
        self._seen.pop(name, None)
        self._record_claimed(claimed, name, result, first=verdict)

    def _settled(self, name: str, verdict: Verdict, now_mono: float) -> bool:
        """Whether an invalid file stayed unchanged for `settle` (a writer may still be writing it)."""
        signature = verdict.signature or (-1, -1)
        seen = self._seen.get(name)
        if seen is None or seen[0] != signature:
            self._seen[name] = (signature, now_mono)
            return False
        return now_mono - seen[1] >= self.config.intake.settle.total_seconds()

    def recover_claims(self) -> IntakeResult:
        """Finish what a killed daemon left between claiming a file and mirroring it."""
        result = IntakeResult()
        try:
            entries = sorted(os.listdir(self.layout.claimed))
        except OSError as error:
            log.error("intake: cannot list %s: %s", self.layout.claimed, error)
            return result
        for entry in entries:
            if "__" not in entry or entry.startswith("."):
                continue
            claimed = self.layout.claimed / entry
            name = entry.partition("__")[2]
            try:
                self._record_claimed(claimed, name, result, first=None)
            except StoreError:
                raise
            except Exception as error:  # as in _take: never fatal, and never at every start again
                log.exception("intake: claimed file %s could not be recovered", display_name(entry))
                self._count("intake_errors_total")
                reason = f"{display_name(name)}: mkd could not take this file ({type(error).__name__}: {error})\n"
                self._reject_from(claimed, name, reason, result)
        return result

    # --- the steps --------------------------------------------------------------------

    def _record_claimed(self, claimed: Path, name: str, result: IntakeResult, first: Verdict | None) -> None:
        token = claimed.name.partition("__")[0]
        job_id = self.store.has_claim(token)
        if job_id is None:
            verdict = self._judge_claimed(claimed, name, first)
            if verdict is None:
                return
            if not verdict.ok or verdict.spec is None or verdict.job_name is None:
                if verdict.crashed:
                    self._count("intake_errors_total")
                self._reject_from(claimed, name, verdict.error or f"{display_name(name)}: not accepted\n", result)
                return
            job_id = self.store.job_id_for(verdict.job_name)
            self.store.insert_job(
                job_id=job_id,
                name=verdict.job_name,
                priority=verdict.spec.job.priority,
                source_file=display_name(name),
                source_text=verdict.raw.decode("utf-8"),
                spec=verdict.spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
                claim_token=token,
                now=self.wall(),
            )
            result.accepted.append(job_id)
            log.info("job %s: queued from %s", job_id, display_name(name))
            if self.on_accepted is not None:
                self.on_accepted(job_id)
        job = self.store.get_job(job_id)
        state = job.state if job else JobState.QUEUED
        place_job_file(self.layout, job_id, state, claimed)

    def _judge_claimed(self, claimed: Path, name: str, first: Verdict | None) -> Verdict | None:
        """The verdict on a claimed file: `first` when its bytes are the ones judged before the
        rename (a writer may have replaced the file in between), else a full judgement."""
        try:
            if first is None:
                return self.admission.judge(claimed, name)
            raw = self.admission.read(claimed, name)  # never blocks: a FIFO may have been renamed in
        except FileNotFoundError:
            return None
        except Exception:  # not a regular file any more, or unreadable: the full verdict says why
            try:
                return self.admission.judge(claimed, name)
            except FileNotFoundError:
                return None
        return first if raw == first.raw else self.admission.judge_bytes(raw, name)

    def _still_stuck(self, name: str) -> bool:
        """A file that could not be moved aside is tried again only once it changed."""
        stuck = self._stuck.get(name)
        if stuck is None:
            return False
        try:
            st = os.lstat(self.layout.incoming / name)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == stuck

    def _reject_from(self, path: Path, name: str, reason: str, result: IntakeResult) -> None:
        """Write the .error, then move the file beside it (a crash between repeats both).

        Never raises: a file that cannot be moved stays where it is, is logged once, and is
        left alone until it changes."""
        shown = display_name(name)
        text = reason if reason.endswith("\n") else reason + "\n"
        first_line = (text.strip().splitlines() or [""])[0]
        try:
            self.layout.rejected.mkdir(parents=True, exist_ok=True)
            target = free_name(self.layout.rejected, safe_name(name))
            if target.name != name:
                text = f"{shown}: kept here as {target.name} (its own name: {display_name(name, full=True)})\n" + text
            error_file = target.with_name(target.name + ".error")
            atomic_write(error_file, text.encode("utf-8", "backslashreplace"))
            try:
                os.rename(path, target)
            except FileNotFoundError:
                error_file.unlink(missing_ok=True)
                return
        except Exception as error:  # a full disk, a read-only folder: keep going
            log.error("intake: cannot set %s aside in %s: %s", shown, self.layout.rejected, error)
            self._count("intake_errors_total")
            try:
                st = os.lstat(path)
                self._stuck[name] = (st.st_dev, st.st_ino)
            except OSError:
                pass
            return
        self._seen.pop(name, None)
        self._count("rejected_files_total")
        result.rejected.append(name)
        log.warning("rejected %s: %s", shown, first_line)

    def _count(self, counter: str) -> None:
        try:
            self.store.bump(counter)
        except StoreError:
            raise
        except Exception as error:  # a counter is never worth the intake
            log.error("intake: cannot count %s: %s", counter, error)
