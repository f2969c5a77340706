#!/usr/bin/env bash
# Set up a virtual environment from the repo's own files, lint (ruff, configured in
# pyproject.toml) and run the test suite: fast unit tests plus the bounded set of slow
# (Ray / end-to-end) tests marked `ci`.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for every slow test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[dev]"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
if [ $# -eq 0 ]; then set -- -m "not slow or ci"; fi
exec .venv/bin/python -m pytest "$@"
