#!/bin/bash
# Build (once) a Debian 12 root file system in which a real systemd boots under
# systemd-nspawn, with a Python venv holding mkd's dependencies, so that
# tests/test_systemd_e2e.py can install and run mkd as a systemd service offline.
#
#   deploy/nspawn/make-rootfs.sh CACHE_DIR
#   MKD_NSPAWN_ROOTFS=CACHE_DIR/rootfs pytest -m slow tests/test_systemd_e2e.py
#
# Needs root, network (a Debian mirror; PyPI through the host's pip) and the Debian packages
# systemd-container and debootstrap. Idempotent, in two cached layers:
#   1. the debootstrap tree (about 50 s, 290 MB), kept while SUITE and PACKAGES
#      are unchanged (stamp: rootfs/.mkd-rootfs);
#   2. /opt/mkd/venv with the dependencies of pyproject.toml (a few seconds),
#      rebuilt when pyproject.toml changes (stamp: rootfs/opt/mkd/venv.key).
# mkd itself is not installed here: the test installs the checkout under test.
# The test boots the tree with --volatile=overlay, so it never changes the cache.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 CACHE_DIR" >&2
    exit 2
fi
cache=$(realpath -m "$1")
repo=$(cd "$(dirname "$0")/../.." && pwd)
rootfs=$cache/rootfs
suite=bookworm
mirror=${MKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd + systemd-sysv: the init under test; dbus: systemctl talks to it.
# python3-venv: the venv for mkd (ensurepip works offline). procps: ps/pgrep.
packages=systemd,systemd-sysv,dbus,python3,python3-venv,procps

for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool not found: apt-get install -y systemd-container debootstrap" >&2
        exit 1
    }
done

mkdir -p "$cache"
want_root="$suite $packages"
if [ "$(cat "$rootfs/.mkd-rootfs" 2>/dev/null || true)" != "$want_root" ]; then
    # Build beside the cache and swap in at the end: an interrupted run never
    # leaves a half-built tree behind a valid stamp.
    rm -rf "$rootfs.new" "$rootfs.old"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs.new" "$mirror"
    # The test drives the container through nsenter; no login prompt is needed.
    ln -sf /dev/null "$rootfs.new/etc/systemd/system/console-getty.service"
    echo "$want_root" >"$rootfs.new/.mkd-rootfs"
    [ ! -e "$rootfs" ] || mv "$rootfs" "$rootfs.old"
    mv "$rootfs.new" "$rootfs"
    rm -rf "$rootfs.old"
fi

# Run a command inside the tree (not booted).
in_root() {
    systemd-nspawn --quiet --register=no --keep-unit --pipe -D "$rootfs" "$@"
}

want_venv=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$rootfs/opt/mkd/venv.key" 2>/dev/null || true)" != "$want_venv" ]; then
    rm -rf "$rootfs/opt/mkd/venv" "$rootfs/opt/mkd/wheels"
    mkdir -p "$rootfs/opt/mkd/wheels"
    python3 -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
# setuptools (the build backend) too: the test installs mkd with --no-build-isolation.
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"] + ["wheel"]))
' "$repo/pyproject.toml" >"$rootfs/opt/mkd/requirements.txt"
    # Wheels come through the host's pip (and its proxy and CA settings); the
    # container installs them offline. Same arch, same CPython minor version.
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.11 \
        -d "$rootfs/opt/mkd/wheels" -r "$rootfs/opt/mkd/requirements.txt"
    in_root /usr/bin/python3 -m venv /opt/mkd/venv
    in_root /opt/mkd/venv/bin/pip install --quiet --disable-pip-version-check --no-index \
        --find-links /opt/mkd/wheels -r /opt/mkd/requirements.txt
    echo "$want_venv" >"$rootfs/opt/mkd/venv.key"
fi

echo "$rootfs"
