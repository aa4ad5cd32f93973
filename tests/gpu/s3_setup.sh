# Session 3, sourced at the start of GPU calls 2 and 3 from the repository root. The payload
# (made beforehand by s3_payload.sh, git-ignored under ignored/gpu3/) is one tar cut in two:
# part0 staged in /tmp/stage by call 1, part1 carried by call 2. Installs it once per machine:
# wheels + warp-lang into /tmp/site, the MimicKit tree into /tmp/mk, call 2's Debian packages
# kept in /tmp/stage/debs for call 3. Nothing here downloads or builds MimicKit.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
G=$(pwd)/ignored/gpu3; R=$G/repo; S=/tmp/site; MK=/tmp/mk
if [ ! -f $S/.ok ]; then
  [ -f /tmp/stage/part0 ] && [ -f $G/b/part1 ] || { echo "MISSING payload parts"; ls -la /tmp/stage $G/b; return 3; }
  cat /tmp/stage/part0 $G/b/part1 > /tmp/py.tar
  (cd /tmp && sha256sum -c $G/b/py.sha256) || return 3
  mkdir -p /tmp/p $S $MK /tmp/stage/debs && tar -xf /tmp/py.tar -C /tmp/p && rm -f /tmp/py.tar /tmp/stage/part0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S /tmp/p/whl/*.whl || return 3
  xz -dc /tmp/p/warp.tar.xz | tar -x -C $S || return 3
  cp -r /tmp/p/stubs/* $S/ && tar -xf /tmp/p/mk.tar -C $MK && cp $G/b/debs/*.deb /tmp/stage/debs/ && rm -rf /tmp/p
  touch $S/.ok
fi
export PYTHONPATH=$S:$R MK G R S
python3 -c "import newton, warp, mkd.daemon, pydantic, pynvml, prometheus_client, tree_sitter_toml; print('imports ok', newton.__version__, warp.__version__)" || return 3
