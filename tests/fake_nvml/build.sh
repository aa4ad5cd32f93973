#!/bin/sh
# Builds the fake NVML into build/fake-nvml/libnvidia-ml.so.1 (or into $1).
# Tests put that directory on LD_LIBRARY_PATH so pynvml loads the fake.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../../build/fake-nvml"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp="$out/.libnvidia-ml.so.1.$$"
gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$tmp" "$here/fake_nvml.c"
# rename: a concurrent build or a running test never sees half a library
mv -f "$tmp" "$out/libnvidia-ml.so.1"
echo "$out/libnvidia-ml.so.1"
