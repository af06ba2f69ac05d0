#!/usr/bin/env bash
# Creates .venv (Python >= 3.10) and installs the project with its simulator and test extras.
# Re-running is cheap: it reinstalls only when pyproject.toml changed. Nothing else is fetched
# at run time; models ship in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python 3.10 or newer is needed (found: $("$PY" --version 2>&1)). Set PYTHON=/path/to/python3." >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run only) ..."
    "$PY" -m venv .venv
fi
stamp=.venv/.openrecon-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi
