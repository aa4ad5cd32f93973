#!/usr/bin/env bash
# GPU call 6 (nvidia-h100-x2 after the staging call; carry .mk/p2 .mk/whl .mk/mk .mk/stubs): on a
# fresh machine, install and compile Warp's kernels, then call 3 (the dual-device probe ladder forced
# down by a real OOM, with the NCCL preset) on this session's daemon at its default 2 s tick.
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
compile_warp; echo "warp compile run exit $?"
TICK=2s exec bash tests/gpu/call3.sh
