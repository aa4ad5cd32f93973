# Session 3 helpers, sourced after s3_setup.sh: a daemon home per scenario, nvidia-smi sampling,
# waiting on jobs, and collecting what a scenario left (small files only) into $OUT.
RES=/tmp/res; mkdir -p $RES
T0=$(date +%s); t() { echo "[+$(( $(date +%s) - T0 ))s] $*" | tee -a $RES/timeline.txt; }
home_up() {  # home_up DIR LOGNAME [extra [gpu] lines]: config with mkd's defaults, daemon started
  H=$1; rm -rf $H; mkdir -p $H
  printf 'mimickit_dir = "%s"\nmimickit_python = "%s"\n\n[metrics]\nport = 0\n\n[gpu]\n%s\n' \
    "$MK" "$(command -v python3)" "$3" > $H/mkd.toml
  (cd $H && exec python3 -m mkd --config $H/mkd.toml run) > $RES/$2 2>&1 &
  DAEMON=$!
  for i in $(seq 1 150); do [ -f $H/var/metrics.port ] && break; sleep 0.1; done
}
mk() { python3 -m mkd --config $H/mkd.toml "$@"; }
drop() { cp "$1" $H/jobs/incoming/.$(basename $1).tmp && mv $H/jobs/incoming/.$(basename $1).tmp $H/jobs/incoming/$(basename $1); }
job_state() { python3 -c "import sqlite3,sys; c=sqlite3.connect('file:$H/var/mkd.sqlite3?mode=ro',uri=True); r=c.execute('select state from jobs where job_id=?',(sys.argv[1],)).fetchone(); print(r[0] if r else 'none')" "$1" 2>/dev/null; }
wait_job() {  # wait_job DEADLINE_S JOB
  local deadline=$(( $(date +%s) + $1 ))
  while [ $(date +%s) -lt $deadline ]; do
    case $(job_state $2) in succeeded|failed|cancelled) return 0;; esac; sleep 2
  done
  echo "TIMEOUT waiting for $2"; return 1
}
apps_start() {  # apps_start FILE: NVML's process list (nvidia-smi) every 2 s
  (while :; do echo "# $(date +%s.%N)"; nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader; sleep 2; done) > $1 2>&1 &
  APPS=$!; }
daemon_down() { mk shutdown --stop-runs > /dev/null 2>&1; sleep 3; kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null; }
collect() {  # collect NAME HOMEDIR...: results and the homes' runs/ and jobs/ (no models) into $OUT/NAME.tar.gz
  local name=$1; shift
  tar czf $OUT/$name.tar.gz --exclude='*.pt' --exclude='*.tfevents*' --exclude='mkd.sqlite3*' -C / ${RES#/} $(for h in "$@"; do echo ${h#/}/runs ${h#/}/jobs ${h#/}/mkd.toml; done) 2>/dev/null
}
