#!/usr/bin/env bash
# (b) A retry on a GPU another process holds: hog.py in its own session takes all but 3000 MiB,
# then mkd (default GPU sampling, busy_memory above the card so it places there) runs a 4096-env
# train stage that dies of a real CUDA OOM and steps down the ladder. retry_delays.py measures
# each root exit -> next child start against the announced backoff.
source $R/tests/gpu/s3_lib.sh
setsid python3 $R/tests/gpu/hog.py 0 3000 > $RES/hog.log 2>&1 < /dev/null &
HOG=$!
for i in $(seq 1 60); do grep -q "HOG pid" $RES/hog.log && break; sleep 0.5; done
t "hog: $(cat $RES/hog.log)"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv > $RES/shared_retry_before.csv
apps_start $RES/shared_retry_apps.txt
home_up /tmp/mkd_b daemon_shared_retry.log 'busy_memory = "200GiB"'
drop $R/tests/gpu/jobs/s3_shared_retry.toml
wait_job ${RETRY_DEADLINE:-420} gpu-shared-retry; t "gpu-shared-retry: $(job_state gpu-shared-retry)"
kill $APPS 2>/dev/null
mk status gpu-shared-retry > $RES/shared_retry.status.txt 2>&1; mk report gpu-shared-retry > $RES/shared_retry.report.md 2>&1
python3 $R/tests/gpu/retry_delays.py /tmp/mkd_b gpu-shared-retry > $RES/shared_retry.json 2>&1
daemon_down; kill -9 -- -$HOG 2>/dev/null; kill -9 $HOG 2>/dev/null
