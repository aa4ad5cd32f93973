#!/usr/bin/env bash
# Session 3, GPU call 2 (carry ignored/gpu3/b and ignored/gpu3/repo; after call 1 staged part0):
# install; the machine's facts; NVML under the hardened unit's settings; then a CUDA OOM retry
# on the GPU while hog.py (another session, not mkd's) holds all but 3000 MiB of it.
source ignored/gpu3/repo/tests/gpu/s3_setup.sh || exit 3
source $R/tests/gpu/s3_lib.sh
t "installed"
{ nvidia-smi; nvidia-smi -q | grep -i -E "driver version|cuda version|product name"; echo "PID 1: $(cat /proc/1/comm)";
  ls -la /dev/nvidia*; python3 --version; uname -r; nproc; } > $RES/machine.txt 2>&1
bash $R/tests/gpu/s3_hardened_nvml.sh > $RES/hardened_nvml.txt 2>&1; t "hardened nvml: $(tail -1 $RES/hardened_nvml.txt)"
bash $R/tests/gpu/s3_shared_retry.sh; t "shared retry done"
collect call2 /tmp/mkd_b
cat $RES/timeline.txt; cat $RES/shared_retry.json 2>/dev/null
