#!/usr/bin/env bash
# Session 3: builds what travels to the GPU machine (torch is there; newton, warp, mkd's own
# dependencies, Xvfb and Mesa are not, and it reaches no registry) under REPO/ignored/gpu3/, which
# REPO's .gitignore ignores. Nothing here downloads or builds MimicKit: MIMICKIT_DIR is a work tree
# already prepared with the team's recipe (synth_motion.py, make_quick_configs.sh).
# usage: s3_payload.sh REPO MIMICKIT_DIR CACHE_DIR    (CACHE_DIR keeps the downloads between runs)
#   a/part0            first 58 MiB of py.tar                       -> call 1 (staged in /tmp/stage)
#   b/part1 py.sha256  the rest of py.tar; b/debs: Debian packages  -> call 2
#   c/debs             the other Debian packages                    -> call 3
#   repo/              this checkout's mkd/ and tests/gpu/           -> calls 1-3
# py.tar: warp.tar.xz (warp-lang 1.12.1 unpacked without examples/tests, xz -6: its 136 MB wheel
# holds a 284 MB warp.so), whl/ (newton 1.0.0 and its pins, mkd's dependencies), mk.tar, stubs/.
set -euo pipefail
REPO=$(cd "$1" && pwd); MKDIR=$(cd "$2" && pwd); W=$3; HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W/whl" "$W/debs"
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for p in newton==1.0.0 newton-actuators==0.1.1 warp-lang==1.12.1 mujoco==3.5.0 mujoco-warp==3.5.0.2 gymnasium==1.4.0 \
         farama-notifications==0.0.6 tensorboardX==2.6.5 pyglet==2.1.19 glfw==2.11.0 pyopengl==3.1.10 \
         pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
         tree-sitter==0.26.1 tree-sitter-toml==0.7.0 supervisor==4.3.0; do
  ls "$W/whl" | grep -qi "^$(echo "${p%%==*}" | tr - _)-${p##*==}-" || python3 -m pip download -q --no-deps $PLAT -d "$W/whl" "$p"
done
if [ ! -f "$W/warp.tar.xz" ]; then
  rm -rf "$W/wu"; mkdir "$W/wu"; (cd "$W/wu" && unzip -q ../whl/warp_lang-1.12.1-*.whl -x 'warp/examples/*' 'warp/tests/*' \
    && tar -cf - warp warp_lang-1.12.1.dist-info | xz -T0 -6 > ../warp.tar.xz.tmp) && mv "$W/warp.tar.xz.tmp" "$W/warp.tar.xz"
fi
# Xvfb, xauth, glxinfo, Mesa (llvmpipe: Xvfb's GLX needs swrast) and the GL loaders, with their
# dependencies less what any Linux image has; the GPU machine unpacks only those it lacks (s3_gl.sh).
BASE=" libc6 libstdc++6 libgcc-s1 zlib1g libzstd1 liblzma5 libbz2-1.0 libselinux1 libpcre2-8-0 libtinfo6 libcrypt1 libgcrypt20 libgpg-error0 libsystemd0 libcap2 liblz4-1 libudev1 libaudit1 libaudit-common libcap-ng0 libmd0 libbsd0 libexpat1 libffi8 debconf dpkg perl-base libssl3 libgmp10 libelogind0 gcc-12-base libuuid1 lsb-base sysvinit-utils "
if [ -z "$(ls "$W/debs")" ]; then
  want=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends \
    xvfb xauth mesa-utils libgl1-mesa-dri libglx-mesa0 libegl-mesa0 libgl1 libglx0 libegl1 libglvnd0 libopengl0 libgles2 x11-xkb-utils xkb-data \
    | grep '^[a-z0-9]' | sort -u | while read -r p; do case "$BASE" in *" $p "*) ;; *) echo "$p";; esac; done)
  (cd "$W/debs" && apt-get download $want)
fi
G=$REPO/ignored/gpu3; rm -rf "$G"; mkdir -p "$G/a" "$G/b/debs" "$G/c/debs" "$G/repo" "$W/py/whl" "$W/py/stubs/wandb" "$W/py/stubs/moviepy/video/io"
rm -f "$W"/py/whl/*; cp $(ls "$W"/whl/*.whl | grep -v warp_lang) "$W/py/whl/"; cp "$W/warp.tar.xz" "$W/py/"
(cd "$MKDIR" && tar -cf "$W/py/mk.tar" --exclude=./output --exclude=./.git .)
printf '%s\n' 'def __getattr__(name):' '    raise RuntimeError("wandb stub: not installed here (used: %s)" % name)' > "$W/py/stubs/wandb/__init__.py"
touch "$W/py/stubs/moviepy/__init__.py" "$W/py/stubs/moviepy/video/__init__.py" "$W/py/stubs/moviepy/video/io/__init__.py"
printf '%s\n' 'class ImageSequenceClip:' '    def __init__(self, *a, **k):' '        raise RuntimeError("moviepy stub: not installed here")' > "$W/py/stubs/moviepy/video/io/ImageSequenceClip.py"
(cd "$W/py" && tar -cf "$W/py.tar" warp.tar.xz whl mk.tar stubs) && (cd "$W" && sha256sum py.tar > "$G/b/py.sha256")
head -c $((58 << 20)) "$W/py.tar" > "$G/a/part0"; tail -c +$(( (58 << 20) + 1 )) "$W/py.tar" > "$G/b/part1"
room=$(( (58 << 20) - $(stat -c %s "$G/b/part1") ))   # what call 2 can carry beside part1
for deb in $(ls -S "$W"/debs/*.deb); do
  size=$(stat -c %s "$deb"); if [ "$size" -le "$room" ]; then cp "$deb" "$G/b/debs/"; room=$((room - size)); else cp "$deb" "$G/c/debs/"; fi
done
(cd "$HERE/../.." && { git ls-files mkd tests/gpu; git ls-files --others --exclude-standard mkd tests/gpu; } | sort -u \
  | while read -r f; do [ -f "$f" ] && echo "$f"; done | tar -cf - -T - pyproject.toml) | tar -x -C "$G/repo"
du -sh "$G"/*; du -sh "$G/b" "$G/c"
