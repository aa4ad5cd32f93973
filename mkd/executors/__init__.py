"""Where attempts run: one interface (`Executor`), one implementation per kind of host.

`local` runs each attempt under a per-attempt shim on this host (mkd.engine); `slurm` hands
each attempt to a Slurm cluster as one batch job whose program is the same shim. The
verdict, lifecycle, policy and stages never know which one ran an attempt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkd.config import ExecutorConfig
    from mkd.executors.base import Executor


def build_executor(config: ExecutorConfig) -> Executor:
    """The executor the daemon config's [executor] table names (imported only when chosen)."""
    if config.kind == "slurm":
        from mkd.executors.slurm import SlurmExecutor, settings_from

        return SlurmExecutor(settings_from(config))
    from mkd.executors.local import LocalExecutor

    return LocalExecutor()
