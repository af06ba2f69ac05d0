#!/usr/bin/env bash
# Set up (first run) and run the test suite. Extra arguments go to pytest, e.g. ./test.sh -k server
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
