"""The sane range of every number, size and duration in job files and the daemon config.

Without an upper bound `num_envs = 1e30` was accepted and an attempt started with it, and a
stall timeout of "99999999999h" meant never. Each range is generous for real MimicKit work
(a probe ladder of 7 rungs, 4096 envs per GPU, 2e9 samples, a 2 h first compile) and stops
what can only be a typo or an attack. mkd.spec and mkd.config give these objects to pydantic;
mkd.layout checks a config with the same objects, so the two readings cannot drift apart.

Light to import (no pydantic).
"""

from __future__ import annotations

from mkd.quantities import Between, duration_between, size_between

# --- job files ------------------------------------------------------------------------------
PRIORITY = Between(-100, 100)
NUM_ENVS = Between(1, 2**20)  # per run; MimicKit's largest presets use 4096 per GPU
MAX_SAMPLES = Between(1, 10**12)  # also point_max_samples; 2e9 is a long run
TEST_EPISODES = Between(1, 1_000_000)
RAND_SEED = Between(0, 2**32 - 1)  # numpy's seed range; MimicKit adds 41 x rank to it
GPUS = Between(0, 64)
MIN_FREE_MEMORY = size_between("0B", "1TiB")
DEVICES = Between(1, 64)  # how many devices a run lists
STAGES = Between(0, 64)
LADDER_RUNGS = Between(1, 32)  # a probe's ladder; bisected, so 32 rungs cost at most 6 probes
RETRY_LADDER_RUNGS = Between(0, 32)
SWEEP_POINTS = Between(1, 256)
MAX_ATTEMPTS = Between(1, 100)
MAX_NO_PROGRESS = Between(1, 100)
TIMEOUT = duration_between("1s", "30d")  # a stage's timeout, startup_timeout, stall_timeout
BACKOFF = duration_between("0s", "1d")  # backoff and backoff_max
STOP_GRACE = duration_between("0s", "1h")  # between SIGTERM and SIGKILL: cancel waits this long
GPU_REPORT_EVERY = duration_between("1s", "1d")
GPU_MEMORY_FREE_WAIT = duration_between("0s", "1h")

# --- the daemon config ----------------------------------------------------------------------
TICK = duration_between("10ms", "1m")
MAX_RUNNING = Between(1, 4096)
CONSOLE_LOG_MAX = size_between("4KiB", "1TiB")
CONSOLE_LOG_BACKUPS = Between(0, 100)
MAX_FILE_SIZE = size_between("1KiB", "16MiB")
SETTLE = duration_between("0s", "1h")
ID = Between(0, 2**32 - 2)  # a uid or gid (2**32 - 1 is "no id")
PORT = Between(0, 65535)
RETENTION = duration_between("0s", "30d")
SAMPLE_EVERY = duration_between("10ms", "1h")
GPU_MEMORY = size_between("0B", "1TiB")  # busy_memory, memory_freed_below
SLURM_TIME_LIMIT = duration_between("0s", "365d")  # [executor] time_limit; 0s: the partition's default
