"""The durable store: jobs, their attempts and a timeline of events, in SQLite (WAL).

The single source of truth. The daemon is its only writer; the CLI opens it read-only.
Nothing here holds a process handle: runtime state lives in the daemon. A write that
fails raises StoreError, and the daemon stops rather than run on with unsaved state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mkd.states import LIVE, AttemptState, JobState, check_reopen, check_transition

if TYPE_CHECKING:  # `mkd status` reads rows without them: building mkd.memory's dataclasses costs ~20 ms
    from mkd.memory import JobMemory, Plan

# The live states as SQL, for the queries and the partial index that keeps live names unique.
LIVE_SQL = "(" + ",".join(f"'{state.value}'" for state in sorted(LIVE)) + ")"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    source_file TEXT NOT NULL,
    source_text TEXT NOT NULL,
    spec TEXT NOT NULL,
    claim_token TEXT NOT NULL UNIQUE,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    stage_index INTEGER NOT NULL DEFAULT 0,
    stage_data TEXT NOT NULL DEFAULT '{}',
    plan TEXT NOT NULL DEFAULT '{}',
    next_attempt_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS live_names ON jobs(name)
    WHERE state IN {live};
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    number INTEGER NOT NULL,
    stage_index INTEGER NOT NULL,
    stage_label TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    dir TEXT NOT NULL,
    shim_pid INTEGER,
    shim_start INTEGER,
    started_at REAL NOT NULL,
    ended_at REAL,
    returncode INTEGER,
    signal INTEGER,
    outcome TEXT,
    failure_class TEXT,
    evidence TEXT NOT NULL DEFAULT '[]',
    stop_reason TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    UNIQUE(job_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_state ON attempts(state);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts(job_id, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

JOB_COLUMNS = [
    "job_id",
    "name",
    "state",
    "priority",
    "source_file",
    "spec",
    "claim_token",
    "submitted_at",
    "updated_at",
    "finished_at",
    "reason",
    "stage_index",
    "stage_data",
    "plan",
    "next_attempt_at",
    "cancel_requested",
]
ATTEMPT_COLUMNS = [
    "id",
    "job_id",
    "number",
    "stage_index",
    "stage_label",
    "state",
    "params",
    "dir",
    "shim_pid",
    "shim_start",
    "started_at",
    "ended_at",
    "returncode",
    "signal",
    "outcome",
    "failure_class",
    "evidence",
    "stop_reason",
    "progress",
    "run_ref",
]


class StoreError(RuntimeError):
    """The store cannot be opened or written; the daemon must stop."""


@dataclass
class JobRecord:
    job_id: str
    name: str
    state: JobState
    priority: int
    source_file: str
    spec: dict[str, Any]
    claim_token: str
    submitted_at: float
    updated_at: float
    finished_at: float | None
    reason: str
    stage_index: int
    memory: JobMemory  # the stage_data column
    plan: Plan | None  # None until its stage's first plan is made
    next_attempt_at: float | None
    cancel_requested: bool


@dataclass
class AttemptRecord:
    id: int
    job_id: str
    number: int
    stage_index: int
    stage_label: str
    state: AttemptState
    params: Plan
    dir: str
    shim_pid: int | None
    shim_start: int | None
    started_at: float
    ended_at: float | None
    returncode: int | None
    signal: int | None
    outcome: str | None
    failure_class: str | None
    evidence: list[str]
    stop_reason: str | None
    progress: dict[str, Any] = field(default_factory=dict)
    run_ref: dict[str, Any] = field(default_factory=dict)  # the executor's handle (mkd.executors.base.RunRef)


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str | None
    at: float
    kind: str
    message: str
    data: dict[str, Any]


_JSON_JOB = {"spec", "stage_data", "plan"}
_JSON_ATTEMPT = {"params", "evidence", "progress", "run_ref"}
_COLUMN = {"memory": "stage_data"}  # record field -> column, where they differ


def _job(row: sqlite3.Row) -> JobRecord:
    values = {k: (json.loads(row[k]) if k in _JSON_JOB else row[k]) for k in JOB_COLUMNS}
    values["state"] = JobState(values["state"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    from mkd.memory import JobMemory, Plan

    values["memory"] = JobMemory.from_json(values.pop("stage_data"))
    values["plan"] = Plan.from_json(values["plan"]) if values["plan"] else None
    return JobRecord(**values)


def _attempt(row: sqlite3.Row) -> AttemptRecord:
    values = {k: (json.loads(row[k]) if k in _JSON_ATTEMPT else row[k]) for k in ATTEMPT_COLUMNS}
    values["state"] = AttemptState(values["state"])
    from mkd.memory import Plan

    values["params"] = Plan.from_json(values["params"])
    return AttemptRecord(**values)


def _encode(value: Any) -> Any:
    """A field's value as the store keeps it: typed state and containers as JSON text."""
    if hasattr(value, "to_json"):  # mkd.memory's typed state
        return json.dumps(value.to_json())
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._batch_depth = 0

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (or create) the store; a corrupt file is an error, never a silent reset."""
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, timeout=5)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(check)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.executescript(SCHEMA.replace("{live}", LIVE_SQL))
                _migrate(conn)
                conn.execute("BEGIN IMMEDIATE")  # a write lock held elsewhere shows now, not at the first job
                conn.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise StoreError(
                    f"cannot open the store {path}: another process holds its lock ({error}); "
                    "find it with `fuser` and stop it. The store itself is fine: keep it where it is."
                ) from None
            raise _damaged(path, error) from None
        except sqlite3.Error as error:
            raise _damaged(path, error) from None
        return cls(conn, path)

    def query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        """A read for the view queries of mkd.store_views (the schema stays this module's)."""
        return self._conn.execute(sql, args)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write inside one transaction: all of them land, or none (a kill in between)."""
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        with self.transaction():
            self._batch_depth = 1
            try:
                yield
            finally:
                self._batch_depth = 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self._batch_depth:  # already inside a batch: its transaction covers this write
            yield self._conn
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(f"cannot write the store {self.path}: {error}") from None

    # --- jobs -------------------------------------------------------------------------

    def job_id_for(self, name: str) -> str:
        """The id for a new job called `name`: the name itself, or name.N if it was used before."""
        taken = {r[0] for r in self._conn.execute("SELECT job_id FROM jobs WHERE name = ?", (name,))}
        if name not in taken:
            return name
        n = 2
        while f"{name}.{n}" in taken:
            n += 1
        return f"{name}.{n}"

    def live_job_named(self, name: str) -> str | None:
        row = self._conn.execute(f"SELECT job_id FROM jobs WHERE name = ? AND state IN {LIVE_SQL}", (name,)).fetchone()
        return None if row is None else str(row[0])

    def insert_job(
        self,
        *,
        job_id: str,
        name: str,
        priority: int,
        source_file: str,
        source_text: str,
        spec: dict[str, Any],
        claim_token: str,
        now: float,
    ) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO jobs (job_id, name, state, priority, source_file, source_text, spec, claim_token,"
                " submitted_at, updated_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    name,
                    JobState.QUEUED,
                    priority,
                    source_file,
                    source_text,
                    json.dumps(spec),
                    claim_token,
                    now,
                    now,
                    "accepted",
                ),
            )
            self._event(tx, job_id, now, "queued", f"accepted from {source_file}", {})

    def has_claim(self, token: str) -> str | None:
        row = self._conn.execute("SELECT job_id FROM jobs WHERE claim_token = ?", (token,)).fetchone()
        return None if row is None else str(row[0])

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def source_text(self, job_id: str) -> str:
        row = self._conn.execute("SELECT source_text FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return "" if row is None else str(row[0])

    def jobs(self, states: set[JobState] | None = None) -> list[JobRecord]:
        """Jobs in `states` (all when None), in the order they may start: priority, then arrival."""
        sql = f"SELECT {','.join(JOB_COLUMNS)} FROM jobs"
        args: list[Any] = []
        if states is not None:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args.extend(s.value for s in states)
        sql += " ORDER BY priority DESC, seq"
        return [_job(r) for r in self._conn.execute(sql, args)]

    def jobs_finished_since(self, since: float, limit: int = 200) -> list[JobRecord]:
        """Jobs finished at or after `since`, newest first (the metrics keep them for a while)."""
        rows = self._conn.execute(
            f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE finished_at >= ? ORDER BY finished_at DESC LIMIT ?",
            (since, limit),
        )
        return [_job(r) for r in rows]

    def find_job(self, name_or_id: str) -> JobRecord | None:
        """A job by id, or the newest job with that name."""
        found = self.get_job(name_or_id)
        if found is not None:
            return found
        row = self._conn.execute(
            f"SELECT {','.join(JOB_COLUMNS)} FROM jobs WHERE name = ? ORDER BY seq DESC LIMIT 1",
            (name_or_id,),
        ).fetchone()
        return None if row is None else _job(row)

    def set_job_state(self, job_id: str, new: JobState, reason: str, now: float, **fields: Any) -> None:
        """Change a job's state (checked against the allowed transitions) and log it."""
        with self.transaction() as tx:
            row = tx.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            old = JobState(row[0])
            check_transition(old, new)
            values: dict[str, Any] = {"state": new.value, "reason": reason, "updated_at": now, "published": 0, **fields}
            if new.finished:
                values["finished_at"] = now
            self._update(tx, "jobs", "job_id", job_id, values)
            # running -> running (a stage promoted, its next attempt started) is news in the timeline too
            message = f"{old} -> {new}: {reason}" if old != new else f"{new}: {reason}"
            self._event(tx, job_id, now, "state", message, {"from": old, "to": new})

    def unpublished(self) -> list[str]:
        """Jobs whose state changed since their files (mirror, status.json, report.md) were written."""
        return [str(r[0]) for r in self._conn.execute("SELECT job_id FROM jobs WHERE published = 0")]

    def mark_published(self, job_id: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE jobs SET published = 1 WHERE job_id = ?", (job_id,))

    def update_job(self, job_id: str, now: float, **fields: Any) -> None:
        with self.transaction() as tx:
            self._update(tx, "jobs", "job_id", job_id, {"updated_at": now, **fields})

    def reopen_job(self, job_id: str, reason: str, now: float, **fields: Any) -> None:
        """`mkd retry`: a failed or cancelled job back to queued (the only way out of a finished state)."""
        with self.transaction() as tx:
            row = tx.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            old = JobState(row[0])
            check_reopen(old)
            values: dict[str, Any] = {
                "state": JobState.QUEUED.value,
                "reason": reason,
                "updated_at": now,
                "published": 0,
                "finished_at": None,
                "cancel_requested": 0,
                "next_attempt_at": None,
                **fields,
            }
            self._update(tx, "jobs", "job_id", job_id, values)
            self._event(tx, job_id, now, "state", f"{old} -> queued: {reason}", {"from": old, "to": "queued"})

    def delete_jobs(self, job_ids: list[str]) -> int:
        """`mkd clean`: forget finished jobs (their rows, attempts and timeline); live ones are never deleted."""
        done = 0
        with self.transaction() as tx:
            for job_id in job_ids:
                row = tx.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None or not JobState(row[0]).finished:
                    continue
                tx.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
                tx.execute("DELETE FROM attempts WHERE job_id = ?", (job_id,))
                tx.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                done += 1
        return done

    # --- attempts ---------------------------------------------------------------------

    def add_attempt(
        self, *, job_id: str, stage_index: int, stage_label: str, params: Plan, dir: str, now: float
    ) -> AttemptRecord:
        with self.transaction() as tx:
            row = tx.execute("SELECT COALESCE(MAX(number), 0) FROM attempts WHERE job_id = ?", (job_id,)).fetchone()
            number = int(row[0]) + 1
            cur = tx.execute(
                "INSERT INTO attempts (job_id, number, stage_index, stage_label, state, params, dir, started_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    number,
                    stage_index,
                    stage_label,
                    AttemptState.STARTING,
                    json.dumps(params.to_json()),
                    dir,
                    now,
                ),
            )
            attempt_id = int(cur.lastrowid or 0)
            self._bump(tx, "attempts_total")
        found = self.get_attempt(attempt_id)
        assert found is not None
        return found

    def get_attempt(self, attempt_id: int) -> AttemptRecord | None:
        row = self._conn.execute(
            f"SELECT {','.join(ATTEMPT_COLUMNS)} FROM attempts WHERE id = ?", (attempt_id,)
        ).fetchone()
        return None if row is None else _attempt(row)

    def attempts(self, job_id: str | None = None, *, live_only: bool = False) -> list[AttemptRecord]:
        sql = f"SELECT {','.join(ATTEMPT_COLUMNS)} FROM attempts"
        where, args = [], []
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if live_only:
            where.append("state != 'ended'")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_attempt(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def update_attempt(self, attempt_id: int, **fields: Any) -> None:
        with self.transaction() as tx:
            self._update(tx, "attempts", "id", attempt_id, fields)

    # --- events and counters ---------------------------------------------------------

    def add_event(
        self, job_id: str | None, now: float, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        with self.transaction() as tx:
            self._event(tx, job_id, now, kind, message, data or {})

    def events(self, job_id: str, limit: int = 200) -> list[Event]:
        rows = self._conn.execute(
            "SELECT id, job_id, at, kind, message, data FROM events WHERE job_id = ? ORDER BY id DESC LIMIT ?",
            (job_id, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]

    def last_event_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def events_after(self, event_id: int, kind: str) -> list[Event]:
        """Events of `kind` newer than `event_id` (the CLI looks for the answer to its control file)."""
        rows = self._conn.execute(
            "SELECT id, job_id, at, kind, message, data FROM events WHERE id > ? AND kind = ? ORDER BY id",
            (event_id, kind),
        ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def bump(self, name: str, by: int = 1) -> None:
        with self.transaction() as tx:
            self._bump(tx, name, by)

    def counters(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._conn.execute("SELECT name, value FROM counters")}

    def count_by_state(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobState}
        for state, n in self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[str(state)] = int(n)
        return counts

    def failures_by_class(self) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT failure_class, COUNT(*) FROM attempts"
            " WHERE failure_class IS NOT NULL AND failure_class NOT IN ('cancelled', 'paused') GROUP BY failure_class"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _update(tx: sqlite3.Connection, table: str, key: str, value: Any, fields: dict[str, Any]) -> None:
        encoded = {_COLUMN.get(k, k): _encode(v) for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        tx.execute(f"UPDATE {table} SET {assignments} WHERE {key} = ?", (*encoded.values(), value))

    @staticmethod
    def _event(
        tx: sqlite3.Connection, job_id: str | None, now: float, kind: str, message: str, data: dict[str, Any]
    ) -> None:
        tx.execute(
            "INSERT INTO events (job_id, at, kind, message, data) VALUES (?,?,?,?,?)",
            (job_id, now, kind, message, json.dumps(data, default=str)),
        )

    @staticmethod
    def _bump(tx: sqlite3.Connection, name: str, by: int = 1) -> None:
        tx.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )


def _damaged(path: Path, error: sqlite3.Error) -> StoreError:
    return StoreError(
        f"cannot open the store {path}: {error}. If the file is damaged, move it away "
        "(mkd starts a new one) or restore a backup; mkd never resets it by itself."
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Columns added after the first release of the schema."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    if "published" not in columns:
        conn.execute("ALTER TABLE jobs ADD COLUMN published INTEGER NOT NULL DEFAULT 0")
    index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'live_names'").fetchone()
    if index is not None and "'held'" not in index[0]:  # a held job keeps its name too
        conn.execute("DROP INDEX live_names")
        conn.execute(
            "CREATE UNIQUE INDEX live_names ON jobs(name) WHERE state IN ('queued', 'running', 'retry_wait', 'held')"
        )
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs(job_id) WHERE published = 0")
    index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'live_names'").fetchone()
    if index is not None and LIVE_SQL not in index[0].replace(" ", ""):  # the set of live states grew
        conn.execute("DROP INDEX live_names")
        conn.execute(f"CREATE UNIQUE INDEX live_names ON jobs(name) WHERE state IN {LIVE_SQL}")
    if "run_ref" not in {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}:
        conn.execute("ALTER TABLE attempts ADD COLUMN run_ref TEXT NOT NULL DEFAULT '{}'")
