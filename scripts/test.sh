#!/usr/bin/env bash
# The test command: set up .venv, lint (ruff, mypy), then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check mkd tests deploy
.venv/bin/ruff format --check mkd tests deploy
.venv/bin/mypy
exec .venv/bin/pytest -q "$@"
