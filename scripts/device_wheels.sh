#!/usr/bin/env bash
# Downloads, into .whl/, the wheels that scripts/accelerator_check.sh needs on a
# machine that lacks them and cannot download: Python 3.12, manylinux x86-64
# (the lent H200 machine: jax, flax, optax, orbax-checkpoint, numpy, absl and
# PyYAML are there; ml-collections is not). Prints their total size: with the
# work tree it must stay well under the 64 MiB that may travel.
#
#   bash scripts/device_wheels.sh        # then carry .whl with the work tree
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# The versions this repository is tested with (pyproject.toml), pure Python.
wheels=("ml-collections==1.1.0")
rm -rf .whl && mkdir -p .whl
for w in "${wheels[@]}"; do
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"
done
ls -l .whl
wheels_kib=$(du -sk .whl | cut -f1)
tree_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "wheels: ${wheels_kib} KiB; tracked work tree: ${tree_kib} KiB; together $(( (wheels_kib + tree_kib) / 1024 )) MiB of the 64 MiB that may travel"
