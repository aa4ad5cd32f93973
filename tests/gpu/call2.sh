#!/usr/bin/env bash
# GPU call 2 (nvidia-h100-x2, warm after the staging call; carry .mk/p2 .mk/whl .mk/mk .mk/stubs):
# install, compile Warp's kernels once, then compare the same 4096-env training run started by hand
# and under mkd, in pairs on the two GPUs at once (by hand on GPU0 / mkd on GPU1, then swapped).
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline.txt; }
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
t "setup done"; nvidia-smi > $RES/nvidia-smi.txt
compile_warp; t "warp compile run exit $?"
write_config; start_daemon daemon2.log; t "daemon up"
smi_start $RES/smi_pairs.csv
drop tests/gpu/jobs/throughput_gpu1.toml; by_hand 0 byhand_gpu0; t "by hand gpu0 exit $?"
wait_jobs 200 throughput-gpu1; t "mkd gpu1 $(job_state throughput-gpu1)"
drop tests/gpu/jobs/throughput_gpu0.toml; by_hand 1 byhand_gpu1; t "by hand gpu1 exit $?"
wait_jobs 200 throughput-gpu0; t "mkd gpu0 $(job_state throughput-gpu0)"
smi_stop
stop_daemon
python3 -m tests.gpu.rates $RES/byhand_gpu0.console.log $RES/byhand_gpu1.console.log \
  $HOME_DIR/runs/throughput-gpu0/attempts/01-1-train/console.log \
  $HOME_DIR/runs/throughput-gpu1/attempts/01-1-train/console.log > $RES/rates.json 2>&1
collect call2; t "collected"
cat $RES/timeline.txt; grep -v '"rates"' $RES/rates.json; mkd status
