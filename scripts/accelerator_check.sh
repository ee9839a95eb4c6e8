#!/usr/bin/env bash
# The one command to run on a lent accelerator (docs/performance.md):
#
#   bash scripts/accelerator_check.sh [--out=DIR] [--steps=N]   # the real sizes
#   bash scripts/accelerator_check.sh --dry_run [--out=DIR]     # tiny sizes, any CPU
#
# It downloads nothing and installs nothing but the wheels carried in .whl/
# (made on a machine with internet by `bash scripts/device_wheels.sh`), which go
# to a private folder, not into the machine's Python. The project runs from this
# work tree (PYTHONPATH), with the machine's own jax, flax, optax and orbax. It
# prints the versions it found, then big_distill.accelerator_check's table, and
# writes DIR/accelerator_check.json. TensorFlow is not needed: without it the
# input-pipeline part is skipped, with a line that says so.
#
# PYTHON=... chooses the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
site="${BD_WHEEL_SITE:-${TMPDIR:-/tmp}/big_distill_wheels}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$py" -m big_distill.versions
exec "$py" -m big_distill.accelerator_check "$@"
