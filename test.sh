#!/usr/bin/env bash
# Set up (first run) and run the test suite. Extra arguments go to pytest, e.g. ./test.sh -k server
# Optional validators (dciodvfy, ISMRMRD's C++ tools) are installed where the machine allows it
# (scripts/test_deps.sh); tests that need something missing skip, and the run ends with a list of
# what was not tested and why.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
bash scripts/test_deps.sh
exec .venv/bin/python -m pytest -q "$@"
