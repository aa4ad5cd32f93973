"""Which GPU processes are mkd's, and the per-job GPU reports: NVML's pids mapped to the live
attempts' process groups (workers included), once per GPU reading."""

from __future__ import annotations

from mkd.gpu_report import gpu_report_line
from mkd.gpus import GpuReading
from mkd.live import LiveAttempt
from mkd.procs import read_stat
from mkd.runs import Runs
from mkd.scheduler import foreign_bytes


class GpuLedger:
    def __init__(self, runs: Runs) -> None:
        self.runs = runs
        self._gpu_generation = 0  # bumped at each GPU reading: keys the owners cache
        self._owners_cache: tuple[tuple[int, tuple[tuple[int, str], ...]], dict[int, str]] | None = None
        self._gpu_report_at: dict[str, float] = {}

    def forget(self, job_ids: set[str]) -> None:
        for job_id in [k for k in self._gpu_report_at if k not in job_ids]:
            del self._gpu_report_at[job_id]

    def mkd_pids(self) -> set[int]:
        """The pids on a GPU that belong to mkd's runs (see gpu_owners)."""
        return set(self.gpu_owners())

    def gpu_owners(self) -> dict[int, str]:
        """GPU process pid -> job_id of the attempt whose process group holds it (workers included).

        Only the few pids NVML reported are looked up in /proc, once per GPU reading and set of
        runs: a scan of all of /proc per attempt per tick was most of the daemon's CPU.
        """
        groups = {pgid: live.job_id for live in self.runs.live.values() if (pgid := self._pgid(live)) is not None}
        key = (self._gpu_generation, tuple(sorted(groups.items())))
        if self._owners_cache is not None and self._owners_cache[0] == key:
            return self._owners_cache[1]
        owners: dict[int, str] = {}
        for pid in {p.pid for gpu in self.runs.gpu.gpus for p in gpu.processes}:
            found = read_stat(pid) if groups else None
            if found is not None and found.pgid in groups:
                owners[pid] = groups[found.pgid]
        self._owners_cache = (key, owners)
        return owners

    def _pgid(self, live: LiveAttempt) -> int | None:
        if live.pgid is None:
            live.pgid = self.runs.executor.process_group(live.dir)
        return live.pgid

    def on_gpu_reading(self, reading: GpuReading, now: float) -> None:
        self.runs.gpu = reading
        self._gpu_generation += 1
        by_uuid = {g.uuid: g for g in reading.gpus}
        owners = self.gpu_owners()
        for live in self.runs.live.values():
            live.gpu_pids.update(pid for pid, job_id in owners.items() if job_id == live.job_id)
            found = [by_uuid[u].utilization_pct for u in live.gpu_uuids if u in by_uuid]
            utils = [u for u in found if u is not None]
            if utils:
                live.util_samples.append(sum(utils) / len(utils))
            self._gpu_report(live, reading, now)

    def _gpu_report(self, live: LiveAttempt, reading: GpuReading, now: float) -> None:
        job = self.runs.store.get_job(live.job_id)
        if job is None:
            return
        every = self.runs.spec(job).watch.gpu_report_every.total_seconds()
        if not live.gpu_uuids or now - self._gpu_report_at.get(live.job_id, -1e9) < every:
            return  # a CPU-only run has no GPU report
        self._gpu_report_at[live.job_id] = now
        stage = self.runs.spec(job).effective_stages[job.stage_index]
        advancing = live.last_progress_mono is not None and now - live.last_progress_mono < max(every, 30.0)
        failures = [a.failure_class for a in self.runs.store.attempts(job.job_id) if a.failure_class]
        line = gpu_report_line(stage.kind, reading, live.gpu_uuids, advancing, failures[-1] if failures else None)
        self.runs.store.add_event(job.job_id, self.runs.wall(), "gpu_report", line)

    def holders(self) -> dict[str, str]:
        return {uuid: live.job_id for live in self.runs.live.values() for uuid in live.gpu_uuids}

    def holders_by_index(self) -> dict[int, str]:
        return {i: live.job_id for live in self.runs.live.values() for i in live.gpu_indices}

    def foreign_memory(self, live: LiveAttempt) -> bool:
        mine = self.mkd_pids()
        return any(
            foreign_bytes(g, mine) > self.runs.config.gpu.busy_memory
            for g in self.runs.gpu.gpus
            if g.uuid in live.gpu_uuids
        )
