"""mkd's NVML collector next to `nvidia-smi --query-gpu` at the same moment.

    python -m tests.gpu.nvml_vs_smi SAMPLES INTERVAL_S > table.tsv

Each sample reads mkd.gpus.GpuSampler and then nvidia-smi back to back (well under a
second apart) and prints one row per GPU: both readings of utilization, memory used,
memory total, power, temperature and SM clock.
"""

from __future__ import annotations

import subprocess
import sys
import time

from mkd.gpus import GpuSampler

FIELDS = "index,utilization.gpu,memory.used,memory.total,power.draw,temperature.gpu,clocks.sm"


def smi() -> dict[int, list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout
    rows = [line.split(", ") for line in out.strip().splitlines()]
    return {int(r[0]): r[1:] for r in rows}


def main() -> None:
    samples, every = int(sys.argv[1]), float(sys.argv[2])
    print(
        "t\tgpu\tutil_mkd\tutil_smi\tmem_used_mib_mkd\tmem_used_mib_smi\tmem_total_mib_mkd\tmem_total_mib_smi"
        "\tpower_w_mkd\tpower_w_smi\ttemp_c_mkd\ttemp_c_smi\tsm_mhz_mkd\tsm_mhz_smi"
    )
    with GpuSampler() as sampler:
        for _ in range(samples):
            t = time.time()
            reading = sampler.sample()
            other = smi()
            for g in reading.gpus:
                s = other.get(g.index, ["?"] * 6)
                mib = 1 << 20
                print(
                    f"{t:.1f}\t{g.index}\t{g.utilization_pct}\t{s[0]}\t{(g.memory_used_bytes or 0) // mib}\t{s[1]}"
                    f"\t{(g.memory_total_bytes or 0) // mib}\t{s[2]}\t{g.power_watts}\t{s[3]}\t{g.temperature_c}"
                    f"\t{s[4]}\t{(g.sm_clock_hz or 0) / 1e6:.0f}\t{s[5]}",
                    flush=True,
                )
            time.sleep(every)


if __name__ == "__main__":
    main()
