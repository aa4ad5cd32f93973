"""mkd's vocabulary for why an attempt ended: failure classes and the reasons mkd stops a run.

Shared by the verdict, the policy, the store and the metrics; MimicKit's texts that map onto
these classes live in `mkd.mimickit.classify`.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    STARTUP_MULTI_DEVICE = "startup_multi_device"  # runbook class A
    WARMUP_OUTPUTS_MISSING = "warmup_outputs_missing"  # runbook class B
    LONG_RUN_EXITED = "long_run_exited"  # runbook class C
    NCCL_ABORT_HANG = "nccl_abort_hang"  # runbook class D
    CUDA_OOM = "cuda_oom"
    PORT_IN_USE = "port_in_use"
    VISUALIZE_GL = "visualize_gl"
    NAN_DIVERGENCE = "nan_divergence"
    ENV_MISMATCH = "env_mismatch"
    CONFIG_ERROR = "config_error"
    STALL = "stall"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # mkd pause stopped it; `mkd resume` goes on from its last model.pt
    KILLED = "killed"
    MKD_ERROR = "mkd_error"  # mkd itself failed while judging the attempt (a bug: the evidence says where)
    PEER_LOST = "peer_lost"  # a rank outlived its root or a peer (TCPStore/gloo errors): the group must go
    LOST = "lost"  # the shim died without an exit record (mkd cannot know how the run ended)
    SLURM_NODE_FAIL = "slurm_node_fail"  # Slurm ended the job: NODE_FAIL or BOOT_FAIL
    SLURM_PREEMPTED = "slurm_preempted"
    SLURM_TIMEOUT = "slurm_timeout"  # the job's Slurm time limit (or deadline), not a stage timeout
    SLURM_OOM = "slurm_oom"  # Slurm's OUT_OF_MEMORY: the job's host memory limit
    SLURM_SUBMIT_REFUSED = "slurm_submit_refused"  # sbatch gave no job id
    UNKNOWN = "unknown"


class StopReason(StrEnum):
    """Why mkd itself asked a run to stop (recorded with the attempt, shown by explain)."""

    CANCELLED = "cancelled"  # mkd cancel or a cancel control file
    SHUTDOWN = "shutdown"  # mkd shutdown --stop-runs
    PAUSED = "paused"  # mkd pause: the job is held, `mkd resume` continues it from its last model.pt
    PROBE_PASSED = "probe_passed"  # a probe rung proved itself early: a pass, not a failure
    STALL = "stall"
    TIMEOUT = "timeout"
    SIGNATURE = "signature"  # a live "kill it now" console signature
    NAN = "nan_divergence"
