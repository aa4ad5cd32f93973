"""Which GPUs a job may start on now: a pure function of the NVML reading and the holders.

One job per GPU unless the job says it may share; GPUs that another process (not one of
mkd's runs) occupies heavily are skipped, as the runbook warns that dual-device NCCL
init fails on a GPU with persistent memory use. GPUs are tracked by UUID.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from mkd.gpus import GpuReading, GpuSample


@dataclass(frozen=True)
class Request:
    count: int
    named: tuple[int, ...] | None = None  # physical indices the job insists on
    share: bool = False
    min_free_bytes: int | None = None


@dataclass(frozen=True)
class Placement:
    indices: tuple[int, ...]
    uuids: tuple[str, ...]


def foreign_bytes(gpu: GpuSample, mkd_pids: Set[int]) -> int:
    """Memory on `gpu` used by processes that are not mkd's runs."""
    ours = sum(p.used_bytes for p in gpu.processes if p.pid in mkd_pids)
    return max(0, (gpu.memory_used_bytes or 0) - ours)


def place(
    request: Request,
    reading: GpuReading,
    holders: Mapping[str, Set[str]],
    mkd_pids: Set[int],
    busy_bytes: int,
) -> Placement | str:
    """GPUs for `request`, or the reason it cannot start now."""
    if request.count == 0:
        return Placement((), ())
    if not reading.available:
        return f"needs {request.count} GPU(s) but NVML is unavailable: {reading.error}"
    by_index = {g.index: g for g in reading.gpus}
    candidates = [by_index[i] for i in request.named if i in by_index] if request.named else list(reading.gpus)
    if request.named and len(candidates) < len(request.named):
        missing = sorted(set(request.named) - set(by_index))
        return f"asks for GPU(s) {missing}, which this host does not have (GPUs: {sorted(by_index)})"
    reasons: list[str] = []
    usable: list[GpuSample] = []
    for gpu in candidates:
        held = holders.get(gpu.uuid, set())
        free = gpu.memory_free_bytes
        if gpu.error is not None or gpu.memory_used_bytes is None:
            reasons.append(f"GPU{gpu.index} cannot be read ({gpu.error or 'no memory info'})")
        elif held and not request.share:
            reasons.append(f"GPU{gpu.index} held by {', '.join(sorted(held))}")
        elif foreign_bytes(gpu, mkd_pids) > busy_bytes:
            reasons.append(f"GPU{gpu.index} has {foreign_bytes(gpu, mkd_pids) >> 20} MiB used by other processes")
        elif request.min_free_bytes is not None and (free or 0) < request.min_free_bytes:
            reasons.append(f"GPU{gpu.index} has only {(free or 0) >> 20} MiB free")
        else:
            usable.append(gpu)
    if len(usable) < request.count:
        detail = "; ".join(reasons) or f"the host has {len(candidates)}"
        return f"waiting for {request.count} free GPU(s): {detail}"
    chosen = usable[: request.count]
    return Placement(tuple(g.index for g in chosen), tuple(g.uuid for g in chosen))
