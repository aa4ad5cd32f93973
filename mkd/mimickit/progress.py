"""MimicKit's progress arithmetic and column names (mimickit.md: the console table and log.txt)."""

from __future__ import annotations

# The stock agents' steps_per_iter: samples per iteration = num_envs x 32 x processes.
STEPS_PER_ITERATION = 32
# Words in a console-table column name that mark a training statistic rather than a return,
# a length or a counter (Actor_Loss, Critic_Loss, Clip_Frac, Imp_Ratio, Adv_Mean, Obs_Norm_*...).
LOSS_WORDS = ("loss", "clip_frac", "imp_ratio", "adv_", "obs_norm", "entropy")
