"""The runbook's periodic GPU report, as one line for a job's timeline.

The runbook asks, every minute during warm-up and probes and every 3-5
minutes in a long run, for: the phase, each GPU's utilization, memory and
power, whether iterations advance, and the latest failure marker.  The
daemon writes gpu_report_line() into the job's timeline at that cadence:

    phase=long_run GPU0 87% 6261/81559MiB 190W GPU1 85% 6100/81559MiB 188W;
    iterations advancing; last failure: none

(one line; wrapped here).
"""

from __future__ import annotations

from collections.abc import Sequence

from mkd.gpus import MIB, GpuReading, GpuSample


def _gpu_part(g: GpuSample) -> str:
    util = "?%" if g.utilization_pct is None else f"{g.utilization_pct:.0f}%"
    used = "?" if g.memory_used_bytes is None else str(g.memory_used_bytes // MIB)
    total = "?" if g.memory_total_bytes is None else str(g.memory_total_bytes // MIB)
    power = "?W" if g.power_watts is None else f"{g.power_watts:.0f}W"
    part = f"GPU{g.index} {util} {used}/{total}MiB {power}"
    return f"{part} ({g.error})" if g.error else part


def _one_line(text: str) -> str:
    return " ".join(text.split())


def gpu_report_line(
    phase: str,
    reading: GpuReading,
    gpu_uuids: Sequence[str],
    iterations_advancing: bool,
    latest_failure: str | None,
) -> str:
    """One report line for the job's GPUs (all GPUs of the reading when
    gpu_uuids is empty).  GPUs are named by NVML index, which is CUDA's index
    too under CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    parts = [f"phase={phase}"]
    if not reading.available:
        parts.append(f"GPUs unavailable: {reading.error}")
    elif not gpu_uuids:
        parts += [_gpu_part(g) for g in reading.gpus]
    else:
        for uuid in gpu_uuids:
            gpu = reading.by_uuid(uuid)
            parts.append(_gpu_part(gpu) if gpu is not None else f"{uuid} not found by NVML")
    progress = "iterations advancing" if iterations_advancing else "iterations NOT advancing"
    failure = _one_line(latest_failure) if latest_failure else "none"
    return f"{' '.join(parts)}; {progress}; last failure: {failure}"
