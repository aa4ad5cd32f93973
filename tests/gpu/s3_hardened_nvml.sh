#!/usr/bin/env bash
# (c) NVML read by mkd under the hardened unit's settings (issue 17 point 8): SystemCallFilter=
# @system-service, DevicePolicy=closed with DeviceAllow for each /dev/nvidia* node, PrivateMounts=yes,
# through systemd-run when systemd is PID 1; else it says why it cannot.
echo "PID 1 is $(cat /proc/1/comm) ($(readlink /proc/1/exe))"
if [ "$(cat /proc/1/comm)" != systemd ] || ! command -v systemd-run > /dev/null; then
  echo "RESULT: not run: systemd is not PID 1 here, so systemd-run cannot apply the unit's settings"; exit 0; fi
allow=(); for d in /dev/nvidia*; do [ -c $d ] && allow+=(-p "DeviceAllow=$d rw"); done
set -x
systemd-run --wait --pipe --collect -p SystemCallFilter=@system-service -p DevicePolicy=closed "${allow[@]}" \
  -p PrivateMounts=yes -E PYTHONPATH=$PYTHONPATH -E PATH=$PATH python3 -m mkd gpus
rc=$?; set +x
systemd-run --wait --pipe --collect -p DevicePolicy=closed -E PYTHONPATH=$PYTHONPATH python3 -m mkd gpus
echo "without DeviceAllow: rc=$?"
echo "RESULT: hardened rc=$rc"
