"""Where attempts run: one interface (`Executor`), one implementation per kind of host.

`local` runs each attempt under a per-attempt shim on this host (mkd.engine); `slurm` hands
each attempt to a Slurm cluster as one batch job whose program is the same shim. The
verdict, lifecycle, policy and stages never know which one ran an attempt.
"""
