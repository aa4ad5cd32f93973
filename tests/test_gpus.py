"""mkd.gpus against the real pynvml and the fake libnvidia-ml (in child processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkd.gpus import (
    MIB,
    GpuProcess,
    GpuReading,
    GpuSample,
    attribute_processes,
    clocks_event_reasons,
    format_gpus_table,
    reading_from_dict,
    reading_to_dict,
)
from mkd.procs import all_stats, descendants, group_members
from tests.nvml_fixtures import (
    SamplerProcess,
    build_fake_nvml,
    nvml_env,
    real_nvml_present,
    sample_once,
    wait_for,
    write_state_file,
)

H100 = "NVIDIA H100 80GB HBM3"


def uuid(i: int) -> str:
    return f"GPU-fake-0000-0000-0000-{i:012d}"


@pytest.fixture(scope="module")
def lib() -> Path:
    return build_fake_nvml()


def test_two_gpus_read_right(lib: Path) -> None:
    env = nvml_env(
        lib,
        {
            "GPUS": 2,
            "UTIL": 42,
            "UTIL_1": 90,
            "MEM_USED_MIB": 1000,
            "MEM_USED_MIB_0": 6261,
            "POWER_MW": 190000,
            "POWER_MW_1": 250500,
            "TEMP_C": 45,
            "SM_CLOCK_MHZ": 1755,
        },
    )
    reading = sample_once(env)

    assert reading.available and reading.error is None
    assert reading.driver_version == "999.99-fake"
    g0, g1 = reading.gpus
    assert (g0.index, g0.uuid, g0.name, g0.pci_bus_id) == (0, uuid(0), H100, "00000000:18:00.0")
    assert (g1.index, g1.uuid, g1.pci_bus_id) == (1, uuid(1), "00000000:2A:00.0")
    assert (g0.utilization_pct, g1.utilization_pct) == (42.0, 90.0)
    assert (g0.memory_used_bytes, g1.memory_used_bytes) == (6261 * MIB, 1000 * MIB)
    assert g0.memory_total_bytes == 81559 * MIB
    assert g0.memory_free_bytes == (81559 - 6261) * MIB
    assert (g0.power_watts, g1.power_watts) == (190.0, 250.5)
    assert g0.temperature_c == 45.0
    assert g0.sm_clock_hz == 1755e6
    assert g0.processes == () and g0.error is None


def test_eight_gpus_in_pci_bus_order(lib: Path) -> None:
    reading = sample_once(nvml_env(lib, {"GPUS": 8, "UTIL_7": 77}))

    assert [g.index for g in reading.gpus] == list(range(8))
    bus_ids = [g.pci_bus_id for g in reading.gpus]
    assert bus_ids == sorted(bus_ids) and len(set(bus_ids)) == 8
    assert len({g.uuid for g in reading.gpus}) == 8
    assert reading.gpus[7].utilization_pct == 77.0
    assert all(g.utilization_pct == 0.0 for g in reading.gpus[:7])


def test_gpus_are_ordered_by_pci_bus_id_not_nvml_index(lib: Path) -> None:
    reading = sample_once(nvml_env(lib, {"GPUS": 3, "PCI_BUS_0": "db"}))

    assert [g.index for g in reading.gpus] == [1, 2, 0]
    assert reading.gpus[-1].pci_bus_id == "00000000:DB:00.0"


def test_per_process_memory(lib: Path) -> None:
    env = nvml_env(lib, {"GPUS": 2, "PROCS_0": "4242:512,4343:1024", "PROCS_1": "4444:64"})
    g0, g1 = sample_once(env).gpus

    assert g0.processes == (GpuProcess(4242, 512 * MIB), GpuProcess(4343, 1024 * MIB))
    assert g1.processes == (GpuProcess(4444, 64 * MIB),)
    # without FAKE_NVML_MEM_USED_MIB the fake reports the processes' sum as used
    assert g0.memory_used_bytes == 1536 * MIB


def test_memory_as_nvidia_smi_shows_it_with_the_driver_reserve_apart(lib: Path) -> None:
    # the numbers of a real H100 holding 2.5 GiB + 1 GiB tensors (NVML v2 memory info)
    g0, g1 = sample_once(nvml_env(lib, {"GPUS": 2, "MEM_RESERVED_MIB": 480, "MEM_USED_MIB_1": 4122})).gpus

    assert (g0.memory_used_bytes, g0.memory_reserved_bytes, g0.memory_free_bytes) == (0, 480 * MIB, 81079 * MIB)
    assert (g1.memory_used_bytes, g1.memory_free_bytes) == (4122 * MIB, 76957 * MIB)
    assert g1.memory_total_bytes == 81559 * MIB


def test_memory_falls_back_to_v1_on_drivers_without_v2(lib: Path) -> None:
    env = nvml_env(lib, {"MEM_V2": "err:25", "MEM_RESERVED_MIB": 480, "MEM_USED_MIB": 1000})
    with SamplerProcess(env) as sampler:
        readings = [sampler.sample(), sampler.sample()]

    for reading in readings:
        (g,) = reading.gpus
        assert g.error is None
        assert (g.memory_used_bytes, g.memory_reserved_bytes) == (1480 * MIB, None)  # v1: reserve counted as used
        assert g.memory_free_bytes == (81559 - 1480) * MIB


def test_not_supported_fields_are_none_without_error(lib: Path) -> None:
    env = nvml_env(lib, {"GPUS": 2, "POWER_MW_1": "ns", "TEMP_C_1": "ns", "SM_CLOCK_MHZ_1": "ns"})
    g0, g1 = sample_once(env).gpus

    assert (g1.power_watts, g1.temperature_c, g1.sm_clock_hz) == (None, None, None)
    assert g1.utilization_pct == 0.0 and g1.error is None
    assert g0.power_watts == 70.0


def test_driver_not_loaded_is_unavailable_with_the_reason(lib: Path) -> None:
    reading = sample_once(nvml_env(lib, {"GPUS": 2, "INIT_ERROR": 9}))

    assert not reading.available
    assert reading.error == "Driver Not Loaded (NVML error 9)"
    assert reading.gpus == ()


def test_library_not_found_is_unavailable() -> None:
    if real_nvml_present():
        pytest.skip("this machine has a real libnvidia-ml")
    reading = sample_once(nvml_env(None))

    assert not reading.available
    assert reading.error == "NVML Shared Library Not Found (NVML error 12)"


def test_lost_gpu_is_partial_and_the_others_are_fine(lib: Path) -> None:
    reading = sample_once(nvml_env(lib, {"GPUS": 3, "UTIL": 50, "LOST_GPU": 1}))

    assert reading.available
    good = [g for g in reading.gpus if g.index != 1]
    lost = next(g for g in reading.gpus if g.index == 1)
    assert [g.utilization_pct for g in good] == [50.0, 50.0]
    assert all(g.error is None and g.uuid for g in good)
    assert lost.error == "GPU is lost (NVML error 15)"
    assert (lost.utilization_pct, lost.memory_used_bytes, lost.power_watts) == (None, None, None)
    assert lost.memory_free_bytes is None


def test_one_sampler_follows_the_state_file(lib: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml.state"
    write_state_file(state, {"UTIL": 10, "PROCS_0": "100:200"})
    env = nvml_env(lib, {"GPUS": 2, "UTIL": 99, "STATE_FILE": state})

    with SamplerProcess(env) as sampler:
        first = sampler.sample()
        write_state_file(state, {"UTIL": 95, "UTIL_0": 20, "LOST_GPU": 1})
        second = sampler.sample()

    assert [g.utilization_pct for g in first.gpus] == [10.0, 10.0]  # the file wins over env
    assert first.gpus[0].processes == (GpuProcess(100, 200 * MIB),)
    g0, g1 = second.gpus
    assert g0.utilization_pct == 20.0 and g0.processes == ()
    # GPU 1 was lost after the first sample: no values, but it keeps its identity
    assert g1.error == "GPU is lost (NVML error 15)" and g1.utilization_pct is None
    assert (g1.uuid, g1.name, g1.pci_bus_id) == (uuid(1), H100, "00000000:2A:00.0")


def test_energy_clock_reasons_and_ecc(lib: Path) -> None:
    env = nvml_env(
        lib,
        {
            "GPUS": 2,
            "ENERGY_MJ_0": 7_200_500,
            "CLOCKS_EVENT_REASONS_0": 0x4 | 0x40,  # sw power cap + hw thermal slowdown
            "ECC_CORRECTED_1": 12,
            "ECC_UNCORRECTED_1": 1,
            "ECC_CORRECTED_0": "ns",  # ECC off on that GPU
            "ECC_UNCORRECTED_0": "ns",
        },
    )
    g0, g1 = sample_once(env).gpus

    assert g0.energy_joules == 7200.5 and g1.energy_joules == 3600.0
    assert g0.clocks_event_reasons == 0x44 and g1.clocks_event_reasons == 0
    active = clocks_event_reasons(0x44)
    assert {name for name, on in active.items() if on} == {"sw_power_cap", "hw_thermal_slowdown"}
    assert len(active) == 9
    assert (g0.ecc_corrected, g0.ecc_uncorrected) == (None, None)
    assert (g1.ecc_corrected, g1.ecc_uncorrected) == (12, 1)
    assert g0.error is None and g1.error is None


def test_clock_reasons_of_drivers_that_call_them_throttle_reasons(lib: Path) -> None:
    env = nvml_env(lib, {"CLOCKS_EVENT_API": "throttle", "CLOCKS_EVENT_REASONS": 0x8})
    assert sample_once(env).gpus[0].clocks_event_reasons == 0x8


def test_an_error_in_an_extra_field_leaves_the_gpu_fit_for_work(lib: Path) -> None:
    env = nvml_env(lib, {"ENERGY_MJ": "err:4", "CLOCKS_EVENT_REASONS": "err:999"})  # no permission, unknown
    (g0,) = sample_once(env).gpus
    assert g0.energy_joules is None and g0.clocks_event_reasons is None
    assert g0.error is None and g0.utilization_pct == 0.0


def test_xid_errors_arrive_as_events_and_are_counted_once(lib: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml.state"
    write_state_file(state, {})
    env = nvml_env(lib, {"GPUS": 3, "XID_2": "ns", "STATE_FILE": state})

    with SamplerProcess(env) as sampler:
        first = sampler.sample()
        write_state_file(state, {"XID_1": "79"})
        second = sampler.sample()
        write_state_file(state, {"XID_1": "79,31,31"})
        third = sampler.sample()
        fourth = sampler.sample()

    assert [(g.xid_errors, g.last_xid) for g in first.gpus] == [(0, 0), (0, 0), (None, None)]
    assert (second.gpus[1].xid_errors, second.gpus[1].last_xid) == (1, 79)
    assert (third.gpus[1].xid_errors, third.gpus[1].last_xid) == (3, 31)
    assert (fourth.gpus[1].xid_errors, fourth.gpus[1].last_xid) == (3, 31)  # nothing new
    assert third.gpus[0].xid_errors == 0
    assert all(g.error is None for g in fourth.gpus)


def test_init_is_retried_after_a_failure(lib: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml.state"
    write_state_file(state, {"INIT_ERROR": 9})
    env = nvml_env(lib, {"STATE_FILE": state})

    with SamplerProcess(env, retry_init_seconds=0) as sampler:
        assert not sampler.sample().available
        write_state_file(state, {})
        assert sampler.sample().available


def test_init_is_not_retried_within_the_retry_interval(lib: Path, tmp_path: Path) -> None:
    state = tmp_path / "nvml.state"
    write_state_file(state, {"INIT_ERROR": 9})
    env = nvml_env(lib, {"STATE_FILE": state})

    with SamplerProcess(env, retry_init_seconds=3600) as sampler:
        assert not sampler.sample().available
        write_state_file(state, {})
        again = sampler.sample()

    assert not again.available and again.error == "Driver Not Loaded (NVML error 9)"


def process_group_members(pgid: int) -> set[int]:
    return {s.pid for s in group_members(pgid)}


@pytest.fixture
def process_group() -> Iterator[subprocess.Popen[bytes]]:
    """A real process group: sh (the leader) with two sleep children."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture started
        proc.wait(10)
        wait_for(lambda: not process_group_members(proc.pid), 10, f"process group {proc.pid} to end")


def test_attribution_through_a_real_process_group(lib: Path, process_group: subprocess.Popen[bytes]) -> None:
    pgid = process_group.pid
    wait_for(lambda: len(process_group_members(pgid)) == 3, 10, "sh and its two sleeps")
    members = process_group_members(pgid)
    assert descendants(pgid) == members
    workers = sorted(members - {pgid})
    stranger = os.getpid()  # on the GPU but in no job
    procs = f"{workers[0]}:300,{workers[1]}:700,{stranger}:50"
    reading = sample_once(nvml_env(lib, {"GPUS": 2, "PROCS_0": procs, "PROCS_1": f"{workers[0]}:10"}))

    owners = dict.fromkeys(process_group_members(pgid), "job-a")
    assert attribute_processes(reading, owners) == {
        (uuid(0), "job-a"): 1000 * MIB,
        (uuid(0), ""): 50 * MIB,
        (uuid(1), "job-a"): 10 * MIB,
    }


def test_group_members_outlive_their_root(process_group: subprocess.Popen[bytes]) -> None:
    # MimicKit's workers keep the root's pgid after the root dies and they are
    # reparented: the group still finds them, the tree no longer does.
    pgid = process_group.pid
    wait_for(lambda: len(process_group_members(pgid)) == 3, 10, "sh and its two sleeps")
    workers = process_group_members(pgid) - {pgid}
    process_group.kill()
    process_group.wait(10)

    assert process_group_members(pgid) == workers
    assert pgid not in {s.pid for s in all_stats()}


def _gpu(index: int, **kw: object) -> GpuSample:
    values: dict[str, object] = {
        "index": index,
        "uuid": uuid(index),
        "name": H100,
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "utilization_pct": 87.0,
        "memory_used_bytes": 6261 * MIB,
        "memory_total_bytes": 81559 * MIB,
        "power_watts": 190.4,
        "temperature_c": 45.0,
        "sm_clock_hz": 1.98e9,
        "processes": (),
    }
    values.update(kw)
    return GpuSample(**values)  # type: ignore[arg-type]


def test_gpus_table() -> None:
    lost = _gpu(1, uuid="", name="", utilization_pct=None, memory_used_bytes=None, memory_total_bytes=None,
                power_watts=None, temperature_c=None, error="GPU is lost (NVML error 15)")  # fmt: skip
    reading = GpuReading(True, None, (_gpu(0), lost), "550.54.15", 0.0)

    table = format_gpus_table(reading, {uuid(0): "warmup-7"})

    assert table.splitlines() == [
        "GPU  NAME                   UTIL %  MEMORY USED/TOTAL MiB  POWER W  TEMP C  JOB",
        "  0  NVIDIA H100 80GB HBM3      87             6261/81559      190      45  warmup-7",
        "  1  ?                           -                    -/-        -       -  -",
        "GPU 1: GPU is lost (NVML error 15)",
    ]


def test_gpus_table_without_nvml() -> None:
    reading = GpuReading.unavailable("Driver Not Loaded (NVML error 9)", 0.0)
    assert format_gpus_table(reading, {}) == (
        "NVML is unavailable: Driver Not Loaded (NVML error 9). No GPU data (mkd keeps running without it)."
    )
    assert "no GPUs" in format_gpus_table(GpuReading(True, None, (), "550", 0.0), {})


def test_reading_round_trips_through_a_dict() -> None:
    reading = GpuReading(True, None, (_gpu(0, processes=(GpuProcess(7, MIB),)), _gpu(1)), "550", 12.5)
    assert reading_from_dict(reading_to_dict(reading)) == reading
