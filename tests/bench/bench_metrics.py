"""/metrics with 8 (fake) GPUs and 50 running jobs, and the CPU cost of one NVML sample."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.bench.common import Row, bench_home, drop_at, percentile, query, run_each, running
from tests.harness import mimickit_job, wait_for
from tests.nvml_fixtures import build_fake_nvml, nvml_env

GPUS = 8
JOBS = 50
SCRAPES = 200
SAMPLES = 500
PROCS_PER_GPU = 2
SHARED_GPU_JOB = mimickit_job(devices='["cuda:0"]', stages='[[stages]]\nkind = "train"\nmax_samples = 1000000000\n')
SHARED_GPU_JOB += "\n[resources]\nshare = true\n"

SAMPLE_COST = """
import json, sys, time
from mkd.gpus import GpuSampler
sampler = GpuSampler()
first = sampler.sample()
assert first.available and len(first.gpus) == int(sys.argv[1]), first
cpu0, wall0 = time.process_time(), time.perf_counter()
for _ in range(int(sys.argv[2])):
    sampler.sample()
cpu1, wall1 = time.process_time(), time.perf_counter()
sampler.close()
print(json.dumps({"cpu": (cpu1 - cpu0) / int(sys.argv[2]), "wall": (wall1 - wall0) / int(sys.argv[2])}))
"""


def fake_gpus() -> dict[str, str]:
    procs = {
        f"FAKE_NVML_PROCS_{i}": ",".join(f"{900000 + i * 10 + k}:512" for k in range(PROCS_PER_GPU))
        for i in range(GPUS)
    }
    return nvml_env(build_fake_nvml(), {"FAKE_NVML_GPUS": GPUS, "FAKE_NVML_UTIL": 87, **procs})


def scrape(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        response.read()
    return time.perf_counter() - started


def metrics_latency(root: Path) -> list[Row]:
    home = bench_home(root, extra="max_running = 64", env={"FAKE_MK_ITER_SECONDS": "1"})
    env = fake_gpus()
    with running(home, env=env):
        for i in range(JOBS):
            drop_at(home, f"gpu{i:02d}.toml", SHARED_GPU_JOB)
        wait_for(
            lambda: query(home, "SELECT COUNT(*) FROM attempts WHERE state = 'running'")[0][0] == JOBS,
            180,
            f"{JOBS} runs with progress",
            every=0.5,
        )
        time.sleep(6)  # a GPU sample (every 5 s) and a published view with every job in it
        port = home.metrics_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        gpus = sum(1 for line in body.splitlines() if line.startswith("mkd_gpu_utilization_ratio{"))
        jobs = sum(1 for line in body.splitlines() if line.startswith("mkd_job_info{"))
        latencies = []
        for _ in range(SCRAPES):
            latencies.append(scrape(port) * 1000)
            time.sleep(0.02)
    note = (
        f"{gpus} GPUs, {jobs} jobs, {series} series, {len(body) // 1024} KiB; {SCRAPES} scrapes; "
        f"rendering alone {render_seconds() * 1000:.1f} ms in an idle process"
    )
    return [
        Row("/metrics, 8 GPUs and 50 running jobs, p50", percentile(latencies, 50), "ms", 10, note),
        Row("/metrics, 8 GPUs and 50 running jobs, p99", percentile(latencies, 99), "ms", None),
    ]


def render_seconds(jobs: int = JOBS, gpus: int = GPUS, rounds: int = 100) -> float:
    """The collector alone, in this process: a view shaped like the daemon's (running jobs with
    their losses, GPUs with processes) rendered by prometheus_client, without HTTP or a busy loop."""
    from prometheus_client import generate_latest

    from mkd.gpus import GpuProcess, GpuReading, GpuSample
    from mkd.metrics import make_registry
    from mkd.snapshot import DaemonView, JobView

    now = time.time()
    samples = tuple(
        GpuSample(
            index=i,
            uuid=f"GPU-{i}",
            name="NVIDIA H100 80GB HBM3",
            pci_bus_id=f"0000:{i:02x}:00.0",
            utilization_pct=87.0,
            memory_used_bytes=40 << 30,
            memory_total_bytes=80 << 30,
            power_watts=300.0,
            temperature_c=60.0,
            sm_clock_hz=1.98e9,
            processes=(GpuProcess(1000 + i, 1 << 30),),
        )
        for i in range(gpus)
    )
    losses = {name: 0.5 for name in ("Actor_Loss", "Critic_Loss", "Clip_Frac", "Imp_Ratio", "Adv_Std", "Entropy")}
    views = tuple(
        JobView(
            job_id=f"job{j:02d}",
            state="running",
            stage="1-train",
            attempt=1,
            num_envs=4096,
            devices=("cuda:0",),
            gpu_uuids=(f"GPU-{j % gpus}",),
            iteration=100,
            samples=10**7,
            samples_per_second=5e4,
            train_return=1.0,
            test_return=2.0,
            train_episode_length=30.0,
            test_episode_length=40.0,
            wall_time_seconds=3600.0,
            losses=losses,
            seconds_since_progress=0.5,
            best_test_return=2.0,
            median_samples_per_second=5e4,
        )
        for j in range(jobs)
    )
    view = DaemonView(
        started_at=now,
        jobs=views,
        jobs_by_state={"running": jobs},
        gpu=GpuReading(True, None, samples, "999.99", now),
        gpu_holders={f"GPU-{i}": f"job{i:02d}" for i in range(gpus)},
        gpu_process_bytes={(f"GPU-{i}", f"job{i:02d}"): 1 << 30 for i in range(gpus)},
    )
    registry = make_registry(lambda: view)
    generate_latest(registry)
    started = time.perf_counter()
    for _ in range(rounds):
        generate_latest(registry)
    return (time.perf_counter() - started) / rounds


def sample_cost(root: Path) -> list[Row]:
    done = subprocess.run(
        [sys.executable, "-c", SAMPLE_COST, str(GPUS), str(SAMPLES)],
        env=fake_gpus(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    cost = json.loads(done.stdout)
    per_core = cost["cpu"] / 5.0 * 100  # at the default [gpu] sample_every = "5s"
    note = f"fake NVML, {GPUS} GPUs x {PROCS_PER_GPU} processes; {per_core:.3f} % of a core at one sample per 5 s"
    return [Row("NVML sample (GpuSampler.sample), CPU per sample", cost["cpu"] * 1e6, "us", None, note)]


def run() -> list[Row]:
    return run_each(metrics_latency, sample_cost)


def main() -> None:
    from tests.bench.common import table

    print(table(run()))


if __name__ == "__main__":
    main()
