#!/usr/bin/env bash
# Creates .venv with mkd and its test tools, and builds the fake NVML used by the tests.
# Idempotent; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
tests/fake_nvml/build.sh >/dev/null
# An editable install compiles nothing, and where PYTHONDONTWRITEBYTECODE is set (some CI images) no
# process ever writes bytecode: every `mkd` command, shim and fake run would compile mkd from source
# (~35 ms each). Compile once here, as `pip install` does for a regular install.
.venv/bin/python -m compileall -q mkd tests >/dev/null
