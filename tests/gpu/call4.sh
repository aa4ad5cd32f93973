#!/usr/bin/env bash
# GPU call 4 (after a staging call; carry .mk/p2 .mk/whl .mk/mk .mk/stubs): a two-GPU long run
# outlives a SIGKILLed mkd, is re-adopted by the next one (same pids, still advancing), and
# `mkd shutdown --stop-runs` leaves no process and no GPU memory behind.
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline4.txt; }
source tests/gpu/setup.sh || exit 3
source tests/gpu/common.sh
apps() { nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ';'; }
iters() { grep -c "|            Iteration" $HOME_DIR/runs/gpu-dual-long/attempts/01-1-long_run/console.log 2>/dev/null; }
compile_warp; t "warp compile run exit $?"
write_config; start_daemon daemon4a.log; t "daemon A up (pid $DAEMON)"
drop tests/gpu/jobs/dual_long.toml
for i in $(seq 1 120); do [ "$(iters)" -ge 3 ] 2>/dev/null && break; sleep 1; done
CHILD=$(python3 -c "import json;print(json.load(open('$HOME_DIR/runs/gpu-dual-long/attempts/01-1-long_run/child.json'))['pid'])")
t "iterations=$(iters) run pid $CHILD group: $(pgrep -g $CHILD | tr '\n' ' ') gpu apps: $(apps)"
kill -KILL $DAEMON; wait $DAEMON 2>/dev/null; t "daemon A SIGKILLed"
N1=$(iters); sleep 8; N2=$(iters); t "while no daemon: iterations $N1 -> $N2, run alive: $(kill -0 $CHILD && echo yes || echo no)"
start_daemon daemon4b.log; t "daemon B up (pid $DAEMON)"; sleep 6
mkd status gpu-dual-long > $RES/timeline_after_readopt.txt 2>&1
t "after re-adoption: $(grep -o 're-adopted[^)]*)' $RES/timeline_after_readopt.txt) attempts: $(grep -c 'attempt [0-9]' $RES/timeline_after_readopt.txt)"
N3=$(iters); sleep 5; N4=$(iters); t "under daemon B: iterations $N3 -> $N4"; scrape $RES/metrics_readopted.txt
TS=$(date +%s.%N); mkd shutdown --stop-runs; wait $DAEMON; TE=$(date +%s.%N)
t "shutdown --stop-runs: daemon exited after $(python3 -c "print(round($TE-$TS,2))") s; group left: '$(pgrep -g $CHILD | tr '\n' ' ')'"
for s in 1 2 4; do sleep $s; t "gpu apps after +${s}s: '$(apps)'"; done
python3 -m mkd --config $HOME_DIR/mkd.toml status --json > $RES/status.json
collect call4; t "collected"
cat $RES/timeline4.txt; cat $RES/timeline_after_readopt.txt | tail -12
