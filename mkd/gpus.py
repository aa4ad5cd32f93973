"""GPUs through NVML: a sampler that never raises, plain readings, and who holds what.

This is the only module that imports pynvml, and it does so lazily, on the
first sample: importing mkd.gpus loads nothing, so the reading types can be
used (by the snapshot, metrics and status) without NVML.

NVML missing is a normal state, not a fault: without the library (NVML error
12), without a driver (9) or after any other failure of nvmlInit, a sample is
``GpuReading(available=False, error=...)`` and mkd keeps running; the sampler
tries nvmlInit again at most every ``retry_init_seconds``.  One NVML session
serves the sampler's whole life (nvmlInit once, nvmlShutdown in close()).

GPUs are listed in PCI bus order.  mkd starts children with
CUDA_DEVICE_ORDER=PCI_BUS_ID, so the n-th GPU of a reading is CUDA device n
when CUDA_VISIBLE_DEVICES is unset.

Attribution: NVML reports GPU memory per pid.  The daemon maps each of those
pids to a job through its process group (AttemptRunner.gpu_owners): MimicKit's
workers stay in the root's process group, even after the root dies and they are
reparented to PID 1.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MIB = 1 << 20

# NVML constants (nvml.h), kept here so the module needs no pynvml to import.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_TIMEOUT = 10
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 0x8
NVML_MEMORY_ERROR_CORRECTED = 0
NVML_MEMORY_ERROR_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0  # since the driver loaded, as DCGM's *_VOL_TOTAL fields
MAX_EVENTS_PER_SAMPLE = 1000  # an XID storm must not hold up the daemon's tick

# NVML's clocks event reasons (nvmlClocksEventReason*, formerly "throttle reasons"): bit -> name.
CLOCKS_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment.  A field NVML could not read is None ("" for
    identity strings); ``error`` says why, when it was an error and not
    "not supported".  A GPU with an error is not fit to place work on.

    Memory is NVML's v2 memory info, as nvidia-smi and DCGM show it: used
    excludes what the driver reserves (memory_reserved_bytes, ~480 MiB on an
    H100), total includes it.  With a driver that lacks v2, used includes the
    reserved part and memory_reserved_bytes is None."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    temperature_c: float | None
    sm_clock_hz: float | None
    processes: tuple[GpuProcess, ...]
    error: str | None = None
    memory_reserved_bytes: int | None = None
    energy_joules: float | None = None  # since the driver loaded (NVML counts millijoules)
    clocks_event_reasons: int | None = None  # bit mask, CLOCKS_EVENT_REASONS
    ecc_corrected: int | None = None  # volatile ECC error counts; None where ECC is off or unsupported
    ecc_uncorrected: int | None = None
    xid_errors: int | None = None  # XID events this sampler received; None if the GPU reports none
    last_xid: int | None = None  # the last XID received (0: none yet), as DCGM_FI_DEV_XID_ERRORS

    @property
    def memory_free_bytes(self) -> int | None:
        if self.memory_used_bytes is None or self.memory_total_bytes is None:
            return None
        return self.memory_total_bytes - self.memory_used_bytes - (self.memory_reserved_bytes or 0)


@dataclass(frozen=True)
class GpuReading:
    available: bool
    error: str | None
    gpus: tuple[GpuSample, ...]
    driver_version: str | None
    taken_at: float  # wall time (time.time())

    @classmethod
    def unavailable(cls, error: str, taken_at: float) -> GpuReading:
        return cls(available=False, error=error, gpus=(), driver_version=None, taken_at=taken_at)

    def by_uuid(self, uuid: str) -> GpuSample | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)


def describe_nvml_error(exc: Any) -> str:
    """``Driver Not Loaded (NVML error 9)``: pynvml's text plus the code."""
    return f"{exc} (NVML error {getattr(exc, 'value', '?')})"


class _FieldReader:
    """Reads one GPU's fields: not supported -> None; any other error -> None
    and the first error kept; after "GPU is lost" nothing more is asked."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self.error: str | None = None
        self.lost = False

    def get(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.lost:
            return None
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if exc.value in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                return None
            if self.error is None:
                self.error = describe_nvml_error(exc)
            self.lost = exc.value == NVML_ERROR_GPU_IS_LOST
            return None

    def extra(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A field the scheduler does not need (energy, ECC, clock reasons): any error is None,
        and only "GPU is lost" marks the GPU as unfit."""
        if self.lost:
            return None
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            if exc.value == NVML_ERROR_GPU_IS_LOST:
                return self.get(fn, *args)
            return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Samples every GPU through one NVML session.  Not thread-safe: one
    caller (the daemon loop, or a CLI command) owns it."""

    def __init__(
        self,
        *,
        retry_init_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._retry_init_seconds = retry_init_seconds
        self._monotonic = monotonic
        self._wall = wall
        self._nvml: Any = None  # the pynvml module while a session is open
        self._error = "NVML not initialised yet"
        self._failed_at: float | None = None
        self._driver_version: str | None = None
        self._identity: dict[int, tuple[str, str, str]] = {}  # index -> uuid, name, bus id
        self._memory_v2 = True  # until the driver says it has no v2 memory info
        self._events: Any = None  # the NVML event set XID errors arrive on
        self._xid_watched: set[int] = set()  # GPU indexes registered for XID events
        self._xids: dict[int, tuple[int, int]] = {}  # index -> (XID events so far, last XID)

    def __enter__(self) -> GpuSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self) -> GpuReading:
        taken_at = self._wall()
        try:
            nvml = self._session()
            if nvml is None:
                return GpuReading.unavailable(self._error, taken_at)
            return self._read(nvml, taken_at)
        except Exception as exc:  # boundary: a GPU sample never takes the daemon down
            log.exception("GPU sample failed")
            self._end_session(f"unexpected error: {exc!r}")
            return GpuReading.unavailable(self._error, taken_at)

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        events, self._events = self._events, None
        self._identity.clear()
        self._memory_v2 = True
        self._xid_watched.clear()
        if nvml is not None and events is not None:
            try:
                nvml.nvmlEventSetFree(events)
            except nvml.NVMLError as exc:
                log.debug("nvmlEventSetFree: %s", describe_nvml_error(exc))
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                log.warning("nvmlShutdown: %s", describe_nvml_error(exc))

    def _session(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        now = self._monotonic()
        if self._failed_at is not None and now - self._failed_at < self._retry_init_seconds:
            return None
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError as exc:
            self._error, self._failed_at = f"pynvml is not installed ({exc})", now
            return None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            first = self._error != describe_nvml_error(exc)
            self._error, self._failed_at = describe_nvml_error(exc), now
            # said once at INFO; the retries every retry_init_seconds only at DEBUG
            log.log(logging.INFO if first else logging.DEBUG, "NVML unavailable: %s", self._error)
            return None
        self._nvml, self._failed_at = nvml, None
        try:
            self._driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            self._driver_version = None
        return nvml

    def _end_session(self, error: str) -> None:
        self.close()
        self._error, self._failed_at = error, self._monotonic()

    def _read(self, nvml: Any, taken_at: float) -> GpuReading:
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._end_session(describe_nvml_error(exc))
            return GpuReading.unavailable(self._error, taken_at)
        samples = [self._read_gpu(nvml, i) for i in range(count)]
        self._drain_xid_events(nvml)
        samples = [self._with_xids(g) for g in samples]
        gpus = sorted(samples, key=lambda g: (g.pci_bus_id == "", g.pci_bus_id, g.index))
        return GpuReading(True, None, tuple(gpus), self._driver_version, taken_at)

    def _read_gpu(self, nvml: Any, index: int) -> GpuSample:
        reader = _FieldReader(nvml)
        handle = reader.get(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            uuid, name, bus_id = self._identity.get(index, ("", "", ""))
            return GpuSample(index, uuid, name, bus_id, None, None, None, None, None, None, (), reader.error)
        uuid, name, bus_id = self._identity.get(index) or self._read_identity(nvml, reader, handle, index)
        util = reader.get(nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = reader.get(self._memory_info, nvml, handle)
        power_mw = reader.get(nvml.nvmlDeviceGetPowerUsage, handle)
        temp = reader.get(nvml.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU)
        sm_mhz = reader.get(nvml.nvmlDeviceGetClockInfo, handle, NVML_CLOCK_SM)
        procs = reader.get(nvml.nvmlDeviceGetComputeRunningProcesses_v3, handle)
        energy_mj = reader.extra(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        reasons = reader.extra(nvml.nvmlDeviceGetCurrentClocksEventReasons, handle)
        if reasons is None:  # drivers before R535 call them throttle reasons
            reasons = reader.extra(nvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
        ecc = nvml.nvmlDeviceGetTotalEccErrors
        corrected = reader.extra(ecc, handle, NVML_MEMORY_ERROR_CORRECTED, NVML_VOLATILE_ECC)
        uncorrected = reader.extra(ecc, handle, NVML_MEMORY_ERROR_UNCORRECTED, NVML_VOLATILE_ECC)
        self._watch_xids(nvml, reader, handle, index)
        return GpuSample(
            index=index,
            uuid=uuid,
            name=name,
            pci_bus_id=bus_id,
            utilization_pct=float(util.gpu) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            memory_reserved_bytes=int(mem.reserved) if mem is not None and hasattr(mem, "reserved") else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            sm_clock_hz=sm_mhz * 1e6 if sm_mhz is not None else None,
            processes=tuple(GpuProcess(int(p.pid), int(p.usedGpuMemory or 0)) for p in procs or ()),
            error=reader.error,
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            clocks_event_reasons=int(reasons) if reasons is not None else None,
            ecc_corrected=int(corrected) if corrected is not None else None,
            ecc_uncorrected=int(uncorrected) if uncorrected is not None else None,
        )

    # --- XID errors: NVML delivers them as events, not as a field ------------------------

    def _watch_xids(self, nvml: Any, reader: _FieldReader, handle: Any, index: int) -> None:
        """Register a GPU for XID events once per session (a GPU that cannot report them is skipped)."""
        if index in self._xid_watched or reader.lost:
            return
        if self._events is None:
            self._events = reader.extra(nvml.nvmlEventSetCreate)
            if self._events is None:
                return
        try:
            nvml.nvmlDeviceRegisterEvents(handle, NVML_EVENT_TYPE_XID_CRITICAL_ERROR, self._events)
        except nvml.NVMLError as exc:
            if exc.value not in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                log.debug("GPU %d: no XID events: %s", index, describe_nvml_error(exc))
            return
        self._xid_watched.add(index)
        self._xids.setdefault(index, (0, 0))

    def _drain_xid_events(self, nvml: Any) -> None:
        """Take the XID events that arrived since the last sample, without waiting."""
        if self._events is None:
            return
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
                index = int(nvml.nvmlDeviceGetIndex(event.device))
            except nvml.NVMLError as exc:
                if exc.value != NVML_ERROR_TIMEOUT:
                    log.debug("XID events: %s", describe_nvml_error(exc))
                return
            if event.eventType & NVML_EVENT_TYPE_XID_CRITICAL_ERROR:
                count, _ = self._xids.get(index, (0, 0))
                self._xids[index] = (count + 1, int(event.eventData))
                log.warning("GPU %d: XID %d", index, int(event.eventData))

    def _with_xids(self, gpu: GpuSample) -> GpuSample:
        if gpu.index not in self._xid_watched:
            return gpu
        count, last = self._xids.get(gpu.index, (0, 0))
        return dataclasses.replace(gpu, xid_errors=count, last_xid=last)

    def _memory_info(self, nvml: Any, handle: Any) -> Any:
        # v2 splits the driver's reserved memory out of "used"; drivers before
        # R510 answer "argument version mismatch" or lack the function: then v1.
        version = getattr(nvml, "nvmlMemory_v2", None)
        if self._memory_v2 and version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except nvml.NVMLError as exc:
                if exc.value not in (NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                    raise
                self._memory_v2 = False
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _read_identity(self, nvml: Any, reader: _FieldReader, handle: Any, index: int) -> tuple[str, str, str]:
        # Identity does not change during a session: read it once, keep it, so a
        # GPU that is lost later still carries its uuid.
        uuid = reader.get(nvml.nvmlDeviceGetUUID, handle)
        name = reader.get(nvml.nvmlDeviceGetName, handle)
        pci = reader.get(nvml.nvmlDeviceGetPciInfo_v3, handle)
        bus_id = _text(pci.busId).upper() if pci is not None else None
        identity = (_text(uuid or ""), _text(name or ""), bus_id or "")
        if uuid is not None and name is not None and bus_id is not None:
            self._identity[index] = identity
        return identity


# --- pids, process groups and jobs ------------------------------------------


def attribute_processes(reading: GpuReading, owners: Mapping[int, str]) -> dict[tuple[str, str], int]:
    """GPU memory per (gpu uuid, job_id); job_id "" for pids no job owns."""
    out: dict[tuple[str, str], int] = {}
    for gpu in reading.gpus:
        for p in gpu.processes:
            key = (gpu.uuid, owners.get(p.pid, ""))
            out[key] = out.get(key, 0) + p.used_bytes
    return out


# --- rendering ----------------------------------------------------------------


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _mib(value: int | None) -> str:
    return "-" if value is None else str(value // MIB)


def format_gpus_table(reading: GpuReading, holders: Mapping[str, str]) -> str:
    """The ``mkd gpus`` table; holders maps gpu uuid -> job_id."""
    if not reading.available:
        return f"NVML is unavailable: {reading.error}. No GPU data (mkd keeps running without it)."
    if not reading.gpus:
        return f"NVML found no GPUs (driver {reading.driver_version or 'unknown'})."
    header = ("GPU", "NAME", "UTIL %", "MEMORY USED/TOTAL MiB", "POWER W", "TEMP C", "JOB")
    rows = [
        (
            str(g.index),
            g.name or "?",
            _num(g.utilization_pct),
            f"{_mib(g.memory_used_bytes)}/{_mib(g.memory_total_bytes)}",
            _num(g.power_watts),
            _num(g.temperature_c),
            holders.get(g.uuid, "-"),
        )
        for g in reading.gpus
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 2, 3, 4, 5}

    def line(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    lines = [line(r) for r in [header, *rows]]
    lines += [f"GPU {g.index}: {g.error}" for g in reading.gpus if g.error]
    return "\n".join(lines)


def reading_to_dict(reading: GpuReading) -> dict[str, Any]:
    """A JSON-ready dict (``mkd gpus --json``, status.json)."""
    return dataclasses.asdict(reading)


def clocks_event_reasons(mask: int) -> dict[str, bool]:
    """Each NVML clocks event reason, active or not, for a reason bit mask."""
    return {name: bool(mask & bit) for bit, name in CLOCKS_EVENT_REASONS}


def reading_from_dict(data: Mapping[str, Any]) -> GpuReading:
    gpus = tuple(GpuSample(**{**g, "processes": tuple(GpuProcess(**p) for p in g["processes"])}) for g in data["gpus"])
    return GpuReading(
        available=data["available"],
        error=data["error"],
        gpus=gpus,
        driver_version=data["driver_version"],
        taken_at=data["taken_at"],
    )
