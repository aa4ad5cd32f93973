# Session 3, sourced by call 3: Xvfb, Mesa and the GL loaders from Debian packages (carried, see
# s3_payload.sh), unpacked into / one package at a time, but never over a file the image already
# has (a package of the image's own, or one whose files exist, is skipped), so nothing of the
# image changes. Then two probes: glxinfo under xvfb-run with Mesa, and with NVIDIA's GLX vendor.
: > $RES/gl_install.txt
for deb in /tmp/stage/debs/*.deb $G/c/debs/*.deb; do
  pkg=$(dpkg-deb -f $deb Package)
  if dpkg-query -W -f='${Status}' $pkg 2>/dev/null | grep -q "install ok installed"; then
    echo "skip (installed) $pkg" >> $RES/gl_install.txt; continue; fi
  clash=$(dpkg-deb -c $deb | awk '$1 !~ /^d/ {sub(/^\./, "", $6); print $6}' | grep -v -E '^/usr/share/(doc|man|lintian|bug)/' \
    | while read -r f; do [ -e "$f" ] && echo "$f"; done | head -1)
  if [ -n "$clash" ]; then echo "skip (has $clash) $pkg" >> $RES/gl_install.txt; continue; fi
  dpkg -x $deb / && echo "unpacked $pkg" >> $RES/gl_install.txt
done
ldconfig
mkdir -p /tmp/.X11-unix && chmod 1777 /tmp/.X11-unix
for vendor in mesa nvidia; do
  v=""; [ $vendor = nvidia ] && v="__GLX_VENDOR_LIBRARY_NAME=nvidia"
  env $v timeout 30 xvfb-run -a -s "-screen 0 1280x1024x24" glxinfo -B > $RES/glxinfo_$vendor.txt 2>&1
  echo "glxinfo $vendor rc=$?" >> $RES/gl_install.txt
done
