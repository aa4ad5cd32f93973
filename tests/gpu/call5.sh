#!/usr/bin/env bash
# GPU call 5 (nvidia-h100-x2, warm after the staging call; carry .mk/p2 .mk/whl .mk/mk .mk/stubs):
# call 2 again on the daemon of session 2 (default 2 s tick, SIGCHLD wake-ups, shim started with
# posix_spawn under python -S -P, GPU memory attributed from NVML's pids), with /metrics and
# nvidia-smi's per-process table sampled every 10 s while the runs go.
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline.txt; }
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
t "setup done"; nvidia-smi > $RES/nvidia-smi.txt
compile_warp; t "warp compile run exit $?"
TICK=2s write_config; start_daemon daemon5.log; t "daemon up"
smi_start $RES/smi_pairs.csv; scrape_loop live
drop tests/gpu/jobs/throughput_gpu1.toml; by_hand 0 byhand_gpu0; t "by hand gpu0 exit $?"
wait_jobs 200 throughput-gpu1; t "mkd gpu1 $(job_state throughput-gpu1)"
drop tests/gpu/jobs/throughput_gpu0.toml; by_hand 1 byhand_gpu1; t "by hand gpu1 exit $?"
wait_jobs 200 throughput-gpu0; t "mkd gpu0 $(job_state throughput-gpu0)"
scrape_stop; smi_stop
stop_daemon
python3 -m tests.gpu.rates $RES/byhand_gpu0.console.log $RES/byhand_gpu1.console.log \
  $HOME_DIR/runs/throughput-gpu0/attempts/01-1-train/console.log \
  $HOME_DIR/runs/throughput-gpu1/attempts/01-1-train/console.log > $RES/rates.json 2>&1
grep -h 'mkd_gpu_process_memory_bytes{' $RES/live_*.prom | sort | uniq -c | sort -rn | head -20 > $RES/attribution.txt
collect call5; t "collected"
cat $RES/timeline.txt; grep -v '"rates"' $RES/rates.json; cat $RES/attribution.txt; mkd status
