#!/usr/bin/env bash
# GPU call 2b (warm after call 2; carry .mk/mk): the runbook's fast path (train -> test -> visualize)
# and the warm-up -> long-run promotion, dropped at once into one daemon, one job per GPU.
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline2b.txt; }
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
rm -rf $HOME_DIR; mkdir -p $HOME_DIR; rm -rf $RES; mkdir -p $RES
write_config; start_daemon daemon2b.log; t "daemon up"
smi_start $RES/smi_stages.csv
drop tests/gpu/jobs/fast_path.toml; drop tests/gpu/jobs/warmup_longrun.toml
sleep 60; scrape $RES/metrics_during_stages.txt; mkd gpus > $RES/mkd_gpus.txt 2>&1
wait_jobs 330 gpu-fast-path gpu-warmup-longrun; t "stages: $(job_state gpu-fast-path) $(job_state gpu-warmup-longrun)"
smi_stop; scrape $RES/metrics_end.txt; stop_daemon
collect call2b; t "collected"
cat $RES/timeline2b.txt; mkd status; mkd report gpu-fast-path | head -45; mkd report gpu-warmup-longrun | head -30
