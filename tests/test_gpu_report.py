"""mkd.gpu_report: the runbook's periodic GPU line."""

from __future__ import annotations

from mkd.gpu_report import gpu_report_line
from mkd.gpus import MIB, GpuReading, GpuSample

UUIDS = ("GPU-a", "GPU-b", "GPU-c")


def gpu(
    index: int, util: float | None, used_mib: int | None, watts: float | None, error: str | None = None
) -> GpuSample:
    return GpuSample(
        index=index,
        uuid=UUIDS[index],
        name="NVIDIA H100 80GB HBM3",
        pci_bus_id=f"00000000:{0x18 + index:02X}:00.0",
        utilization_pct=util,
        memory_used_bytes=None if used_mib is None else used_mib * MIB,
        memory_total_bytes=81559 * MIB,
        power_watts=watts,
        temperature_c=40.0,
        sm_clock_hz=1.98e9,
        processes=(),
        error=error,
    )


READING = GpuReading(
    True,
    None,
    (gpu(0, 87.0, 6261, 190.4), gpu(1, 85.0, 6100, 188.0), gpu(2, 0.0, 0, 70.0)),
    "550.54.15",
    0.0,
)


def test_the_jobs_gpus() -> None:
    line = gpu_report_line("long_run", READING, ["GPU-a", "GPU-b"], True, None)
    assert line == (
        "phase=long_run GPU0 87% 6261/81559MiB 190W GPU1 85% 6100/81559MiB 188W; "
        "iterations advancing; last failure: none"
    )


def test_stalled_with_a_failure_in_the_order_given() -> None:
    line = gpu_report_line("warmup_probe", READING, ["GPU-b"], False, "class C: NCCL\n  watchdog timeout")
    assert line == (
        "phase=warmup_probe GPU1 85% 6100/81559MiB 188W; "
        "iterations NOT advancing; last failure: class C: NCCL watchdog timeout"
    )


def test_no_uuids_reports_every_gpu() -> None:
    line = gpu_report_line("warmup_probe", READING, [], True, None)
    assert line.startswith("phase=warmup_probe GPU0 87% ")
    assert " GPU2 0% 0/81559MiB 70W;" in line


def test_missing_values_and_a_lost_gpu() -> None:
    lost = gpu(1, None, None, None, error="GPU is lost (NVML error 15)")
    reading = GpuReading(True, None, (gpu(0, 50.0, 10, None), lost), "550", 0.0)
    line = gpu_report_line("long_run", reading, ["GPU-a", "GPU-b", "GPU-gone"], True, None)
    assert line == (
        "phase=long_run GPU0 50% 10/81559MiB ?W GPU1 ?% ?/81559MiB ?W (GPU is lost (NVML error 15)) "
        "GPU-gone not found by NVML; iterations advancing; last failure: none"
    )


def test_without_nvml() -> None:
    reading = GpuReading.unavailable("Driver Not Loaded (NVML error 9)", 0.0)
    line = gpu_report_line("long_run", reading, ["GPU-a"], True, None)
    assert line == (
        "phase=long_run GPUs unavailable: Driver Not Loaded (NVML error 9); iterations advancing; last failure: none"
    )
