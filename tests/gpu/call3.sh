#!/usr/bin/env bash
# GPU call 3 (nvidia-h100-x2, warm after call 2): a dual-device job with the runbook's NCCL preset and
# a probe ladder while another process holds all but ~2.5 GB of GPU 1 (a ladder step forced by a real
# failure), then its long run, with /metrics scraped and mkd's NVML readings next to nvidia-smi's.
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline3.txt; }
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
rm -rf $HOME_DIR $RES; mkdir -p $HOME_DIR $RES
python3 tests/gpu/hog.py 1 2500 > $RES/hog.log 2>&1 & HOG=$!
for i in $(seq 1 60); do grep -q HOG $RES/hog.log && break; sleep 0.5; done; t "$(cat $RES/hog.log)"
# busy_memory above the card's size: the hog must not keep the job off GPU 1 (an 80GiB setting made for
# H100s kept it waiting for good on H200s, whose hog held 140 GB: see tests/gpu/README.md, call 6)
TOTAL_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | tail -1)
write_config "" "busy_memory = \"$((TOTAL_MIB + 1024))MiB\""; start_daemon daemon3.log; t "daemon up"
smi_start $RES/smi_dual.csv
drop tests/gpu/jobs/dual_probe.toml
for i in $(seq 1 90); do grep -q '"longrun"' $HOME_DIR/runs/gpu-dual-probe/status.json 2>/dev/null && \
  [ "$(job_state gpu-dual-probe)" = running ] && ls $HOME_DIR/runs/gpu-dual-probe/attempts | grep -q longrun && break; sleep 2; done
t "long run started? $(ls $HOME_DIR/runs/gpu-dual-probe/attempts 2>/dev/null | tr '\n' ' ')"; sleep 25
scrape $RES/metrics_dual.txt; python3 -m tests.gpu.nvml_vs_smi 5 2 > $RES/nvml_vs_smi.tsv 2>&1; mkd gpus > $RES/mkd_gpus_dual.txt 2>&1
wait_jobs 200 gpu-dual-probe; t "dual: $(job_state gpu-dual-probe)"
smi_stop; stop_daemon; kill $HOG; wait $HOG 2>/dev/null
collect call3; t "collected"
cat $RES/timeline3.txt; cat $RES/nvml_vs_smi.tsv; mkd status; mkd report gpu-dual-probe | head -40
