"""Typed job state: the plan an attempt runs with, and what a job remembers between attempts.

`Plan` is one attempt's parameters (the store keeps it with the job and, as run, with each
attempt). `JobMemory` is what the lifecycle carries from attempt to attempt: stage results,
models, fallbacks, the promoted num_envs, and a `StageMemory` that is forgotten when the job
moves to its next stage (attempt counts, the probe ladder's bisection, the sweep's rows).

Frozen dataclasses, not pydantic: `mkd status` reads these from the store, and its latency
budget has no room for importing pydantic. `from_json` is lenient on purpose: a store
written by an older mkd (flat keys, missing fields) loads without stopping the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self, TypeAlias

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
Overrides: TypeAlias = Mapping[str, JsonValue]  # MimicKit agent-config overrides, path -> value


def _opt_int(value: object) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)  # type: ignore[call-overload]


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _ints(value: object) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else ()


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class Plan:
    """One attempt's parameters; `mkd.workload` turns a plan into MimicKit's command line."""

    gpus: int = 0
    processes: int = 1
    nccl_preset: str | None = None
    mesa: bool = False  # the Mesa GL overrides (a visualize stage after a GLSL failure)
    master_port: int | None = None  # None: a free one is taken at launch
    num_envs: int | None = None
    test_episodes: int | None = None
    max_samples: int | None = None
    model_file: str | None = None
    agent_overrides: Overrides = field(default_factory=dict)
    agent_config: str | None = None  # the derived agent YAML, when there are overrides
    gpu_indices: tuple[int, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    granted_gpus: tuple[str, ...] | None = None  # what an outside scheduler (Slurm) gave the attempt
    node: str | None = None

    @property
    def multi_device(self) -> bool:
        return self.gpus > 1 or self.processes > 1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["agent_overrides"] = dict(self.agent_overrides)
        for key in ("gpu_indices", "gpu_uuids", "granted_gpus"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_json(cls, data: object) -> Self:
        raw = _known(cls, data) if isinstance(data, Mapping) else {}
        return cls(
            gpus=int(raw.get("gpus") or 0),
            processes=int(raw.get("processes") or 1),
            nccl_preset=_opt_str(raw.get("nccl_preset")),
            mesa=bool(raw.get("mesa")),
            master_port=_opt_int(raw.get("master_port")),
            num_envs=_opt_int(raw.get("num_envs")),
            test_episodes=_opt_int(raw.get("test_episodes")),
            max_samples=_opt_int(raw.get("max_samples")),
            model_file=_opt_str(raw.get("model_file")),
            agent_overrides=_mapping(raw.get("agent_overrides")),
            agent_config=_opt_str(raw.get("agent_config")),
            gpu_indices=_ints(raw.get("gpu_indices")),
            gpu_uuids=_strs(raw.get("gpu_uuids")),
            granted_gpus=None if raw.get("granted_gpus") is None else _strs(raw.get("granted_gpus")),
            node=_opt_str(raw.get("node")),
        )

    def with_changes(self, changes: Mapping[str, Any]) -> Plan:
        return replace(self, **changes)


@dataclass(frozen=True)
class ProbeState:
    """The probe ladder's bisection: rungs largest first, the open interval [lo, hi), what was tried."""

    rungs: tuple[int, ...]
    lo: int
    hi: int
    tried: tuple[tuple[int, bool], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rungs": list(self.rungs), "lo": self.lo, "hi": self.hi, "tried": [list(t) for t in self.tried]}

    @classmethod
    def from_json(cls, data: object) -> Self | None:
        if not isinstance(data, Mapping) or "rungs" not in data:
            return None
        tried = tuple((int(n), bool(ok)) for n, ok in data.get("tried", []))
        return cls(_ints(data["rungs"]), int(data.get("lo", 0)), int(data.get("hi", 0)), tried)


@dataclass(frozen=True)
class SweepRow:
    """One sweep point's result (a row of summary.tsv)."""

    point: int
    num_envs: int | None
    agent_overrides: Overrides
    samples_per_second: float | None
    gpu_utilization_pct: float | None
    passed: bool
    failure: str | None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "agent_overrides": dict(self.agent_overrides)}

    @classmethod
    def from_json(cls, data: object) -> Self | None:
        if not isinstance(data, Mapping):
            return None
        return cls(
            point=int(data.get("point", 0)),
            num_envs=_opt_int(data.get("num_envs")),
            agent_overrides=_mapping(data.get("agent_overrides")),
            samples_per_second=_opt_float(data.get("samples_per_second")),
            gpu_utilization_pct=_opt_float(data.get("gpu_utilization_pct")),
            passed=bool(data.get("passed")),
            failure=_opt_str(data.get("failure")),
        )


@dataclass(frozen=True)
class SweepState:
    index: int = 0
    rows: tuple[SweepRow, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, data: object) -> Self | None:
        if not isinstance(data, Mapping):
            return None
        rows = tuple(r for r in (SweepRow.from_json(x) for x in data.get("rows", [])) if r is not None)
        return cls(int(data.get("index", 0)), rows)


@dataclass(frozen=True)
class StageResult:
    """How a stage ended, for the report: passed, failed (with the reason) or skipped (with why)."""

    passed: bool | None = None
    skipped: str | None = None
    reason: str | None = None
    attempt: int | None = None
    num_envs: int | None = None
    iteration: int | None = None
    samples: int | None = None
    train_return: float | None = None
    test_return: float | None = None
    median_samples_per_second: float | None = None
    promoted_num_envs: int | None = None
    test_result: Mapping[str, JsonValue] | None = None
    probes: tuple[tuple[int, bool], ...] | None = None
    gpus: int | None = None
    best: SweepRow | None = None
    points: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if isinstance(value, SweepRow):
                value = value.to_json()
            elif item.name == "probes":
                value = [list(p) for p in value]
            elif item.name == "test_result":
                value = dict(value)
            out[item.name] = value
        return out

    @classmethod
    def from_json(cls, data: object) -> Self:
        raw = _known(cls, data) if isinstance(data, Mapping) else {}
        probes = raw.get("probes")
        test = raw.get("test_result")
        return cls(
            passed=None if raw.get("passed") is None else bool(raw["passed"]),
            skipped=_opt_str(raw.get("skipped")),
            reason=_opt_str(raw.get("reason")),
            attempt=_opt_int(raw.get("attempt")),
            num_envs=_opt_int(raw.get("num_envs")),
            iteration=_opt_int(raw.get("iteration")),
            samples=_opt_int(raw.get("samples")),
            train_return=_opt_float(raw.get("train_return")),
            test_return=_opt_float(raw.get("test_return")),
            median_samples_per_second=_opt_float(raw.get("median_samples_per_second")),
            promoted_num_envs=_opt_int(raw.get("promoted_num_envs")),
            test_result=dict(test) if isinstance(test, Mapping) else None,
            probes=None if probes is None else tuple((int(n), bool(ok)) for n, ok in probes),
            gpus=_opt_int(raw.get("gpus")),
            best=SweepRow.from_json(raw.get("best")),
            points=_opt_int(raw.get("points")),
        )


@dataclass(frozen=True)
class Fallback:
    """A step of the fallback ladder that changed the plan (the report's "which fallback solved what")."""

    stage: str
    attempt: int
    step: str


@dataclass(frozen=True)
class StageMemory:
    """What one stage's attempts remember; forgotten when the job moves to its next stage."""

    attempts: int = 0  # attempts of this stage (a probe rung or sweep point starts a new count)
    no_progress: int = 0  # attempts in a row without an iteration (the crash-loop breaker)
    last_end_wall: float | None = None
    last_gpus: tuple[str, ...] = ()
    last_gpu_pids: tuple[int, ...] = ()  # the last attempt's processes NVML listed (a retry waits for them)
    samples_offset: int = 0  # a resumed long run: MimicKit counts from 0 again, mkd counts on
    iteration_offset: int = 0
    probe: ProbeState | None = None
    sweep: SweepState | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_gpus"] = list(self.last_gpus)
        out["last_gpu_pids"] = list(self.last_gpu_pids)
        out["probe"] = None if self.probe is None else self.probe.to_json()
        out["sweep"] = None if self.sweep is None else self.sweep.to_json()
        return out

    @classmethod
    def from_json(cls, data: object) -> Self:
        raw = data if isinstance(data, Mapping) else {}
        return cls(
            attempts=int(raw.get("attempts") or 0),
            no_progress=int(raw.get("no_progress") or 0),
            last_end_wall=_opt_float(raw.get("last_end_wall")),
            last_gpus=_strs(raw.get("last_gpus")),
            last_gpu_pids=_ints(raw.get("last_gpu_pids")),
            samples_offset=int(raw.get("samples_offset") or 0),
            iteration_offset=int(raw.get("iteration_offset") or 0),
            probe=ProbeState.from_json(raw.get("probe")),
            sweep=SweepState.from_json(raw.get("sweep")),
        )


@dataclass(frozen=True)
class JobMemory:
    """What a job carries from stage to stage."""

    models: Mapping[str, str] = field(default_factory=dict)  # stage label -> its model.pt
    latest_model: str | None = None
    num_envs: int | None = None  # promoted by a warm-up, chosen by a probe ladder or a sweep
    results: Mapping[str, StageResult] = field(default_factory=dict)  # stage label -> result
    fallbacks: tuple[Fallback, ...] = ()
    gpu_seconds_probing: float = 0.0
    sweep_best: SweepRow | None = None
    stage: StageMemory = field(default_factory=StageMemory)

    def to_json(self) -> dict[str, Any]:
        return {
            "models": dict(self.models),
            "latest_model": self.latest_model,
            "num_envs": self.num_envs,
            "results": {label: r.to_json() for label, r in self.results.items()},
            "fallbacks": [asdict(f) for f in self.fallbacks],
            "gpu_seconds_probing": self.gpu_seconds_probing,
            "sweep_best": None if self.sweep_best is None else self.sweep_best.to_json(),
            "stage": self.stage.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        raw = data if isinstance(data, Mapping) else {}
        # an older store kept the stage's keys at the top level
        stage = raw.get("stage") if isinstance(raw.get("stage"), Mapping) else raw
        return cls(
            models={str(k): str(v) for k, v in _mapping(raw.get("models")).items()},
            latest_model=_opt_str(raw.get("latest_model")),
            num_envs=_opt_int(raw.get("num_envs")),
            results={str(k): StageResult.from_json(v) for k, v in _mapping(raw.get("results")).items()},
            fallbacks=tuple(
                Fallback(str(f.get("stage", "")), int(f.get("attempt", 0)), str(f.get("step", "")))
                for f in raw.get("fallbacks", [])
                if isinstance(f, Mapping)
            ),
            gpu_seconds_probing=float(raw.get("gpu_seconds_probing") or 0.0),
            sweep_best=SweepRow.from_json(raw.get("sweep_best")),
            stage=StageMemory.from_json(stage),
        )

    def with_stage(self, **changes: Any) -> JobMemory:
        return replace(self, stage=replace(self.stage, **changes))

    def with_result(self, label: str, result: StageResult) -> JobMemory:
        return replace(self, results={**self.results, label: result})

    def next_stage(self) -> JobMemory:
        """Moving on: keep what later stages use, forget the finished stage's counts and ladders."""
        return replace(self, stage=StageMemory())
