#!/usr/bin/env bash
# The README's main command: installs big_distill in .venv, then runs the
# offline Fashion-MNIST demo (a teacher, then a supervised and a function-matching
# student on 100 images). Arguments go to `python -m big_distill.demo` (e.g. --scale=10).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/python -m big_distill.demo "$@"
