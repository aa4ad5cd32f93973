#!/usr/bin/env bash
# Session 3, GPU call 3 (carry ignored/gpu3/c and ignored/gpu3/repo; warm after call 2):
# Xvfb + Mesa, then (a) the fast path train -> test -> visualize under mkd with no DISPLAY (mkd
# wraps the visualize stage in xvfb-run). If its visualize stage failed, a visualize-only job with
# NVIDIA's GLX vendor library on the same model. (b) again if call 2 left no result.
source ignored/gpu3/repo/tests/gpu/s3_setup.sh || exit 3
source $R/tests/gpu/s3_lib.sh
source $R/tests/gpu/s3_gl.sh; t "gl: $(grep -c unpacked $RES/gl_install.txt) unpacked; $(grep rc= $RES/gl_install.txt | tr '\n' ' ')"
if ! grep -q '"state": "succeeded"' $RES/shared_retry.json 2>/dev/null; then
  RETRY_DEADLINE=270 bash $R/tests/gpu/s3_shared_retry.sh; t "shared retry: done"; fi
apps_start $RES/fast_path_apps.txt
home_up /tmp/mkd_a daemon_fast_path.log ''
mk doctor > $RES/doctor.txt 2>&1
drop $R/tests/gpu/jobs/s3_fast_path.toml
wait_job 250 gpu-fast-path; t "gpu-fast-path: $(job_state gpu-fast-path)"
mk status gpu-fast-path > $RES/fast_path.status.txt 2>&1; mk report gpu-fast-path > $RES/fast_path.report.md 2>&1
if ! grep -q "visualize: exit: returncode 0" $RES/fast_path.report.md && [ $(( $(date +%s) - T0 )) -lt 480 ]; then
  model=$(ls /tmp/mkd_a/runs/gpu-fast-path/attempts/*-train/out/model.pt | head -1)
  sed -e 's/^name = "gpu-fast-path"/name = "gpu-visualize-nvidia-glx"/' -e "s|^rand_seed = 1|rand_seed = 1\nmodel_file = \"$model\"|" \
    -e '/^\[\[stages\]\]/,$d' $R/tests/gpu/jobs/s3_fast_path.toml > /tmp/vis_nvidia.toml
  printf '[env]\n__GLX_VENDOR_LIBRARY_NAME = "nvidia"\n\n[[stages]]\nname = "visualize"\nkind = "visualize"\ntimeout = "170s"\n' >> /tmp/vis_nvidia.toml
  cp /tmp/vis_nvidia.toml $RES/; drop /tmp/vis_nvidia.toml
  wait_job 90 gpu-visualize-nvidia-glx; t "gpu-visualize-nvidia-glx: $(job_state gpu-visualize-nvidia-glx)"
  mk report gpu-visualize-nvidia-glx > $RES/visualize_nvidia.report.md 2>&1
fi
kill $APPS 2>/dev/null; daemon_down
collect call3 /tmp/mkd_a /tmp/mkd_b
cat $RES/timeline.txt; grep -E "visualize|Mean Return|state:" $RES/fast_path.report.md | head -20
