"""Agent-config overrides checked when a job file is taken, against the base YAML's keys.

MimicKit ignores an agent key it does not know, and its agent schema differs between
versions (`update_epochs`/`batch_size` in one, `actor_epochs`/`critic_epochs` in another),
so an override of a key the base file lacks is a validation error, with its line.
"""

from __future__ import annotations

from pathlib import Path

from mkd.jobfile import JobFileError, Problem
from mkd.mimickit.agent_overrides import OverrideError, check_overrides
from mkd.spec import JobSpec, MimicKitWorkload
from mkd.tomlpos import KeyIndex, Loc


def _problem(index: KeyIndex, loc: Loc, message: str) -> Problem:
    line, column = index.locate(loc) or (None, None)
    return Problem(line, column, ".".join(str(p) for p in loc), message)


def _override_sets(spec: JobSpec) -> list[tuple[Loc, dict[str, object]]]:
    sets: list[tuple[Loc, dict[str, object]]] = []
    workload = spec.workload
    if isinstance(workload, MimicKitWorkload) and workload.agent_overrides:
        sets.append((("workload", "agent_overrides"), dict(workload.agent_overrides)))
    for i, stage in enumerate(spec.stages):
        for j, point in enumerate(stage.points or []):
            if point.agent_overrides:
                sets.append((("stages", i, "points", j, "agent_overrides"), dict(point.agent_overrides)))
    return sets


def check_agent_overrides(spec: JobSpec, text: str, filename: str, default_mimickit_dir: Path) -> None:
    """Raise JobFileError naming each override key (with its line) that the base agent YAML lacks."""
    sets = _override_sets(spec)
    workload = spec.workload
    if not sets or not isinstance(workload, MimicKitWorkload):
        return
    index = KeyIndex(text)
    if workload.agent_config is None:
        raise JobFileError(filename, [_problem(index, sets[0][0], "agent_overrides need workload.agent_config")])
    base = Path(workload.agent_config)
    if not base.is_absolute():
        base = Path(workload.mimickit_dir or default_mimickit_dir) / base
    problems: list[Problem] = []
    for loc, overrides in sets:
        try:
            found = check_overrides(base, overrides)
        except OverrideError as error:
            raise JobFileError(filename, [_problem(index, ("workload", "agent_config"), str(error))]) from None
        problems.extend(_problem(index, (*loc, key), message) for key, message in found.items())
    if problems:
        raise JobFileError(filename, problems)
