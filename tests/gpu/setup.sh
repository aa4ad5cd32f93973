# Sourced at the start of every GPU call after the staging call, from the repo root. Installs the
# carried wheels (.mk/whl) and the split warp-lang tarball (.mk/p1 staged in /tmp/stage, .mk/p2) into
# /tmp/site once per machine; later calls on the warm machine need not carry them again.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
REPO_ROOT=$(pwd); S=/tmp/site
if [ ! -f $S/.ok ]; then
  P0=/tmp/stage/warp.tar.xz.part0; [ -f $P0 ] || P0=$REPO_ROOT/.mk/p1/warp.tar.xz.part0
  [ -f $P0 ] && [ -f $REPO_ROOT/.mk/p2/warp.tar.xz.part1 ] || { echo "MISSING warp parts"; ls -la /tmp/stage $REPO_ROOT/.mk; return 3; }
  cat $P0 $REPO_ROOT/.mk/p2/warp.tar.xz.part1 > /tmp/warp.tar.xz
  (cd /tmp && echo "$(cut -d' ' -f1 $REPO_ROOT/.mk/p2/warp.sha256)  warp.tar.xz" | sha256sum -c) || return 3
  mkdir -p $S
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S $REPO_ROOT/.mk/whl/*.whl || return 3
  xz -dc /tmp/warp.tar.xz | tar -x -C $S || return 3
  cp -r $REPO_ROOT/.mk/stubs/* $S/ && touch $S/.ok
fi
export PYTHONPATH=$S:$REPO_ROOT
python3 -c "import newton, warp, mkd.daemon, pydantic, pynvml, prometheus_client, tree_sitter_toml; print('imports ok', newton.__version__, warp.__version__)" || return 3
