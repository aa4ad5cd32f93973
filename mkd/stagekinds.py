"""The kinds of stage a job has, and the families the daemon treats alike."""

from __future__ import annotations

from enum import StrEnum


class StageKind(StrEnum):
    TRAIN = "train"
    WARMUP = "warmup"  # on pass, later stages use its num_envs
    LONG_RUN = "long_run"  # resumed from its last model.pt after a failure
    TEST = "test"
    VISUALIZE = "visualize"
    PROBE = "probe"  # bisects a num_envs ladder
    SWEEP = "sweep"  # runs points of num_envs and agent overrides
    COMMAND = "command"  # any program: no MimicKit signatures, its exit status decides


# MimicKit's train mode: iteration tables, out/model.pt and out/log.txt.
TRAINING = frozenset({StageKind.TRAIN, StageKind.WARMUP, StageKind.LONG_RUN, StageKind.PROBE, StageKind.SWEEP})
# MimicKit's test mode: one GPU, a Mean Return, and no end without test_episodes.
EVALUATING = frozenset({StageKind.TEST, StageKind.VISUALIZE})
