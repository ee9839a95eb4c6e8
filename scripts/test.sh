#!/usr/bin/env bash
# Sets up a virtual environment with the test extras and runs the whole suite.
# Usage: bash scripts/test.sh [pytest args...]   (PYTHON=python3.12 to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist=worksteal "$@"
