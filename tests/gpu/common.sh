# Sourced by the GPU-machine scripts, from the repository root, after .mk/gpu_setup.sh.
# A daemon home in /tmp/mkdgpu, an nvidia-smi sampler, and helpers to wait on jobs.
export REPO=$(pwd) MK=$(pwd)/.mk/mk RES=/tmp/res HOME_DIR=/tmp/mkdgpu
mkdir -p $RES $HOME_DIR
mkd() { python3 -m mkd --config $HOME_DIR/mkd.toml "$@"; }
write_config() {  # write_config [extra toml lines]
  cat > $HOME_DIR/mkd.toml <<CFG
mimickit_dir = "$MK"
mimickit_python = "$(command -v python3)"
tick = "${TICK:-100ms}"
$1
[metrics]
port = 19400
[gpu]
sample_every = "2s"
$2
CFG
}
start_daemon() {  # start_daemon LOGNAME
  (cd $HOME_DIR && exec python3 -m mkd --config $HOME_DIR/mkd.toml run) > $RES/$1 2>&1 &
  DAEMON=$!
  for i in $(seq 1 100); do [ -f $HOME_DIR/var/metrics.port ] && break; sleep 0.1; done
}
stop_daemon() { kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; }
drop() { cp "$1" $HOME_DIR/jobs/incoming/.$(basename $1).tmp && mv $HOME_DIR/jobs/incoming/.$(basename $1).tmp $HOME_DIR/jobs/incoming/$(basename $1); }
job_state() { python3 -c "import sqlite3,sys; c=sqlite3.connect('file:$HOME_DIR/var/mkd.sqlite3?mode=ro',uri=True); r=c.execute('select state from jobs where job_id=?',(sys.argv[1],)).fetchone(); print(r[0] if r else 'none')" "$1" 2>/dev/null; }
wait_jobs() {  # wait_jobs DEADLINE_S JOB...
  local deadline=$(( $(date +%s) + $1 )); shift
  while [ $(date +%s) -lt $deadline ]; do
    local open=0
    for j in "$@"; do case $(job_state $j) in succeeded|failed|cancelled) ;; *) open=1;; esac; done
    [ $open = 0 ] && return 0
    sleep 2
  done
  echo "TIMEOUT waiting for $*"; return 1
}
scrape() { python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:19400/metrics',timeout=5).read().decode())" > "$1" 2>&1; }
smi_start() { nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used,memory.total,power.draw --format=csv > "$1"
  (while :; do nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used,memory.total,power.draw --format=csv,noheader >> "$1"; sleep 2; done) &
  SMI=$!; }
scrape_loop() {  # scrape_loop PREFIX: /metrics and NVML's per-process view every 10 s, in the background
  (n=0; while :; do n=$((n+1)); scrape $RES/$1_$n.prom
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader > $RES/$1_$n.apps.csv 2>&1; sleep 10; done) &
  SCRAPER=$!; }
scrape_stop() { kill $SCRAPER 2>/dev/null; wait $SCRAPER 2>/dev/null; }
smi_stop() { kill $SMI 2>/dev/null; wait $SMI 2>/dev/null; }
compile_warp() {  # a short run on GPU 0 so Warp compiles its kernels once (~140 s on a fresh machine)
  (cd $MK && timeout 280 python3 mimickit/run.py --arg_file args/deepmimic_humanoid_ppo_args.txt \
    --engine_config data/engines/newton_engine.yaml --env_config data/envs/deepmimic_humanoid_synth_env.yaml \
    --mode train --visualize false --devices cuda:0 --num_envs 256 --max_samples 16384 --out_dir $RES/compile) \
    > $RES/compile.console.log 2>&1
}
by_hand() {  # by_hand GPU OUTNAME: the same argv mkd builds for throughput_gpuN.toml, started by hand
  (cd $MK && CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=$1 PYTHONUNBUFFERED=1 timeout 300 python3 mimickit/run.py \
    --arg_file args/deepmimic_humanoid_ppo_args.txt --engine_config data/engines/newton_engine.yaml \
    --env_config data/envs/deepmimic_humanoid_synth_env.yaml --mode train --visualize false --devices cuda:0 \
    --num_envs 4096 --max_samples 1310720 --rand_seed 1 --out_dir $RES/$2) > $RES/$2.console.log 2>&1
}
collect() {  # collect NAME: the daemon's runs and store summaries, small files only, into $OUT/NAME.tar.gz
  mkd status --json > $RES/status.json 2>&1
  for j in $(ls $HOME_DIR/runs); do mkd status $j > $RES/timeline_$j.txt 2>&1; done
  tar czf $OUT/$1.tar.gz --exclude='*.pt' --exclude='*.tfevents*' -C / ${RES#/} ${HOME_DIR#/}/runs ${HOME_DIR#/}/jobs 2>/dev/null
}
