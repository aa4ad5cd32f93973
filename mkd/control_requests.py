"""What a control file is: its name says the verb (and the job), its TOML body the details.

Shared by the CLI, which writes them, and the daemon (mkd.control), which obeys them, so a
script that drops a file and a person who types the verb ask for exactly the same thing:

    jobs/control/JOB.cancel        cancel the job (body ignored)
    jobs/control/JOB.pause         hold a queued job; stop a running one at its checkpoint
    jobs/control/JOB.resume        queue a held job again (a paused run goes on from model.pt)
    jobs/control/JOB.retry         a new attempt of a failed or cancelled job; body (optional):
                                   from_stage = "NAME"   and   [set] num_envs = 512
    jobs/control/JOB.priority      body: priority = N (higher starts first)
    jobs/control/clean             forget finished jobs; body: older_than = "7d", states = ["failed"]
    jobs/control/shutdown          the daemon exits, runs keep going
    jobs/control/shutdown-stop-runs  stop every run, then exit

Every body may carry `request = "ID"`: the daemon's timeline event for it carries the same
id, which is how the CLI finds the answer to its own request. Pure: no daemon state here.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

JOB_VERBS = ("cancel", "pause", "resume", "retry", "priority")
DAEMON_VERBS = ("clean", "shutdown", "shutdown-stop-runs")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
PRIORITY_RANGE = (-1000, 1000)
# what `mkd retry --set` may change in the next attempt's plan, and the type each takes
RETRY_KEYS: dict[str, type] = {
    "num_envs": int,
    "max_samples": int,
    "test_episodes": int,
    "nccl_preset": str,
    "model_file": str,
}
RETRY_BOUNDS: dict[str, tuple[int, int]] = {
    "num_envs": (1, 1_048_576),
    "max_samples": (1, 10**13),
    "test_episodes": (1, 1_000_000),
}


class RequestError(ValueError):
    """A control file that cannot be obeyed as written; the message says what to fix."""


# Verbs that take no options: their body may be any text (kept as a note), not only TOML.
FREE_TEXT_VERBS = frozenset({"cancel", "pause", "resume", "shutdown", "shutdown-stop-runs"})


@dataclass(frozen=True)
class Request:
    verb: str
    job: str | None  # None for a daemon verb
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        value = self.body.get("request")
        return str(value) if value is not None else None


def file_name(verb: str, job: str | None = None) -> str:
    if verb in DAEMON_VERBS:
        return verb
    if verb not in JOB_VERBS or not job:
        raise RequestError(f"unknown control verb {verb!r}")
    return f"{job}.{verb}"


def parse_name(name: str) -> tuple[str, str | None]:
    """(verb, job) of a control file's name; RequestError for a name no verb has."""
    if name in DAEMON_VERBS:
        return name, None
    job, dot, verb = name.rpartition(".")
    if dot and job and verb in JOB_VERBS:
        return verb, job
    known = ", ".join([f"JOB.{v}" for v in JOB_VERBS] + list(DAEMON_VERBS))
    raise RequestError(f"unknown control file {name!r}: the names are {known}")


def parse_request(name: str, text: str) -> Request:
    """The request a control file makes, its body checked as the verb needs."""
    verb, job = parse_name(name)
    try:
        body = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as error:
        if verb not in FREE_TEXT_VERBS:
            raise RequestError(f"{name}: the body is not TOML: {error}") from None
        # a verb without options: any text is a note for the timeline (`echo why > JOB.cancel`)
        body = {"note": text.strip().splitlines()[0][:200]}
    if verb == "priority":
        body["priority"] = check_priority(body.get("priority"), name)
    elif verb == "retry":
        changes = body.get("set", {})
        if not isinstance(changes, dict):
            raise RequestError(f"{name}: `set` must be a table, e.g. [set] num_envs = 512")
        body["set"] = {key: check_change(key, value, name) for key, value in changes.items()}
        stage = body.get("from_stage")
        if stage is not None and not isinstance(stage, str | int):
            raise RequestError(f"{name}: from_stage must be a stage name or number")
    elif verb == "clean":
        states = body.get("states", list(FINISHED_STATES))
        if isinstance(states, str):
            states = [s for s in states.split(",") if s]
        bad = [s for s in states if s not in FINISHED_STATES]
        if bad or not states:
            raise RequestError(f"{name}: states {bad or states} are not finished states {list(FINISHED_STATES)}")
        body["states"] = list(states)
        from mkd.quantities import parse_duration

        try:
            body["older_than_seconds"] = parse_duration(body.get("older_than", "7d")).total_seconds()
        except (ValueError, TypeError) as error:
            raise RequestError(f"{name}: older_than: {error}") from None
    return Request(verb, job, body)


def check_priority(value: Any, where: str = "priority") -> int:
    low, high = PRIORITY_RANGE
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{where}: priority must be a whole number from {low} to {high}, not {value!r}")
    return value


def check_change(key: str, value: Any, where: str = "--set") -> Any:
    """One `key=value` change for a retry, typed and in range."""
    kind = RETRY_KEYS.get(key)
    if kind is None:
        raise RequestError(f"{where}: {key!r} cannot be changed by a retry; these can: {', '.join(RETRY_KEYS)}")
    if kind is int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        low, high = RETRY_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RequestError(f"{where}: {key} must be a whole number from {low} to {high}, not {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise RequestError(f"{where}: {key} must be a non-empty text")
    return value


def parse_change(text: str) -> tuple[str, Any]:
    """`num_envs=512` -> ("num_envs", 512)."""
    key, eq, value = text.partition("=")
    if not eq:
        raise RequestError(f"--set {text!r}: write KEY=VALUE, e.g. --set num_envs=512")
    key = key.strip()
    return key, check_change(key, value.strip(), f"--set {text}")


def render(body: dict[str, Any]) -> str:
    """A body as TOML (flat keys, string lists, and one [set] table: all a control file holds)."""
    lines = []
    tables = {}
    for key, value in body.items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string
