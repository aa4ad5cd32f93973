#!/usr/bin/env bash
# mkd's main job on a machine without a GPU: the daemon on its embedded defaults, from this
# checkout, with a MimicKit-shaped job that needs no GPU dropped into jobs/incoming.
# Watch it with `.venv/bin/mkd status` / `mkd report demo-no-gpu` in another shell; Ctrl-C stops
# the daemon (runs keep going; `mkd shutdown --stop-runs` stops everything).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p jobs/incoming
if [ ! -e runs/demo-no-gpu ]; then
    .venv/bin/mkd submit jobs/examples/demo_no_gpu.toml
fi
exec .venv/bin/mkd run
